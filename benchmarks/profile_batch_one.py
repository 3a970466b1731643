"""Where batch-1 time goes: per-operator time of Paddle Inference (oneDNN) and ONNX Runtime for one sentence.

    python -m benchmarks.profile_batch_one                          # nano, 26 tokens, 2 threads
    python -m benchmarks.profile_batch_one --model medium --threads 1

At batch 1 a sentence of L tokens makes every matrix multiply L rows tall, so the model's FLOPs / matmul peak
is a bound that only a backend with small per-operator overhead and efficient small GEMMs approaches. This
script measures, for one length: the unprofiled p50 latency of each backend, the bound, the time to read the
encoder's fp32 weights once at the measured memory read rate (what a forward pass would cost if they came
from memory rather than cache), and each backend's own profile summed by operator type, split into GEMM
operators and the rest. Writes
benchmarks/results/profile_batch_one_<model>_<threads>thr.json.
"""

import argparse
import collections
import contextlib
import gc
import json
import os
import re
import tempfile

import numpy as np
import paddle

import model_folder
import predictors
import runtime
from benchmarks.bench_infer import (
    ERNIE_CONFIGS,
    ROOT,
    build_model,
    encoder_weight_bytes,
    export,
    matmul_peak_gflops,
    median_latency,
    model_flops,
    read_bandwidth_gbs,
)

GEMM_OPERATORS = {
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "FusedGemm",
    "Attention",
    "MatMulInteger",
    "onednn_op.fc",
    "onednn_op.fused_matmul",
    "onednn_op.matmul",
    "pd_op.matmul",
    "pd_op.fc",
}
PADDLE_EVENT_ROW = re.compile(r"^(\S+)\s+(\d+)\s+([\d.]+)\s")  # name, calls, total ms (sub-events are indented)


def sentence_batch(length: int) -> dict:
    ids = np.random.default_rng(length).integers(5, 39000, size=(1, length)).astype("int64")
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids)}


def predictor_options(backend: str, threads: int) -> predictors.PredictorOptions:
    return predictors.PredictorOptions(backend=backend, num_threads=threads, batch_size=1)


