"""serve.py against infer.py's offline path, on one machine in one run.

    python -m benchmarks.bench_serve                # ERNIE 3.0-Medium shape, 1,000 real TNEWS sentences (about 6 min)
    python -m benchmarks.bench_serve --quick        # nano, 300 sentences

First infer.py's offline end-to-end throughput at batch 32 and its batch-1 latency on the same sentences, then the
server (a real serve.py process on 127.0.0.1) at concurrency 1, 8 and 32 with one sentence per request: throughput
and p50/p99 latency as the client sees them. Results go to benchmarks/results/serve[_quick].json with the machine.
"""

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from paddlenlp.transformers import ErnieTokenizer

import model_io
import predictors
import runtime
import utils
from benchmarks.bench_infer import ROOT, SEQ_LEN, TNEWS_FULL, TNEWS_SLICE, VOCAB_FILE, build_model, export

TNEWS = utils.SEQ_CLS_TASKS["tnews"]


def offline(model_dir: str, examples, threads: int) -> dict:
    """infer.py's path: batch 32 end to end (tokenization included), and batch 1 per sentence."""
    options = predictors.PredictorOptions(num_threads=threads, batch_size=32, max_seq_length=SEQ_LEN)
    predictor = predictors.create_predictor(model_dir, options)
    predictors.warm_up_buckets(predictor, 32, SEQ_LEN)
    predictors.warm_up_buckets(predictor, 1, SEQ_LEN)
    tokenizer = model_io.load_deployed_tokenizer(model_dir)
    started = time.perf_counter()
    encoded = utils.encode_text_examples(examples, tokenizer, TNEWS, SEQ_LEN)
    predictors.run_predictor(predictor, list(encoded.dataset), 32, per_token=False)
    batch_32 = len(examples) / (time.perf_counter() - started)
    latencies = []
    for example in examples[:200]:
        started = time.perf_counter()
        one = utils.encode_text_examples([example], tokenizer, TNEWS, SEQ_LEN)
        predictors.run_predictor(predictor, list(one.dataset), 1, per_token=False)
        latencies.append(time.perf_counter() - started)
    return {"batch_32_sequences_per_second": batch_32, "batch_1_latency_ms_p50": 1000 * float(np.median(latencies))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, text: str) -> float:
    body = json.dumps({"data": {"text": [text]}}).encode()
    started = time.perf_counter()
    with urllib.request.urlopen(
        urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}), timeout=120
    ) as response:
        response.read()
    return time.perf_counter() - started


def load(url: str, texts, concurrency: int) -> dict:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda text: post(url, text), texts))
    seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "sequences_per_second": len(texts) / seconds,
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p99": 1000 * float(np.percentile(latencies, 99)),
    }


def serve(model_dir: str, texts, threads: int, concurrencies) -> list:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "serve.py"),
            "--model_path",
            model_dir,
            "--port",
            str(port),
            "--num_threads",
            str(threads),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/tnews"
        load(url, texts[:64], 8)  # the client side warms up too
        rows = [load(url, texts, concurrency) for concurrency in concurrencies]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?format=json", timeout=30) as response:
            metrics = json.loads(response.read())
        return rows, metrics
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    name = "nano" if args.quick else "medium"
    dev_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    examples = utils.load_examples(TNEWS, "dev", dev_file)[: args.sentences or (300 if args.quick else 1000)]
    texts = [example.text_a for example in examples]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = export(build_model(name), os.path.join(workdir, "export"))
        ErnieTokenizer(vocab_file=VOCAB_FILE).save_pretrained(model_dir)
        baseline = offline(model_dir, examples, args.threads)
        print(f"infer.py offline: {baseline}", flush=True)
        rows, metrics = serve(model_dir, texts, args.threads, (1, 8, 32))
    for row in rows:
        print(
            f"serve.py concurrency {row['concurrency']}: {row['sequences_per_second']:.1f} seq/s, p50 "
            f"{row['latency_ms_p50']:.1f} ms, p99 {row['latency_ms_p99']:.1f} ms",
            flush=True,
        )
    results = {
        "machine": runtime.machine_details(),
        "model": name,
        "threads": args.threads,
        "sentences": len(examples),
        "offline": baseline,
        "server": rows,
        "server_metrics": metrics,
        "concurrency_32_over_offline": rows[-1]["sequences_per_second"] / baseline["batch_32_sequences_per_second"],
        "concurrency_1_p50_minus_offline_batch_1_ms": rows[0]["latency_ms_p50"] - baseline["batch_1_latency_ms_p50"],
        "seconds": time.perf_counter() - started,
    }
    output = args.output or os.path.join(
        ROOT, "benchmarks", "results", "serve" + ("_quick" if args.quick else "") + ".json"
    )
    runtime.write_json_atomic(output, results)
    print(f"wrote {output}")


if __name__ == "__main__":
    runtime.run_cli(main)
