"""Serve an exported (or compressed) model: dev-set metrics, latency and throughput, or predictions on raw text.

    python infer.py                                              # output/tnews/export on the TNEWS dev set
    python infer.py --precision int8                             # output/tnews/compress's best int8 candidate
    python infer.py --use_trt --precision int8                   # its Paddle int8 candidate with TensorRT (GPU)
    python infer.py --model_path output/tnews/export --perf      # speed
    python infer.py --model_path output/tnews/export --text "..." --text "..."
    python infer.py --task_name cmrc2018 --question "..." --text "<context>"
    python infer.py --model_path output/tnews/export --backend openvino --precision bf16

The task comes from the model's task.json (--task_name, when given, is checked against it); without --model_path
the model is output/<task>/export, or with --precision int8 the best int8 candidate of output/<task>/compress. A
compressed candidate is served with the backend and precision it was measured with (its task.json).

Backends (predictors.BACKENDS): paddle (Paddle Inference: CPU with oneDNN in fp32, bf16 on CPUs with native
bfloat16, or an int8 model from compress_*.py on oneDNN's int8 kernels; GPU; TensorRT), onnxruntime (the model
converted once by paddle2onnx and cached as model.onnx; --precision int8 is ONNX Runtime's dynamic quantization of
it) and openvino (the same model.onnx; fp32, bf16, or an NNCF int8 candidate). Inputs are sorted by length and
padded per batch to length buckets (results come back in input order); --pad_to_max_length pads every batch to
--max_seq_length instead, as fixed-shape deployments do.
"""

import json
import os
import sys
import time
import types
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

import arguments
import deployment
import model_io
import predictors
import runtime
import utils

REPEATABLE = {"action": "extend"}


