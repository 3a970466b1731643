"""serve.py against infer.py's offline path, on one machine in one run, for the float default and the compressed best.

    python -m benchmarks.bench_serve                # ERNIE 3.0-Medium shape, 1,000 real TNEWS sentences
    python -m benchmarks.bench_serve --quick        # nano, 300 sentences
    python -m benchmarks.bench_serve --levers       # also each lever turned off in turn (c=1 and c=32)
    python -m benchmarks.bench_serve --best_backend openvino   # the compressed best served by OpenVINO (AMX CPUs)
    python -m benchmarks.bench_serve --compare "--max_passed_over 0" --rounds 4   # only an A/B of two servers

For each model (the float default: Paddle fp32; the compressed best as bench_deploy finds it: the 3/4-width model
served by ONNX Runtime int8, or by OpenVINO int8 with --best_backend openvino, the faster where the CPU has AMX) it
measures infer.py's offline end-to-end throughput at batch 32 and its batch-1 latency on the same sentences, before
and after the server (which is held against the faster of the two), and a real serve.py process on 127.0.0.1 at
concurrency 1 (the first 300 sentences), 8 and 32 with one sentence a request: throughput and p50/p99 latency as the
client sees them. The load generator is an asyncio client in this process writing prebuilt HTTP/1.1 requests on
keep-alive sockets; its own CPU time (and the server's) is recorded beside each row. Two more rows split the gap to
offline: serve.py's batcher alone in this process, fed by 32 closed-loop clients without HTTP (what batching one
sentence a request can give at best: 32 sentences in arrival order, where offline sorts them all by length), and a
serve.py whose model answers at once (--instant_server), whose CPU time a request is what HTTP, the checks,
tokenization and batching cost the event loop. The machine, /proc/loadavg
before and after (the cores may be shared) and the targets (concurrency 32 >= 85% of offline batch 32; concurrency 1
p50 <= offline batch 1 p50 + 2 ms) go to benchmarks/results/serve[_quick].json. The numbers held against
the targets are the medians of --rounds paired rounds (offline batch 32, the batcher alone and the server at
concurrency 32 one after another, the server kept started; then batch 1 and concurrency 1 on the first 300 sentences,
in alternating blocks of 20, each round's added latency the median of the blocks' differences): on a shared 2-core
VM the same run's speed drifted by up to 1.4x within minutes, and a float batch-1 p50 by 50.7-58.9 ms between runs
a minute apart. The batcher alone's rows also split its gap: its thread's share of time in model calls, and its
sequences a second of call time against offline's.
"""

import argparse
import asyncio
import copy
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Optional

import numpy as np

import arguments
import deployment
import dynabert
import model_io
import predictors
import runtime
import serving
import utils
from benchmarks.bench_deploy import calibration_features, int8_folders, served_as
from benchmarks.bench_infer import ROOT, SEQ_LEN, TNEWS_FULL, TNEWS_SLICE, build_model, export, save_results

TNEWS = utils.SEQ_CLS_TASKS["tnews"]
CONCURRENCIES = (1, 8, 32)
# each lever turned off in turn (serve.py's options), measured at concurrency 1 and 32 against all of them on
LEVERS = {
    "all levers": (),
    "no length-sorted model calls (--split_by_length false)": ("--split_by_length", "false"),
    "no passing over for like lengths (--max_passed_over 0)": ("--max_passed_over", "0"),
    "asyncio loop and h11 parser (--loop asyncio --http h11)": ("--loop", "asyncio", "--http", "h11"),
    "no waiting for company (--max_wait_ms 0)": ("--max_wait_ms", "0"),
    "calls of up to 16384 tokens, the former default (--max_batch_tokens 16384)": ("--max_batch_tokens", "16384"),
    "one model call at a time (--model_streams 1)": ("--model_streams", "1"),
}
LONE_REQUESTS = 300  # concurrency 1 sends the first 300 sentences only (its p50 settles; 1,000 would take minutes)
CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


