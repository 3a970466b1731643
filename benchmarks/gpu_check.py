"""The GPU matrix, for a machine with paddlepaddle-gpu (never run where this suite is developed: no GPU there).

    bash benchmarks/gpu_check.sh                    # builds, fine-tunes and compresses a tiny model, then the matrix
    bash benchmarks/gpu_check.sh output/tnews       # your own fine-tuned, exported and compressed TNEWS folder

First, one line naming what is missing, if anything: a CUDA GPU that paddlepaddle-gpu sees, the TensorRT library
(compile and runtime versions), the tensorrt Python package that PIR-TRT imports. Then, for the float export, the
pruned model and the int8 candidate TensorRT serves (tensorrt_int8): fp32 and fp16 without TensorRT (GPU mixed
precision), and fp32/fp16 (float models) or int8 (int8 models) with TensorRT (PIR-TRT for PIR programs, the legacy
TensorRT subgraph with the model's own scales for int8 programs).

Every start runs in a process of its own, so one failing row (an error, a crash, a timeout) is that row marked
failed with its error while the others are still measured, and the results file is rewritten after every row. A row
starts the model twice, for TensorRT once with the model's tensorrt/ cache removed (it builds) and once more in a new
process, which must build nothing, leave every cache file's time as it was, and start faster. Each start's dev
examples' predicted labels and logits are compared with the same model's on the CPU (fp32, or oneDNN int8 for the
int8 model; allowances in TOLERANCES), and the second start's with the first's. Results (and the GPU, driver, CUDA,
cuDNN, TensorRT and Paddle versions) go to benchmarks/results/gpu_check.json; the exit status is 1 if any row failed.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from typing import Callable, Dict, List, Optional

import numpy as np

import arguments
import compress_seq_cls
import deployment
import infer
import model_folder
import model_io
import predictors
import run_seq_cls
import runtime
import tensorrt_routes
import utils
from benchmarks.bench_infer import ROOT

TESTS = os.path.join(ROOT, "tests")
DEV = os.path.join(TESTS, "data", "clue", "tnews", "dev.json")
TRAIN = os.path.join(TESTS, "data", "clue", "tnews", "train.json")
BATCH_SIZE = 32
# precision: (largest |GPU - CPU| logit of 99% of the examples, share of examples whose label may differ where the
# CPU's two best logits lie further apart than twice that). Allowances chosen, never measured on a GPU: TensorRT fp32
# uses TF32 on Ampere and later; int8 kernels differ from oneDNN's.
TOLERANCES = {"fp32": (0.01, 0.0), "fp16": (0.05, 0.01), "int8": (0.25, 0.02)}


def tiny_tnews(workdir: str) -> str:
    """A tiny ERNIE fine-tuned on the test slice, exported and compressed (ptq), as run_seq_cls/compress write it."""
    sys.path.insert(0, TESTS)
    from tiny_models import build_tiny_encoder

    encoder = build_tiny_encoder("ernie", os.path.join(workdir, "encoder"))
    output = os.path.join(workdir, "tnews")
    run_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            encoder,
            "--train_file",
            TRAIN,
            "--dev_file",
            DEV,
            "--output_dir",
            output,
            "--do_train",
            "--do_eval",
            "--do_export",
            "--num_train_epochs",
            "3",
            "--device",
            "gpu",
        ]
    )
    compress_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            output,
            "--train_file",
            TRAIN,
            "--dev_file",
            DEV,
            "--max_steps",
            "10",
            "--max_metric_drop",
            "100",
            "--device",
            "gpu",
            "--backends",
            "paddle",
        ]
    )
    return output


def matrix(folder: str):
    """(label, model folder, precision, use_trt) rows: the float export, the pruned model, the report's
    tensorrt_int8."""
    report = model_folder.read_report(model_folder.report_path(os.path.join(folder, "compress")))
    pruned = next((c.path for c in report.candidates if c.kind == "pruned float"), None)
    models = [
        ("export", os.path.join(folder, "export"), False),
        ("pruned", pruned, False),
        ("tensorrt int8", report.tensorrt_int8, True),
    ]
    for label, path, quantized in models:
        if not path:
            continue
        if quantized:
            yield label, path, "int8", True
            continue
        for precision, use_trt in (("fp32", False), ("fp16", False), ("fp32", True), ("fp16", True)):
            yield label, path, precision, use_trt


# ---- the machine -----------------------------------------------------------------------------------------------------
def check_machine() -> None:
    """One line naming what this machine lacks for the matrix, before any GPU work."""
    if arguments.default_device() != "gpu":
        raise runtime.UserError(
            "gpu_check needs paddlepaddle-gpu and a visible CUDA GPU, but this paddle is CPU-only or sees no GPU "
            "(see the README's GPU section)"
        )
    tensorrt_routes.check_tensorrt(pir=True)


def driver_version() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    """The CPU and libraries (runtime.machine_details), and the GPU, its driver, CUDA, cuDNN, TensorRT and Paddle."""
    return {**runtime.machine_details(), **tensorrt_routes.gpu_environment(), "gpu_driver": driver_version()}


# ---- one start, in a process of its own ------------------------------------------------------------------------------
def infer_argv(spec: dict) -> List[str]:
    argv = ["--model_path", spec["path"], "--dev_file", spec["dev_file"], "--device", spec["device"], "--perf"]
    argv += ["--precision", spec["precision"], "--batch_size", str(spec["batch_size"])]
    return argv + (["--use_trt"] if spec["use_trt"] else [])


def measure_here(spec: dict) -> dict:
    """One start and infer.py --perf's pass over the dev set (infer.evaluate itself: the bucket warm-up, the warm-up
    batches, the metrics and timing) in this process: what ran, how long the start took, whether it built a
    TensorRT cache; then one more pass (infer.run) whose every example's logits go to spec["logits"]."""
    deploy_args, infer_args, window_args = arguments.parse_plain_arguments(
        (deployment.DeployArguments, infer.InferArguments, arguments.QAWindowArguments), infer.__doc__, infer_argv(spec)
    )
    served = deployment.resolve_deployment(deploy_args)
    args = infer.merged(infer_args, served.options, types.SimpleNamespace(model_path=served.model_path))
    started = time.perf_counter()
    predictor = predictors.create_predictor(served.files, served.options)
    start_seconds = time.perf_counter() - started
    tokenizer = model_io.load_deployed_tokenizer(served.model_path)
    evaluation = infer.evaluate(predictor, served.task, tokenizer, args, window_args)
    np.save(spec["logits"], dev_logits(predictor, served.task, tokenizer, args, window_args))
    tensorrt = getattr(predictor, "tensorrt", None)
    return {
        "engine": predictor.engine,
        "start_seconds": start_seconds,
        "metrics": evaluation["metrics"],
        "perf": evaluation["perf"],
        "tensorrt_engines": tensorrt.engines if tensorrt else None,
        "cache_dir": tensorrt.plan.cache_dir if tensorrt else None,
        "built_cache": tensorrt.built if tensorrt else None,
        "logits": spec["logits"],
    }


