"""Fine-tuning throughput of run_seq_cls.py on real TNEWS sentences, for ERNIE 3.0 mini and medium shapes.

    python -m benchmarks.bench_train --quick      # a few steps per configuration
    python -m benchmarks.bench_train

Random-weight models with the real configurations and vocabulary; max_seq_length 128, batch 32, CPU. Each model
trains with random batches (padded to their longest sentence, the Trainer's default) and with
--group_by_length (batches of similar lengths). Reports training sequences per second (Trainer's
train_samples_per_second) and writes benchmarks/results/train[_quick].json.
"""

import argparse
import json
import os
import tempfile
import time

import paddle
from paddlenlp.transformers import ErnieConfig, ErnieModel, ErnieTokenizer

import run_seq_cls
import runtime
from benchmarks.bench_infer import COMMON, ERNIE_CONFIGS, ROOT, TNEWS_FULL, TNEWS_SLICE, VOCAB_FILE, save_results


def save_encoder(name: str, directory: str) -> str:
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        ErnieModel(ErnieConfig(**ERNIE_CONFIGS[name], **COMMON)).save_pretrained(directory)
    ErnieTokenizer(vocab_file=VOCAB_FILE).save_pretrained(directory)
    return directory


def train_throughput(model_dir: str, data_file: str, steps: int, grouped: bool, workdir: str) -> dict:
    output_dir = os.path.join(workdir, f"out-{'grouped' if grouped else 'random'}")
    run_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            model_dir,
            "--train_file",
            data_file,
            "--output_dir",
            output_dir,
            "--do_train",
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            "32",
            "--max_seq_length",
            "128",
            "--max_train_samples",
            str(steps * 32 * 4),
            "--evaluation_strategy",
            "no",
            "--save_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--logging_steps",
            str(steps),
            "--group_by_length",
            str(grouped).lower(),
            "--device",
            "cpu",
            "--disable_tqdm",
            "true",
        ]
    )
    with open(os.path.join(output_dir, "train_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    return {"train_samples_per_second": results["train_samples_per_second"], "train_runtime": results["train_runtime"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument(
        "--output", default=None, help="JSON results file (default benchmarks/results/train[_quick].json)"
    )
    args = parser.parse_args(argv)
    steps = {"mini": 6, "medium": 3} if args.quick else {"mini": 30, "medium": 12}
    data_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as workdir:
        for name, count in steps.items():
            model_dir = save_encoder(name, os.path.join(workdir, name))
            for grouped in (False, True):
                measured = train_throughput(model_dir, data_file, count, grouped, os.path.join(workdir, name))
                rows.append(
                    {
                        "model": name,
                        "batches": "length-grouped" if grouped else "random",
                        "steps": count,
                        "batch_size": 32,
                        **measured,
                    }
                )
                print(
                    f"{name:>6} {rows[-1]['batches']:<15} {measured['train_samples_per_second']:7.1f} seq/s "
                    f"({count} steps, {measured['train_runtime']:.1f} s)",
                    flush=True,
                )
    results = {
        "machine": runtime.machine_details(),
        "data": os.path.relpath(data_file, ROOT),
        "quick": args.quick,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    save_results(results, "train", args.quick, args.output)


if __name__ == "__main__":
    runtime.run_cli(main)
