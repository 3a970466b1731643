"""infer.py: the fine-tuning scripts' metrics through both backends, speed reports, raw text, and bad input."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from paddlenlp.transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import deployment
import infer
import model_folder
import model_io
import predictors
import runtime
import utils
from conftest import clue_file, dynamic_outputs, error_lines, ner_file, padded_batch, qa_file, run_cli

BACKENDS = ["paddle", "onnxruntime", "openvino"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def runs(tnews_run, ner_run, qa_run, tmp_path_factory):
    """Copies of the three exports, so that cached ONNX files stay out of the shared fixtures."""
    copies = {}
    for name, run in (("tnews", tnews_run), ("msra_ner", ner_run), ("cmrc2018", qa_run)):
        copies[name] = str(tmp_path_factory.mktemp(name) / "export")
        shutil.copytree(os.path.join(run, "export"), copies[name])
    return copies


CASES = {
    "tnews": (["--dev_file", clue_file("tnews", "dev")], ["accuracy"]),
    "msra_ner": (["--dev_file", ner_file("dev.tsv")], ["precision", "recall", "f1"]),
    "cmrc2018": (
        ["--dev_file", qa_file("dev.json"), "--doc_stride", "64"],
        ["exact_match", "f1", "upstream_exact_match", "upstream_f1"],
    ),
}
FIXTURE_RUN = {"tnews": "tnews_run", "msra_ner": "ner_run", "cmrc2018": "qa_run"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", sorted(CASES))
def test_float_metrics_equal_the_fine_tuning_scripts(task, backend, runs, request):
    extra, names = CASES[task]
    report = infer.main(
        ["--task_name", task, "--model_path", runs[task], "--backend", backend, "--batch_size", "8", *extra]
    )
    trained = read_json(os.path.join(request.getfixturevalue(FIXTURE_RUN[task]), "eval_results.json"))
    for name in names:
        assert report["metrics"][name] == pytest.approx(trained[name], abs=1e-6), name
    assert report["metrics"]["eval_samples"] == trained["eval_samples"]


def test_onnxruntime_int8_is_reported_and_cached(runs):
    report = infer.main(
        [
            "--task_name",
            "tnews",
            "--model_path",
            runs["tnews"],
            "--backend",
            "onnxruntime",
            "--precision",
            "int8",
            "--dev_file",
            clue_file("tnews", "dev"),
        ]
    )
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert report["precision"] == "int8"
    int8, fp32 = os.path.join(runs["tnews"], "model.int8.onnx"), os.path.join(runs["tnews"], "model.onnx")
    import onnx

    assert "MatMulInteger" in {node.op_type for node in onnx.load(int8).graph.node}  # really quantized
    assert os.path.getsize(int8) < 0.5 * os.path.getsize(fp32)
    cached = os.path.getmtime(int8)
    infer.main(
        [
            "--task_name",
            "tnews",
            "--model_path",
            runs["tnews"],
            "--backend",
            "onnxruntime",
            "--precision",
            "int8",
            "--dev_file",
            clue_file("tnews", "dev"),
        ]
    )
    assert os.path.getmtime(int8) == cached  # converted and quantized once


def spinning_entry(spinning):
    session = predictors.OnnxRuntimePredictor.session_options(
        predictors.PredictorOptions(backend="onnxruntime", onnxruntime_spinning=spinning)
    )
    try:
        return session.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's own default
        return None


def test_onnxruntime_spinning_reaches_the_session_and_changes_no_prediction(runs):
    assert [spinning_entry(value) for value in (None, True, False)] == [None, "1", "0"]
    argv = ["--model_path", runs["tnews"], "--backend", "onnxruntime", "--precision", "int8", "--num_threads", "2"]
    argv += ["--text", "以色列大规模空袭开始", "--text", "出栏一头猪亏损300元"]
    spinning, idle = infer.main(argv), infer.main(argv + ["--onnxruntime_spinning", "false"])
    assert (spinning["onnxruntime_spinning"], idle["onnxruntime_spinning"]) == (None, False)  # as run
    assert idle["predictions"] == spinning["predictions"]


def test_onnx_conversion_and_quantization_print_no_warnings(tnews_run, tmp_path, capfd):
    """paddle2onnx 2.1.0's onnxoptimizer step always fails with a warning, and ONNX Runtime's quantization
    preparation warns about a constant it drops: neither says anything a user should act on."""
    export_dir = str(tmp_path / "export")
    shutil.copytree(os.path.join(tnews_run, "export"), export_dir)
    capfd.readouterr()
    predictors.OnnxRuntimePredictor.quantized(predictors.onnx_conversion(model_folder.read_model_files(export_dir)))
    printed = "".join(capfd.readouterr())
    assert os.path.isfile(os.path.join(export_dir, "model.int8.onnx"))
    assert not re.search(r"WARNING|\[W:onnxruntime|Fail to optimize", printed), printed


@pytest.mark.parametrize("backend", BACKENDS)
def test_perf_reports_latency_percentiles_and_throughput(backend, runs, tmp_path):
    output_file = tmp_path / "perf.json"
    infer.main(
        [
            "--task_name",
            "tnews",
            "--model_path",
            runs["tnews"],
            "--backend",
            backend,
            "--perf",
            "--batch_size",
            "4",
            "--warmup_batches",
            "2",
            "--dev_file",
            clue_file("tnews", "dev"),
            "--output_file",
            str(output_file),
        ]
    )
    perf = read_json(output_file)["perf"]
    assert perf["sequences"] == 32
    assert perf["batches"] == 8
    for name in (
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_p99",
        "model_seconds",
        "tokenize_seconds",
        "sequences_per_second",
        "end_to_end_sequences_per_second",
    ):
        assert perf[name] > 0, name
    assert perf["end_to_end_sequences_per_second"] < perf["sequences_per_second"]
    assert 100 < perf["peak_rss_mb"] < 4096


def test_peak_memory_is_infers_own_when_a_larger_process_started_it(runs, tmp_path):
    """--perf reports infer.py's own peak: started by a process holding 1.5 GB it reports less (getrusage's
    ru_maxrss, used before, reported the parent's 1.5 GB: Linux carries it across fork and exec)."""
    report = tmp_path / "perf.json"
    command = [
        sys.executable,
        os.path.join(ROOT, "infer.py"),
        "--model_path",
        runs["tnews"],
        "--perf",
        "--dev_file",
        clue_file("tnews", "dev"),
        "--output_file",
        str(report),
    ]
    parent = f"import subprocess, sys\nheld = b'x' * (1536 << 20)\nsys.exit(subprocess.run({command!r}).returncode)\n"
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 100 < read_json(report)["perf"]["peak_rss_mb"] < 1200


