"""The three commands the suite is built for, run as a new user would from a scratch working directory, with
the defaults chaining fine-tuning -> compression -> deployment through output/<task>. The tiny local model and
data come in through the options a user without internet passes (--model_name_or_path, --train_file, ...)."""

import json
import os
import subprocess
import sys

import pytest

import compress_qa
import compress_seq_cls
import infer
import model_folder
import run_qa
import run_seq_cls
import runtime
from conftest import QA_SMALL, clue_file, error_lines, qa_file, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TNEWS_DATA = ["--train_file", clue_file("tnews", "train"), "--dev_file", clue_file("tnews", "dev")]
QA_DATA = ["--train_file", qa_file("train.json"), "--dev_file", qa_file("dev.json"), *QA_SMALL]
COMPRESS_FAST = [
    "--measure_memory",
    "false",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "8",
    "--algo_list",
    "hist",
    "--batch_size_list",
    "4",
    "--importance_batches",
    "2",
    "--per_device_eval_batch_size",
    "8",
]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user")
    previous = os.getcwd()
    os.chdir(directory)
    yield directory
    os.chdir(previous)


@pytest.fixture(scope="module")
def tnews_chain(scratch, tiny_ernie):
    """python run_seq_cls.py --task_name tnews, then compress_seq_cls.py --dataset "clue tnews" (upstream's form)."""
    run_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            tiny_ernie,
            *TNEWS_DATA,
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
        ]
    )
    compress_seq_cls.main(
        ["--dataset", "clue tnews", *TNEWS_DATA, "--strategy", "ptq", "--max_metric_drop", "5", *COMPRESS_FAST]
    )
    return scratch / "output" / "tnews"


def test_run_seq_cls_without_actions_trains_and_evaluates_into_output_task(tnews_chain, caplog):
    assert {"config.json", "eval_results.json", "train_results.json"} <= set(os.listdir(tnews_chain))
    assert read_json(tnews_chain / "eval_results.json")["eval_samples"] == 32
    assert not (tnews_chain / "tnews11_predict.json").exists()
    assert not (tnews_chain / "export").exists()


def test_the_default_is_logged(scratch, tiny_ernie, caplog, tmp_path):
    with caplog.at_level("INFO", logger="ernie_suite"):
        run_seq_cls.main(
            [
                "--task_name",
                "tnews",
                "--model_name_or_path",
                tiny_ernie,
                *TNEWS_DATA,
                "--max_steps",
                "1",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    assert f"no --do_* given: training and evaluating {tiny_ernie} on tnews into {tmp_path / 'out'}" in caplog.text


def test_compress_reads_output_task_and_writes_its_compress_folder(tnews_chain):
    report = model_folder.read_report(tnews_chain / "compress" / "compress_report.json")
    assert report.parent.source == os.path.join("output", "tnews")
    assert report.best_int8
    assert report.best_int8.startswith(str(tnews_chain / "compress"))
    assert report.checkpoint_selection["examples"] >= 1


def test_infer_precision_int8_serves_the_best_int8_candidate_with_the_reported_metric(tnews_chain):
    report = model_folder.read_report(tnews_chain / "compress" / "compress_report.json")
    result = infer.main(["--precision", "int8", "--dev_file", clue_file("tnews", "dev"), "--num_threads", "1"])
    candidate = next(c for c in report.candidates if c.path == report.best_int8)
    assert result["model_path"] == report.best_int8
    assert result["task_name"] == "tnews"
    assert result["metrics"]["accuracy"] == pytest.approx(candidate.metrics["accuracy"])


def test_the_report_names_the_paddle_int8_candidate_tensorrt_serves(tnews_chain):
    """tensorrt_int8: among the Paddle int8 candidates within the budget, the best metric (CPU speed says nothing of
    a GPU's), checked from the report's own numbers."""
    report = model_folder.read_report(tnews_chain / "compress" / "compress_report.json")
    paddle_int8 = [
        c
        for c in report.candidates
        if c.backend == "paddle" and c.precision == "int8" and c.drop_points <= report.max_metric_drop
    ]
    assert paddle_int8, "the ptq chain within a 5-point budget has Paddle int8 candidates"
    chosen = next(c for c in report.candidates if c.path == report.tensorrt_int8)
    assert chosen.backend == "paddle"
    assert chosen.precision == "int8"
    assert chosen.metric_points == max(c.metric_points for c in paddle_int8)


def test_infer_names_the_command_that_makes_a_missing_model(scratch, tnews_chain, capsys):
    status, stderr = run_cli(infer.main, ["--task_name", "tnews"], capsys)  # no --do_export was run
    assert status == 2
    assert (
        "make one with `python run_seq_cls.py --task_name tnews --do_train --do_eval --do_export`"
        in error_lines(stderr)[0]
    )
    status, stderr = run_cli(infer.main, ["--task_name", "afqmc", "--precision", "int8"], capsys)
    assert status == 2
    assert "make one with `python compress_seq_cls.py --task_name afqmc`" in error_lines(stderr)[0]
    status, stderr = run_cli(compress_seq_cls.main, ["--task_name", "iflytek"], capsys)
    assert status == 2
    assert (
        "no fine-tuned model in output/iflytek: make one with `python run_seq_cls.py --task_name iflytek`"
        in error_lines(stderr)[0]
    )


def test_infer_checks_a_given_task_against_the_models(scratch, tnews_chain, capsys):
    status, stderr = run_cli(
        infer.main, ["--task_name", "afqmc", "--model_path", str(tnews_chain / "compress" / "parent")], capsys
    )
    assert status == 2
    assert "was exported for task 'tnews', not 'afqmc'" in error_lines(stderr)[0]


def test_infer_use_trt_precision_int8_as_written_ends_with_one_line_on_a_cpu_machine(tnews_chain):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "infer.py"), "--use_trt", "--precision", "int8"],
        cwd=tnews_chain.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        "error: --use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu"
    ]


