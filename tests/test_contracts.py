"""The typed files between compression and deployment (model_folder.py): one reader and one writer each, a format
version, unknown, missing and mistyped fields refused with one line naming the file and the field; and the command
line read once with one boolean vocabulary."""

import json
import os

import pytest

import arguments
import model_folder
import runtime
import utils
from conftest import error_lines, run_cli, sample_report

TASK_FILE = model_folder.TaskFile("tnews", "seq_cls", utils.SEQ_CLS_TASKS["tnews"].labels, 64, "accuracy")


def written(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rewrite(path, change):
    value = written(path)
    change(value)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


# ---- task.json -----------------------------------------------------------------------------------------------------
def test_a_task_file_reads_back_as_written(tmp_path):
    serving = model_folder.Serving("onnxruntime", "int8")
    model_folder.write_task_file(str(tmp_path), TASK_FILE)
    assert model_folder.read_task_file(str(tmp_path)) == TASK_FILE
    with_serving = model_folder.TaskFile(**{**TASK_FILE.__dict__, "serving": serving})
    model_folder.write_task_file(str(tmp_path), with_serving)
    assert model_folder.read_task_file(str(tmp_path)).serving == serving


def test_the_task_file_records_its_format_version(tmp_path):
    model_folder.write_task_file(str(tmp_path), TASK_FILE)
    assert written(tmp_path / "task.json")["format_version"] == model_folder.FORMAT_VERSION


def test_a_task_file_written_before_versions_reads_as_version_1(tmp_path):
    model_folder.write_task_file(str(tmp_path), TASK_FILE)
    rewrite(tmp_path / "task.json", lambda value: value.pop("format_version"))
    assert model_folder.read_task_file(str(tmp_path)) == TASK_FILE


BROKEN_TASK_FILES = {
    "an unknown field": (lambda v: v.update(labels=["a"]), r"task\.json: unknown field 'labels'"),
    "a missing field": (lambda v: v.pop("max_seq_length"), r"task\.json: missing field 'max_seq_length'"),
    "a mistyped field": (lambda v: v.update(max_seq_length="64"), r"task\.json: field 'max_seq_length' must be int"),
    "a boolean for a number": (lambda v: v.update(max_seq_length=True), r"field 'max_seq_length' must be int"),
    "a nested unknown field": (
        lambda v: v.update(serving={"backend": "paddle", "precision": "fp32", "threads": 2}),
        r"task\.json: unknown field serving\.'threads'",
    ),
    "another format version": (lambda v: v.update(format_version=2), r"task\.json: format version 2, but this suite"),
    "not an object": (lambda v: v.clear() or v.update(x=1), r"unknown field 'x'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TASK_FILES))
def test_a_broken_task_file_is_one_error_naming_the_file_and_field(tmp_path, case):
    change, message = BROKEN_TASK_FILES[case]
    model_folder.write_task_file(str(tmp_path), TASK_FILE)
    rewrite(tmp_path / "task.json", change)
    with pytest.raises(runtime.UserError, match=message) as raised:
        model_folder.read_task_file(str(tmp_path))
    assert str(tmp_path / "task.json") in str(raised.value)


def test_a_folder_without_a_task_file_says_how_to_make_one(tmp_path):
    with pytest.raises(runtime.UserError, match=r"holds no task\.json: pass an export/ directory"):
        model_folder.read_task_file(str(tmp_path))


# ---- compress_report.json ------------------------------------------------------------------------------------------
def test_a_report_reads_back_as_written(tmp_path):
    path = str(tmp_path / "compress_report.json")
    model_folder.write_report(path, sample_report())
    assert model_folder.read_report(path) == sample_report()


def test_a_report_finds_its_candidates_by_path(tmp_path):
    path = str(tmp_path / "compress_report.json")
    model_folder.write_report(path, sample_report())
    read = model_folder.read_report(path)
    assert read.candidate(read.best).relative_path == "hist4_1"
    assert read.candidate(read.tensorrt_int8) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v["candidates"][0].update(speed=1), r"unknown field candidates\[0\]\.'speed'"),
        (lambda v: v["candidates"][0].pop("backend"), r"missing field candidates\[0\]\.'backend'"),
        (lambda v: v["parent"].update(metric_points="high"), r"field 'parent\.metric_points' must be float"),
        (lambda v: v.update(candidates={}), r"field 'candidates' must be a list"),
        (lambda v: v.pop("best"), r"missing field 'best'"),
    ],
)
def test_a_broken_report_is_one_error_naming_the_field(tmp_path, change, message):
    path = str(tmp_path / "compress_report.json")
    model_folder.write_report(path, sample_report())
    rewrite(path, change)
    with pytest.raises(runtime.UserError, match=message):
        model_folder.read_report(path)