def test_length_sorted_batches_give_each_input_its_own_result(runs):
    """Sorting by length and padding per batch must not change any example's logits or their order."""
    predictor = predictors.create_predictor(runs["tnews"], predictors.PredictorOptions())
    assert predictor.shapes_kept == predictors.FLOAT_ONEDNN_CACHED_SHAPES  # what serve.py's batcher counts on
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = utils.load_examples(task, "dev", clue_file("tnews", "dev"))
    features = list(utils.encode_text_examples(examples, model_io.load_tokenizer(runs["tnews"]), task, 128).dataset)
    sorted_run = predictors.run_predictor(predictor, features, 5, per_token=False, sort_by_length=True)
    fixed_run = predictors.run_predictor(predictor, features, 5, per_token=False, sort_by_length=False, pad_to=128)
    lengths = [len(f["input_ids"]) for f in features]
    assert predictors.batch_order(features, 5, True)[0] == sorted(range(32), key=lambda i: lengths[i])[:5]
    np.testing.assert_allclose(np.stack(sorted_run.outputs[0]), np.stack(fixed_run.outputs[0]), atol=1e-5)


def test_float_batch_one_runs_unfused_matmuls_with_the_fused_programs_logits(runs):
    """--batch_size 1 on float oneDNN drops the fc passes (PIR_ONEDNN_FC_PASSES: an fc reorders its weights for
    every new length); the logits must not change, and larger batches keep the fc ops."""
    lone = predictors.create_predictor(runs["tnews"], predictors.PredictorOptions(batch_size=1))
    fused = predictors.create_predictor(runs["tnews"], predictors.PredictorOptions(batch_size=2))
    assert lone.engine.endswith("unfused matmuls for batch 1") and "unfused" not in fused.engine
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = utils.load_examples(task, "dev", clue_file("tnews", "dev"))[:12]
    features = list(utils.encode_text_examples(examples, model_io.load_tokenizer(runs["tnews"]), task, 128).dataset)
    for feature in features:
        batch = predictors.pad_features([feature])
        np.testing.assert_allclose(lone.run(batch)[0], fused.run(batch)[0], atol=1e-4)


