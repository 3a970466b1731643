"""The compressed deployment paths against the float default, on one machine in one run.

    python -m benchmarks.bench_deploy                 # medium, 2 threads, 3,000 real TNEWS sentences (about 15 min)
    python -m benchmarks.bench_deploy --quick         # nano, 512 sentences (about 2 min)

For an ERNIE 3.0 shape (random weights: speed does not depend on them) it writes:
- fixed shape, batch 32 x 128 tokens: Paddle fp32 (oneDNN), Paddle int8 (a PTQ model on oneDNN's int8 kernels),
  the 3/4-width pruned model in fp32 and int8, bf16 where the CPU has it natively (Paddle and OpenVINO), ONNX
  Runtime fp32 and int8, OpenVINO fp32 and int8 (NNCF);
- real TNEWS sentences end to end (tokenization included, batch 32, infer.py's path: length-sorted batches padded
  to length buckets, every bucket warmed first): the same backends;
- infer.py --perf in its own process, as a user runs it, on the same sentences (throughput end to end, latency,
  peak memory): its float default (Paddle fp32), --backend onnxruntime and openvino (fp32), and the compressed
  "best" of compress_seq_cls.py (dynabert+ptq, a few distillation steps) on that model, served as measured.
Results, with the CPU and its flags, go to benchmarks/results/deploy[_quick].json; `python -m benchmarks.tables
benchmarks/results/deploy.json` prints the README's tables.

    python -m benchmarks.bench_deploy --dimensions    # compression that removes work (5-18 min on 2 cores)

measures instead the candidates that do fewer operations, each served by infer.py --perf in its own process on the
same real sentences against the float default of the Medium shape: DynaBERT width x depth (3/4 x 1, 1 x 1/2,
3/4 x 1/2, 1/2 x 1/2: also the shapes of students cut from the teacher), a Nano-shaped student (4 layers, hidden
312), and each of those with its vocabulary pruned to the tokens of 7,000 other TNEWS dev sentences (the evaluated ones
read their other tokens as [UNK]); int8 through OpenVINO (NNCF) and ONNX Runtime; end-to-end seq/s, latency, peak
memory and the files each predictor loads. Results: benchmarks/results/deploy_dimensions.json (or --output); the
tables put beside each row the drop that its width, depth and vocabulary cost the trained teacher (bench_compress).
"""

import argparse
import copy
import dataclasses
import json
import os
import tempfile
import time

import numpy as np
import paddle
from paddlenlp.transformers import ErnieTokenizer

import compress_seq_cls
import compression
import dynabert
import model_folder
import model_io
import predictors
import quantization
import runtime
import utils
import vocabulary
from benchmarks.bench_infer import (
    ROOT,
    SEQ_LEN,
    TNEWS_FULL,
    TNEWS_SLICE,
    VOCAB_FILE,
    build_model,
    export,
    random_batch,
    results_path,
    timed,
)

TNEWS = utils.SEQ_CLS_TASKS["tnews"]


def quantized_copy(model, directory: str, calibration) -> str:
    """A PTQ int8 model (hist, 4 batches of 8 real sentences) of model, servable by infer.py."""
    with tempfile.TemporaryDirectory() as legacy:
        model_io.export_legacy_static_model(model, legacy)
        quantization.quantize_post_training(legacy, directory, calibration, "hist", 8, 4)
    model_io.save_deployable(directory, ErnieTokenizer(vocab_file=VOCAB_FILE), model_io.task_file(TNEWS, SEQ_LEN))
    return directory


def deployments(workdir: str, name: str, calibration) -> dict:
    """{row name: (model folder, backend, precision)} for every deployment path measured."""
    model = build_model(name)
    pruned = dynabert.slice_to_width(copy.deepcopy(model), 0.75)
    float_dir, pruned_dir = (
        export(model, os.path.join(workdir, "float")),
        export(pruned, os.path.join(workdir, "pruned")),
    )
    int8_dir = quantized_copy(model, os.path.join(workdir, "int8"), calibration)
    pruned_int8_dir = quantized_copy(pruned, os.path.join(workdir, "pruned_int8"), calibration)
    rows = {
        "paddle fp32": (float_dir, "paddle", "fp32"),
        "paddle int8": (int8_dir, "paddle", "int8"),
        "pruned 3/4 paddle fp32": (pruned_dir, "paddle", "fp32"),
        "pruned 3/4 paddle int8": (pruned_int8_dir, "paddle", "int8"),
        "onnxruntime fp32": (float_dir, "onnxruntime", "fp32"),
        "onnxruntime int8": (float_dir, "onnxruntime", "int8"),
        "pruned 3/4 onnxruntime int8": (pruned_dir, "onnxruntime", "int8"),
    }
    openvino_int8_dir = os.path.join(workdir, "openvino_int8")
    compression.link_model_folder(float_dir, openvino_int8_dir)
    quantization.nncf_quantize(openvino_int8_dir, calibration, "hist")
    rows["openvino fp32"] = (float_dir, "openvino", "fp32")
    rows["openvino int8 (NNCF)"] = (openvino_int8_dir, "openvino", "int8")
    if predictors.native_bfloat16():
        rows["paddle bf16"] = (float_dir, "paddle", "bf16")
        rows["pruned 3/4 paddle bf16"] = (pruned_dir, "paddle", "bf16")
        rows["openvino bf16"] = (float_dir, "openvino", "bf16")
    return rows


