"""TensorRT and GPU routes, checked on a CPU-only machine: which route and arguments each model format and precision
takes (paddle.tensorrt and the GPU config faked at their boundary), the engine cache keys, and every refusal. None of
this has run on a GPU here."""

import dataclasses
import json
import os
import sys
import types

import pytest

import deployment
import infer
import model_folder
import predictors
from conftest import clue_file, error_lines, run_cli, sample_candidate, sample_report

OPTIONS = dict(backend="paddle", device="gpu", use_trt=True, batch_size=8, max_seq_length=64)


def fake_program(tmp_path, name):
    path = tmp_path / name
    path.write_text("program")
    (tmp_path / (name.rsplit(".", 1)[0] + ".pdiparams")).write_text("params")
    return str(path)


def test_each_format_takes_its_route_and_the_cache_key_names_everything_that_shapes_an_engine(tmp_path):
    options = predictors.PredictorOptions(precision="fp16", **OPTIONS)
    pir = predictors.tensorrt_plan(fake_program(tmp_path, "model.json"), options, "NVIDIA T4", "8.6.1")
    legacy = predictors.tensorrt_plan(fake_program(tmp_path, "int8.pdmodel"), options, "NVIDIA T4", "8.6.1")
    assert (pir.route, legacy.route) == ("pir-trt", "legacy")
    assert os.path.dirname(pir.cache_dir) == str(tmp_path / "tensorrt")
    assert pir.key["gpu"] == "NVIDIA T4"
    assert pir.key["tensorrt"] == "8.6.1"
    assert pir.key["precision"] == "fp16"
    assert pir.key["min"]["input_ids"] == [1, 1]
    assert pir.key["max"]["token_type_ids"] == [8, 64]
    assert pir.key["opt"]["input_ids"] == [8, 16]
    others = [
        predictors.tensorrt_plan(str(tmp_path / "model.json"), options, "NVIDIA A100", "8.6.1"),
        predictors.tensorrt_plan(str(tmp_path / "model.json"), options, "NVIDIA T4", "10.0.0"),
        predictors.tensorrt_plan(
            str(tmp_path / "model.json"), predictors.PredictorOptions(precision="fp32", **OPTIONS), "NVIDIA T4", "8.6.1"
        ),
        predictors.tensorrt_plan(
            str(tmp_path / "model.json"),
            predictors.PredictorOptions(precision="fp16", **{**OPTIONS, "batch_size": 16}),
            "NVIDIA T4",
            "8.6.1",
        ),
    ]
    assert len({plan.cache_dir for plan in others} | {pir.cache_dir}) == 5  # each difference: its own engine


class FakeTensorRt:
    """paddle.tensorrt.export as the GPU build has it, recording the calls (the CPU wheel has no paddle.tensorrt)."""

    def __init__(self):
        self.converted = []
        module = types.ModuleType("paddle.tensorrt.export")
        module.PrecisionMode = types.SimpleNamespace(FP32="FP32", FP16="FP16", INT8="INT8")
        module.Input = lambda **kwargs: kwargs
        module.TensorRTConfig = lambda **kwargs: kwargs
        module.convert = self.convert
        self.module = module

    def convert(self, model_prefix, config):
        self.converted.append((model_prefix, config))
        for suffix in (".json", ".pdiparams"):
            open(config["save_model_dir"] + suffix, "w").close()


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    fake = FakeTensorRt()
    monkeypatch.setitem(sys.modules, "paddle.tensorrt", types.ModuleType("paddle.tensorrt"))
    monkeypatch.setitem(sys.modules, "paddle.tensorrt.export", fake.module)
    return fake


def test_pir_programs_are_converted_by_pir_trt_once_per_key(tmp_path, fake_tensorrt):
    program = fake_program(tmp_path, "model.json")
    plan = predictors.tensorrt_plan(
        program, predictors.PredictorOptions(precision="fp16", **OPTIONS), "NVIDIA T4", "8.6.1"
    )
    converted = predictors.pir_trt_program(plan, program)
    assert converted == (os.path.join(plan.cache_dir, "model.json"), os.path.join(plan.cache_dir, "model.pdiparams"))
    ((prefix, config),) = fake_tensorrt.converted
    assert prefix == str(tmp_path / "model")
    assert config["precision_mode"] == "FP16"
    assert config["save_model_dir"] == os.path.join(plan.cache_dir, "model")
    inputs = {spec["name"]: spec for spec in config["inputs"]}
    assert inputs["input_ids"]["min_input_shape"] == (1, 1)
    assert inputs["input_ids"]["optim_input_shape"] == (8, 16)
    assert inputs["token_type_ids"]["max_input_shape"] == (8, 64)
    assert inputs["token_type_ids"]["input_range"] == (0, 0)
    assert all(spec["input_data_type"] == "int64" for spec in inputs.values())
    predictors.pir_trt_program(plan, program)
    assert len(fake_tensorrt.converted) == 1  # the second start reuses the converted program
    with open(os.path.join(plan.cache_dir, "key.json"), "w") as out:
        json.dump({**plan.key, "gpu": "another GPU"}, out)  # a foreign cache is rebuilt, never used
    predictors.pir_trt_program(plan, program)
    assert len(fake_tensorrt.converted) == 2


class RecordingConfig:
    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.setdefault(name, (args, kwargs))