class NamedRows:
    """A predictor that answers each call with its own name and the call's rows."""

    length_bucket, shapes_kept = 8, 2

    def __init__(self, name):
        self.name, self.engine, self.calls = name, name, []

    def run(self, batch):
        self.calls.append((len(batch["input_ids"]), threading.current_thread().name))
        return [self.name]


def test_a_lone_call_predictor_takes_one_row_calls_and_the_main_one_the_rest():
    main, lone = NamedRows("main"), NamedRows("lone")
    pair = predictors.LoneCallPredictor(main, lambda: lone)
    ones = {"input_ids": np.ones((1, 9), dtype="int64")}
    rows = {"input_ids": np.ones((3, 9), dtype="int64")}
    assert [pair.run(ones), pair.run(rows), pair.run(ones)] == [["lone"], ["main"], ["lone"]]
    assert main.calls == [(3, threading.current_thread().name)]
    assert [rows for rows, _ in lone.calls] == [1, 1]  # on a thread of its own (oneDNN's cache is per thread)
    assert all(thread.startswith("lone-call-predictor") for _, thread in lone.calls)
    assert (pair.length_bucket, pair.shapes_kept) == (8, 2)  # the batcher plans calls for the main predictor


def test_serve_pys_predictor_has_its_lone_call_one_for_float_onednn_only(runs):
    files = model_folder.read_model_files(runs["tnews"])
    paired = predictors.create_serving_predictor(files, predictors.PredictorOptions(), None)
    assert isinstance(paired, predictors.LoneCallPredictor) and paired.lone.engine.endswith("batch 1")
    assert "unfused" not in paired.main.engine
    alone = predictors.create_serving_predictor(files, predictors.PredictorOptions(), False)
    assert isinstance(alone, predictors.PaddlePredictor)
    ort = predictors.PredictorOptions(backend="onnxruntime")
    assert isinstance(predictors.create_serving_predictor(files, ort, None), predictors.OnnxRuntimePredictor)
    with pytest.raises(runtime.UserError, match="--lone_call_predictor is for float models"):
        predictors.refuse_lone_call_predictor_elsewhere(files, ort, False)
    predictors.refuse_lone_call_predictor_elsewhere(files, predictors.PredictorOptions(), True)  # applies: no error
    lone_already = predictors.PredictorOptions(batch_size=1)  # the main predictor is unfused itself: no second one
    assert isinstance(predictors.create_serving_predictor(files, lone_already, None), predictors.PaddlePredictor)


def test_a_lone_call_predictor_that_cannot_start_leaves_no_thread():
    def fails():
        raise RuntimeError("no model here")

    with pytest.raises(RuntimeError, match="no model here"):
        predictors.LoneCallPredictor(NamedRows("main"), fails)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("lone-call-predictor")]