@dataclass
class InferArguments:
    dev_file: Optional[str] = field(
        default=None, metadata={"help": "Dev file in the task's original format; default: the hub dev split."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N dev examples."})
    perf: bool = field(
        default=False,
        metadata={
            "help": "Time the dev set: one batch of each of its shapes first, then latency per batch and throughput."
        },
    )
    warmup_batches: int = field(default=5, metadata={"help": "Batches run before timing with --perf."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch to --max_seq_length, in input order (fixed shapes)."}
    )
    text: Optional[List[str]] = field(
        default=None,
        metadata={
            **REPEATABLE,
            "help": "Raw input, repeatable: a sentence (classification, NER) or a context (QA, with --question).",
        },
    )
    text_pair: Optional[List[str]] = field(
        default=None, metadata={**REPEATABLE, "help": "Second sentences of pair tasks, one per --text."}
    )
    choice: Optional[List[str]] = field(
        default=None,
        metadata={
            **REPEATABLE,
            "help": "Multiple choice: a choice (C3, with --question) or a candidate idiom (CHID, whose --text holds "
            "#idiom# blanks); repeatable, the same choices for every --text.",
        },
    )
    question: Optional[List[str]] = field(
        default=None, metadata={**REPEATABLE, "help": "QA and C3 questions, one per --text context."}
    )
    input_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Raw input: one text a line (text<TAB>pair for pair tasks; multiple choice: a JSON object with "
            "context, question and choices), streamed in bounded memory to JSON lines (--output_file, else standard "
            "output); or SQuAD-style json for QA (read whole)."
        },
    )
    stream_window: int = field(
        default=2048, metadata={"help": "Lines read, length-sorted and predicted together when streaming --input_file."}
    )
    max_line_bytes: int = field(
        default=1 << 18,
        metadata={
            "help": "Longest --input_file line streamed, in bytes (longer: an error naming the line): what bounds "
            "the memory of streaming."
        },
    )
    num_shards: int = field(
        default=1,
        metadata={
            "help": "Split --input_file among N processes or machines: this one takes the lines whose index modulo N "
            "is --shard_index."
        },
    )
    shard_index: int = field(
        default=0, metadata={"help": "Which of the --num_shards shares this process takes (0-based)."}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue an interrupted --input_file run: append to its --output_file after its last complete "
            "line."
        },
    )
    truncate_long_texts: bool = field(
        default=True,
        metadata={"help": "Truncate inputs longer than --max_seq_length (reported); with false, an error."},
    )
    output_file: Optional[str] = field(
        default=None, metadata={"help": "Also write the results as JSON here (never over an existing file)."}
    )


def encode(task, examples, tokenizer, args, window_args, with_labels):
    """Features of the examples, and the seconds tokenization took."""
    started = time.perf_counter()
    encoded = utils.encode_examples(
        task, "input", examples, tokenizer, args.max_seq_length, args.truncate_long_texts, window_args, with_labels
    )
    return encoded, time.perf_counter() - started


def run(predictor, task, encoded, args, warmup_batches=0, warm_shapes=False) -> predictors.PredictionRun:
    result = predictors.run_predictor(
        predictor,
        list(encoded.sequences),
        args.batch_size,
        per_token=task.per_token_outputs,
        sort_by_length=not args.pad_to_max_length,
        pad_to=args.max_seq_length if args.pad_to_max_length else None,
        warmup_batches=warmup_batches,
        warm_shapes=warm_shapes,
    )
    utils.check_output_width(task, result.outputs, args.model_path)
    return result


def evaluate(predictor, task, tokenizer, args, window_args) -> dict:
    examples = utils.load_examples(task, "dev", args.dev_file, args.max_eval_samples)
    encoded, tokenize_seconds = encode(task, examples, tokenizer, args, window_args, with_labels=True)
    result = run(predictor, task, encoded, args, args.warmup_batches if args.perf else 0, warm_shapes=args.perf)
    metrics = utils.deployed_metrics(task, examples, encoded, result.outputs, window_args)
    report = {"metrics": {**metrics, "eval_samples": len(examples)}}
    if args.perf:
        report["perf"] = {
            **perf_summary(result, len(encoded.sequences), tokenize_seconds),
            "warmed_shapes": result.warmed_shapes,
        }
    return report


def perf_summary(result: predictors.PredictionRun, sequences: int, tokenize_seconds: float) -> dict:
    latencies = np.array(result.batch_seconds) * 1000.0
    model_seconds = float(np.sum(result.batch_seconds))
    return {
        "sequences": sequences,
        "batches": len(latencies),
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p90": float(np.percentile(latencies, 90)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "latency_ms_mean": float(latencies.mean()),
        "model_seconds": model_seconds,
        "tokenize_seconds": tokenize_seconds,
        "sequences_per_second": sequences / model_seconds,
        "end_to_end_sequences_per_second": sequences / (model_seconds + tokenize_seconds),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: Linux's VmHWM (/proc/self/status, kilobytes). getrusage's
    ru_maxrss is no measure when a larger process started this one: Linux carries the parent's peak across fork
    and exec (a Python started by an 800 MB one reported 813 MB for a 14 MB peak). Elsewhere, ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# The infer.py option that carries each raw input field (Family.input_fields): QA's context is given with --text.
FIELD_OPTIONS = {
    "text": "text",
    "text_pair": "text_pair",
    "question": "question",
    "context": "text",
    "choices": "choice",
}
SHARED_FIELDS = ("choices",)  # one list for every --text (the others: one value per --text)


def raw_examples(task, args):
    """Examples built from --text/--text_pair/--question/--choice, or an --input_file that the family reads whole
    (QA: SQuAD-style json)."""
    if args.input_file:
        return utils.load_examples(task, "test", args.input_file, option="--input_file")
    required, optional = task.family.input_fields(task)
    fields = required + optional
    first = FIELD_OPTIONS[required[0]]
    for option in sorted(set(FIELD_OPTIONS.values()) - {FIELD_OPTIONS[name] for name in fields}):
        if getattr(args, option, None):
            takes = utils.input_description(fields)
            raise runtime.UserError(f"task {task.name} takes {takes}: --{option} is not used")
    count = len(getattr(args, first))
    values = {}
    for name in fields:
        option, given = FIELD_OPTIONS[name], getattr(args, FIELD_OPTIONS[name], None)
        if given is None and name in optional:
            continue
        if not given or (len(given) != count and name not in SHARED_FIELDS):
            wording = f"task {task.name} {utils.MISSING_FIELD_WORDING[name]}: " if not given else ""
            raise runtime.UserError(f"{wording}give one --{option} per --{first}")
        if any(not value.strip() for value in given):
            raise runtime.UserError(f"--{option}: an input is empty")
        values[name] = [given] * count if name in SHARED_FIELDS else given
    # each --text is one text as given (a tab in it is text, not a pair separator as in --input_file lines)
    return [
        example
        for i in range(count)
        for example in utils.raw_examples(task, i, {n: given[i] for n, given in values.items()}, f"--{first} {i + 1}")
    ]


def line_examples(task, line: str, index: int, where: str) -> list:
    """One --input_file line's examples (Family.input_line: a sentence; text<TAB>pair for pair tasks; a JSON object
    for multiple choice, whose CHID passages give one example a blank)."""
    return utils.raw_examples(task, index, task.family.input_line(task, line, where), where)


def predicted_rows(predictor, task, tokenizer, args, window_args, examples) -> list:
    """What each example is predicted to be: label and probability, entities with offsets, or the answer."""
    encoded, _ = encode(task, examples, tokenizer, args, window_args, with_labels=False)
    return utils.prediction_rows(task, examples, encoded, run(predictor, task, encoded, args).outputs, window_args)


def predict_raw(predictor, task, tokenizer, args, window_args) -> dict:
    return {"predictions": predicted_rows(predictor, task, tokenizer, args, window_args, raw_examples(task, args))}


# ---- streaming a file of lines ---------------------------------------------------------------------------------
def shard_lines(path: str, num_shards: int, shard_index: int, after: int, max_line_bytes: int):
    """(line index, text) of this shard's non-blank lines past index after, read lazily, and the bytes read so far;
    a line over max_line_bytes is an error naming it."""
    for number, line, read in runtime.file_lines(path, "--input_file", max_line_bytes):
        index = number - 1
        if index % num_shards != shard_index or index <= after or not line.strip():
            yield None, None, read
        else:
            yield index, line, read


def last_written_line(output_file: str) -> int:
    """The line index of the last complete JSON line of an interrupted run's output (-1 when none); a half-written
    last line is cut off so that the resumed run rewrites it."""
    last, keep = -1, 0
    with open(output_file, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                last = json.loads(raw)["line"]
            except (ValueError, KeyError, TypeError):
                raise runtime.UserError(f"--resume: {output_file} is not an output of infer.py --input_file") from None
            keep += len(raw)
    with open(output_file, "r+b") as handle:
        handle.truncate(keep)
    return last


def open_stream_output(args):
    """The JSON lines output: --output_file (new, or continued with --resume), else standard output."""
    if not args.output_file:
        if args.resume:
            raise runtime.UserError("--resume continues an --output_file: give the one the interrupted run wrote")
        return sys.stdout, -1
    if args.resume:
        if not os.path.isfile(args.output_file):
            raise runtime.UserError(f"--resume: {args.output_file} does not exist (nothing to continue)")
        return open(args.output_file, "a", encoding="utf-8"), last_written_line(args.output_file)
    return open(args.output_file, "x", encoding="utf-8"), -1


def stream_file(predictor, task, tokenizer, args, window_args) -> dict:
    """Predict --input_file in bounded memory: windows of --stream_window lines (length-sorted inside a window),
    written in input order as JSON lines {"line": index, ...} and flushed window by window, so an interrupted run
    continues with --resume; --num_shards/--shard_index take every N-th line."""
    from tqdm import tqdm

    if not 0 <= args.shard_index < args.num_shards:
        raise runtime.UserError(f"--shard_index must be between 0 and --num_shards - 1 ({args.num_shards - 1})")
    runtime.check_file(args.input_file, "--input_file")
    output, after = open_stream_output(args)
    written, window = 0, []
    progress = tqdm(
        total=os.path.getsize(args.input_file),
        unit="B",
        unit_scale=True,
        desc="predicting",
        disable=output is sys.stdout and not sys.stderr.isatty(),
    )

    def flush():
        nonlocal written
        lines = [(index, line_examples(task, line, index, f"{args.input_file}:{index + 1}")) for index, line in window]
        rows = iter(predicted_rows(predictor, task, tokenizer, args, window_args, [e for _, ex in lines for e in ex]))
        for index, examples in lines:
            mine = [next(rows) for _ in examples]
            # CHID: one line (a passage) is several blanks, always written as a list
            body = {"predictions": mine} if task.assign_groups else mine[0]
            output.write(json.dumps({"line": index, **body}, ensure_ascii=False) + "\n")
        output.flush()
        written += len(window)
        window.clear()

    completed = False
    try:
        position = 0
        lines = shard_lines(args.input_file, args.num_shards, args.shard_index, after, args.max_line_bytes)
        for index, line, read in lines:
            progress.update(read - position)
            position = read
            if index is not None:
                window.append((index, line))
                if len(window) >= args.stream_window:
                    flush()
        if window:
            flush()
        if written == 0 and after < 0:
            raise runtime.UserError(
                f"--input_file {args.input_file} holds no input"
                + (f" for shard {args.shard_index} of {args.num_shards}" if args.num_shards > 1 else "")
            )
        completed = True
    finally:
        progress.close()
        if output is not sys.stdout:
            output.close()
            if not completed and not args.resume and written == 0:
                os.remove(args.output_file)  # a run that stopped before writing anything leaves no file behind
    peak = peak_rss_mb()
    runtime.logger.info(
        "predicted %d lines%s; peak memory %.0f MB",
        written,
        f" into {args.output_file}" if args.output_file else "",
        peak,
    )
    return {
        "predicted_lines": written,
        "resumed_after_line": after if args.resume else None,
        "output_file": args.output_file,
        "peak_rss_mb": peak,
    }


def print_report(report: dict) -> None:
    for row in report.get("predictions", []):
        print(json.dumps(row, ensure_ascii=False))
    if "metrics" in report:
        print(
            "metrics: "
            + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["metrics"].items())
        )
    if "perf" in report:
        print(
            "perf: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["perf"].items())
        )


def merged(*parts):
    """One namespace of several argument dataclasses (their field names do not overlap)."""
    return types.SimpleNamespace(**{k: v for part in parts for k, v in vars(part).items()})


def main(argv=None):
    deploy_args, infer_args, window_args = arguments.parse_plain_arguments(
        (deployment.DeployArguments, InferArguments, arguments.QAWindowArguments), __doc__, argv
    )
    runtime.setup_logging()
    arguments.check_minimums(
        infer_args,
        {"max_eval_samples": 1, "warmup_batches": 0, "stream_window": 1, "num_shards": 1, "max_line_bytes": 1},
    )
    with runtime.output_lock(infer_args.output_file, "--output_file"):  # one run writes an --output_file
        return predict_and_report(deploy_args, infer_args, window_args)


def predict_and_report(deploy_args, infer_args, window_args) -> dict:
    """Load the deployment, then stream --input_file, predict raw input, or evaluate on the dev set."""
    if infer_args.output_file and os.path.exists(infer_args.output_file) and not infer_args.resume:
        raise runtime.UserError(
            f"--output_file {infer_args.output_file} already exists; choose another name or remove it"
        )
    served = deployment.resolve_deployment(deploy_args)
    task, options = served.task, served.options
    # the options as resolved (batch size, sequence length), read-only here
    args = merged(infer_args, options, types.SimpleNamespace(model_path=served.model_path))
    predictor = predictors.create_predictor(served.files, options)
    tokenizer = model_io.load_deployed_tokenizer(served.model_path)
    heading = {
        "task_name": task.name,
        "model_path": served.model_path,
        **predictors.public_options(options),
        "engine": predictor.engine,
    }
    if infer_args.input_file and task.family.input_line is not None:
        with runtime.errors_of(infer_args.output_file, unnamed_only=True):  # a full disk's error names no file
            return {**heading, **stream_file(predictor, task, tokenizer, args, window_args)}
    raw = bool(infer_args.text or infer_args.input_file)
    run_raw_or_dev = predict_raw if raw else evaluate
    report = {**heading, **run_raw_or_dev(predictor, task, tokenizer, args, window_args)}
    print_report(report)
    if infer_args.output_file:
        runtime.write_json_atomic(infer_args.output_file, report)
    return report


if __name__ == "__main__":
    runtime.run_cli(main)
