"""Inference speed of the real ERNIE 3.0 shapes on every backend, against this machine's measured matmul peak.

    python -m benchmarks.bench_infer --quick          # nano and mini, 2 threads: a few minutes
    python -m benchmarks.bench_infer                  # nano, mini, medium, base; 1 and 2 threads

(run from the checkout's root, beside the scripts it measures)

Models have random weights (no checkpoint can be downloaded here) and the real configurations and vocabulary;
speed does not depend on the weights. For each model x backend x batch size (1, 32) x threads at sequence
length 128: median latency per batch, sequences per second, and the share of the fp32 matmul peak measured in
the same run (numpy, 2048x2048) that this represents, counting 2*L*(3*H*A + A*H + 2*H*I) + 4*L^2*A FLOPs per
layer (A: attention width, I: feed-forward width; 24*H^2*L + 4*L^2*H unpruned).

Real data: the TNEWS dev sentences (the full 10,000 from ../shared/data when present, else the test slice)
end to end, tokenization included, through infer.py's default path (sorted by length, padded per batch)
and with fixed 128-token padding; and batch-1 latency on real sentences (Paddle Inference, ONNX Runtime fp32 and
int8; 1 and 2 threads) against FLOPs at that length / the fp32 peak.

Writes benchmarks/results/infer[_quick].json (with machine details) and prints a table; plot_results.py draws it.
"""

import argparse
import copy
import dataclasses
import os
import tempfile
import time
from typing import Optional

import numpy as np
import paddle
from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification, ErnieTokenizer

import dynabert
import model_io
import predictors
import runtime
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_FILE = os.path.join(ROOT, "tests", "data", "ernie-3.0-vocab.txt")  # the real ERNIE 3.0 vocabulary

# The real configurations (paddlenlp ernie/configuration.py; ../shared/data/SOURCES.md).
ERNIE_CONFIGS = {
    "nano": dict(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1248),
    "mini": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "medium": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
COMMON = dict(
    vocab_size=40000,
    max_position_embeddings=2048,
    type_vocab_size=4,
    task_type_vocab_size=16,
    use_task_id=True,
    hidden_act="gelu",
)
SEQ_LEN = 128
TNEWS_FULL = os.path.join(ROOT, "..", "shared", "data", "clue", "tnews", "dev.json")
TNEWS_SLICE = os.path.join(ROOT, "tests", "data", "clue", "tnews", "dev.json")


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 7) -> dict:
    """Best fp32 GFLOP/s of a size x size matmul with this many threads: numpy (its BLAS) and Paddle (oneDNN
    or MKL). The larger is the peak the models are held against."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    with threadpool_limits(threads):
        a @ b
        numpy_best = min(timed(lambda: a @ b) for _ in range(repeats))
    paddle.base.core.set_num_threads(threads)
    pa, pb = paddle.to_tensor(a), paddle.to_tensor(b)
    paddle.matmul(pa, pb).numpy()
    paddle_best = min(timed(lambda: paddle.matmul(pa, pb).numpy()) for _ in range(repeats))
    flops = 2 * size**3
    return {
        "numpy": flops / numpy_best / 1e9,
        "paddle": flops / paddle_best / 1e9,
        "peak": max(flops / numpy_best, flops / paddle_best) / 1e9,
    }


def read_bandwidth_gbs(threads: int, megabytes: int = 256, repeats: int = 9) -> float:
    """Best memory read rate, GB/s: `threads` threads each summing its share of an array far larger than the
    L2 caches (numpy releases the GIL in the sum)."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        best = min(timed(lambda: list(pool.map(np.sum, parts))) for _ in range(repeats))
    return data.nbytes / best / 1e9


def encoder_weight_bytes(model, bytes_per_weight: int = 4) -> int:
    """Bytes of the encoder's weights, which every forward pass reads whole (embedding rows are only looked up)."""
    return bytes_per_weight * sum(dynabert.parameter_count(layer) for layer in dynabert.encoder_layers(model))


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def layer_flops(length: int, hidden: int, attention: int, intermediate: int) -> float:
    return (
        2 * length * (3 * hidden * attention + attention * hidden + 2 * hidden * intermediate)
        + 4 * length**2 * attention
    )


