"""Serve an exported (or compressed) model: dev-set accuracy, latency and throughput, or predictions on raw text.

    python infer.py --task_name tnews --model_path output/tnews/export                      # dev metrics
    python infer.py --task_name tnews --model_path output/tnews/export --perf               # speed
    python infer.py --task_name tnews --model_path output/tnews/export --text "..." --text "..."
    python infer.py --task_name cmrc2018 --model_path output/cmrc2018/export --question "..." --text "<context>"
    python infer.py --task_name tnews --model_path output/tnews/export --backend onnxruntime --precision int8

Backends: paddle (Paddle Inference: CPU with oneDNN on or off and --num_threads; GPU; TensorRT fp32/fp16/int8
with --device gpu --use_trt, the dynamic shape ranges collected on the first run and cached beside the model)
and onnxruntime (the model converted once by paddle2onnx and cached as model.onnx; --precision int8 is ONNX
Runtime's dynamic quantization of it). int8 models from compress_*.py run on the paddle backend, where on
the CPUs this suite was tested on (AVX2; AVX-512 VNNI) they were about 3x slower than fp32, measured: the
quantize/dequantize ops run in fp32. int8 speed comes from TensorRT on GPUs, and on VNNI CPUs from
--backend onnxruntime --precision int8 (2.8x Paddle fp32 for ERNIE 3.0-medium at batch 32, measured).
At batch 1, onnxruntime's per-call overhead is lower (see the README's Benchmarks). On CPUs with native
bfloat16 (avx512_bf16 or AMX), --precision bf16 runs Paddle Inference's oneDNN kernels in bfloat16 (for
ERNIE 3.0-medium at batch 32, measured: 4.8x fp32 with AMX, about 2x with avx512_bf16 alone); check its dev
metrics as for int8.

Inputs are sorted by length and padded per batch (results come back in input order); --pad_to_max_length
pads every batch to --max_seq_length instead, as fixed-shape deployments do.
"""
import json
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

import arguments
import model_io
import predictors
import utils

REPEATABLE = {"action": "extend"}