def models(workdir: str, name: str, best_backend: str, calibration_examples, only: Optional[str] = None) -> dict:
    """{label: (model folder, backend, precision)}: the float default and the compressed best's shape and serving
    (the 3/4-width model in int8 by best_backend; OpenVINO's NNCF calibrated on the last 64 calibration_examples);
    with only "float" or "best", that one alone (the other is not built)."""
    model, built = build_model(name), {}
    if only != "best":
        built["float default (paddle fp32)"] = (export(model, os.path.join(workdir, "float")), "paddle", "fp32")
    if only == "float":
        return built
    pruned = dynabert.slice_to_width(copy.deepcopy(model), 0.75)
    if best_backend == "openvino":
        calibration = calibration_features(calibration_examples)
        best = int8_folders(pruned, workdir, "width 3/4", calibration)["width 3/4, openvino int8"]
    else:  # ONNX Runtime quantizes dynamically, when it loads the model
        best = served_as(export(pruned, os.path.join(workdir, "pruned")), "onnxruntime", "int8")
    built[f"compressed best (width 3/4, {best_backend} int8)"] = (best, best_backend, "int8")
    return built


def add_best_backend_option(parser: argparse.ArgumentParser) -> None:
    """--best_backend, for models(): bench_serve's and bench_batching's."""
    parser.add_argument(
        "--best_backend",
        choices=("onnxruntime", "openvino"),
        default="onnxruntime",
        help="what serves the compressed best: the faster int8 backend of bench_deploy on this machine (ONNX Runtime "
        "on AVX2-only CPUs, OpenVINO where AMX is)",
    )


def offline_predictor(model_dir: str, backend: str, precision: str, threads: int, batch_size: int = 32) -> tuple:
    """infer.py's predictor at --batch_size batch_size (warmed at it and at 1) and tokenizer."""
    options = predictors.PredictorOptions(
        backend=backend, precision=precision, num_threads=threads, batch_size=batch_size, max_seq_length=SEQ_LEN
    )
    predictor = predictors.create_predictor(model_dir, options)
    predictors.warm_up_buckets(predictor, batch_size, SEQ_LEN)
    predictors.warm_up_buckets(predictor, 1, SEQ_LEN)
    return predictor, model_io.load_deployed_tokenizer(model_dir)


def offline_one(predictor, tokenizer, example) -> float:
    """Seconds infer.py's path takes for one sentence at batch 1, its tokenization included."""
    started = time.perf_counter()
    one = utils.encode_text_examples([example], tokenizer, TNEWS, SEQ_LEN)
    predictors.run_predictor(predictor, list(one.dataset), 1, per_token=False)
    return time.perf_counter() - started


def offline(model_dir: str, backend: str, precision: str, examples, threads: int) -> dict:
    """infer.py's path: batch 32 end to end (tokenization included), and batch 1 per sentence (a predictor made for
    --batch_size 1, as infer.py makes it: float oneDNN runs unfused matmuls there)."""
    predictor, tokenizer = offline_predictor(model_dir, backend, precision, threads)
    batch_32 = offline_batch_32(predictor, tokenizer, examples)
    del predictor
    predictor, _ = offline_predictor(model_dir, backend, precision, threads, batch_size=1)  # infer.py --batch_size 1
    lone = examples[:LONE_REQUESTS]
    return {**batch_32, "batch_1_latency_ms_p50": float(np.median(offline_one_ms(predictor, tokenizer, lone)))}


def offline_one_ms(predictor, tokenizer, examples) -> np.ndarray:
    """offline_one of each example, in ms."""
    return 1000 * np.array([offline_one(predictor, tokenizer, example) for example in examples])


def offline_batch_32(predictor, tokenizer, examples) -> dict:
    """infer.py's path at batch 32, end to end (tokenization included): its throughput and the cores it kept busy."""
    started, cpu = time.perf_counter(), time.process_time()
    encoded = utils.encode_text_examples(examples, tokenizer, TNEWS, SEQ_LEN)
    predictors.run_predictor(predictor, list(encoded.dataset), 32, per_token=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"batch_32_sequences_per_second": len(examples) / seconds, "batch_32_cpu_cores_busy": cpu / seconds}


LONE_BLOCK = 20  # lone_pairs alternates blocks of this many sentences between offline and the server


