"""The accuracy cost of compression, measured on models that have learned something.

    python -m benchmarks.bench_compress            # TNEWS and MSRA_NER, dynabert+ptq and ptq (about 90 min, 2 cores)
    python -m benchmarks.bench_compress --quick      # smaller model and data, ptq only (about 5 min)
    python -m benchmarks.bench_compress --quick --tasks c3 --strategies dynabert+ptq --output \
        benchmarks/results/compress_c3_quick.json    # the C3 reader (800 questions; about 20 min)
    python -m benchmarks.bench_compress --tasks tnews --narrow --train_rows 4000 --strategies \
        "dynabert+ptq depth+vocabulary" distill+ptq --output benchmarks/results/compress_dimensions.json
        # depth, students, vocabulary on a 4-layer teacher of hidden 128
    python -m benchmarks.bench_compress --tasks tnews --narrow --train_rows 4000 --strategies distill+ptq \
        "distill+ptq width 1/2" --output benchmarks/results/compress_students_tnews.json    # two students' shapes
    python -m benchmarks.bench_compress --tasks msra_ner --narrow --strategies "dynabert+ptq depth+vocabulary" \
        distill+ptq --output benchmarks/results/compress_dimensions_msra_ner.json    # the same for MSRA_NER

No pretrained ERNIE 3.0 weights are available offline, and random-weight models say nothing about what int8 costs.
So a small ERNIE (the real vocabulary, 4 layers, hidden 256) is trained from scratch on real rows until it is clearly
above chance: TNEWS (8,000 dev rows to train, 2,000 to evaluate; chance is 1/15) and MSRA_NER (2,800 of the test
split's sentences to train, 642 to evaluate, 64 tokens) and, with --tasks c3, C3 (3,000 training questions of both
parts, 64 tokens a choice, measured on 600 of the questions it fitted, --quick 800 and 400: from scratch it does not
learn C3; chance is 0.27). Then every compression strategy runs on it exactly as a user would (compress_*.py with its
defaults), and each candidate's dev metric, drop, served size and speed are recorded in
benchmarks/results/compress[_quick].json (or --output) with the machine.
"""

import argparse
import json
import os
import tempfile
import time
from types import ModuleType
from typing import Callable, NamedTuple, Optional

import compress_multiple_choice
import compress_seq_cls
import compress_token_cls
import model_folder
import run_multiple_choice
import run_seq_cls
import run_token_cls
import runtime
from benchmarks.bench_infer import ROOT, VOCAB_FILE, results_path

SHARED = os.path.join(ROOT, "..", "shared", "data")
TNEWS_ROWS = os.path.join(SHARED, "clue", "tnews", "dev.json")
MSRA_ROWS = os.path.join(SHARED, "msra_ner", "test.tsv")
SMALL_ERNIE = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    hidden_act="gelu",
    max_position_embeddings=512,
    vocab_size=40000,
    type_vocab_size=4,
    task_type_vocab_size=16,
    use_task_id=True,
)
NARROW_ERNIE = {**SMALL_ERNIE, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}  # 4 layers
QUICK_ERNIE = {
    **SMALL_ERNIE,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 512,
}


def from_scratch_encoder(directory: str, config: dict) -> str:
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel, ErnieTokenizer

    paddle.seed(0)
    ErnieModel(ErnieConfig(**config)).save_pretrained(directory)
    ErnieTokenizer(vocab_file=VOCAB_FILE).save_pretrained(directory)
    return directory


