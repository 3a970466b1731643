"""benchmarks/gpu_check.py on a CPU-only machine: each row on its own (a failure is that row's), the results file after
every row, per-example comparisons that a near-chance model cannot pass with a broken engine, the second start's
cache reuse, the versions recorded, and one start measured for real in a child process (on the CPU)."""

import json
import os

import numpy as np
import pytest

import infer
from benchmarks import gpu_check
from conftest import clue_file, error_lines, run_cli

ROWS = [
    ("export", "/m/export", "fp32", False),
    ("export", "/m/export", "fp16", True),
    ("tensorrt int8", "/m/int8", "int8", True),
]


class FakeStarts:
    """In-process starts: each writes its logits; TensorRT ones build their cache on the first start only."""

    def __init__(self, tmp_path, output, fail=None, broken_second_start=False):
        self.tmp_path, self.output, self.fail = tmp_path, output, fail
        self.broken_second_start = broken_second_start  # the cached engine loads but computes something else
        self.seen, self.files_before_each = [], []
        self.logits = np.random.default_rng(0).normal(size=(50, 3)).astype("float32")

    def __call__(self, spec):
        self.seen.append((spec["path"], spec["device"], spec["precision"], spec["use_trt"], spec["output"]))
        self.files_before_each.append(json.load(open(self.output)) if os.path.exists(self.output) else None)
        if self.fail and self.fail(spec):
            raise gpu_check.RowFailure("error: TensorRT could not build the engines")
        logits = self.logits + (0.001 if spec["device"] == "gpu" else 0.0)
        if self.broken_second_start and spec["output"].endswith("-second.json"):
            logits = logits[np.random.default_rng(1).permutation(len(logits))]
        np.save(spec["logits"], logits)
        cache = str(self.tmp_path / "cache" / spec["precision"]) if spec["use_trt"] else None
        built = None
        if cache:
            built = not os.path.isdir(cache)
            os.makedirs(cache, exist_ok=True)
            if built:
                (self.tmp_path / "cache" / spec["precision"] / "model.json").write_text("{}")
        return {
            "engine": "fake",
            "start_seconds": 5.0 if built else 1.0,
            "metrics": {"accuracy": 0.5},
            "perf": {"sequences_per_second": 100.0},
            "tensorrt_engines": 1 if cache else None,
            "cache_dir": cache,
            "built_cache": built,
            "logits": spec["logits"],
        }


def run_fake_matrix(tmp_path, fail=None, broken_second_start=False):
    output = str(tmp_path / "gpu_check.json")
    starts = FakeStarts(tmp_path, output, fail, broken_second_start)
    results = gpu_check.run_matrix(ROWS, starts, gpu_check.spec_maker(str(tmp_path), "dev.json"), output, {"cpu": "x"})
    return results, starts, json.load(open(output))


def test_a_failing_row_is_that_rows_error_and_the_others_are_still_measured(tmp_path):
    results, _, written = run_fake_matrix(tmp_path, fail=lambda spec: spec["precision"] == "fp16")
    assert [result["ok"] for result in results] == [True, False, True]
    assert results[1]["error"] == "error: TensorRT could not build the engines"
    assert written["failures"] == 1
    assert written["rows"] == results


def test_the_results_file_is_written_after_every_row(tmp_path):
    _, starts, _ = run_fake_matrix(tmp_path)
    rows_on_disk = [len(before["rows"]) if before else 0 for before in starts.files_before_each]
    assert rows_on_disk == [0, 0, 0, 1, 1, 2, 2, 2]  # cpu+first+second, first+second (cpu reused), cpu+first+second


def test_a_tensorrt_rows_second_start_is_a_new_start_that_must_reuse_the_cache(tmp_path):
    results, starts, _ = run_fake_matrix(tmp_path)
    reuse = results[1]["cache_reuse"]
    assert reuse == {
        "first_start_built": True,
        "second_start_built_nothing": True,
        "cache_files_unchanged": True,
        "second_start_faster": True,
        "ok": True,
    }
    assert results[0]["cache_reuse"] is None  # no TensorRT, no cache
    outputs = [seen[-1] for seen in starts.seen]
    assert len(set(outputs)) == len(outputs)  # every start its own (in gpu_check: its own process)


def test_both_starts_are_compared_with_the_cpu_and_with_each_other(tmp_path):
    results, _, _ = run_fake_matrix(tmp_path)
    for result in results:
        assert result["comparison"]["ok"] and result["second_comparison"]["ok"], result["model"]
        assert result["second_against_first"]["logit_deviation_max"] == 0.0
        assert result["ok"]