def options(backend: str, precision: str, threads: int) -> predictors.PredictorOptions:
    return predictors.PredictorOptions(
        backend=backend, precision=precision, num_threads=threads, batch_size=32, max_seq_length=SEQ_LEN
    )


def fixed_shape_row(label: str, folder: str, backend: str, precision: str, threads: int, runs: int) -> dict:
    predictor = predictors.create_predictor(folder, options(backend, precision, threads))
    batch = random_batch(32, SEQ_LEN)
    predictor.run(batch)
    seconds = float(np.median([timed(lambda: predictor.run(batch)) for _ in range(runs)]))
    return {
        "kind": "fixed 32x128",
        "path": label,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "latency_ms": 1000 * seconds,
        "sequences_per_second": 32 / seconds,
    }


def end_to_end_row(label: str, folder: str, backend: str, precision: str, threads: int, examples) -> dict:
    """infer.py --perf's path on real sentences: tokenize, warm every bucket, run sorted batches; wall time of the
    tokenization and the batches (warm-up excluded)."""
    predictor = predictors.create_predictor(folder, options(backend, precision, threads))
    predictors.warm_up_buckets(predictor, 32, SEQ_LEN)
    tokenizer = model_io.load_deployed_tokenizer(folder)
    started = time.perf_counter()
    encoded = utils.encode_text_examples(examples, tokenizer, TNEWS, SEQ_LEN)
    result = predictors.run_predictor(predictor, list(encoded.dataset), 32, per_token=False)
    seconds = time.perf_counter() - started
    latencies = 1000 * np.array(result.batch_seconds)
    return {
        "kind": "real TNEWS, end to end",
        "path": label,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "sentences": len(examples),
        "sequences_per_second": len(examples) / seconds,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
    }


def fine_tuned_folder(name: str, directory: str) -> str:
    """The random-weight model saved as run_seq_cls.py saves a fine-tuned TNEWS model (the parent to compress)."""
    model = build_model(name)
    model_io.configure_for_task(model.config, TNEWS)
    model.config.architectures = ["ErnieForSequenceClassification"]
    model.save_pretrained(directory)
    ErnieTokenizer(vocab_file=VOCAB_FILE).save_pretrained(directory)
    return directory


def infer_process_row(label: str, model_path: str, dev_file: str, sentences: int, threads: int, *flags: str) -> dict:
    """`infer.py --perf` as a user runs it, in a process of its own: its end-to-end throughput (tokenization
    included), batch latencies and peak resident memory (the process's own, as --perf reports it)."""
    arguments = ["--dev_file", dev_file, "--max_eval_samples", str(sentences), "--num_threads", str(threads), *flags]
    report = compression.perf_in_own_process(model_path, arguments)
    perf = report["perf"]
    return {
        "kind": "infer.py --perf, real TNEWS",
        "path": label,
        "flags": list(flags),
        "backend": report["backend"],
        "precision": report["precision"],
        "threads": threads,
        "sentences": perf["sequences"],
        "sequences_per_second": perf["end_to_end_sequences_per_second"],
        "latency_ms_p50": perf["latency_ms_p50"],
        "latency_ms_p99": perf["latency_ms_p99"],
        "peak_rss_mb": perf["peak_rss_mb"],
        "accuracy": report["metrics"]["accuracy"],
    }