def split_lines(path: str, workdir: str, name: str, train_count: int, dev_count: int):
    """The first train_count non-blank lines as a training file, the next dev_count as a dev file."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    if len(lines) < train_count + dev_count:
        raise runtime.UserError(f"{path} has {len(lines)} rows; this benchmark needs {train_count + dev_count}")
    files = []
    for split, chunk in (("train", lines[:train_count]), ("dev", lines[train_count : train_count + dev_count])):
        files.append(os.path.join(workdir, f"{name}_{split}{os.path.splitext(path)[1]}"))
        with open(files[-1], "w", encoding="utf-8") as out:
            out.writelines(chunk)
    return files


def first_documents(documents: list, questions: int) -> list:
    """The first whole C3 documents holding at least this many questions (all of them if they hold fewer)."""
    taken, count = [], 0
    for document in documents:
        if count >= questions:
            break
        taken.append(document)
        count += len(document[1])
    return taken


def split_c3_fitted_questions(folder: str, workdir: str, name: str, train_count: int, dev_count: int):
    """A training file of C3 questions (whole documents, half from the release's d- part and half from its m- part)
    and a dev file of the first dev_count of those same questions: a small model trained from scratch does not learn
    C3 in this budget (28.9% on 402 dev questions after 2 epochs on 2,400, chance 27%), but it fits its training
    questions, which is what a compressed candidate must keep."""
    parts = []
    for part in ("d", "m"):
        with open(os.path.join(folder, f"c3-{part}-train.json"), encoding="utf-8") as handle:
            parts.append(first_documents(json.load(handle), train_count // 2))
    splits = {"train": parts[0] + parts[1], "fitted": [d for p in parts for d in first_documents(p, dev_count // 2)]}
    files = []
    for split, documents in splits.items():
        files.append(os.path.join(workdir, f"{name}_{split}.json"))
        with open(files[-1], "w", encoding="utf-8") as out:
            json.dump(documents, out, ensure_ascii=False)
    return files


class Task(NamedTuple):
    rows: str  # the real rows the training and dev files are cut from
    train: int  # rows to train on, then rows to evaluate on (and the same with --quick)
    dev: int
    quick_train: int
    quick_dev: int
    fine_tuning: ModuleType  # run_*.py
    compression: ModuleType  # compress_*.py
    task_args: list
    epochs: int
    max_seq_length: int  # fine-tuning, evaluation and compression alike
    max_metric_drop: float  # the accuracy budget (--max_metric_drop), in points
    split: Callable = split_lines  # (rows, workdir, name, train count, dev count) -> (train file, dev file)
    quick_epochs: int = 2


TASKS = {
    "tnews": Task(
        TNEWS_ROWS,
        8000,
        2000,
        3000,
        500,
        run_seq_cls,
        compress_seq_cls,
        ["--task_name", "tnews"],
        epochs=3,
        max_seq_length=128,
        max_metric_drop=1.0,
    ),
    # Half of MSRA_NER's sentences have at most 40 characters and 90% at most 91: 64 tokens halve the cost of a step,
    # which buys the longer training a tagger needs from scratch (4 epochs at 128 tokens reached an F1 of 0.10).
    "msra_ner": Task(
        MSRA_ROWS,
        2800,
        642,
        1200,
        300,
        run_token_cls,
        compress_token_cls,
        ["--task_name", "msra_ner"],
        epochs=12,
        max_seq_length=64,
        max_metric_drop=2.0,
    ),
    # C3 questions (d- and m- parts, whole documents), each choice a sequence of 64 tokens: the question and the
    # choice whole, the document cut to what is left. A question is 2-4 sequences, so at 128 tokens the small model
    # took 31 s a step of 32 questions here (AMD EPYC, AVX2 only): run it with --quick. Measured on questions it was
    # trained on (split_c3_fitted_questions says why); chance is 0.27.
    "c3": Task(
        os.path.join(SHARED, "c3"),
        3000,
        600,
        800,
        400,
        run_multiple_choice,
        compress_multiple_choice,
        ["--task_name", "c3"],
        epochs=3,
        max_seq_length=64,
        max_metric_drop=1.0,
        split=split_c3_fitted_questions,
        quick_epochs=8,
    ),
}


def fine_tune(name: str, encoder: str, workdir: str, quick: bool, train_rows: Optional[int] = None):
    task = TASKS[name]
    train_file, dev_file = task.split(
        task.rows,
        workdir,
        name,
        train_rows or (task.quick_train if quick else task.train),
        task.quick_dev if quick else task.dev,
    )
    output_dir = os.path.join(workdir, f"{name}-finetuned")
    started = time.perf_counter()
    task.fine_tuning.main(
        task.task_args
        + [
            "--model_name_or_path",
            encoder,
            "--train_file",
            train_file,
            "--dev_file",
            dev_file,
            "--output_dir",
            output_dir,
            "--do_train",
            "--do_eval",
            "--learning_rate",
            "1e-3",
            "--num_train_epochs",
            str(task.quick_epochs if quick else task.epochs),
            "--per_device_train_batch_size",
            "32",
            "--max_seq_length",
            str(task.max_seq_length),
            "--warmup_ratio",
            "0.1",
            "--logging_steps",
            "100",
        ]
    )
    with open(os.path.join(output_dir, "eval_results.json"), encoding="utf-8") as handle:
        return output_dir, train_file, dev_file, json.load(handle), time.perf_counter() - started


# --strategies names beyond compress_*.py's own: a strategy with the options that make it remove more work
STRATEGY_OPTIONS = {
    "dynabert+ptq depth+vocabulary": [
        "--strategy", "dynabert+ptq", "--width_mult_list", "3/4", "1/2", "--depth_mult_list", "1", "1/2",
        "--prune_vocabulary",
    ],
    "distill+ptq": ["--strategy", "distill+ptq", "--student_layers", "2", "--learning_rate", "5e-4",
                    "--num_train_epochs", "2", "--prune_vocabulary"],
    # the student of DynaBERT's width 1/2 x depth 1/2 shape (half the layers, half the heads and neurons)
    "distill+ptq width 1/2": ["--strategy", "distill+ptq", "--student_layers", "2", "--student_width", "1/2",
                              "--learning_rate", "5e-4", "--num_train_epochs", "2", "--prune_vocabulary"],
}  # fmt: skip


def strategy_arguments(strategy: str) -> list:
    return STRATEGY_OPTIONS.get(strategy, ["--strategy", strategy])


def compress(
    name: str, model_dir: str, train_file: str, dev_file: str, strategy: str, workdir: str, threads: int
) -> dict:
    task = TASKS[name]
    output_dir = os.path.join(workdir, f"{name}-{strategy.replace('+', '_').replace(' ', '-').replace('/', '_')}")
    started = time.perf_counter()
    try:
        task.compression.main(
            task.task_args
            + [
                "--model_name_or_path",
                model_dir,
                "--train_file",
                train_file,
                "--dev_file",
                dev_file,
                "--output_dir",
                output_dir,
                *strategy_arguments(strategy),
                "--max_metric_drop",
                str(task.max_metric_drop),
                "--num_threads",
                str(threads),
                "--max_seq_length",
                str(task.max_seq_length),
            ]
        )
    except runtime.UserError as error:  # nothing within the budget: the report says so, and so does this benchmark
        print(f"{name} {strategy}: {error}")
    report = model_folder.read_report(model_folder.report_path(output_dir))
    print(f"{name} {strategy}: best {report.best}", flush=True)
    keep = (
        "relative_path",
        "kind",
        "backend",
        "precision",
        "metric_points",
        "drop_points",
        "size_bytes",
        "sequences_per_second",
        "width",
        "depth",
        "student",
        "vocabulary_size",
        "parameters",
        "peak_memory_bytes",
    )
    return {
        "strategy": strategy,
        "seconds": time.perf_counter() - started,
        "max_metric_drop": task.max_metric_drop,
        "max_seq_length": task.max_seq_length,
        "parent": kept_fields(report.parent, keep),
        "candidates": [kept_fields(c, keep) for c in report.candidates],
        "best": report.best and os.path.relpath(report.best, output_dir),
        "best_int8": report.best_int8 and os.path.relpath(report.best_int8, output_dir),
    }


def kept_fields(candidate: model_folder.Candidate, keep) -> dict:
    """The fields of a candidate this benchmark's results keep (those the candidate has)."""
    written = model_folder.candidate_json(candidate)
    return {name: written[name] for name in keep if written.get(name) is not None}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true", help="a smaller model, less data, ptq only")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["tnews", "msra_ner"])
    parser.add_argument("--strategies", nargs="+", default=None, help="default: dynabert+ptq ptq (ptq with --quick)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--narrow", action="store_true", help="the teacher 4 layers of hidden 128 (not 256): depth effects, faster"
    )
    parser.add_argument("--train_rows", type=int, default=None, help="training rows (default: the task's)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    runtime.setup_logging()
    strategies = args.strategies or (["ptq"] if args.quick else ["dynabert+ptq", "ptq"])
    shape = QUICK_ERNIE if args.quick else NARROW_ERNIE if args.narrow else SMALL_ERNIE
    started, results = time.perf_counter(), {}
    output = results_path("compress", args.quick, args.output)

    def save():  # after every strategy, so that a run cut short keeps what it measured
        runtime.write_json_atomic(
            output,
            {
                "machine": runtime.machine_details(),
                "threads": args.threads,
                "quick": args.quick,
                "model": shape,
                "train_rows": args.train_rows,
                "results": results,
                "seconds": time.perf_counter() - started,
            },
        )

    with tempfile.TemporaryDirectory() as workdir:
        encoder = from_scratch_encoder(os.path.join(workdir, "encoder"), shape)
        for task in args.tasks:
            model_dir, train_file, dev_file, metrics, seconds = fine_tune(
                task, encoder, workdir, args.quick, args.train_rows
            )
            print(f"{task}: fine-tuned from scratch in {seconds:.0f} s: {metrics}", flush=True)
            results[task] = {"fine_tuned": metrics, "fine_tuning_seconds": seconds, "strategies": []}
            for strategy in strategies:
                results[task]["strategies"].append(
                    compress(task, model_dir, train_file, dev_file, strategy, workdir, args.threads)
                )
                save()
    print(f"wrote {output}")


if __name__ == "__main__":
    runtime.run_cli(main)
