"""Shared fixtures: tiny random-weight encoders from the real ERNIE 3.0 config and vocab, real data slices,
and a runner that calls a script's main() exactly as its command line does, in this process."""

import os
import socket

import pytest

import model_folder
import model_io
import runtime
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
    """Run main(argv) through runtime.run_cli; return (exit status, captured stderr)."""
    capsys.readouterr()
    try:
        runtime.run_cli(lambda: main(argv))
        status = 0
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sample_candidate(relative_path, backend="paddle", precision="fp32", points=50.0, speed=100.0, **more):
    """A measured candidate for tests of the report's readers (model_folder.Candidate)."""
    return model_folder.Candidate(
        path=f"/c/{relative_path}",
        relative_path=relative_path,
        kind="int8" if precision == "int8" else "float parent",
        source="/parent",
        backend=backend,
        precision=precision,
        metrics={"accuracy": points / 100},
        metric_points=points,
        size_bytes=1000,
        latency_ms_p50=1.5,
        sequences_per_second=speed,
        parameters=10,
        **more,
    )


def sample_report(**more):
    """A compression report for tests of its readers; more replaces its fields."""
    values = dict(
        task=model_folder.ReportTask("tnews", "accuracy", "fraction x 100"),
        strategy="ptq",
        max_metric_drop=1.0,
        calibration_examples=8,
        measured_on={"cpu": "test", "flags": ["avx2"], "threads": 2},
        checkpoint_selection={"examples": 1},
        parent=sample_candidate("parent"),
        candidates=(
            sample_candidate("hist4_1", precision="int8", points=49.5, speed=300.0, drop_points=0.5, algo="hist"),
        ),
        best="/c/hist4_1",
        best_int8="/c/hist4_1",
        tensorrt_int8=None,
    )
    return model_folder.CompressionReport(**{**values, **more})


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="session")
def tiny_ernie(tmp_path_factory):
    return build_tiny_encoder("ernie", str(tmp_path_factory.mktemp("tiny-ernie")))


@pytest.fixture(scope="session")
def tokenizer(tiny_ernie):
    return model_io.load_tokenizer(tiny_ernie)


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
    return {
        name: np.array([f[name] + [0] * (length - len(f[name])) for f in features], dtype="int64") for name in names
    }


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

    config = inference.Config(*model_folder.static_model_files(export_dir))
    config.disable_gpu()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(batch[name])
    predictor.run()
    outputs = tuple(predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names())
    return outputs if len(outputs) > 1 else outputs[0]


# ---- one fine-tuned and exported model per task family, shared by every script's tests ----------------
def ner_file(name):
    return os.path.join(DATA_DIR, "msra_ner", name)


def qa_file(name):
    return os.path.join(DATA_DIR, "cmrc2018", name)


QA_SMALL = ["--max_seq_length", "128", "--doc_stride", "64"]


def qa_args(model, output_dir, *extra):
    return [
        "--task_name",
        "cmrc2018",
        "--model_name_or_path",
        model,
        "--train_file",
        qa_file("train.json"),
        "--dev_file",
        qa_file("dev.json"),
        "--test_file",
        qa_file("test.json"),
        "--output_dir",
        str(output_dir),
        *QA_SMALL,
        *extra,
    ]


@pytest.fixture(scope="session")
def tnews_run(tiny_ernie, tmp_path_factory):
    """TNEWS trained, evaluated, predicted and exported."""
    import run_seq_cls

    output_dir = str(tmp_path_factory.mktemp("tnews-run"))
    run_seq_cls.main(
        clue_data_args("tnews")
        + [
            "--model_name_or_path",
            tiny_ernie,
            "--output_dir",
            output_dir,
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--do_export",
            "--num_train_epochs",
            "3",
            "--per_device_train_batch_size",
            "16",
        ]
    )
    return output_dir


@pytest.fixture(scope="session")
def ner_run(tiny_ernie, tmp_path_factory):
    """MSRA_NER trained, evaluated, predicted and exported."""
    import run_token_cls

    output_dir = str(tmp_path_factory.mktemp("ner-run"))
    run_token_cls.main(
        [
            "--task_name",
            "msra_ner",
            "--model_name_or_path",
            tiny_ernie,
            "--train_file",
            ner_file("train.tsv"),
            "--dev_file",
            ner_file("dev.tsv"),
            "--test_file",
            ner_file("test.tsv"),
            "--output_dir",
            output_dir,
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--do_export",
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    return output_dir


@pytest.fixture(scope="session")
def qa_run(tiny_ernie, tmp_path_factory):
    """CMRC2018 trained, evaluated, predicted and exported (max_seq_length 128, doc_stride 64)."""
    import run_qa

    output_dir = str(tmp_path_factory.mktemp("qa-run"))
    run_qa.main(
        qa_args(
            tiny_ernie,
            output_dir,
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--do_export",
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "8",
        )
    )
    return output_dir


# ---- the multiple-choice family (C3, CHID) ---------------------------------------------------------------------------
def choice_file(*names):
    return os.path.join(DATA_DIR, *names)


C3_TRAIN_FILES = ",".join(choice_file("c3", f"c3-{part}-train.json") for part in ("d", "m"))
C3_FIT = ["--max_seq_length", "48", "--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--dropout", "0"]
FIT_ONLY = ["--evaluation_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]


@pytest.fixture(scope="session")
def c3_run(tiny_ernie, tmp_path_factory):
    """C3 trained on the ~200 questions of the train slice until it fits them, evaluated on those questions, and
    exported (max_seq_length 48)."""
    import run_multiple_choice

    output_dir = str(tmp_path_factory.mktemp("c3-run"))
    run_multiple_choice.main(
        ["--task_name", "c3", "--model_name_or_path", tiny_ernie, "--train_file", choice_file("c3"),
         "--dev_file", C3_TRAIN_FILES, "--test_file", choice_file("c3", "test.json"), "--output_dir", output_dir,
         "--do_train", "--do_eval", "--do_predict", "--do_export", "--num_train_epochs", "8", *C3_FIT, *FIT_ONLY]
    )  # fmt: skip
    return output_dir


@pytest.fixture(scope="session")
def chid_run(tiny_ernie, tmp_path_factory):
    """CHID trained a little on FewCLUE rows, evaluated and predicted on the CLUE-format slice, and exported."""
    import run_multiple_choice

    output_dir = str(tmp_path_factory.mktemp("chid-run"))
    run_multiple_choice.main(
        ["--task_name", "chid", "--model_name_or_path", tiny_ernie,
         "--train_file", choice_file("chid", "train_few.json"), "--dev_file", choice_file("chid", "clue_dev.json"),
         "--test_file", choice_file("chid", "clue_train.json"), "--output_dir", output_dir, "--do_train", "--do_eval",
         "--do_predict", "--do_export", "--num_train_epochs", "2", "--learning_rate", "2e-3",
         "--per_device_train_batch_size", "16", *FIT_ONLY]
    )  # fmt: skip
    return output_dir