def test_run_qa_and_compress_qa_as_in_upstreams_readme(scratch, tiny_ernie):
    """python run_qa.py --model_name_or_path ... --do_train (no task name); python compress_qa.py --dataset cmrc2018."""
    run_qa.main(
        [
            "--model_name_or_path",
            tiny_ernie,
            "--do_train",
            *QA_DATA,
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    assert os.path.isfile(scratch / "output" / "cmrc2018" / "config.json")
    status = 0
    try:
        compress_qa.main(["--dataset", "cmrc2018", *QA_DATA, *COMPRESS_FAST])
    except (
        runtime.UserError
    ) as error:  # a random-weight reader may miss the 1-point budget or not be faster: the report says
        status = 2
        assert "no candidate is within --max_metric_drop 1.0 points of the float parent" in str(error)
    report = model_folder.read_report(scratch / "output" / "cmrc2018" / "compress" / "compress_report.json")
    assert report.strategy == "dynabert+ptq"
    assert report.task.name == "cmrc2018"
    assert {c.kind for c in report.candidates} >= {"pruned float", "int8"}
    assert {(c.backend, c.precision) for c in report.candidates} >= {
        ("paddle", "int8"),
        ("onnxruntime", "int8"),
    }
    assert (report.best is None) == (status == 2)


def test_compress_into_an_existing_folder_keeps_what_was_there(scratch, tnews_chain, tmp_path):
    target = tmp_path / "here"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    compress_seq_cls.main(
        [
            "--dataset",
            "clue tnews",
            "--model_name_or_path",
            str(tnews_chain),
            *TNEWS_DATA,
            "--output_dir",
            str(target),
            "--strategy",
            "ptq",
            "--max_metric_drop",
            "5",
            *COMPRESS_FAST,
        ]
    )
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "compress_report.json").is_file()
    assert not [name for name in os.listdir(target) if name.startswith(".tmp")]


def test_dataset_and_task_name_must_agree(scratch, tnews_chain, capsys):
    status, stderr = run_cli(compress_seq_cls.main, ["--dataset", "clue afqmc", "--task_name", "tnews"], capsys)
    assert status == 2
    assert "--dataset 'clue afqmc' and --task_name 'tnews' name different tasks" in error_lines(stderr)[0]
