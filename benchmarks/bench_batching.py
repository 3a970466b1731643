"""What batching one sentence a request can reach at best, against offline's length-sorted batches of 32: the
composition alone (no threads, no HTTP), costed on the model's own call times.

    python -m benchmarks.bench_batching            # ERNIE 3.0-Medium shape, 1,000 real TNEWS sentences
    python -m benchmarks.bench_batching --quick    # nano, 300 sentences
    python -m benchmarks.bench_batching --best_backend openvino   # the compressed best in OpenVINO int8 (AMX CPUs)

For each model (bench_serve's: the float default in Paddle fp32, the 3/4-width compressed best in ONNX Runtime int8,
or in OpenVINO int8 with --best_backend openvino)
it times a call of n rows of L tokens on a grid of n and L (interleaved passes, each cell its fastest), then costs on
that grid the model calls each schedule makes of the same sentences sent by --clients closed-loop clients, one
sentence a request (each answered sentence brings that client's next): serve.py's batches (serving.efficient_window's
run of the queue, a sentence passed over at most 2, 3 or 6 times, cut by serving.length_sorted_calls, both deciding
on the cost the server measures at start); serve.py's cut rule alone (the queue taken whole: --max_passed_over 0),
on that cost and on the grid itself; one padded call a batch; holding back calls of fewer than 8 rows for up to 2 or
4 rounds. Offline: the
same sentences sorted by length, batches of 32. One more line estimates what packing each queue's sentences into rows
of 128 tokens would cost (a sentence's own positions and attention mask within its row: not built, the exported
programs take no such inputs), on the same grid. Each grid cell is timed twice: after the cell before (another shape)
and right after itself; every costed call, offline's too, is charged the second where its shape is among the
backend's last kept (Paddle's float oneDNN keeps two, ONNX Runtime and OpenVINO are taken to keep one), the first
otherwise.
The machine and the ratios go to benchmarks/results/batching[_quick].json.
"""

import argparse
import collections
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np

import model_io
import predictors
import runtime
import serving
import utils
from benchmarks.bench_infer import SEQ_LEN, TNEWS_FULL, TNEWS_SLICE, save_results
from benchmarks.bench_serve import TNEWS, add_best_backend_option, models

GRID_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
GRID_LENGTHS = (8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128)
PACKED_ROW = 128


@dataclass
class CallTimes:
    """What a call costs: on the warm grid where its shape is one the backend still keeps (its last `kept`), else on
    the cold grid (a call after other shapes: Paddle's float oneDNN rebuilds its primitives, ONNX Runtime pays too)."""

    warm: serving.CallCost
    cold: serving.CallCost
    kept: int = 1

    def charges(self) -> Callable[[int, int], float]:
        """A fresh sequence of calls: each call's seconds, given the calls before it."""
        kept = serving.KeptShapes(self.kept)

        def charge(rows: int, longest: int) -> float:
            shape = self.warm.shape(rows, longest)
            grid = self.warm if shape in kept else self.cold
            kept.add(shape)
            return grid.of(rows, longest)

        return charge


def measure_grids(predictor, passes: int = 2) -> CallTimes:
    """Each cell's fastest of `passes` interleaved passes over the grid: its first call after the cell before (cold)
    and a second right after it (warm)."""
    names = predictors.EXPORT_INPUT_NAMES
    cells = [(length, rows) for length in GRID_LENGTHS for rows in GRID_ROWS]
    cold, warm = (collections.defaultdict(lambda: float("inf")) for _ in range(2))
    for _ in range(passes):
        for length, rows in cells:
            batch = {name: np.ones((rows, length), dtype="int64") for name in names}
            cold[length, rows] = min(cold[length, rows], serving.timed_call(predictor, batch))
            warm[length, rows] = min(warm[length, rows], serving.timed_call(predictor, batch))
    bucket = getattr(predictor, "length_bucket", 1)
    grids = [
        serving.CallCost(
            GRID_ROWS,
            GRID_LENGTHS,
            tuple(tuple(times[length, rows] for rows in GRID_ROWS) for length in GRID_LENGTHS),
            bucket,
        )
        for times in (warm, cold)
    ]
    return CallTimes(*grids, getattr(predictor, "shapes_kept", None) or 1)