def test_serve_pys_onnx_runtime_predictor_with_two_streams_has_a_whole_thread_session_beside(runs):
    files = model_folder.read_model_files(runs["tnews"])
    options = predictors.PredictorOptions(backend="onnxruntime", num_threads=2)
    streamed = predictors.create_streamed_predictor(files, options, None, 2)
    assert isinstance(streamed, predictors.StreamedPredictor) and streamed.whole is not streamed.shared
    assert streamed.engine.endswith("2 at once on 1 thread(s) each")
    assert streamed.whole.session.get_session_options().intra_op_num_threads == 2
    assert streamed.shared.session.get_session_options().intra_op_num_threads == 1
    batch = {"input_ids": np.full((3, 9), 5, dtype="int64"), "token_type_ids": np.zeros((3, 9), dtype="int64")}
    np.testing.assert_allclose(streamed.shared.run(batch)[0], streamed.whole.run(batch)[0], atol=1e-5)
    assert isinstance(predictors.create_streamed_predictor(files, options, None, 1), predictors.OnnxRuntimePredictor)


class ShapeRecorder:
    """A predictor that records the shape of every batch it runs."""

    length_bucket = 8

    def __init__(self):
        self.shapes = []

    def run(self, batch):
        self.shapes.append(batch["input_ids"].shape)
        return [np.zeros((batch["input_ids"].shape[0], 2), dtype="float32")]


def test_warm_shapes_runs_each_shape_of_the_batches_once_largest_first_before_any_timed_batch():
    lengths = [5, 9, 9, 20, 3, 17, 40, 12, 9]  # padded to 8s: batches of 4 sorted -> (4, 16), (4, 24), (1, 40)
    features = [{"input_ids": [1] * n, "token_type_ids": [0] * n} for n in lengths]
    predictor = ShapeRecorder()
    run = predictors.run_predictor(predictor, features, 4, per_token=False, warm_shapes=True)
    timed = [(4, 16), (4, 24), (1, 40)]
    assert predictor.shapes == [(4, 24), (4, 16), (1, 40)] + timed  # 96, 64 and 40 tokens
    assert run.warmed_shapes == 3 and len(run.batch_seconds) == 3
    plain = ShapeRecorder()
    assert predictors.run_predictor(plain, features, 4, per_token=False).warmed_shapes == 0
    assert plain.shapes == timed
    exact = ShapeRecorder()
    exact.length_bucket = 1  # batches padded to their longest (ONNX Runtime): nothing built a shape, nothing warmed
    assert predictors.run_predictor(exact, features, 4, per_token=False, warm_shapes=True).warmed_shapes == 0
    assert exact.shapes == [(4, 9), (4, 20), (1, 40)]


def test_the_bucket_warm_up_runs_the_longest_bucket_first():
    predictor = ShapeRecorder()
    assert predictors.warm_up_buckets(predictor, 2, 30) == 4
    assert predictor.shapes == [(2, 30), (2, 24), (2, 16), (2, 8)]


def test_raw_text_classification_matches_the_dynamic_model(tnews_run, runs):
    texts = [
        "以色列大规模空袭开始！伊朗多个军事目标遭遇打击",
        "出栏一头猪亏损300元，究竟谁能笑到最后！",
        "江疏影甜甜圈自拍",
    ]
    report = infer.main(
        ["--task_name", "tnews", "--model_path", runs["tnews"]] + [t for text in texts for t in ("--text", text)]
    )
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = [utils.TextExample(i, t, None, None, "") for i, t in enumerate(texts)]
    batch = padded_batch(
        list(utils.encode_text_examples(examples, model_io.load_tokenizer(tnews_run), task, 128).dataset)
    )
    logits = dynamic_outputs(AutoModelForSequenceClassification.from_pretrained(tnews_run), batch)
    assert [row["label"] for row in report["predictions"]] == [task.labels[i] for i in logits.argmax(-1)]
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose([row["probability"] for row in report["predictions"]], probabilities.max(-1), atol=1e-5)


