"""What only a real process shows: exit status and stderr of the command line, downloads that fail,
and multi-process data-parallel training. Kept few: each process spends ~7 s importing paddlenlp."""

import json
import os
import subprocess
import sys

import pytest

from conftest import clue_data_args, clue_file, error_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A closed loopback port as the proxy: every download fails at once, with or without internet.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def run_script(args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("what", ["model", "data"])
def test_a_failed_download_says_what_and_which_local_option_to_use(what, tiny_ernie, tmp_path):
    model, expected = {
        "model": (
            "ernie-3.0-medium-zh",
            ["could not download model 'ernie-3.0-medium-zh'", "--model_name_or_path DIR"],
        ),
        "data": (tiny_ernie, ["could not download the tnews train split", "--train_file PATH"]),
    }[what]
    result = run_script(
        [
            "run_seq_cls.py",
            "--task_name",
            "tnews",
            "--model_name_or_path",
            model,
            "--do_train",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        NO_NETWORK,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert "Traceback" not in result.stderr
    assert all(text in lines[0] for text in expected), lines[0]
    assert not (tmp_path / "out").exists()


def read_predictions(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_two_process_data_parallel_training_on_cpu(tiny_ernie, tmp_path):
    """paddle.distributed.launch --nproc_per_node 2: one set of outputs, predictions in input order that
    match a single-process prediction with the same saved model."""
    output_dir = tmp_path / "dp"
    launched = run_script(
        [
            "-m",
            "paddle.distributed.launch",
            "--nproc_per_node",
            "2",
            "--log_dir",
            str(tmp_path / "logs"),
            "run_seq_cls.py",
            *clue_data_args("tnews"),
            "--model_name_or_path",
            tiny_ernie,
            "--output_dir",
            str(output_dir),
            "--device",
            "cpu",
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
        ],
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    with open(output_dir / "train_results.json", encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == 3
    with open(output_dir / "eval_results.json", encoding="utf-8") as handle:
        assert json.load(handle)["eval_samples"] == 32
    two_process = read_predictions(output_dir / "tnews11_predict.json")

    single_dir = tmp_path / "single"
    single = run_script(
        [
            "run_seq_cls.py",
            "--task_name",
            "tnews",
            "--model_name_or_path",
            str(output_dir),
            "--test_file",
            clue_file("tnews", "test"),
            "--output_dir",
            str(single_dir),
            "--do_predict",
        ]
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert two_process == read_predictions(single_dir / "tnews11_predict.json")
    assert [row["id"] for row in two_process] == list(range(1000, 1016))


SCRIPTS = (
    "run_seq_cls", "run_token_cls", "run_qa", "run_multiple_choice",
    "compress_seq_cls", "compress_token_cls", "compress_qa", "compress_multiple_choice",
    "infer", "serve",
)  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_help_is_printed(script, capsys):
    """argparse formats every help text with %: a bare % in one (a percentage) made `serve.py --help` a traceback."""
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(["--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out