def offline_seconds(lengths: Sequence[int], times: CallTimes, batch_size: int = 32) -> float:
    """infer.py's batches: the sentences sorted by length, batch_size a call."""
    ordered, charge = sorted(lengths), times.charges()
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return sum(charge(len(chunk), chunk[-1]) for chunk in chunks)


# A schedule: given the queued sentences (indices) and how often each was passed over, the model calls to run now.
Schedule = Callable[[List[int], collections.Counter], List[List[int]]]


def closed_loop(lengths: Sequence[int], clients: int, schedule: Schedule, times: CallTimes) -> dict:
    """The model time of every sentence sent by `clients` clients, each sending its next once its last is answered."""
    queue, sent = list(range(min(clients, len(lengths)))), clients
    seconds, calls, passed_over, charge = 0.0, 0, collections.Counter(), times.charges()
    while queue:
        run = schedule(queue, passed_over)
        chosen = {index for call in run for index in call}
        for call in run:
            seconds += charge(len(call), max(lengths[i] for i in call))
            calls += 1
        for index in queue:
            if index not in chosen:
                passed_over[index] += 1
        queue = [index for index in queue if index not in chosen]
        for _ in range(len(chosen)):
            if sent < len(lengths):
                queue.append(sent)
                sent += 1
    return {"model_seconds": seconds, "model_calls": calls}


def cut_rule(lengths, cost, max_rows: int = 32, max_tokens: int = serving.DEFAULT_BATCH_TOKENS) -> Schedule:
    """serve.py's: the queue whole, cut where the padding saved outweighs another call (cost: what decides)."""

    def schedule(queue, passed_over):
        calls = serving.length_sorted_calls([lengths[i] for i in queue], cost, max_rows, max_tokens)
        return [[queue[i] for i in call] for call in calls]

    return schedule


def held_back(
    lengths, cost, min_rows: int, max_rounds: int, max_tokens: int = serving.DEFAULT_BATCH_TOKENS
) -> Schedule:
    """The cut rule's calls, but a call of fewer than min_rows rows waits for company (up to max_rounds rounds)."""
    cut = cut_rule(lengths, cost, max_tokens=max_tokens)

    def schedule(queue, passed_over):
        calls = cut(queue, passed_over)
        ripe = [c for c in calls if len(c) >= min_rows or any(passed_over[i] >= max_rounds for i in c)]
        return ripe or [max(calls, key=len)]

    return schedule


def served_windows(
    lengths, cost, max_passed_over: int, kept: int, max_rows: int = 32, max_tokens: int = serving.DEFAULT_BATCH_TOKENS
):
    """serve.py's batches with --max_passed_over: serving.efficient_window's sentences of the queue (all of it where
    none has been passed over max_passed_over times yet: the window must hold those that have), cut by the cut
    rule; both decide on `cost` and on the shapes the backend still keeps (a new one costs cost.new_shape)."""
    shapes = serving.KeptShapes(kept)

    def schedule(queue, passed_over):
        queued = [lengths[i] for i in queue]
        overdue = [passed_over[i] >= max_passed_over for i in queue]
        chosen = serving.efficient_window(queued, [1] * len(queue), queued, cost, max_rows, max_tokens, overdue, shapes)
        run = [queue[i] for i in chosen]
        calls = serving.length_sorted_calls([lengths[i] for i in run], cost, max_rows, max_tokens, shapes)
        for call in calls:
            shapes.add(cost.shape(len(call), max(lengths[run[i]] for i in call)))
        return [[run[i] for i in call] for call in calls]

    return schedule


def packed_rows(sentence_lengths: Sequence[int], row_tokens: int = PACKED_ROW) -> int:
    """Rows of row_tokens that first-fit decreasing packs these sentences into."""
    rows: List[int] = []
    for length in sorted(sentence_lengths, reverse=True):
        for i, used in enumerate(rows):
            if used + length <= row_tokens:
                rows[i] += length
                break
        else:
            rows.append(length)
    return len(rows)


def packed_seconds(lengths: Sequence[int], clients: int, times: CallTimes) -> float:
    """Each queue of `clients` arrivals packed into rows of PACKED_ROW tokens, one call (the same grid: attention is
    computed over the whole row, masked to each sentence)."""
    charge = times.charges()
    return sum(charge(packed_rows(lengths[i : i + clients]), PACKED_ROW) for i in range(0, len(lengths), clients))