@dataclass
class InferArguments:
    task_name: Optional[str] = field(default=None, metadata={"help": "The task; default: the model's task.json (checked when given). Without --model_path it picks the folder output/<task> (default tnews)."})
    model_path: Optional[str] = field(default=None, metadata={"help": "An export/ directory from run_*.py --do_export, or a compressed candidate's directory. Default: output/<task>/export, or with --precision int8 the best int8 candidate of output/<task>/compress/compress_report.json."})
    backend: Optional[str] = field(default=None, metadata={"help": "Default: as the model's task.json says it was measured (compressed candidates), else paddle. " + predictors.backends_help()})
    device: str = field(default=arguments.default_device(), metadata={"help": "cpu or gpu."})
    use_trt: bool = field(default=False, metadata={"help": "TensorRT through Paddle Inference (--device gpu)."})
    precision: Optional[str] = field(default=None, metadata={"help": "fp32, fp16 (GPU), bf16 (Paddle on a CPU with native bfloat16) or int8 (an int8 model from compress_*.py on oneDNN or TensorRT, or onnxruntime's dynamic quantization). Default: as the model's task.json says it was measured, else fp32."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per batch."})
    max_seq_length: Optional[int] = field(default=None, metadata={"help": "Tokens per sequence; default: the model's task.json."})
    num_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "CPU threads."})
    enable_onednn: bool = field(default=True, metadata={"help": "oneDNN kernels on the paddle CPU backend."})
    length_bucket: Optional[int] = field(default=None, metadata={"help": "Paddle on the CPU: pad each batch to a multiple of this many tokens, so that oneDNN meets few shapes (1: to the batch's longest only). Default: 8 for float models, 16 for int8 ones."})
    dev_file: Optional[str] = field(default=None, metadata={"help": "Dev file in the task's original format; default: the hub dev split."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N dev examples."})
    perf: bool = field(default=False, metadata={"help": "Time the dev set: warm-up, then latency per batch and throughput."})
    warmup_batches: int = field(default=5, metadata={"help": "Batches run before timing with --perf."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every batch to --max_seq_length, in input order (fixed shapes)."})
    text: Optional[List[str]] = field(default=None, metadata={**REPEATABLE, "help": "Raw input, repeatable: a sentence (classification, NER) or a context (QA, with --question)."})
    text_pair: Optional[List[str]] = field(default=None, metadata={**REPEATABLE, "help": "Second sentences of pair tasks, one per --text."})
    question: Optional[List[str]] = field(default=None, metadata={**REPEATABLE, "help": "QA questions, one per --text context."})
    input_file: Optional[str] = field(default=None, metadata={"help": "Raw input: one text a line (text<TAB>pair for pair tasks), or SQuAD-style json for QA."})
    truncate_long_texts: bool = field(default=True, metadata={"help": "Truncate inputs longer than --max_seq_length (reported); with false, an error."})
    output_file: Optional[str] = field(default=None, metadata={"help": "Also write the results as JSON here (never over an existing file)."})


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def encode(task, examples, tokenizer, args, window_args, with_labels):
    """Features of the examples, and the seconds tokenization took."""
    started = time.perf_counter()
    encoded = utils.encode_examples(task, "input", examples, tokenizer, args.max_seq_length, args.truncate_long_texts,
                                    window_args, with_labels)
    return encoded, time.perf_counter() - started


def run(predictor, task, encoded, args, warmup_batches=0) -> predictors.PredictionRun:
    return predictors.run_predictor(predictor, list(encoded.dataset), args.batch_size, per_token=task.per_token_outputs,
                               sort_by_length=not args.pad_to_max_length,
                               pad_to=args.max_seq_length if args.pad_to_max_length else None, warmup_batches=warmup_batches)


def evaluate(predictor, task, tokenizer, args, window_args) -> dict:
    examples = utils.load_examples(task, "dev", args.dev_file, args.max_eval_samples)
    encoded, tokenize_seconds = encode(task, examples, tokenizer, args, window_args, with_labels=True)
    warmed_shapes = predictors.warm_up_buckets(predictor, args.batch_size, args.max_seq_length) if args.perf else 0
    result = run(predictor, task, encoded, args, warmup_batches=args.warmup_batches if args.perf else 0)
    metrics = utils.deployed_metrics(task, examples, encoded, result.outputs, window_args)
    report = {"metrics": {**metrics, "eval_samples": len(examples)}}
    if args.perf:
        report["perf"] = {**perf_summary(result, len(encoded.dataset), tokenize_seconds), "warmed_shapes": warmed_shapes}
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
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def raw_examples(task, args):
    """Examples built from --text/--text_pair/--question or --input_file."""
    if args.input_file:
        return file_examples(task, args.input_file)
    texts = args.text
    if any(not t.strip() for t in texts):
        raise utils.UserError("--text: an input is empty")
    if task.family == "qa":
        if not args.question or len(args.question) != len(texts):
            raise utils.UserError("QA needs one --question per --text context")
        return [utils.QAExample(str(i), q, t, [], None, None, f"--text {i + 1}") for i, (q, t) in enumerate(zip(args.question, texts))]
    if task.family == "token_cls":
        return [utils.TokenExample(i, list(t), None, f"--text {i + 1}") for i, t in enumerate(texts)]
    pairs = args.text_pair or [None] * len(texts)
    if len(pairs) != len(texts):
        raise utils.UserError("give one --text_pair per --text")
    return [utils.TextExample(i, t, p, None, f"--text {i + 1}") for i, (t, p) in enumerate(zip(texts, pairs))]


def file_examples(task, path):
    if task.family == "qa":
        return utils.rows_to_qa_examples(task, utils.read_squad_file(path, "--input_file"), "test")
    examples = []
    for number, line in utils.numbered_text_lines(path, "--input_file"):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if task.family == "token_cls":
            examples.append(utils.TokenExample(len(examples), list(line), None, where))
        else:
            text, _, pair = line.partition("\t")
            if not text.strip() or "\t" in line and not pair.strip():
                raise utils.UserError(f"{where}: empty text")
            examples.append(utils.TextExample(len(examples), text, pair or None, None, where))
    if not examples:
        raise utils.UserError(f"--input_file {path} holds no input")
    return examples


def predict_raw(predictor, task, tokenizer, args, window_args) -> dict:
    examples = raw_examples(task, args)
    encoded, _ = encode(task, examples, tokenizer, args, window_args, with_labels=False)
    outputs = run(predictor, task, encoded, args).outputs
    if task.family == "seq_cls":
        probabilities = softmax(np.stack(outputs[0]))
        rows = [{"text": e.text_a, **({"text_pair": e.text_b} if e.text_b else {}), "label": task.labels[int(p.argmax())],
                 "probability": float(p.max())} for e, p in zip(examples, probabilities)]
    elif task.family == "token_cls":
        tags = utils.predicted_word_tags(utils.pad_rows(outputs[0], 0.0), encoded, examples, task.labels)
        rows = [{"text": e.text, "entities": utils.entities_from_tags(e.words, t)} for e, t in zip(examples, tags)]
    else:
        _, nbest = utils.postprocess_qa_predictions(examples, encoded, outputs[0], outputs[1], window_args.n_best_size,
                                                    window_args.max_answer_length)
        rows = [{"id": e.id, "question": e.question, "answer": (nbest[e.id] or [{"text": ""}])[0]["text"],
                 "probability": (nbest[e.id] or [{"probability": 0.0}])[0]["probability"]} for e in examples]
    return {"predictions": rows}


def print_report(report: dict) -> None:
    for row in report.get("predictions", []):
        print(json.dumps(row, ensure_ascii=False))
    if "metrics" in report:
        print("metrics: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["metrics"].items()))
    if "perf" in report:
        print("perf: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["perf"].items()))


DEFAULT_TASK = "tnews"


def default_model_path(task_name: str, precision: str) -> str:
    """output/<task>/export, or for int8 the best int8 candidate that compress_*.py chose; a missing one is one
    line naming the command that makes it."""
    task = utils.get_task_any_family(task_name) if task_name != utils.CUSTOM_TASK else None
    folder = arguments.default_output_dir(task_name)
    family = utils.FAMILIES[task.family] if task else utils.FAMILIES["seq_cls"]
    if precision == "int8":
        report_path = os.path.join(folder, "compress", "compress_report.json")
        if not os.path.isfile(report_path):
            raise utils.UserError(f"no compressed model in {os.path.dirname(report_path)}: make one with "
                                  f"`python {family.compress_script} --task_name {task_name}`, or pass --model_path DIR")
        best = utils.read_json_file(report_path, "--model_path").get("best_int8")
        if not best:
            raise utils.UserError(f"{report_path} has no int8 candidate within its --max_metric_drop; compress again "
                                  "(a larger budget or another strategy) or pass --model_path DIR")
        return best
    export_dir = os.path.join(folder, "export")
    if not os.path.isdir(export_dir):
        raise utils.UserError(f"no exported model in {export_dir}: make one with `python {family.script} --task_name "
                              f"{task_name} --do_train --do_eval --do_export`, or pass --model_path DIR")
    return export_dir


def resolve_model_and_task(args):
    """The model folder (given, or the default products of output/<task>) and its task from task.json."""
    if args.model_path is None:
        args.model_path = default_model_path(args.task_name or DEFAULT_TASK, args.precision)
        utils.logger.info("serving %s", args.model_path)
    info = model_io.read_task_info(args.model_path)
    task = utils.get_task_any_family(args.task_name or info.get("task_name"), info)
    model_io.check_model_task(info, args.model_path, task)
    serving = info.get("serving") or {}
    args.backend = args.backend or serving.get("backend") or "paddle"
    quantized = model_io.is_quantized(model_io.static_model_files(args.model_path)[0])
    args.precision = args.precision or serving.get("precision") or ("int8" if quantized else "fp32")
    return task, info


def main(argv=None):
    args, window_args = arguments.parse_plain_arguments((InferArguments, arguments.QAWindowArguments), __doc__, argv)
    utils.setup_logging()
    if args.output_file and os.path.exists(args.output_file):
        raise utils.UserError(f"--output_file {args.output_file} already exists; choose another name or remove it")
    task, info = resolve_model_and_task(args)
    args.max_seq_length = args.max_seq_length or info.get("max_seq_length") or task.max_seq_length
    options = predictors.PredictorOptions(args.backend, args.device, args.use_trt, args.precision, args.num_threads,
                                          args.enable_onednn, args.batch_size, args.max_seq_length, args.length_bucket)
    predictor = predictors.create_predictor(args.model_path, options)
    tokenizer = model_io.load_tokenizer(args.model_path)
    raw = bool(args.text or args.input_file)
    report = predict_raw(predictor, task, tokenizer, args, window_args) if raw else evaluate(predictor, task, tokenizer, args, window_args)
    report = {"task_name": task.name, "model_path": args.model_path, **predictors.public_options(options), **report}
    print_report(report)
    if args.output_file:
        utils.write_json_atomic(args.output_file, report)
    return report


if __name__ == "__main__":
    utils.run_cli(main)
