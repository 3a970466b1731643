"""Shared fixtures: tiny random-weight encoders from the real ERNIE 3.0 config and vocab, real data slices,
and a runner that calls a script's main() exactly as its command line does, in this process."""
import os

import pytest

import utils
from tiny_models import build_tiny_encoder

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CLUE_DIR = os.path.join(DATA_DIR, "clue")


def clue_file(task, split):
    """A real CLUE slice; CMNLI has OCNLI's schema and reads the OCNLI slices."""
    return os.path.join(CLUE_DIR, "ocnli" if task == "cmnli" else task, f"{split}.json")


def clue_data_args(task):
    return ["--task_name", task] + [
        token for split in ("train", "dev", "test") for token in (f"--{split}_file", clue_file(task, split))
    ]


def run_cli(main, argv, capsys):
    """Run main(argv) through utils.run_cli; return (exit status, captured stderr)."""
    capsys.readouterr()
    try:
        utils.run_cli(lambda: main(argv))
        status = 0
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="session")
def tiny_ernie(tmp_path_factory):
    return build_tiny_encoder("ernie", str(tmp_path_factory.mktemp("tiny-ernie")))


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory, tiny_ernie):
    return {
        "ernie": tiny_ernie,
        "bert": build_tiny_encoder("bert", str(tmp_path_factory.mktemp("tiny-bert"))),
        "roberta": build_tiny_encoder("roberta", str(tmp_path_factory.mktemp("tiny-roberta"))),
    }