def schedules(lengths, grid: serving.CallCost, server_cost, kept: int, tokens: int) -> dict:
    """Each schedule's calls hold at most tokens padded tokens (serve.py's --max_batch_tokens for the backend)."""
    return {
        "serve.py's windows, passed over at most 2 times": served_windows(
            lengths, server_cost, 2, kept, max_tokens=tokens
        ),
        "serve.py's windows, passed over at most 3 times": served_windows(
            lengths, server_cost, 3, kept, max_tokens=tokens
        ),
        "serve.py's windows, passed over at most 6 times": served_windows(
            lengths, server_cost, 6, kept, max_tokens=tokens
        ),
        "serve.py's cut rule (its start-up cost model)": cut_rule(lengths, server_cost, max_tokens=tokens),
        "the cut rule, deciding on the grid itself": cut_rule(lengths, grid, max_tokens=tokens),
        "one padded call a batch": cut_rule(lengths, serving.CallCost.linear(1e12), max_tokens=tokens),
        "calls under 8 rows held back up to 2 rounds": held_back(lengths, grid, 8, 2, tokens),
        "calls under 8 rows held back up to 4 rounds": held_back(lengths, grid, 8, 4, tokens),
    }


def measure_model(label: str, model_dir: str, backend: str, precision: str, examples, args) -> dict:
    options = predictors.PredictorOptions(
        backend=backend, precision=precision, num_threads=args.threads, batch_size=32, max_seq_length=SEQ_LEN
    )
    predictor = predictors.create_predictor(model_dir, options)
    tokenizer = model_io.load_deployed_tokenizer(model_dir)
    encoded = utils.encode_text_examples(examples, tokenizer, TNEWS, SEQ_LEN)
    lengths = [len(feature["input_ids"]) for feature in encoded.dataset]
    times = measure_grids(predictor)
    grid = times.warm  # what the schedules decide on
    tokens = serving.ServingLimits().for_predictor(predictor).max_batch_tokens  # serve.py's default for the backend
    server_cost = serving.measure_call_cost(predictor, 32, SEQ_LEN, tokens)
    offline = offline_seconds(lengths, times)
    rows = {}
    for name, schedule in schedules(lengths, grid, server_cost, times.kept, tokens).items():
        row = closed_loop(lengths, args.clients, schedule, times)
        rows[name] = {**row, "over_offline": offline / row["model_seconds"]}
        print(f"{label}: {name}: {rows[name]['over_offline']:.1%} of offline, {row['model_calls']} calls", flush=True)
    packed = packed_seconds(lengths, args.clients, times)
    print(f"{label}: packed into rows of {PACKED_ROW}: {offline / packed:.1%} of offline", flush=True)
    return {
        "path": label,
        "backend": backend,
        "precision": precision,
        "tokens": sum(lengths),
        "max_batch_tokens": tokens,
        "grid": {"rows": list(grid.rows), "lengths": list(grid.lengths), "seconds": grid.seconds},
        "grid_after_other_shapes": times.cold.seconds,
        "shapes_kept": times.kept,
        "offline_model_seconds": offline,
        "schedules": rows,
        "packed_into_rows_of_128": {"model_seconds": packed, "over_offline": offline / packed},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients, one sentence a request")
    parser.add_argument("--threads", type=int, default=2)
    add_best_backend_option(parser)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error(f"--clients must be at least 1, not {args.clients}")
    name = "nano" if args.quick else "medium"
    dev_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    examples = utils.load_examples(TNEWS, "dev", dev_file)[: args.sentences or (300 if args.quick else 1000)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        paths = models(workdir, name, args.best_backend, examples)
        rows = [measure_model(label, *where, examples, args) for label, where in paths.items()]
    results = {
        "machine": runtime.machine_details(),
        "model": name,
        "threads": args.threads,
        "sentences": len(examples),
        "clients": args.clients,
        "batching": rows,
        "seconds": time.perf_counter() - started,
    }
    save_results(results, "batching", args.quick, args.output)


if __name__ == "__main__":
    runtime.run_cli(main)