def test_a_report_that_is_not_json_is_one_error(tmp_path):
    path = tmp_path / "compress_report.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(runtime.UserError, match=r"compress_report\.json:1: not valid JSON"):
        model_folder.read_report(str(path))


# ---- one parse, one boolean vocabulary -----------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", [["--do_eval", "f"], ["--do_eval", "0"], ["--do_eval=false"], ["--do_eval", "no"]])
def test_a_false_action_means_false(spelling):
    first = arguments.first_pass(["--do_train", *spelling])
    assert first.requested_actions == {"do_train": True, "do_eval": False, "do_predict": False, "do_export": False}


@pytest.mark.parametrize("spelling", [["--do_eval"], ["--do_eval", "t"], ["--do_eval=1"], ["--do_eval", "yes"]])
def test_a_true_action_means_true(spelling):
    assert arguments.first_pass([*spelling, "--max_steps", "3"]).requested_actions["do_eval"] is True


def test_no_action_given_means_train_and_evaluate():
    first = arguments.first_pass(["--task_name", "tnews", "--learning_rate", "1e-5"])
    assert not first.actions_given
    assert first.requested_actions == {"do_train": True, "do_eval": True, "do_predict": False, "do_export": False}


def test_an_action_given_only_as_false_is_given():
    assert arguments.first_pass(["--do_eval", "false", "--do_train"]).actions_given


def test_a_bad_boolean_is_one_error():
    with pytest.raises(runtime.UserError, match=r"--do_eval: .*expected true or false, got 'maybe'"):
        arguments.first_pass(["--do_eval", "maybe"])


def test_the_first_pass_finds_the_task_from_upstreams_dataset_option():
    argv, first = arguments.with_task_name(["--dataset", "clue tnews"], utils.FAMILIES["seq_cls"])
    assert first.task_name == "tnews"
    assert argv[-2:] == ["--task_name", "tnews"]


def test_the_fine_tuning_parser_agrees_that_do_eval_f_is_false(tiny_ernie, tmp_path):
    """The full parse (paddlenlp's TrainingArguments) ends with the first pass's actions."""
    from paddlenlp.trainer import TrainingArguments

    (model_args, data_args, training_args), _ = arguments.parse_arguments(
        (arguments.ModelArguments, arguments.DataArguments, TrainingArguments),
        utils.FAMILIES["seq_cls"],
        "test",
        ["--task_name", "tnews", "--model_name_or_path", tiny_ernie, "--output_dir", str(tmp_path), "--do_train",
         "--do_eval", "f"],
    )  # fmt: skip
    assert training_args.do_train is True
    assert training_args.do_eval is False


def test_serve_reads_its_limits_once_and_refuses_one_below_its_minimum(capsys):
    import serve

    status, stderr = run_cli(serve.main, ["--model_path", os.getcwd(), "--max_queue", "0"], capsys)
    assert status == 2
    assert error_lines(stderr) == ["error: --max_queue must be at least 1, not 0"]


def test_infer_reads_the_model_folder_once_per_start(tnews_run, monkeypatch):
    """task.json and the program are read once, into the frozen Deployment that every later step is handed."""
    import infer

    reads = {"program": 0, "task_file": 0}
    real_is_quantized, real_read_task_file = model_folder.is_quantized, model_folder.read_typed_file

    def counted_is_quantized(program):
        reads["program"] += 1
        return real_is_quantized(program)

    def counted_read(cls, path):
        reads["task_file"] += cls is model_folder.TaskFile
        return real_read_task_file(cls, path)

    monkeypatch.setattr(model_folder, "is_quantized", counted_is_quantized)
    monkeypatch.setattr(model_folder, "read_typed_file", counted_read)
    report = infer.main(["--model_path", os.path.join(tnews_run, "export"), "--text", "上海天气"])
    assert report["predictions"][0]["label"] in utils.SEQ_CLS_TASKS["tnews"].labels
    assert reads == {"program": 1, "task_file": 1}


def test_a_compression_folder_serves_the_candidate_its_report_chose(tnews_run, tmp_path):
    import deployment

    export = os.path.join(tnews_run, "export")
    model_folder.write_report(str(tmp_path / "compress_report.json"), sample_report(best=export, best_int8=None))
    served = deployment.resolve_deployment(deployment.DeployArguments(model_path=str(tmp_path)))
    assert served.model_path == export
    with pytest.raises(runtime.UserError, match=r"has no int8 candidate within its --max_metric_drop"):
        deployment.resolve_deployment(deployment.DeployArguments(model_path=str(tmp_path), precision="int8"))