def onnxruntime_profile(export_dir: str, threads: int, batch: dict, runs: int) -> dict:
    """Kernel time per operator type from ONNX Runtime's own profiler, in ms per run."""
    import onnxruntime

    options = predictors.OnnxRuntimePredictor.session_options(predictor_options("onnxruntime", threads))
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(export_dir, "ort-profile")
    onnx_file = predictors.onnx_conversion(model_folder.read_model_files(export_dir))
    session = onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    feed = {node.name: batch[node.name] for node in session.get_inputs()}
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling(), encoding="utf-8") as handle:
        events = json.load(handle)
    per_operator = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_operator[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(per_operator)


@contextlib.contextmanager
def captured_stdout(path: str):
    """Paddle's C++ profiler prints its report on the process's stdout, and writes a profile.log into the working
    directory: send that file descriptor to a file, and work in the file's directory meanwhile."""
    import sys

    sys.stdout.flush()
    saved, working_dir = os.dup(1), os.getcwd()
    with open(path, "w", encoding="utf-8") as target:
        os.dup2(target.fileno(), 1)
        os.chdir(os.path.dirname(os.path.abspath(path)))
        try:
            yield
        finally:
            os.chdir(working_dir)
            os.dup2(saved, 1)
            os.close(saved)


def paddle_profile(export_dir: str, threads: int, batch: dict, runs: int) -> dict:
    """Time per operator from Paddle Inference's profiler (config.enable_profile), in ms per run."""
    report = os.path.join(export_dir, "paddle-profile.txt")
    with captured_stdout(report):
        files = model_folder.read_model_files(export_dir)
        config = predictors.PaddlePredictor(files, predictor_options("paddle", threads)).config()  # infer.py's config
        config.enable_profile()
        predictor = paddle.inference.create_predictor(config)
        handles = {name: predictor.get_input_handle(name) for name in predictor.get_input_names()}
        for _ in range(runs):
            for name, handle in handles.items():
                handle.copy_from_cpu(batch[name])
            predictor.run()
        del predictor, handles
        gc.collect()
    with open(report, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not any("Event Summary" in line for line in lines):
        raise runtime.UserError(f"Paddle's profiler printed no report (see {report})")
    start = next(i for i, line in enumerate(lines) if "Event Summary" in line)
    per_operator = {}
    for line in lines[start + 2 :]:
        if "Profiling Report" in line:
            break
        match = PADDLE_EVENT_ROW.match(line)
        if match:  # totals over all runs, the first (oneDNN primitive creation) included
            per_operator[match.group(1)] = float(match.group(3)) / runs
    return per_operator


def summary(per_operator: dict, latency: float, bound: float) -> dict:
    gemm = sum(ms for op, ms in per_operator.items() if op in GEMM_OPERATORS)
    profiled = sum(per_operator.values())
    return {
        "latency_ms_p50": 1000 * latency,
        "latency_over_bound": latency / bound,
        "profiled_ms": profiled,
        "gemm_ms": gemm,
        "other_ms": profiled - gemm,
        "operators_ms": dict(sorted(per_operator.items(), key=lambda item: -item[1])),
    }


def print_summary(backend: str, row: dict, top: int) -> None:
    print(
        f"\n{backend}: p50 {row['latency_ms_p50']:.2f} ms ({row['latency_over_bound']:.2f}x the bound); profiled "
        f"{row['profiled_ms']:.2f} ms = GEMM {row['gemm_ms']:.2f} + other {row['other_ms']:.2f}"
    )
    for op, ms in list(row["operators_ms"].items())[:top]:
        print(f"    {op:<32} {ms:7.3f} ms  {100 * ms / row['profiled_ms']:5.1f}%")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nano", choices=list(ERNIE_CONFIGS))
    parser.add_argument("--length", type=int, default=26, help="tokens in the sentence (TNEWS dev: about 26 at p50)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(args.threads)
    model = build_model(args.model)
    batch = sentence_batch(args.length)
    peak = matmul_peak_gflops(args.threads)["peak"]
    bound = model_flops(model, args.length) / (peak * 1e9)
    bandwidth, weight_bytes = read_bandwidth_gbs(args.threads), encoder_weight_bytes(model)
    weight_read_ms = weight_bytes / bandwidth / 1e6
    print(
        f"{args.model}, {args.length} tokens, {args.threads} threads: {model_flops(model, args.length) / 1e6:.0f} "
        f"MFLOP, "
        f"peak {peak:.0f} GFLOP/s, bound {1000 * bound:.2f} ms; fp32 encoder weights {weight_bytes / 1e6:.0f} MB at "
        f"{bandwidth:.1f} GB/s read: {weight_read_ms:.2f} ms if they came from memory"
    )
    results = {
        "machine": runtime.machine_details(),
        "model": args.model,
        "length": args.length,
        "threads": args.threads,
        "matmul_peak_gflops": peak,
        "bound_ms": 1000 * bound,
        "read_bandwidth_gbs": bandwidth,
        "encoder_weight_mbytes": weight_bytes / 1e6,
        "weight_read_ms": weight_read_ms,
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        export_dir = export(model, os.path.join(workdir, "export"))
        for backend, profile in (("paddle", paddle_profile), ("onnxruntime", onnxruntime_profile)):
            predictor = predictors.create_predictor(export_dir, predictor_options(backend, args.threads))
            latency = median_latency(predictor, batch, args.runs)
            del predictor
            row = summary(profile(export_dir, args.threads, batch, args.runs), latency, bound)
            results["backends"][backend] = row
            print_summary(backend, row, top=10)
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", f"profile_batch_one_{args.model}_{args.threads}thr.json"
    )
    runtime.write_json_atomic(output, results)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    runtime.run_cli(main)