def lone_pairs(port: int, model_dir: str, backend: str, precision: str, examples, threads: int) -> dict:
    """Concurrency 1 against batch 1, block by block: each LONE_BLOCK of the first LONE_REQUESTS sentences run
    offline one at a time and sent to the server one at a time (one keep-alive connection), one block right after the
    other, which goes first alternating; the added latency is the median of the blocks' differences of p50, which a
    machine's speed drifting over seconds moves far less than two runs' p50s a minute apart. Blocks, not single
    sentences: a runtime's threads spin a while after each call (ONNX Runtime's do), and sentence by sentence each
    side's spinning slowed the other's calls: offline int8's p50 was 9.9-15.5 ms in three runs so, 5.6-7.8 ms in three
    by blocks."""
    predictor, tokenizer = offline_predictor(model_dir, backend, precision, threads, batch_size=1)
    offline_ms, server_ms = [], []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        reader = connection.makefile("rb")
        lone = examples[:LONE_REQUESTS]
        for index, start in enumerate(range(0, len(lone), LONE_BLOCK)):
            block, times = lone[start : start + LONE_BLOCK], {}
            for side in ("offline", "server") if index % 2 == 0 else ("server", "offline"):
                if side == "offline":
                    times[side] = offline_one_ms(predictor, tokenizer, block)
                else:
                    times[side] = answers_ms(connection, reader, port, [example.text_a for example in block])
            offline_ms.append(times["offline"])
            server_ms.append(times["server"])
    return {
        "offline_batch_1_p50_ms": float(np.median(np.concatenate(offline_ms))),
        "server_concurrency_1_p50_ms": float(np.median(np.concatenate(server_ms))),
        "added_ms": float(np.median([np.median(s) - np.median(o) for o, s in zip(offline_ms, server_ms)])),
    }


def answers_ms(connection: socket.socket, reader, port: int, texts) -> np.ndarray:
    """The ms each text took sent alone on a keep-alive connection, its request built before its clock starts."""
    requests = [http_request(port, text) for text in texts]
    return 1000 * np.array([answer_seconds(connection, reader, request) for request in requests])


def answer_seconds(connection: socket.socket, reader, request: bytes) -> float:
    """Seconds from sending a prebuilt request on a keep-alive connection to its whole answer."""
    started = time.perf_counter()
    connection.sendall(request)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            raise RuntimeError("serve.py closed the connection")
        head += line
    length = CONTENT_LENGTH.search(head)
    body = reader.read(int(length.group(1))) if length else b""
    if not head.startswith(b"HTTP/1.1 200") or not length:
        raise RuntimeError(f"serve.py answered {head.splitlines()[0]!r}: {body[:200]!r}")
    return time.perf_counter() - started


def batcher_alone(model_dir: str, backend: str, precision: str, examples, threads: int, concurrency: int = 32) -> dict:
    """serve.py's batcher (its default limits) in this process, fed by `concurrency` clients each submitting its next
    sentence when its last is answered, without HTTP: its throughput, model calls and padding. The submitting (and
    so the tokenization) is done by this thread, as the server's event loop does it, not by the batcher's."""
    import queue

    served = deployment.resolve_deployment(
        deployment.DeployArguments(model_path=model_dir, backend=backend, precision=precision, num_threads=threads)
    )
    batcher = serving.new_batcher(served, arguments.QAWindowArguments(), serving.ServingLimits())
    make_predictor, clock = batcher.make_predictor, ModelClock()
    batcher.make_predictor = lambda: timed_predictor(make_predictor(), clock)
    batcher.start()
    batcher.settled.wait()
    if batcher.failed:
        raise RuntimeError(f"serve.py's batcher could not start: {batcher.failed}")
    clock.seconds = 0.0  # the calls of this run only, not the warm-up's and the calibration's
    answered = queue.SimpleQueue()  # one item a finished request: a client free for its next sentence
    started = time.perf_counter()
    for index in range(len(examples)):
        if index >= concurrency:
            answered.get()
        batcher.submit([examples[index]]).add_done_callback(answered.put)
    for _ in range(min(concurrency, len(examples))):
        answered.get()
    seconds = time.perf_counter() - started
    metrics = batcher.metrics()
    batcher.close()
    model_seconds = clock.seconds
    return {
        "concurrency": concurrency,
        "sequences_per_second": len(examples) / seconds,
        # where the gap to offline lies: the batcher's thread outside model calls, or the calls it makes
        "model_busy_share": model_seconds / seconds,
        "sequences_per_model_second": len(examples) / model_seconds,
        **{key: metrics[key] for key in ("batches", "model_calls", "tokens", "padded_tokens")},
    }


