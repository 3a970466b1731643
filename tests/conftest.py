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
def tokenizer(tiny_ernie):
    return utils.load_tokenizer(tiny_ernie)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory, tiny_ernie):
    return {
        "ernie": tiny_ernie,
        "bert": build_tiny_encoder("bert", str(tmp_path_factory.mktemp("tiny-bert"))),
        "roberta": build_tiny_encoder("roberta", str(tmp_path_factory.mktemp("tiny-roberta"))),
    }


def padded_batch(features, names=("input_ids", "token_type_ids")):
    """Features padded with 0 to one length, as int64 arrays keyed by input name."""
    import numpy as np

    length = max(len(f["input_ids"]) for f in features)
    return {name: np.array([f[name] + [0] * (length - len(f[name])) for f in features], dtype="int64") for name in names}


def dynamic_outputs(model, batch):
    """The dynamic model's outputs for a padded batch, as numpy arrays (a tuple for several outputs)."""
    import paddle

    model.eval()
    with paddle.no_grad():
        outputs = model(**{name: paddle.to_tensor(value) for name, value in batch.items()})
    return tuple(o.numpy() for o in outputs) if isinstance(outputs, (tuple, list)) else outputs.numpy()


def static_outputs(export_dir, batch):
    """Outputs of an exported model run in paddle.inference on the CPU, inputs fed by name."""
    from paddle import inference

    config = inference.Config(*utils.static_model_files(export_dir))
    config.disable_gpu()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(batch[name])
    predictor.run()
    outputs = tuple(predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names())
    return outputs if len(outputs) > 1 else outputs[0]