def model_flops(model, length: int) -> float:
    """FLOPs of one sequence of this length through the encoder (embeddings, pooler and head are negligible)."""
    total = 0.0
    for layer in dynabert.encoder_layers(model):
        attention = layer.self_attn.num_heads * layer.self_attn.head_dim
        total += layer_flops(length, layer.linear1.weight.shape[0], attention, layer.linear1.weight.shape[1])
    return total


def build_model(name: str):
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = ErnieForSequenceClassification(ErnieConfig(**ERNIE_CONFIGS[name], **COMMON, num_labels=15))
    model.eval()
    return model


def export(model, directory: str) -> str:
    tokenizer = ErnieTokenizer(vocab_file=VOCAB_FILE)
    model_io.export_static_model(
        model,
        tokenizer,
        directory,
        model_io.task_file(utils.SEQ_CLS_TASKS["tnews"], SEQ_LEN),
    )
    return directory


def measured_backends(model, pruned, workdir: str, threads: int, batch_size: int):
    """(backend name, predictor, model) for every backend measured."""
    export_dir = os.path.join(workdir, "export")
    pruned_dir = os.path.join(workdir, "pruned")
    if not os.path.isdir(export_dir):
        export(model, export_dir)
        export(pruned, pruned_dir)
    options = predictors.PredictorOptions(num_threads=threads, batch_size=batch_size, max_seq_length=SEQ_LEN)
    ort = predictors.PredictorOptions(
        backend="onnxruntime", num_threads=threads, batch_size=batch_size, max_seq_length=SEQ_LEN
    )
    ort_int8 = predictors.PredictorOptions(
        backend="onnxruntime", precision="int8", num_threads=threads, batch_size=batch_size, max_seq_length=SEQ_LEN
    )
    paddle.base.core.set_num_threads(threads)
    bf16 = (
        [
            (
                "paddle-onednn-bf16",
                predictors.create_predictor(export_dir, dataclasses.replace(options, precision="bf16")),
                model,
            )
        ]
        if predictors.native_bfloat16()
        else []
    )
    return [
        ("dygraph", predictors.DygraphPredictor(model), model),
        ("paddle-onednn", predictors.create_predictor(export_dir, options), model),
        *bf16,
        ("onnxruntime-fp32", predictors.create_predictor(export_dir, ort), model),
        ("onnxruntime-int8", predictors.create_predictor(export_dir, ort_int8), model),
        ("paddle-onednn-pruned-0.75", predictors.create_predictor(pruned_dir, options), pruned),
    ]


def random_batch(batch_size: int, length: int) -> dict:
    ids = (
        np.random.default_rng(batch_size * 1000 + length).integers(5, 39000, size=(batch_size, length)).astype("int64")
    )
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids)}


def median_latency(predictor, batch: dict, runs: int) -> float:
    predictor.run(batch)
    return float(np.median([timed(lambda: predictor.run(batch)) for _ in range(runs)]))