class ModelClock:
    """The time during which at least one model call runs (calls of several streams at once count once)."""

    def __init__(self):
        self.seconds, self.running, self.since, self.lock = 0.0, 0, 0.0, threading.Lock()

    def enter(self) -> None:
        with self.lock:
            if not self.running:
                self.since = time.perf_counter()
            self.running += 1

    def leave(self) -> None:
        with self.lock:
            self.running -= 1
            if not self.running:
                self.seconds += time.perf_counter() - self.since


class TimedPredictor:
    """A predictor whose calls (run) count on a ModelClock."""

    def __init__(self, predictor, clock: ModelClock):
        self.predictor, self.clock = predictor, clock

    def __getattr__(self, name):  # its length bucket, the shapes it keeps
        return getattr(self.predictor, name)

    def run(self, batch):
        self.clock.enter()
        try:
            return self.predictor.run(batch)
        finally:
            self.clock.leave()


def timed_predictor(predictor, clock: ModelClock):
    """predictor timed on clock; a StreamedPredictor's two predictors each (the batcher calls them, not its run)."""
    if isinstance(predictor, predictors.StreamedPredictor):
        predictor.whole, predictor.shared = (
            TimedPredictor(predictor.whole, clock),
            TimedPredictor(predictor.shared, clock),
        )
    return TimedPredictor(predictor, clock)


class InstantPredictor:
    """A model that answers at once (zeros for each label): --instant_server's."""

    def __init__(self, labels: int):
        self.labels = labels

    def run(self, batch):
        return [np.zeros((len(batch["input_ids"]), self.labels), dtype="float32")]


def instant_server(model_dir: str, port: int) -> None:
    """serve.py's app, with its default limits, server and parser, for model_dir's task and tokenizer, with a model
    that answers at once."""
    import uvicorn

    served = deployment.resolve_deployment(deployment.DeployArguments(model_path=model_dir, backend="onnxruntime"))
    labels = len(served.task.labels)
    limits = serving.ServingLimits()
    batcher = serving.Batcher(
        lambda: InstantPredictor(labels), served.model_path, served.task, arguments.QAWindowArguments(), SEQ_LEN, limits
    ).start()
    app = serving.create_app(batcher, served.task, limits)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=serving.http_protocol("auto"))