def test_raw_text_entities_match_the_dynamic_model(ner_run, runs, tmp_path):
    sentences = ["洛杉矶市市长理查德·赖尔登为江主席举行了隆重的欢送仪式。", "我们在北京见面"]
    input_file = tmp_path / "sentences.txt"
    input_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    output_file = tmp_path / "entities.jsonl"
    infer.main(
        [
            "--task_name",
            "msra_ner",
            "--model_path",
            runs["msra_ner"],
            "--input_file",
            str(input_file),
            "--output_file",
            str(output_file),
        ]
    )
    rows = [json.loads(line) for line in output_file.read_text(encoding="utf-8").splitlines()]
    assert [row["line"] for row in rows] == [0, 1]
    assert [row["text"] for row in rows] == sentences
    task = utils.MSRA_NER
    examples = [utils.TokenExample(i, list(s), None, "") for i, s in enumerate(sentences)]
    encoded = utils.encode_token_examples(examples, model_io.load_tokenizer(ner_run), task, 128)
    logits = dynamic_outputs(
        AutoModelForTokenClassification.from_pretrained(ner_run), padded_batch(list(encoded.dataset))
    )
    tags = utils.predicted_word_tags(logits, encoded, examples, task.labels)
    assert [row["entities"] for row in rows] == [utils.entities_from_tags(e.words, t) for e, t in zip(examples, tags)]


def test_raw_question_answering_matches_the_dynamic_model(qa_run, runs):
    context, question = "百度在北京发布了文心大模型，它是一个知识增强的大语言模型。", "谁发布了文心大模型？"
    report = infer.main(
        ["--task_name", "cmrc2018", "--model_path", runs["cmrc2018"], "--question", question, "--text", context]
    )
    example = utils.QAExample("0", question, context, [], None, None, "")
    features = utils.prepare_qa_features([example], model_io.load_tokenizer(qa_run), 128, None, 64, with_labels=False)
    start, end = dynamic_outputs(
        AutoModelForQuestionAnswering.from_pretrained(qa_run), padded_batch(list(features.dataset))
    )
    answers, nbest = utils.postprocess_qa_predictions([example], features, start, end, 20, 50)
    assert report["predictions"][0]["answer"] == answers["0"]
    assert report["predictions"][0]["answer"] in context
    assert report["predictions"][0]["probability"] == pytest.approx(nbest["0"][0]["probability"], abs=1e-5)


def test_tensorrt_shape_ranges_are_set_on_the_models_inputs():
    options = predictors.PredictorOptions(batch_size=4, max_seq_length=64)
    minimum, maximum, optimum = predictors.tensorrt_input_shapes(options)
    for name in ("input_ids", "token_type_ids"):
        assert (minimum[name], optimum[name], maximum[name]) == ([1, 1], [4, 16], [4, 64])
    assert set(minimum) == set(maximum) == set(optimum) == {"input_ids", "token_type_ids"}