def dev_logits(predictor, task, tokenizer, args, window_args) -> np.ndarray:
    """Every dev example's logits, in the file's order (infer.evaluate keeps them to itself)."""
    examples = utils.load_examples(task, "dev", args.dev_file, args.max_eval_samples)
    encoded, _ = infer.encode(task, examples, tokenizer, args, window_args, with_labels=True)
    return np.stack(infer.run(predictor, task, encoded, args).outputs[0])


def child_main(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    runtime.write_json_atomic(spec["output"], measure_here(spec))


class RowFailure(Exception):
    """A start that failed in its own process: its error line."""


def measure_in_child(spec: dict, timeout_s: float) -> dict:
    """measure_here(spec) in a new Python process (its crash or hang is this start's failure alone)."""
    spec_path = spec["output"] + ".spec.json"
    runtime.write_json_atomic(spec_path, spec)
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--child", spec_path]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RowFailure(f"timed out after {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
        raise RowFailure(next((line for line in reversed(lines) if line.startswith("error:")), lines[-1]))
    with open(spec["output"], encoding="utf-8") as handle:
        return json.load(handle)


# ---- what a row checks -----------------------------------------------------------------------------------------------
def compare_outputs(cpu: np.ndarray, gpu: np.ndarray, precision: str) -> dict:
    """Each example's label and logits on the GPU against the CPU's (accuracy alone hides a broken engine behind a
    near-chance model: the same accuracy, other examples right)."""
    tolerance, share = TOLERANCES[precision]
    if cpu.shape != gpu.shape:
        return {"ok": False, "reason": f"logits of shape {list(gpu.shape)}, the CPU's {list(cpu.shape)}"}
    deviation = np.abs(cpu - gpu).reshape(len(cpu), -1).max(axis=1)
    best_two = np.sort(cpu, axis=-1)[:, -2:]
    differing = cpu.argmax(axis=-1) != gpu.argmax(axis=-1)
    clear = differing & (best_two[:, 1] - best_two[:, 0] > 2 * tolerance)  # not a near tie the tolerance may flip
    deviation_p99 = float(np.percentile(deviation, 99))
    return {
        "examples": len(cpu),
        "labels_differing": int(differing.sum()),
        "clear_disagreements": int(clear.sum()),
        "allowed_disagreements": share * len(cpu),
        "logit_deviation_p99": deviation_p99,
        "logit_deviation_max": float(deviation.max()),
        "logit_tolerance": tolerance,
        "ok": bool(clear.sum() <= share * len(cpu) and deviation_p99 <= tolerance),
    }


def cache_snapshot(cache_dir: Optional[str]) -> Dict[str, list]:
    """Every file of a TensorRT cache folder: [size, modification time in ns] by relative path."""
    if not cache_dir or not os.path.isdir(cache_dir):
        return {}
    snapshot = {}
    for folder, _, names in os.walk(cache_dir):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            snapshot[os.path.relpath(os.path.join(folder, name), cache_dir)] = [stat.st_size, stat.st_mtime_ns]
    return snapshot


def cache_reuse(first: dict, second: dict, after_first: dict, after_second: dict) -> dict:
    """Whether the second start (a new process) loaded what the first built: it built nothing, the cache's files
    are those the first left (sizes and times), and it started faster."""
    checks = {
        "first_start_built": first["built_cache"] is True,
        "second_start_built_nothing": second["built_cache"] is False,
        "cache_files_unchanged": bool(after_first) and after_first == after_second,
        "second_start_faster": second["start_seconds"] < first["start_seconds"],
    }
    return {**checks, "ok": all(checks.values())}


def measure_row(row: tuple, measure: Callable[[dict], dict], specs: Callable, references: dict) -> dict:
    """One row: the CPU reference (once per model and precision), a first GPU start (for TensorRT with the model's
    cache removed), a second start, each start's labels and logits against the CPU's and the second's against the
    first's (a cached engine that loads but computes otherwise fails its row), and, for TensorRT, the cache reuse."""
    label, path, precision, use_trt = row
    cpu_precision = "int8" if precision == "int8" else "fp32"
    if (path, cpu_precision) not in references:
        references[(path, cpu_precision)] = measure(specs("cpu", path, cpu_precision, False, "cpu"))
    cpu = references[(path, cpu_precision)]
    if use_trt:
        shutil.rmtree(os.path.join(path, "tensorrt"), ignore_errors=True)
    first = measure(specs("gpu", path, precision, use_trt, "first"))
    after_first = cache_snapshot(first["cache_dir"])
    second = measure(specs("gpu", path, precision, use_trt, "second"))
    cpu_logits, first_logits, second_logits = (np.load(start["logits"]) for start in (cpu, first, second))
    comparisons = {
        "comparison": compare_outputs(cpu_logits, first_logits, precision),
        "second_comparison": compare_outputs(cpu_logits, second_logits, precision),
        "second_against_first": compare_outputs(first_logits, second_logits, precision),
    }
    reuse = cache_reuse(first, second, after_first, cache_snapshot(second["cache_dir"])) if use_trt else None
    return {
        "engine": first["engine"],
        "tensorrt_engines": first["tensorrt_engines"],
        "cpu_metrics": cpu["metrics"],
        "gpu_metrics": first["metrics"],
        "second_gpu_metrics": second["metrics"],
        **comparisons,
        "cache_reuse": reuse,
        "perf": first["perf"],
        "first_start_seconds": first["start_seconds"],
        "second_start_seconds": second["start_seconds"],
        "ok": all(comparison["ok"] for comparison in comparisons.values()) and (reuse is None or reuse["ok"]),
    }


def run_matrix(rows: List[tuple], measure: Callable, specs: Callable, output: str, machine_info: dict) -> List[dict]:
    """Every row measured on its own (a failure is that row's "error"), the results file rewritten after each."""
    results, references = [], {}
    for row in rows:
        label, path, precision, use_trt = row
        heading = {"model": label, "path": path, "precision": precision, "use_trt": use_trt}
        try:
            results.append({**heading, **measure_row(row, measure, specs, references)})
        except Exception as error:  # whatever fails in one row is that row's failure, never the matrix's
            results.append({**heading, "ok": False, "error": runtime.first_line(error)})
        print_row(results[-1])
        failures = sum(not result["ok"] for result in results)
        runtime.write_json_atomic(output, {"machine": machine_info, "rows": results, "failures": failures})
    return results


def print_row(result: dict) -> None:
    where = f"{result['model']:13} {result['precision']} trt={result['use_trt']}"
    if "error" in result:
        print(f"{where}: FAILED: {result['error']}", flush=True)
        return
    first, second = result["comparison"], result["second_comparison"]
    print(
        f"{where}: {result['engine']}; labels differing from the CPU's {first.get('labels_differing')} then "
        f"{second.get('labels_differing')}, logits p99 {first.get('logit_deviation_p99', float('nan')):.4f} then "
        f"{second.get('logit_deviation_p99', float('nan')):.4f}; second start like the first: "
        f"{result['second_against_first']['ok']}; starts {result['first_start_seconds']:.1f} s "
        f"then {result['second_start_seconds']:.1f} s; {result['perf']['sequences_per_second']:.0f} seq/s; "
        f"{'ok' if result['ok'] else 'MISMATCH'}",
        flush=True,
    )


def spec_maker(workdir: str, dev_file: str) -> Callable:
    """specs(device, path, precision, use_trt, phase): the spec of one start, its files in workdir."""
    counter = iter(range(1_000_000))

    def specs(device: str, path: str, precision: str, use_trt: bool, phase: str) -> dict:
        stem = os.path.join(workdir, f"start-{next(counter):03d}-{phase}")
        return {
            **{"path": path, "dev_file": dev_file, "device": device, "precision": precision, "use_trt": use_trt},
            **{"batch_size": BATCH_SIZE, "output": stem + ".json", "logits": stem + ".npy"},
        }

    return specs


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "folder",
        nargs="?",
        help="a fine-tuned output/tnews folder with export/ and compress/ (default: a tiny model made here)",
    )
    parser.add_argument(
        "--dev_file", default=DEV, help="the TNEWS dev file the metrics come from (default: the test slice)"
    )
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "gpu_check.json"))
    parser.add_argument("--start_timeout_s", type=float, default=1800, help="the longest one start and pass may take")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a spec file: measure one start in this process
    args = parser.parse_args(argv)
    runtime.setup_logging()
    if args.child:
        child_main(args.child)
        return 0
    check_machine()
    with tempfile.TemporaryDirectory() as workdir:
        folder = os.path.abspath(args.folder) if args.folder else tiny_tnews(workdir)
        measure = functools.partial(measure_in_child, timeout_s=args.start_timeout_s)
        rows = list(matrix(folder))
        specs = spec_maker(workdir, os.path.abspath(args.dev_file))
        results = run_matrix(rows, measure, specs, args.output, machine())
    failures = sum(not result["ok"] for result in results)
    print(f"wrote {args.output}: {len(results)} rows, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    runtime.run_cli(lambda: sys.exit(main()))