def fixed_shape_rows(names, thread_counts, runs, peaks) -> list:
    rows = []
    for name in names:
        model = build_model(name)
        pruned = dynabert.slice_to_width(copy.deepcopy(model), 0.75)
        with tempfile.TemporaryDirectory() as workdir:
            for threads in thread_counts:
                for batch_size in (1, 32):
                    batch = random_batch(batch_size, SEQ_LEN)
                    for backend, predictor, measured_model in measured_backends(
                        model, pruned, workdir, threads, batch_size
                    ):
                        seconds = median_latency(predictor, batch, runs if batch_size == 1 else max(2, runs // 2))
                        gflops = batch_size * model_flops(measured_model, SEQ_LEN) / seconds / 1e9
                        row = {
                            "model": name,
                            "backend": backend,
                            "threads": threads,
                            "batch_size": batch_size,
                            "seq_len": SEQ_LEN,
                            "latency_ms": seconds * 1000,
                            "sequences_per_second": batch_size / seconds,
                            "gflops": gflops,
                            "peak_fraction": gflops / peaks[threads],
                            "gflop_per_sequence": model_flops(measured_model, SEQ_LEN) / 1e9,
                        }
                        rows.append(row)
                        print_row(row)
    return rows


def print_row(row: dict) -> None:
    print(
        f"{row['model']:>7} {row['backend']:<26} thr={row['threads']} bs={row['batch_size']:<3} "
        f"{row['latency_ms']:9.1f} ms  {row['sequences_per_second']:8.1f} seq/s  {100 * row['peak_fraction']:5.1f}% "
        f"of peak",
        flush=True,
    )


def tnews_sentences(limit) -> list:
    path = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    examples = utils.load_examples(utils.SEQ_CLS_TASKS["tnews"], "dev", path)
    return examples[:limit] if limit else examples


def end_to_end_rows(names, sentence_limit, threads) -> list:
    """End to end on real TNEWS sentences, tokenization included: sorted + per-batch padding (infer.py's
    default path) against fixed 128-token padding, Paddle Inference, batch 32."""
    rows = []
    task = utils.SEQ_CLS_TASKS["tnews"]
    tokenizer = ErnieTokenizer(vocab_file=VOCAB_FILE)
    examples = tnews_sentences(sentence_limit)
    for name in names:
        with tempfile.TemporaryDirectory() as workdir:
            export_dir = export(build_model(name), os.path.join(workdir, "export"))
            options = predictors.PredictorOptions(num_threads=threads, batch_size=32, max_seq_length=SEQ_LEN)
            predictor = predictors.create_predictor(export_dir, options)
            results = {}
            for mode, sort, pad_to in (("sorted, padded per batch", True, None), ("fixed 128 padding", False, SEQ_LEN)):
                started = time.perf_counter()
                encoded = utils.encode_text_examples(examples, tokenizer, task, SEQ_LEN)
                predictors.run_predictor(
                    predictor, list(encoded.dataset), 32, per_token=False, sort_by_length=sort, pad_to=pad_to
                )
                results[mode] = len(examples) / (time.perf_counter() - started)
            rows.append(
                {
                    "model": name,
                    "kind": "real TNEWS, end to end",
                    "sentences": len(examples),
                    "threads": threads,
                    "sorted_sequences_per_second": results["sorted, padded per batch"],
                    "fixed_sequences_per_second": results["fixed 128 padding"],
                    "speedup": results["sorted, padded per batch"] / results["fixed 128 padding"],
                }
            )
            print(
                f"{name:>7} real TNEWS x{len(examples)}: sorted {rows[-1]['sorted_sequences_per_second']:.1f} seq/s, "
                f"fixed-128 {rows[-1]['fixed_sequences_per_second']:.1f} seq/s, speedup {rows[-1]['speedup']:.2f}x",
                flush=True,
            )
    return rows


BATCH_ONE_BACKENDS = {
    "paddle": dict(backend="paddle"),
    "paddle-bf16": dict(backend="paddle", precision="bf16"),
    "onnxruntime": dict(backend="onnxruntime"),
    "onnxruntime-int8": dict(backend="onnxruntime", precision="int8"),
}


def batch_one_rows(names, sentence_count, thread_counts) -> list:
    """Batch-1 latency on real TNEWS sentences, each against its own FLOPs / peak bound. This shared machine's
    speed drifts by tens of percent over minutes, so the peak is measured just before each block and the
    backends take turns on every sentence (the drift hits them alike)."""
    rows = []
    task = utils.SEQ_CLS_TASKS["tnews"]
    features = list(
        utils.encode_text_examples(
            tnews_sentences(sentence_count), ErnieTokenizer(vocab_file=VOCAB_FILE), task, SEQ_LEN
        ).dataset
    )
    for name in names:
        model = build_model(name)
        with tempfile.TemporaryDirectory() as workdir:
            export_dir = export(model, os.path.join(workdir, "export"))
            for threads in thread_counts:
                peak = matmul_peak_gflops(threads)["peak"]
                by_backend = {
                    backend: predictors.create_predictor(
                        export_dir,
                        predictors.PredictorOptions(
                            num_threads=threads, batch_size=1, max_seq_length=SEQ_LEN, **settings
                        ),
                    )
                    for backend, settings in BATCH_ONE_BACKENDS.items()
                    if settings.get("precision") != "bf16" or predictors.native_bfloat16()
                }
                latencies = {backend: [] for backend in by_backend}
                for feature in features:
                    batch = predictors.pad_features([feature])
                    for backend, predictor in by_backend.items():
                        latencies[backend].append(median_latency(predictor, batch, 5))
                bounds = [model_flops(model, len(f["input_ids"])) / (peak * 1e9) for f in features]
                for backend, seconds in latencies.items():
                    rows.append(batch_one_row(name, backend, threads, peak, seconds, bounds))
    return rows


def batch_one_row(name, backend, threads, peak, seconds, bounds) -> dict:
    ratios = np.array(seconds) / np.array(bounds)
    row = {
        "model": name,
        "kind": "real TNEWS, batch 1",
        "backend": backend,
        "sentences": len(seconds),
        "threads": threads,
        "matmul_peak_gflops": peak,
        "latency_ms_p50": 1000 * float(np.median(seconds)),
        "flops_bound_ms_p50": 1000 * float(np.median(bounds)),
        "latency_over_flops_bound_p50": float(np.median(ratios)),
    }
    print(
        f"{name:>7} real TNEWS batch 1, {threads} thr, {backend:<16}: p50 {row['latency_ms_p50']:.2f} ms, "
        f"{row['latency_over_flops_bound_p50']:.2f}x the FLOPs/peak bound (peak {peak:.0f} GFLOP/s)",
        flush=True,
    )
    return row


PARTS = ("fixed_shape", "end_to_end", "batch_one")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="nano and mini, 2 threads, fewer runs and sentences")
    parser.add_argument(
        "--output", default=None, help="JSON results file (default benchmarks/results/infer[_quick].json)"
    )
    parser.add_argument("--models", nargs="+", choices=list(ERNIE_CONFIGS), help="fixed-shape models (default by mode)")
    parser.add_argument(
        "--real_models", nargs="+", choices=list(ERNIE_CONFIGS), help="real-data models (default by mode)"
    )
    parser.add_argument(
        "--sentences", type=int, default=None, help="real TNEWS sentences (default: 512 quick, all otherwise)"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="thread counts (default: 2 quick, 1 2 otherwise)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which measurements to run (default all; a partial run writes infer_<parts>.json)",
    )
    args = parser.parse_args(argv)
    names = args.models or (["nano", "mini"] if args.quick else list(ERNIE_CONFIGS))
    real_names = args.real_models or (["nano"] if args.quick else ["nano", "medium"])
    thread_counts = args.threads or ([2] if args.quick else [1, 2])
    runs = 4 if args.quick else 8
    machine = runtime.machine_details()
    measured_peaks = {threads: matmul_peak_gflops(threads) for threads in sorted(set(thread_counts) | {2})}
    peaks = {threads: measured["peak"] for threads, measured in measured_peaks.items()}
    print(
        f"machine: {machine}\nfp32 matmul 2048^3, GFLOP/s: "
        + ", ".join(f"{t} thr numpy {m['numpy']:.1f} paddle {m['paddle']:.1f}" for t, m in measured_peaks.items())
    )
    started = time.perf_counter()
    rows = fixed_shape_rows(names, thread_counts, runs, peaks) if "fixed_shape" in args.parts else []
    real = (
        end_to_end_rows(real_names, args.sentences or (512 if args.quick else None), max(thread_counts))
        if "end_to_end" in args.parts
        else []
    )
    if "batch_one" in args.parts:
        real += batch_one_rows(real_names, 50 if args.quick else 200, thread_counts)
    results = {
        "machine": machine,
        "matmul_peak_gflops": {str(k): v for k, v in peaks.items()},
        "matmul_gflops": {str(k): v for k, v in measured_peaks.items()},
        "quick": args.quick,
        "parts": args.parts,
        "fixed_shape": rows,
        "real_data": real,
        "seconds": time.perf_counter() - started,
    }
    runtime.write_json_atomic(args.output or default_output(args.quick, args.parts), results)
    print(f"wrote {args.output or default_output(args.quick, args.parts)} ({results['seconds']:.0f} s)")


def default_output(quick: bool, parts) -> str:
    return results_path(
        "infer" + ("_quick" if quick else "") + ("" if set(parts) == set(PARTS) else "_" + "_".join(sorted(parts)))
    )


def results_path(stem: str, quick: bool = False, output: Optional[str] = None) -> str:
    """A benchmark's results file: output, else benchmarks/results/<stem>[_quick].json."""
    return output or os.path.join(ROOT, "benchmarks", "results", stem + ("_quick" if quick else "") + ".json")


def save_results(results: dict, stem: str, quick: bool = False, output: Optional[str] = None) -> str:
    """Write a benchmark's results atomically to its results_path and say where (and the run's seconds)."""
    path = results_path(stem, quick, output)
    runtime.write_json_atomic(path, results)
    print(f"wrote {path} ({results['seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    runtime.run_cli(main)