def bad_infer_cases(tmp_path, runs):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    (tmp_path / "gbk.txt").write_bytes("体育新闻".encode("gbk"))
    (tmp_path / "taken.json").write_text("{}", encoding="utf-8")
    model = runs["tnews"]
    return {
        "missing model files": (["--model_path", str(not_a_model)], r"holds no task\.json"),
        "no such directory": (["--model_path", str(tmp_path / "nowhere")], r"holds no task\.json"),
        "model of another task": (
            ["--task_name", "ocnli", "--model_path", model],
            r"exported for task 'tnews', not 'ocnli'",
        ),
        "tensorrt on a cpu build": (
            ["--model_path", model, "--device", "gpu", "--use_trt"],
            r"--device gpu needs paddlepaddle-gpu",
        ),
        "tensorrt without gpu": (
            ["--model_path", model, "--use_trt"],
            r"--use_trt runs TensorRT through Paddle Inference",
        ),
        "fp16 on cpu": (
            ["--model_path", model, "--precision", "fp16"],
            r"--precision fp16 runs on GPUs \(mixed precision, or TensorRT with --use_trt\)",
        ),
        "int8 of a float model on paddle": (
            ["--model_path", model, "--precision", "int8"],
            r"is a float model: int8 on the Paddle backend",
        ),
        "bf16 on onnxruntime": (
            ["--model_path", model, "--backend", "onnxruntime", "--precision", "bf16"],
            r"--precision bf16 runs oneDNN's bfloat16 kernels: it needs --backend paddle",
        ),
        "empty input file": (["--model_path", model, "--input_file", str(tmp_path / "empty.txt")], r"holds no input"),
        "non utf-8 input file": (
            ["--model_path", model, "--input_file", str(tmp_path / "gbk.txt")],
            r"gbk\.txt: not UTF-8 text",
        ),
        "empty text": (["--model_path", model, "--text", " "], r"--text: an input is empty"),
        "pair on a single-text task": (
            ["--model_path", model, "--text", "a", "--text_pair", "b"],
            r"task tnews takes single texts: --text_pair is not used",
        ),
        "existing output file": (
            ["--model_path", model, "--text", "体育", "--output_file", str(tmp_path / "taken.json")],
            r"--output_file .*taken\.json already exists",
        ),
        "unknown task": (["--task_name", "tnewz", "--model_path", model], r"unknown --task_name 'tnewz'"),
        "batch size zero": (["--model_path", model, "--batch_size", "0"], r"--batch_size must be at least 1, not 0"),
        "negative length bucket": (
            ["--model_path", model, "--length_bucket", "-3"],
            r"--length_bucket must be at least 1, not -3",
        ),
        "stream window zero": (
            ["--model_path", model, "--input_file", clue_file("tnews", "dev"), "--stream_window", "0"],
            r"--stream_window must be at least 1, not 0",
        ),
        "onnxruntime spinning on paddle": (
            ["--model_path", model, "--onnxruntime_spinning", "false"],
            r"--onnxruntime_spinning is ONNX Runtime's: it does nothing with --backend paddle",
        ),
        "onednn off on onnxruntime": (
            ["--model_path", model, "--backend", "onnxruntime", "--enable_onednn", "false"],
            r"--enable_onednn is the paddle backend's: it does nothing with --backend onnxruntime",
        ),
        "length bucket on onnxruntime": (
            ["--model_path", model, "--backend", "onnxruntime", "--length_bucket", "16"],
            r"--length_bucket pads batches for oneDNN \(--backend paddle on the CPU\) and OpenVINO",
        ),
        "length bucket without onednn": (
            ["--model_path", model, "--enable_onednn", "false", "--length_bucket", "16"],
            r"--length_bucket pads batches for oneDNN",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing model files",
        "no such directory",
        "model of another task",
        "tensorrt on a cpu build",
        "tensorrt without gpu",
        "fp16 on cpu",
        "int8 of a float model on paddle",
        "bf16 on onnxruntime",
        "empty input file",
        "non utf-8 input file",
        "empty text",
        "existing output file",
        "unknown task",
        "batch size zero",
        "negative length bucket",
        "stream window zero",
        "onnxruntime spinning on paddle",
        "onednn off on onnxruntime",
        "length bucket on onnxruntime",
        "length bucket without onednn",
        "pair on a single-text task",
    ],
)
def test_bad_input_gets_one_clear_error_line(case, runs, tmp_path, capsys):
    extra, message = bad_infer_cases(tmp_path, runs)[case]
    argv = ["--task_name", "tnews", "--dev_file", clue_file("tnews", "dev")] + extra
    status, stderr = run_cli(infer.main, argv, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "Traceback" not in stderr
    assert re.search(message, error_lines(stderr)[0]), error_lines(stderr)[0]


def test_bf16_without_native_support_is_refused_not_emulated(runs, monkeypatch, capsys):
    monkeypatch.setattr(predictors, "native_bfloat16", lambda: False)
    argv = [
        "--task_name",
        "tnews",
        "--dev_file",
        clue_file("tnews", "dev"),
        "--model_path",
        runs["tnews"],
        "--precision",
        "bf16",
    ]
    status, stderr = run_cli(infer.main, argv, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "needs a CPU with native bfloat16" in error_lines(stderr)[0]


@pytest.mark.skipif(not predictors.native_bfloat16(), reason="this CPU has no native bfloat16 (avx512_bf16 or AMX)")
def test_bf16_runs_in_bfloat16_close_to_fp32(runs):
    batch = padded_batch(
        list(
            utils.encode_text_examples(
                utils.load_examples(utils.SEQ_CLS_TASKS["tnews"], "dev", clue_file("tnews", "dev"))[:16],
                model_io.load_tokenizer(runs["tnews"]),
                utils.SEQ_CLS_TASKS["tnews"],
                128,
            ).dataset
        )
    )
    fp32, bf16 = (
        predictors.create_predictor(runs["tnews"], predictors.PredictorOptions(precision=precision)).run(batch)[0]
        for precision in ("fp32", "bf16")
    )
    difference = np.abs(bf16 - fp32).max()
    assert 0 < difference < 0.05 * np.abs(fp32).max()  # rounded to bfloat16 (8 bits of mantissa), not left in fp32


def test_openvino_forces_fp32_honours_threads_and_caches_the_compiled_model(runs):
    model_dir = runs["tnews"]
    options = predictors.PredictorOptions(backend="openvino", num_threads=1, batch_size=8)
    predictor = predictors.create_predictor(model_dir, options)
    assert "float32" in str(predictor.compiled.get_property("INFERENCE_PRECISION_HINT"))  # never bf16 behind our back
    assert int(predictor.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert predictor.model_files == [os.path.join(model_dir, "model.onnx")]  # the conversion ONNX Runtime reads too
    cache = os.path.join(model_dir, ".ov_cache", "fp32")
    cached = sorted(os.listdir(cache))
    assert cached
    predictors.create_predictor(model_dir, options)
    assert sorted(os.listdir(cache)) == cached  # the second start loads the compiled model


def test_openvino_caches_each_precision_apart(runs, tmp_path):
    """OpenVINO 2026.4 names a compiled model by the same key whatever its precision hint: fp32 and bf16 sharing a
    cache folder read each other's compiled model (bf16 after fp32 aborted with "double free or corruption"). Each
    precision has a folder of its own under .ov_cache; each start is a process of its own, as a user's are."""
    model_dir = str(tmp_path / "model")
    shutil.copytree(runs["tnews"], model_dir, ignore=shutil.ignore_patterns(".ov_cache"))
    precisions = ["fp32", "bf16", "fp32"] if predictors.native_bfloat16() else ["fp32", "fp32"]
    for precision in precisions:
        code = (
            f"import predictors; p = predictors.create_predictor({model_dir!r}, predictors.PredictorOptions("
            f"backend='openvino', precision={precision!r}, num_threads=1)); "
            "print(p.compiled.get_property('INFERENCE_PRECISION_HINT'))"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert {"fp32": "float32", "bf16": "bfloat16"}[precision] in done.stdout
    assert sorted(os.listdir(os.path.join(model_dir, ".ov_cache"))) == sorted(set(precisions))


def test_openvino_pads_batches_to_length_buckets(runs):
    """OpenVINO compiles and keeps kernels for every new shape: batches are padded to multiples of 8 tokens (or of
    --length_bucket), and the outputs are the unpadded ones."""
    features = [{"input_ids": [1] + [5] * n + [2], "token_type_ids": [0] * (n + 2)} for n in (3, 9, 12)]
    seen = {}
    for bucket in (None, 1, 5):
        options = predictors.PredictorOptions(backend="openvino", num_threads=1, batch_size=8, length_bucket=bucket)
        predictor = predictors.create_predictor(runs["tnews"], options)
        run, shapes = predictor.run, []
        predictor.run = lambda batch, run=run, shapes=shapes: shapes.append(batch["input_ids"].shape) or run(batch)
        result = predictors.run_predictor(predictor, features, 2, per_token=False)
        seen[bucket] = (shapes, np.array(result.outputs[0]))
    assert seen[None][0] == [(2, 16), (1, 16)]  # lengths 5 and 11 together, then 14
    assert seen[1][0] == [(2, 11), (1, 14)]
    assert seen[5][0] == [(2, 15), (1, 15)]
    np.testing.assert_allclose(seen[None][1], seen[1][1], rtol=1e-4, atol=1e-5)  # padding is masked
    options = predictors.PredictorOptions(backend="openvino", num_threads=1, batch_size=8)
    tagger = predictors.create_predictor(runs["msra_ner"], options)
    tags = predictors.run_predictor(tagger, features, 2, per_token=True).outputs[0]
    assert [len(row) for row in tags] == [5, 11, 14]  # per-token outputs cut back to each sentence's own tokens
    exact = predictors.create_predictor(runs["msra_ner"], dataclasses.replace(options, length_bucket=1))
    alone = [predictors.run_predictor(exact, [feature], 1, per_token=True).outputs[0][0] for feature in features]
    for padded, unpadded in zip(tags, alone):
        np.testing.assert_allclose(padded, unpadded, rtol=1e-4, atol=1e-5)


def test_openvino_refusals(runs, monkeypatch, capsys, tmp_path):
    status, stderr = run_cli(
        infer.main,
        [
            "--model_path",
            runs["tnews"],
            "--backend",
            "openvino",
            "--precision",
            "int8",
            "--dev_file",
            clue_file("tnews", "dev"),
        ],
        capsys,
    )
    assert status == 2
    assert "holds no OpenVINO int8 model (model.ov_int8.xml): make one with compress_*.py" in error_lines(stderr)[0]
    monkeypatch.setattr(predictors, "native_bfloat16", lambda: False)
    status, stderr = run_cli(
        infer.main,
        [
            "--model_path",
            runs["tnews"],
            "--backend",
            "openvino",
            "--precision",
            "bf16",
            "--dev_file",
            clue_file("tnews", "dev"),
        ],
        capsys,
    )
    assert status == 2
    assert "--precision bf16 needs a CPU with native bfloat16" in error_lines(stderr)[0]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--perf", "--enable_onednn", "false", "--text", "a", "--text", "b", "c", "--max_seq_length", "64"],
        [
            "--no_enable_onednn",
            "--perf",
            "no",
            "--truncate_long_texts",
            "0",
            "--doc_stride",
            "32",
            "--backend",
            "openvino",
        ],
        ["--resume", "yes", "--precision", "int8", "--question", "q1", "q2", "--n_best_size", "5"],
    ],
)
def test_the_command_line_reads_as_with_pdargumentparser(argv):
    """infer.py and serve.py parse with arguments.DataclassParser (no paddlenlp import); it must read every
    form of option the training scripts' PdArgumentParser reads, to the same values."""
    from paddlenlp.trainer import PdArgumentParser

    import arguments

    types = (deployment.DeployArguments, infer.InferArguments, arguments.QAWindowArguments)
    expected = PdArgumentParser(types).parse_args_into_dataclasses(args=list(argv))
    assert arguments.parse_plain_arguments(types, "", argv) == expected


def test_an_abbreviated_or_unknown_option_is_one_error():
    import arguments

    types = (deployment.DeployArguments, infer.InferArguments)
    with pytest.raises(
        runtime.UserError, match=r"unrecognized arguments: \['--max_seq', '64'\] \(options are spelt out in full"
    ):
        arguments.parse_plain_arguments(types, "", ["--max_seq", "64"])