def test_a_second_start_computing_otherwise_than_the_first_fails_its_row(tmp_path):
    results, _, _ = run_fake_matrix(tmp_path, broken_second_start=True)
    assert all(result["comparison"]["ok"] for result in results)  # the first starts are right
    assert not any(result["second_comparison"]["ok"] for result in results)
    assert not any(result["second_against_first"]["ok"] for result in results)
    assert not any(result["ok"] for result in results)


def test_a_second_start_that_converts_again_fails_its_row():
    first = {"built_cache": True, "start_seconds": 5.0}
    snapshot = {"model.json": [2, 1]}
    assert gpu_check.cache_reuse(first, {"built_cache": True, "start_seconds": 1.0}, snapshot, snapshot)["ok"] is False
    touched = {"model.json": [2, 2]}
    assert gpu_check.cache_reuse(first, {"built_cache": False, "start_seconds": 1.0}, snapshot, touched)["ok"] is False
    slower = {"built_cache": False, "start_seconds": 6.0}
    assert gpu_check.cache_reuse(first, slower, snapshot, snapshot)["second_start_faster"] is False


def test_a_broken_engine_behind_the_same_accuracy_is_caught_per_example():
    """A near-chance model: the GPU gets as many examples right as the CPU, but other ones."""
    rng = np.random.default_rng(1)
    cpu = rng.normal(size=(200, 3)).astype("float32")
    shuffled = cpu[rng.permutation(200)]  # same label distribution, so the same accuracy in expectation
    assert gpu_check.compare_outputs(cpu, shuffled, "fp16")["ok"] is False
    faithful = cpu + rng.uniform(-0.004, 0.004, size=cpu.shape).astype("float32")
    assert gpu_check.compare_outputs(cpu, faithful, "fp32")["ok"] is True
    assert gpu_check.compare_outputs(cpu, cpu[:, :2], "fp32")["ok"] is False


def test_a_near_tie_may_flip_within_the_tolerance_but_a_clear_label_may_not():
    cpu = np.array([[1.0, 1.004], [0.0, 3.0]], dtype="float32")
    tie_flipped = np.array([[1.004, 1.0], [0.0, 3.0]], dtype="float32")
    assert gpu_check.compare_outputs(cpu, tie_flipped, "fp32")["clear_disagreements"] == 0
    clear_flipped = np.array([[1.0, 1.004], [3.0, 0.0]], dtype="float32")
    assert gpu_check.compare_outputs(cpu, clear_flipped, "fp32")["clear_disagreements"] == 1


def test_the_machine_record_names_gpu_driver_cuda_cudnn_tensorrt_and_paddle(monkeypatch):
    monkeypatch.setattr(gpu_check, "driver_version", lambda: "550.54")
    recorded = gpu_check.machine()
    for field in ("cpu", "gpu", "gpu_driver", "cuda", "cudnn", "tensorrt_compile", "tensorrt_runtime", "paddle"):
        assert field in recorded, field
    assert recorded["paddle_commit"]


def test_a_machine_without_a_gpu_is_one_line_before_anything_runs(tmp_path, capsys):
    status, stderr = run_cli(gpu_check.main, ["--output", str(tmp_path / "out.json")], capsys)
    assert status == 2
    assert error_lines(stderr) == [
        "error: gpu_check needs paddlepaddle-gpu and a visible CUDA GPU, but this paddle is CPU-only or sees no GPU "
        "(see the README's GPU section)"
    ]
    assert not (tmp_path / "out.json").exists()


def test_one_start_measured_in_a_child_process_and_its_failure_as_one_line(tnews_run, tmp_path):
    specs = gpu_check.spec_maker(str(tmp_path), clue_file("tnews", "dev"))
    measured = gpu_check.measure_in_child(specs("cpu", os.path.join(tnews_run, "export"), "fp32", False, "cpu"), 600)
    export = os.path.join(tnews_run, "export")
    report = infer.main(["--model_path", export, "--dev_file", clue_file("tnews", "dev"), "--perf"])
    assert measured["engine"] == report["engine"]
    assert measured["metrics"]["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
    assert set(measured["perf"]) == set(report["perf"])  # infer.py --perf's own figures
    assert measured["perf"]["warmed_shapes"] == report["perf"]["warmed_shapes"] > 0  # the bucket warm-up ran
    logits = np.load(measured["logits"])
    assert logits.shape[0] == report["metrics"]["eval_samples"]
    assert measured["built_cache"] is None
    with pytest.raises(gpu_check.RowFailure, match=r"^error: .*--device gpu needs paddlepaddle-gpu"):
        gpu_check.measure_in_child(specs("gpu", os.path.join(tnews_run, "export"), "fp32", True, "first"), 600)