def http_cost(model_dir: str, texts) -> list:
    """The server's CPU time a request with a model that answers at once, at concurrency 1 and 32."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bench_serve", "--instant_server", model_dir, "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(process, port)
        load(port, process.pid, texts[:64], 8)
        rows = [load(port, process.pid, texts[: LONE_REQUESTS if c == 1 else None], c) for c in (1, 32)]
    finally:
        stop_servers([process])
    for row in rows:
        row["server_cpu_ms_per_request"] = 1000 * row["server_cpu_cores_busy"] / row["sequences_per_second"]
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_request(port: int, text: str) -> bytes:
    body = json.dumps({"data": {"text": [text]}}, ensure_ascii=False).encode()
    head = f"POST /tnews HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


async def keep_alive_client(port: int, requests: list, next_index: list, latencies: list) -> None:
    """One connection sending the next prebuilt request each time the last one is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while next_index[0] < len(requests):
            request = requests[next_index[0]]
            next_index[0] += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"serve.py answered {head.splitlines()[0]!r}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def run_load(port: int, requests: list, concurrency: int) -> list:
    latencies, next_index = [], [0]
    await asyncio.gather(*(keep_alive_client(port, requests, next_index, latencies) for _ in range(concurrency)))
    return latencies


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, server_pid: int, texts, concurrency: int) -> dict:
    requests = [http_request(port, text) for text in texts]
    client_cpu, server_cpu = time.process_time(), process_cpu_seconds(server_pid)
    started = time.perf_counter()
    latencies = asyncio.run(run_load(port, requests, concurrency))
    seconds = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, process_cpu_seconds(server_pid) - server_cpu
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "sequences_per_second": len(texts) / seconds,
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p99": 1000 * float(np.percentile(latencies, 99)),
        "client_cpu_ms_per_request": 1000 * client_cpu / len(texts),
        "client_cpu_share_of_one_core": client_cpu / seconds,
        "server_cpu_cores_busy": server_cpu / seconds,
        "loadavg_after": open("/proc/loadavg").read().split()[:3],  # the machine's other work, if any
    }


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def start_server(model_dir: str, threads: int, port: int, flags) -> subprocess.Popen:
    command = [sys.executable, os.path.join(ROOT, "serve.py"), "--model_path", model_dir, "--port", str(port)]
    process = subprocess.Popen(
        command + ["--num_threads", str(threads), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return wait_ready(process, port)


def wait_ready(process: subprocess.Popen, port: int) -> subprocess.Popen:
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            said = [line for line in process.stderr.read().splitlines() if line.strip()]
            raise runtime.UserError(f"serve.py exited before it was ready: {said[-1] if said else 'no message'}")
        try:
            if get_json(f"http://127.0.0.1:{port}/health").get("status") == "ready":
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server was not ready within 600 s")


def serve(model_dir: str, texts, threads: int, concurrencies, flags=(), then=None) -> tuple:
    """Rows of the server at each concurrency, and its /metrics after them; with then, also then(port, pid)'s result
    (the server still started)."""
    port = free_port()
    process = start_server(model_dir, threads, port, flags)
    try:
        load(port, process.pid, texts[:64], 8)  # the client side warms up too
        rows = [load(port, process.pid, texts[: LONE_REQUESTS if c == 1 else None], c) for c in concurrencies]
        metrics = get_json(f"http://127.0.0.1:{port}/metrics?format=json")
        return (rows, metrics) + ((then(port, process.pid),) if then else ())
    finally:
        stop_servers([process])


def stop_servers(processes) -> None:
    """SIGTERM to every server first (each drains its requests), then wait for each, killing one that takes over
    120 s."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def paired_rounds(port: int, pid: int, model_dir, backend, precision, examples, texts, threads, rounds: int) -> list:
    """Rounds of offline (batch 32 and batch 1), the batcher alone and the server (kept started) at concurrency 32
    and 1, one after the other: each round's ratio and added latency come from neighbours in time (a shared machine's
    speed drifts over minutes)."""
    measured = []
    for _ in range(rounds):
        predictor, tokenizer = offline_predictor(model_dir, backend, precision, threads)
        offline_32 = offline_batch_32(predictor, tokenizer, examples)["batch_32_sequences_per_second"]
        del predictor
        alone_row = batcher_alone(model_dir, backend, precision, examples, threads)
        alone = alone_row["sequences_per_second"]
        server = load(port, pid, texts, 32)["sequences_per_second"]
        lone = lone_pairs(port, model_dir, backend, precision, examples, threads)
        measured.append(
            {
                "offline_batch_32": offline_32,
                "batcher_alone": alone,
                "server_concurrency_32": server,
                "server_over_offline": server / offline_32,
                "batcher_alone_over_offline": alone / offline_32,
                "batcher_alone_model_busy_share": alone_row["model_busy_share"],
                "batcher_alone_model_time_over_offline": alone_row["sequences_per_model_second"] / offline_32,
                "offline_batch_1_p50_ms": lone["offline_batch_1_p50_ms"],
                "server_concurrency_1_p50_ms": lone["server_concurrency_1_p50_ms"],
                "concurrency_1_added_ms": lone["added_ms"],  # the median of the blocks' differences of p50
            }
        )
        print(f"  paired round: {measured[-1]}", flush=True)
    return measured


def targets(baseline: dict, rows: list, rounds: list) -> dict:
    by_concurrency = {row["concurrency"]: row for row in rows}
    ratio = float(np.median([r["server_over_offline"] for r in rounds]))
    added = float(np.median([r["concurrency_1_added_ms"] for r in rounds]))
    per_cpu = by_concurrency[32]["sequences_per_second"] / by_concurrency[32]["server_cpu_cores_busy"]
    return {
        "concurrency_32_over_offline": ratio,
        "batcher_alone_over_offline": float(np.median([r["batcher_alone_over_offline"] for r in rounds])),
        # the batcher alone's gap split: its thread's time outside model calls; its calls against offline's
        "batcher_alone_model_busy_share": float(np.median([r["batcher_alone_model_busy_share"] for r in rounds])),
        "batcher_alone_model_time_over_offline": float(
            np.median([r["batcher_alone_model_time_over_offline"] for r in rounds])
        ),
        "concurrency_32_over_offline_single_run": by_concurrency[32]["sequences_per_second"]
        / baseline["batch_32_sequences_per_second"],
        # the same per CPU second each process got (the server's, the offline run's): the cores are shared
        "concurrency_32_over_offline_per_cpu_second": per_cpu / baseline["batch_32_sequences_per_cpu_second"],
        "concurrency_1_p50_minus_offline_batch_1_ms": added,
        # against the faster of the offline runs before and after the server (the lower of two noisy p50s)
        "concurrency_1_p50_minus_offline_batch_1_ms_single_run": by_concurrency[1]["latency_ms_p50"]
        - baseline["batch_1_latency_ms_p50"],
        "met_85_percent": ratio >= 0.85,
        "met_2_ms": added <= 2.0,
    }


def lever_rows(model_dir: str, texts, threads: int) -> list:
    rows = []
    for lever, flags in LEVERS.items():
        measured, metrics = serve(model_dir, texts, threads, (1, 32), flags)
        rows.append({"server": lever, "flags": list(flags), "rows": measured, "model_calls": metrics["model_calls"]})
        print(f"  {lever}: " + ", ".join(f"c={r['concurrency']} {r['sequences_per_second']:.1f} seq/s "
                                        f"p50 {r['latency_ms_p50']:.1f} ms" for r in measured), flush=True)  # fmt: skip
    return rows


def json_encoder_microseconds(repeats: int = 2000) -> dict:
    """One answer's encoding: Starlette's JSONResponse against serving.json_answer (orjson where installed)."""
    from starlette.responses import JSONResponse

    answer = {"result": [{"text": "以色列大规模空袭开始", "label": "news_military", "probability": 0.9312}]}
    times = {}
    for name, encode in (("JSONResponse", JSONResponse), ("serving.json_answer", serving.json_answer)):
        started = time.perf_counter()
        for _ in range(repeats):
            encode(answer)
        times[name] = 1e6 * (time.perf_counter() - started) / repeats
    return times


def tokenization_ms_per_request(model_dir: str, examples) -> float:
    """What encoding one request costs (now in the request's handler, before it joins a batch; it was on the
    model's thread, before each batch)."""
    tokenizer = model_io.load_deployed_tokenizer(model_dir)
    started = time.perf_counter()
    for example in examples:
        utils.encode_examples(TNEWS, "request", [example], tokenizer, SEQ_LEN, True, with_labels=False)
    return 1000 * (time.perf_counter() - started) / len(examples)


def faster_offline(before: dict, after: dict) -> dict:
    """The offline numbers the server is held against: the faster of those measured before and after it (the cores
    may be shared with other work that comes and goes), with both kept."""
    return {
        "batch_32_sequences_per_second": max(r["batch_32_sequences_per_second"] for r in (before, after)),
        "batch_1_latency_ms_p50": min(r["batch_1_latency_ms_p50"] for r in (before, after)),
        "batch_32_sequences_per_cpu_second": max(
            r["batch_32_sequences_per_second"] / r["batch_32_cpu_cores_busy"] for r in (before, after)
        ),
        "before_server": before,
        "after_server": after,
    }


def measure_model(label, model_dir, backend, precision, examples, texts, args) -> dict:
    before = offline(model_dir, backend, precision, examples, args.threads)
    print(f"{label}: infer.py offline {before}", flush=True)
    alone = batcher_alone(model_dir, backend, precision, examples, args.threads)
    print(f"{label}: serve.py's batcher alone, 32 clients without HTTP {alone}", flush=True)

    def rounds_beside(port, pid):
        return paired_rounds(port, pid, model_dir, backend, precision, examples, texts, args.threads, args.rounds)

    rows, metrics, rounds = serve(model_dir, texts, args.threads, CONCURRENCIES, then=rounds_beside)
    after = offline(model_dir, backend, precision, examples, args.threads)
    print(f"{label}: infer.py offline again {after}", flush=True)
    baseline = faster_offline(before, after)
    for row in rows:
        print(
            f"{label}: serve.py concurrency {row['concurrency']}: {row['sequences_per_second']:.1f} seq/s, p50 "
            f"{row['latency_ms_p50']:.1f} ms, p99 {row['latency_ms_p99']:.1f} ms (client CPU "
            f"{row['client_cpu_ms_per_request']:.2f} ms a request)",
            flush=True,
        )
    result = {"path": label, "backend": backend, "precision": precision, "offline": baseline, "server": rows}
    result.update(batcher_alone=alone, paired_rounds=rounds, server_metrics=metrics, **targets(baseline, rows, rounds))
    if args.levers:
        result["levers"] = lever_rows(model_dir, texts[: args.lever_sentences], args.threads)
    return result


def compare_servers(model_dir, backend, precision, examples, texts, threads: int, flags, rounds: int) -> dict:
    """An A/B of two serve.py processes on one model folder, started side by side: the defaults against `flags`.
    Each round measures offline batch 32 and batch 1 (the first LONE_REQUESTS sentences), then each server at
    concurrency 32 on every sentence and at concurrency 1 on those, which server goes first alternating; each server's
    ratio to that round's offline, and B over A, round by round."""
    labels = ("defaults", " ".join(flags))
    servers = {}
    try:
        for label, server_flags in zip(labels, ((), tuple(flags))):
            port = free_port()
            servers[label] = (start_server(model_dir, threads, port, server_flags), port)
            load(port, servers[label][0].pid, texts[:64], 8)  # the client side warms up too
        measured, (predictor, tokenizer) = [], offline_predictor(model_dir, backend, precision, threads)
        lone, _ = offline_predictor(model_dir, backend, precision, threads, batch_size=1)  # infer.py --batch_size 1
        for index in range(rounds):
            offline_32 = offline_batch_32(predictor, tokenizer, examples)["batch_32_sequences_per_second"]
            lone_ms = offline_one_ms(lone, tokenizer, examples[:LONE_REQUESTS])
            row = {"offline_batch_32": offline_32, "offline_batch_1_p50_ms": float(np.median(lone_ms))}
            for label in labels if index % 2 == 0 else labels[::-1]:
                process, port = servers[label]
                served = load(port, process.pid, texts, 32)
                row[label] = {key: served[key] for key in ("sequences_per_second", "latency_ms_p50", "latency_ms_p99")}
                row[label]["over_offline"] = served["sequences_per_second"] / offline_32
                row[label]["concurrency_1_p50_ms"] = concurrency_1_p50_ms(port, texts[:LONE_REQUESTS])
            row["b_over_a"] = row[labels[1]]["sequences_per_second"] / row[labels[0]]["sequences_per_second"]
            measured.append(row)
            print(f"  compare round: {row}", flush=True)
    finally:
        stop_servers([process for process, _ in servers.values()])
    return {"a": labels[0], "b": labels[1], "rounds": measured, **compare_summary(labels, measured)}


def concurrency_1_p50_ms(port: int, texts) -> float:
    """The p50 of texts sent to the server one at a time on one keep-alive connection."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        return float(np.median(answers_ms(connection, connection.makefile("rb"), port, texts)))


def compare_summary(labels, rounds: list) -> dict:
    """The medians of compare_servers' rounds, and the rounds B won (at concurrency 32)."""
    summary = {
        f"{side}_over_offline": float(np.median([r[label]["over_offline"] for r in rounds]))
        for side, label in zip("ab", labels)
    }
    summary["offline_batch_1_p50_ms"] = float(np.median([r["offline_batch_1_p50_ms"] for r in rounds]))
    summary.update(
        {
            f"{side}_concurrency_1_p50_ms": float(np.median([r[label]["concurrency_1_p50_ms"] for r in rounds]))
            for side, label in zip("ab", labels)
        }
    )
    summary.update(
        {
            f"{side}_latency_ms_p99": float(np.median([r[label]["latency_ms_p99"] for r in rounds]))
            for side, label in zip("ab", labels)
        }
    )
    ratios = [r["b_over_a"] for r in rounds]
    summary.update(b_over_a=float(np.median(ratios)), b_won=sum(ratio > 1.0 for ratio in ratios))
    return summary


def busy_note(results: dict) -> str:
    """Whether other work shared the cores: the highest 1-minute load average seen against the core count plus one
    (the benchmark's own client and the server's event loop run beside the model's threads), and how many cores the
    server got at concurrency 32."""
    loads = [float(results["loadavg_before"][0]), float(results["loadavg_after"][0])]
    loads += [float(row["loadavg_after"][0]) for model in results["models"] for row in model["server"]]
    cores = results["machine"]["cores"]
    got = ", ".join(
        f"{model['path']}: {model['server'][-1]['server_cpu_cores_busy']:.2f}" for model in results["models"]
    )
    if max(loads) <= cores + 1:
        return (
            f"no: 1-minute load average at most {max(loads):.1f} on {cores} cores, the benchmark's own processes "
            f"included; the server used {got} cores at concurrency 32"
        )
    return (
        f"yes: 1-minute load average up to {max(loads):.1f} on {cores} cores (other runs); the server used "
        f"{got} cores at concurrency 32, so its rows and the offline ones saw different shares of the CPU"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levers", action="store_true", help="also each lever off in turn (c=1 and c=32)")
    parser.add_argument("--lever_sentences", type=int, default=200)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="paired rounds of offline (batch 32 and 1), the batcher alone and the server (concurrency 32 and 1), "
        "whose medians are the numbers held against the targets",
    )
    add_best_backend_option(parser)
    parser.add_argument(
        "--compare",
        metavar="FLAGS",
        default=None,
        help="only an A/B: two serve.py processes side by side, the defaults against these serve.py options (one "
        "string, e.g. '--max_passed_over 0'), --rounds rounds at concurrency 32 beside offline batch 32; to "
        "benchmarks/results/serve_compare[_quick].json",
    )
    parser.add_argument(
        "--compare_best_only",
        action="store_true",
        help="--compare on the compressed best alone (for options of its backend only, which the float default's "
        "Paddle refuses)",
    )
    parser.add_argument(
        "--compare_float_only",
        action="store_true",
        help="--compare on the float default alone (for options of float Paddle only, which the best refuses)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--instant_server",
        metavar="MODEL_DIR",
        default=None,
        help="(run by the benchmark itself) serve MODEL_DIR's task and tokenizer with a model that answers at once, "
        "on --port, until SIGTERM",
    )
    parser.add_argument("--port", type=int, default=8189)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    for only in ("compare_best_only", "compare_float_only"):
        if getattr(args, only) and args.compare is None:
            parser.error(f"--{only} is an option of --compare")
    if args.compare_best_only and args.compare_float_only:
        parser.error("--compare_best_only and --compare_float_only: give one of them")
    if args.instant_server:
        instant_server(args.instant_server, args.port)
        return
    name = "nano" if args.quick else "medium"
    dev_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    dev_examples = utils.load_examples(TNEWS, "dev", dev_file)
    examples = dev_examples[: args.sentences or (300 if args.quick else 1000)]
    texts = [example.text_a for example in examples]
    started, load_before = time.perf_counter(), open("/proc/loadavg").read().split()[:3]
    if args.compare is not None:
        compare_main(args, name, dev_examples, examples, texts, started)
        return
    with tempfile.TemporaryDirectory() as workdir:
        paths = models(workdir, name, args.best_backend, dev_examples[len(examples) :] or examples)
        rows = [measure_model(label, *where, examples, texts, args) for label, where in paths.items()]
        extras = {
            "instant_model_server": http_cost(paths[next(iter(paths))][0], texts),
            "json_encoder_us_per_answer": json_encoder_microseconds(),
            "tokenization_ms_per_request": tokenization_ms_per_request(next(iter(paths.values()))[0], examples),
        }
    results = {
        **run_details(name, args.threads, len(examples)),
        "loadavg_before": load_before,
        "loadavg_after": open("/proc/loadavg").read().split()[:3],
        "models": rows,
        **extras,
        "seconds": time.perf_counter() - started,
    }
    results["machine_busy"] = busy_note(results)
    save_results(results, "serve", args.quick, args.output)


def run_details(name: str, threads: int, sentences: int) -> dict:
    """What every bench_serve results file begins with: the machine, the model shape, threads, sentences, client."""
    return {
        "machine": runtime.machine_details(),
        "model": name,
        "threads": threads,
        "sentences": sentences,
        "load_generator": "asyncio, prebuilt HTTP/1.1 requests on keep-alive sockets, in the benchmark's process",
    }


def compare_main(args, name: str, dev_examples, examples, texts, started: float) -> None:
    flags = shlex.split(args.compare)
    if not flags:
        raise runtime.UserError("--compare needs serve.py options to hold against the defaults")
    with tempfile.TemporaryDirectory() as workdir:
        only = "best" if args.compare_best_only else "float" if args.compare_float_only else None
        paths = models(workdir, name, args.best_backend, dev_examples[len(examples) :] or examples, only)
        rows = [
            {"path": label, **compare_servers(*where, examples, texts, args.threads, flags, args.rounds)}
            for label, where in paths.items()
        ]
    results = {
        **run_details(name, args.threads, len(examples)),
        "compare_flags": flags,
        "compare": rows,
        "seconds": time.perf_counter() - started,
    }
    save_results(results, "serve_compare", args.quick, args.output)


if __name__ == "__main__":
    runtime.run_cli(main)