def compressed_best_rows(name: str, workdir: str, threads: int, examples, dev_file: str) -> list:
    """compress_seq_cls.py on the model (a few distillation steps: random weights learn nothing anyway), then
    infer.py run as a user runs it on the same sentences: its float default (Paddle fp32), ONNX Runtime and
    OpenVINO fp32 of the same model, and the compressed best as its task.json says it was measured."""
    parent = fine_tuned_folder(name, os.path.join(workdir, "parent"))
    train_file = os.path.join(workdir, "train.json")
    with open(train_file, "w", encoding="utf-8") as out:
        for example in examples[:400]:
            out.write(json.dumps({"sentence": example.text_a, "label": example.label}, ensure_ascii=False) + "\n")
    report = compress_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            parent,
            "--train_file",
            train_file,
            "--dev_file",
            dev_file,
            "--output_dir",
            os.path.join(workdir, "compress"),
            "--max_steps",
            "4",
            "--importance_batches",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--algo_list",
            "hist",
            "mse",
            "--batch_size_list",
            "8",
            "--num_threads",
            str(threads),
            "--max_eval_samples",
            "1000",
            "--max_metric_drop",
            "100",
        ]
    )
    best = report.candidate(report.best)
    exported = os.path.join(workdir, "compress", "parent")
    rows = [
        infer_process_row("infer.py float default (paddle fp32)", exported, dev_file, len(examples), threads),
        infer_process_row(
            "infer.py --backend onnxruntime (fp32)",
            exported,
            dev_file,
            len(examples),
            threads,
            "--backend",
            "onnxruntime",
        ),
        infer_process_row(
            "infer.py --backend openvino (fp32)", exported, dev_file, len(examples), threads, "--backend", "openvino"
        ),
        infer_process_row(
            f"infer.py, compressed best: {best.relative_path}", best.path, dev_file, len(examples), threads
        ),
    ]
    for row in rows:
        row["x_float_default"] = row["sequences_per_second"] / rows[0]["sequences_per_second"]
    rows[-1]["report"] = {
        "candidates": [
            {
                "relative_path": c.relative_path,
                "backend": c.backend,
                "precision": c.precision,
                "sequences_per_second": c.sequences_per_second,
            }
            for c in report.candidates
        ],
        "parent_sequences_per_second": report.parent.sequences_per_second,
    }
    return rows


def served_bytes(folder: str, backend: str, precision: str) -> int:
    """The size of the files the predictor loads for this folder, backend and precision."""
    predictor = predictors.create_predictor(folder, options(backend, precision, 1))
    return sum(os.path.getsize(path) for path in predictor.model_files)


def served_as(folder: str, backend: str, precision: str) -> str:
    """folder's task.json set to be served this way (infer.py then serves it so with no flags)."""
    info = model_folder.read_task_file(folder)
    model_folder.write_task_file(folder, dataclasses.replace(info, serving=model_folder.Serving(backend, precision)))
    return folder


def calibration_features(examples) -> list:
    """The model inputs of the last 64 examples: what NNCF calibrates OpenVINO's int8 on."""
    tokenizer = ErnieTokenizer(vocab_file=VOCAB_FILE)
    return [
        {k: f[k] for k in model_folder.EXPORT_INPUT_NAMES}
        for f in utils.encode_text_examples(examples[-64:], tokenizer, TNEWS, SEQ_LEN).dataset
    ]


def int8_folders(model, workdir: str, label: str, calibration) -> dict:
    """{row label: folder} for the model exported and served in int8 by OpenVINO (NNCF) and ONNX Runtime."""
    exported = export(model, os.path.join(workdir, label.replace(" ", "_").replace("/", "")))
    openvino = exported + "_openvino"
    compression.link_model_folder(exported, openvino)
    quantization.nncf_quantize(openvino, calibration, "hist")
    return {
        f"{label}, openvino int8": served_as(openvino, "openvino", "int8"),
        f"{label}, onnxruntime int8": served_as(exported, "onnxruntime", "int8"),
    }


# (width, depth) of each DynaBERT-shaped row: the shapes of compress_*.py's pruned candidates and of its students cut
# from the teacher (--student_layers, --student_width; depth 1/2 is the default student's)
DIMENSION_SHAPES = {
    "width 3/4": (0.75, 1.0),
    "depth 1/2": (1.0, 0.5),
    "width 3/4 depth 1/2": (0.75, 0.5),
    "width 1/2 depth 1/2": (0.5, 0.5),
}


def dimension_models(name: str, kept) -> dict:
    """{label: model} for every shape that does fewer operations than the float default of the shape name."""
    model = build_model(name)
    models = {
        label: dynabert.slice_to_width(dynabert.slice_to_depth(copy.deepcopy(model), depth), width)
        for label, (width, depth) in DIMENSION_SHAPES.items()
    }
    models["nano-shaped student"] = build_model("nano")
    for label in list(models):
        models[f"{label}, vocabulary {len(kept.kept_ids)}"] = vocabulary.prune_vocabulary(
            copy.deepcopy(models[label]), kept
        )
    return models


def row_dimensions(label: str) -> dict:
    """The width and depth of a DynaBERT-shaped row (none for the float default and the student of another shape),
    and whether its vocabulary is pruned: what the accuracy results are matched by (benchmarks/tables.py)."""
    shape = DIMENSION_SHAPES.get(label.split(",")[0])
    width_depth = dict(zip(("width", "depth"), shape)) if shape else {}
    return {**width_depth, "vocabulary_pruned": ", vocabulary " in label}


