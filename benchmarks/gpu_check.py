"""The GPU matrix, for a machine with paddlepaddle-gpu (never run where this suite is developed: no GPU there).

    bash benchmarks/gpu_check.sh                    # builds, fine-tunes and compresses a tiny model, then the matrix
    bash benchmarks/gpu_check.sh output/tnews       # your own fine-tuned, exported and compressed TNEWS folder

For the float export, the pruned model and the int8 candidate TensorRT serves (tensorrt_int8): fp32 and fp16 without
TensorRT (GPU mixed precision), and fp32/fp16 (float models) or int8 (int8 models) with TensorRT (PIR-TRT for PIR
programs, the legacy TensorRT subgraph with the model's own scales for int8 programs). Each row: the dev metric against
the same model on the CPU, the engine that ran, latency and throughput, and a second start (the cached engine).
Results go to benchmarks/results/gpu_check.json; the exit status is 1 if any metric differs from the CPU's by more
than its allowance (fp32: 0 examples; fp16 and int8: 2% of the dev examples).
"""

import argparse
import os
import sys
import tempfile
import time

import compress_seq_cls
import infer
import model_folder
import run_seq_cls
import runtime
from benchmarks.bench_infer import ROOT

TESTS = os.path.join(ROOT, "tests")
DEV = os.path.join(TESTS, "data", "clue", "tnews", "dev.json")
TRAIN = os.path.join(TESTS, "data", "clue", "tnews", "train.json")


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


def measure(path: str, dev_file: str, device: str, precision: str, use_trt: bool) -> dict:
    argv = [
        "--model_path",
        path,
        "--dev_file",
        dev_file,
        "--device",
        device,
        "--precision",
        precision,
        "--perf",
        "--batch_size",
        "32",
    ] + (["--use_trt"] if use_trt else [])
    started = time.perf_counter()
    report = infer.main(argv)
    return {**report, "start_and_run_seconds": time.perf_counter() - started}


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
    args = parser.parse_args(argv)
    runtime.setup_logging()
    rows, failures = [], 0
    with tempfile.TemporaryDirectory() as workdir:
        folder = args.folder or tiny_tnews(workdir)
        for label, path, precision, use_trt in matrix(folder):
            cpu = measure(path, args.dev_file, "cpu", "int8" if precision == "int8" else "fp32", False)
            first = measure(path, args.dev_file, "gpu", precision, use_trt)
            again = measure(path, args.dev_file, "gpu", precision, use_trt)  # the cached engine or converted program
            examples = cpu["metrics"]["eval_samples"]
            allowed = 0 if precision == "fp32" else 0.02 * examples
            differing = abs(first["metrics"]["accuracy"] - cpu["metrics"]["accuracy"]) * examples
            ok = differing <= allowed + 1e-9
            failures += not ok
            rows.append(
                {
                    "model": label,
                    "path": path,
                    "precision": precision,
                    "use_trt": use_trt,
                    "engine": first["engine"],
                    "cpu_accuracy": cpu["metrics"]["accuracy"],
                    "gpu_accuracy": first["metrics"]["accuracy"],
                    "ok": ok,
                    "perf": first["perf"],
                    "first_start_seconds": first["start_and_run_seconds"],
                    "second_start_seconds": again["start_and_run_seconds"],
                }
            )
            print(
                f"{label:10} {precision} trt={use_trt}: {first['engine']}; accuracy gpu "
                f"{first['metrics']['accuracy']:.4f} "
                f"cpu {cpu['metrics']['accuracy']:.4f} {'ok' if ok else 'MISMATCH'}; "
                f"{first['perf']['sequences_per_second']:.0f} seq/s",
                flush=True,
            )
    runtime.write_json_atomic(args.output, {"machine": runtime.machine_details(), "rows": rows, "failures": failures})
    print(f"wrote {args.output}: {len(rows)} rows, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
