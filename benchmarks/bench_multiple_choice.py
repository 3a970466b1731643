"""C3-shaped deployment, end to end: real C3 dev questions through infer.py's path (tokenize every choice, length-
sorted batches of choice rows, group the rows back into questions), on one machine in one run.

    python -m benchmarks.bench_multiple_choice               # medium, 200 questions of both dev parts, 512 tokens
    python -m benchmarks.bench_multiple_choice --quick       # nano, 100 questions

A random-weight ERNIE 3.0 shape with a multiple-choice head (speed does not depend on the weights), exported as
run_multiple_choice.py exports (one choice a row), served as Paddle fp32 (infer.py's float default), ONNX Runtime
fp32 and int8 (dynamic quantization), OpenVINO fp32 and the 3/4-width pruned model in ONNX Runtime int8. No bucket
warm-up: the time is what a first pass over the questions costs, tokenization included. Results, with the CPU and
its flags, go to benchmarks/results/multiple_choice[_quick].json.
"""

import argparse
import copy
import os
import tempfile
import time

import numpy as np
import paddle
from paddlenlp.transformers import ErnieConfig, ErnieForMultipleChoice, ErnieTokenizer

import dynabert
import model_io
import predictors
import runtime
import utils
from benchmarks.bench_infer import COMMON, ERNIE_CONFIGS, ROOT, VOCAB_FILE, save_results

C3_DEV = [os.path.join(ROOT, "..", "shared", "data", "c3", f"c3-{part}-dev.json") for part in ("d", "m")]
C3_SLICE = os.path.join(ROOT, "tests", "data", "c3")
WAYS = (
    ("paddle fp32 (float default)", "float", "paddle", "fp32"),
    ("onnxruntime fp32", "float", "onnxruntime", "fp32"),
    ("onnxruntime int8", "float", "onnxruntime", "int8"),
    ("openvino fp32", "float", "openvino", "fp32"),
    ("pruned 3/4 onnxruntime int8", "pruned", "onnxruntime", "int8"),
)


def choice_model(name: str):
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = ErnieForMultipleChoice(ErnieConfig(**ERNIE_CONFIGS[name], **COMMON, num_choices=utils.C3.max_choices))
    model.eval()
    return model


def export(model, directory: str, length: int) -> str:
    model_io.export_static_model(
        model, ErnieTokenizer(vocab_file=VOCAB_FILE), directory, model_io.task_file(utils.C3, length)
    )
    return directory


def questions(count: int) -> list:
    """The first count/2 questions of each dev part (the tests' slice when the full files are absent)."""
    if all(os.path.isfile(path) for path in C3_DEV):
        parts = [utils.load_examples(utils.C3, "dev", path) for path in C3_DEV]
        return parts[0][: count // 2] + parts[1][: count - count // 2]
    return utils.load_examples(utils.C3, "dev", C3_SLICE)[:count]


def end_to_end_row(label: str, folder: str, backend: str, precision: str, threads: int, examples, length: int):
    options = predictors.PredictorOptions(
        backend=backend, precision=precision, num_threads=threads, batch_size=32, max_seq_length=length
    )
    predictor = predictors.create_predictor(folder, options)
    tokenizer = model_io.load_deployed_tokenizer(folder)
    started = time.perf_counter()
    encoded = utils.encode_examples(utils.C3, "dev", examples, tokenizer, length, True)
    result = predictors.run_predictor(predictor, encoded.sequences, 32, per_token=False)
    utils.prediction_rows(utils.C3, examples, encoded, result.outputs, None)
    seconds = time.perf_counter() - started
    return {
        "kind": "real C3, end to end",
        "path": label,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "questions": len(examples),
        "sequences": len(encoded.sequences),
        "mean_tokens": float(np.mean([len(s["input_ids"]) for s in encoded.sequences])),
        "questions_per_second": len(examples) / seconds,
        "sequences_per_second": len(encoded.sequences) / seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="nano, 100 questions")
    parser.add_argument("--model", default=None, help="ERNIE 3.0 shape (default: medium; nano with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=None, help="C3 dev questions (default 200; 100 quick)")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    runtime.setup_logging()
    name = args.model or ("nano" if args.quick else "medium")
    examples = questions(args.questions or (100 if args.quick else 200))
    paddle.base.core.set_num_threads(args.threads)
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as workdir:
        model = choice_model(name)
        folders = {
            "float": export(model, os.path.join(workdir, "float"), args.max_seq_length),
            "pruned": export(
                dynabert.slice_to_width(copy.deepcopy(model), 0.75),
                os.path.join(workdir, "pruned"),
                args.max_seq_length,
            ),
        }
        for label, which, backend, precision in WAYS:
            rows.append(
                end_to_end_row(label, folders[which], backend, precision, args.threads, examples, args.max_seq_length)
            )
            rows[-1]["x_float_default"] = rows[-1]["sequences_per_second"] / rows[0]["sequences_per_second"]
            print(
                f"{name} {label:<28} {rows[-1]['questions_per_second']:7.2f} questions/s "
                f"{rows[-1]['sequences_per_second']:7.1f} seq/s ({rows[-1]['x_float_default']:.2f}x)",
                flush=True,
            )
    results = {
        "machine": runtime.machine_details(),
        "model": name,
        "threads": args.threads,
        "max_seq_length": args.max_seq_length,
        "c3_rows": rows,
        "seconds": time.perf_counter() - started,
    }
    save_results(results, "multiple_choice", args.quick, args.output)


if __name__ == "__main__":
    runtime.run_cli(main)