def dimension_rows(name: str, workdir: str, threads: int, examples, vocabulary_examples, dev_file, calibration):
    """infer.py --perf, in its own process, of the float default and of every candidate that does less work."""
    if len(vocabulary_examples) < 1000:
        raise runtime.UserError(
            f"--dimensions prunes the vocabulary to 7,000 TNEWS dev sentences beyond the 3,000 measured; {dev_file} "
            f"has {len(vocabulary_examples)} of them (the full CLUE TNEWS dev file is needed)"
        )
    tokenizer = ErnieTokenizer(vocab_file=VOCAB_FILE)
    encoded = utils.encode_text_examples(vocabulary_examples, tokenizer, TNEWS, SEQ_LEN).dataset
    kept = vocabulary.kept_vocabulary(
        vocabulary.used_token_counts(encoded), tokenizer.all_special_ids, tokenizer.unk_token_id, 40000
    )
    folders = {f"{name} float default (paddle fp32)": export(build_model(name), os.path.join(workdir, "float"))}
    for label, model in dimension_models(name, kept).items():
        folders.update(int8_folders(model, workdir, label, calibration))
    rows = []
    for label, folder in folders.items():
        serving = model_folder.read_task_file(folder).serving or model_folder.Serving("paddle", "fp32")
        fixed = fixed_shape_row(label, folder, serving.backend, serving.precision, threads, 6)
        row = infer_process_row(label, folder, dev_file, len(examples), threads)
        row["fixed_32x128_ms"] = fixed["latency_ms"]
        row.update(row_dimensions(label))
        row["served_bytes"] = served_bytes(folder, row["backend"], row["precision"])
        row["x_float_default"] = row["sequences_per_second"] / (rows or [row])[0]["sequences_per_second"]
        rows.append(row)
        print(
            f"{label}: {row['fixed_32x128_ms']:.0f} ms at 32x128, {row['sequences_per_second']:.1f} seq/s "
            f"({row['x_float_default']:.2f}x), "
            f"{row['served_bytes'] / 2**20:.1f} MB, peak {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="nano, 512 sentences, fewer runs")
    parser.add_argument("--model", default=None, help="ERNIE 3.0 shape (default: medium; nano with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sentences", type=int, default=None, help="real TNEWS dev sentences (default 3000; 512 quick)"
    )
    parser.add_argument("--output", default=None, help="results file (default benchmarks/results/deploy[_quick].json)")
    parser.add_argument("--dimensions", action="store_true", help="the candidates that do fewer operations (see above)")
    args = parser.parse_args(argv)
    name = args.model or ("nano" if args.quick else "medium")
    dev_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    examples = utils.load_examples(TNEWS, "dev", dev_file)[: args.sentences or (512 if args.quick else 3000)]
    calibration = calibration_features(examples)
    paddle.base.core.set_num_threads(args.threads)
    started, rows = time.perf_counter(), []
    if args.dimensions:
        with tempfile.TemporaryDirectory() as workdir:
            rows = dimension_rows(
                name, workdir, args.threads, examples, utils.load_examples(TNEWS, "dev", dev_file)[3000:10000],
                dev_file, calibration,
            )  # fmt: skip
        write_results(args.output or os.path.join(ROOT, "benchmarks", "results", "deploy_dimensions.json"),
                      name, args, examples, rows, started)  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as workdir:
        paths = deployments(workdir, name, calibration)
        for label, (folder, backend, precision) in paths.items():
            rows.append(fixed_shape_row(label, folder, backend, precision, args.threads, 3 if args.quick else 6))
            print(f"{name} {label:<28} fixed 32x128: {rows[-1]['latency_ms']:8.1f} ms", flush=True)
        for label, (folder, backend, precision) in paths.items():
            rows.append(end_to_end_row(label, folder, backend, precision, args.threads, examples))
            print(
                f"{name} {label:<28} real TNEWS x{len(examples)}: {rows[-1]['sequences_per_second']:7.1f} seq/s",
                flush=True,
            )
        rows += compressed_best_rows(name, workdir, args.threads, examples, dev_file)
        for row in rows[-4:]:
            print(
                f"{name} {row['path']}: {row['sequences_per_second']:.1f} seq/s ({row['x_float_default']:.2f}x the "
                f"float "
                f"default), peak {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    output = results_path("deploy", args.quick, args.output)
    write_results(output, name, args, examples, rows, started)


def write_results(output: str, name: str, args, examples, rows: list, started: float) -> None:
    results = {
        "machine": runtime.machine_details(),
        "model": name,
        "threads": args.threads,
        "sentences": len(examples),
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    runtime.write_json_atomic(output, results)
    print(f"wrote {output} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    runtime.run_cli(main)