def test_legacy_int8_programs_use_their_scales_with_static_engines_in_the_cache(tmp_path):
    program = fake_program(tmp_path, "int8.pdmodel")
    plan = predictors.tensorrt_plan(
        program, predictors.PredictorOptions(precision="int8", **OPTIONS), "NVIDIA T4", "8.6.1"
    )
    config = RecordingConfig()
    predictors.configure_legacy_tensorrt(config, plan)
    _, engine = config.calls["enable_tensorrt_engine"]
    import paddle

    assert engine["precision_mode"] == paddle.inference.PrecisionType.Int8
    assert engine["use_static"] is True
    assert engine["use_calib_mode"] is False
    assert engine["max_batch_size"] == 8
    assert config.calls["set_optim_cache_dir"][0] == (plan.cache_dir,)
    minimum, maximum, optimum = config.calls["set_trt_dynamic_shape_info"][0]
    assert maximum["input_ids"] == [8, 64]
    assert optimum["token_type_ids"] == [8, 16]
    assert json.load(open(os.path.join(plan.cache_dir, "key.json"))) == plan.key


@pytest.fixture()
def pretend_gpu_build(monkeypatch):
    import paddle

    monkeypatch.setattr(predictors, "default_device", lambda: "gpu")
    monkeypatch.setattr(paddle.inference, "get_trt_compile_version", lambda: (8, 6, 1))


def check(precision, use_trt, quantized, device="gpu"):
    options = predictors.PredictorOptions(precision=precision, **{**OPTIONS, "use_trt": use_trt, "device": device})
    predictors.PaddlePredictor.check(
        options, model_folder.ModelFiles("MODEL", "MODEL/model.json", "MODEL/p", quantized)
    )


def test_gpu_refusals_and_what_passes(pretend_gpu_build):
    check("fp16", use_trt=False, quantized=False)  # GPU mixed precision: documented, allowed
    check("fp16", use_trt=True, quantized=False)
    check("int8", use_trt=True, quantized=True)
    with pytest.raises(
        predictors.UserError, match=r"TensorRT int8 needs an int8 model with its scales; make one with compress_\*\.py"
    ):
        check("int8", use_trt=True, quantized=False)
    with pytest.raises(predictors.UserError, match=r"int8 models run on GPUs through TensorRT: add --use_trt"):
        check("int8", use_trt=False, quantized=True)
    with pytest.raises(predictors.UserError, match=r"is an int8 model: serve it with --precision int8"):
        check("fp16", use_trt=True, quantized=True)


def test_a_cpu_build_refuses_gpu_routes_in_one_line(tnews_run, capsys):
    model = os.path.join(tnews_run, "export")
    cases = {
        ("--device", "gpu", "--use_trt"): "--device gpu needs paddlepaddle-gpu and a visible GPU",
        (
            "--use_trt",
            "--precision",
            "fp16",
        ): "--use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu",
        ("--precision", "fp16"): "--precision fp16 runs on GPUs",
    }
    for extra, message in cases.items():
        status, stderr = run_cli(
            infer.main, ["--model_path", model, "--dev_file", clue_file("tnews", "dev"), *extra], capsys
        )
        assert status == 2, (extra, stderr)
        assert message in error_lines(stderr)[0], (extra, stderr)


def test_the_report_says_which_engine_ran(tnews_run):
    report = infer.main(
        [
            "--model_path",
            os.path.join(tnews_run, "export"),
            "--dev_file",
            clue_file("tnews", "dev"),
            "--num_threads",
            "1",
        ]
    )
    assert report["engine"] == "paddle-inference cpu onednn fp32"
    assert report["use_trt"] is False


def test_the_gpu_check_covers_every_model_precision_and_route(tmp_path):
    from benchmarks import gpu_check

    (tmp_path / "compress").mkdir()
    pruned = dataclasses.replace(sample_candidate("P"), kind="pruned float", path="P")
    int8 = dataclasses.replace(sample_candidate("Q", precision="int8"), path="Q")
    report = sample_report(candidates=(pruned, int8), best_int8="R", tensorrt_int8="Q")
    model_folder.write_report(str(tmp_path / "compress" / "compress_report.json"), report)
    rows = list(gpu_check.matrix(str(tmp_path)))
    export = str(tmp_path / "export")
    assert rows == [
        ("export", export, "fp32", False),
        ("export", export, "fp16", False),
        ("export", export, "fp32", True),
        ("export", export, "fp16", True),
        ("pruned", "P", "fp32", False),
        ("pruned", "P", "fp16", False),
        ("pruned", "P", "fp32", True),
        ("pruned", "P", "fp16", True),
        ("tensorrt int8", "Q", "int8", True),
    ]


def test_use_trt_int8_serves_the_reports_paddle_int8_candidate_not_the_fastest_int8(tmp_path, monkeypatch):
    """The fastest int8 candidate on a CPU may be ONNX Runtime's or NNCF's, which TensorRT cannot run: with --use_trt
    the default model is the report's tensorrt_int8 (a Paddle int8 program), and a report without one is one line."""
    monkeypatch.chdir(tmp_path)
    compress_dir = tmp_path / "output" / "tnews" / "compress"
    compress_dir.mkdir(parents=True)
    report = str(compress_dir / "compress_report.json")
    model_folder.write_report(report, sample_report(best_int8="W/onnxruntime_int8", tensorrt_int8="W/hist8_1"))
    assert deployment.default_model_path("tnews", "int8") == "W/onnxruntime_int8"
    assert deployment.default_model_path("tnews", "int8", use_trt=True) == "W/hist8_1"
    model_folder.write_report(report, sample_report(best_int8="W/onnxruntime_int8", tensorrt_int8=None))
    with pytest.raises(
        predictors.UserError,
        match=r"has no Paddle int8 candidate \(what TensorRT runs\) within its "
        r"--max_metric_drop",
    ):
        deployment.default_model_path("tnews", "int8", use_trt=True)
