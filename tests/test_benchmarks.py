"""The benchmarks' own arithmetic: the FLOPs and bytes that results are held against, and the tables the README
publishes from results files."""

import collections
import concurrent.futures
import copy
import json
import os
import time

import pytest

import dynabert
import model_folder
import predictors
import runtime
import serving
import students
from benchmarks import tables
from benchmarks.bench_infer import build_model, encoder_weight_bytes, model_flops

NANO_LAYERS, NANO_HIDDEN, NANO_INTERMEDIATE = 4, 312, 1248


@pytest.fixture(scope="module")
def nano():
    return build_model("nano")


def test_model_flops_are_the_issue_formula_and_follow_the_pruned_widths(nano):
    length, hidden = 128, NANO_HIDDEN
    assert model_flops(nano, length) == pytest.approx(NANO_LAYERS * (24 * hidden**2 * length + 4 * length**2 * hidden))
    pruned = dynabert.slice_to_width(copy.deepcopy(nano), 0.75)
    attention, intermediate = 9 * 26, 936  # 9 of 12 heads of 26, 3/4 of 1248 neurons
    expected = NANO_LAYERS * (
        2 * length * (4 * hidden * attention + 2 * hidden * intermediate) + 4 * length**2 * attention
    )
    assert model_flops(pruned, length) == pytest.approx(expected)


def test_the_benchmarks_export_a_folder_infer_serves(nano, tmp_path):
    """The benchmarks' own export writes the typed task file deployment reads (a dict once passed unnoticed)."""
    from benchmarks.bench_infer import export

    folder = export(nano, str(tmp_path / "export"))
    assert model_folder.read_task_file(folder).task_name == "tnews"
    files = model_folder.read_model_files(folder)
    assert not files.quantized


def test_encoder_weight_bytes_count_every_encoder_parameter_once(nano):
    hidden, inner = NANO_HIDDEN, NANO_INTERMEDIATE
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * inner + inner) + (inner * hidden + hidden) + 2 * 2 * hidden
    assert encoder_weight_bytes(nano) == 4 * NANO_LAYERS * per_layer
    assert encoder_weight_bytes(nano, bytes_per_weight=1) == NANO_LAYERS * per_layer


def fixed_row(model, backend, threads, batch_size, latency_ms, peak_fraction):
    return {
        "model": model,
        "backend": backend,
        "threads": threads,
        "batch_size": batch_size,
        "latency_ms": latency_ms,
        "sequences_per_second": 1000 * batch_size / latency_ms,
        "peak_fraction": peak_fraction,
    }


def test_tables_put_each_measurement_in_its_own_cell():
    results = {
        "machine": {"cpu": "Test CPU", "flags": ["avx2"]},
        "matmul_peak_gflops": {"1": 100.0, "2": 200.0},
        "fixed_shape": [
            fixed_row("nano", "paddle", 1, 1, 12.34, 0.5),
            fixed_row("nano", "paddle", 2, 1, 7.0, 0.4),
            fixed_row("nano", "paddle", 1, 32, 640.0, 0.7),
            fixed_row("nano", "paddle", 2, 32, 320.0, 0.81),
            fixed_row("nano", "onnxruntime", 1, 1, 9.0, 0.6),
        ],
        "real_data": [
            {
                "model": "nano",
                "kind": "real TNEWS, end to end",
                "sentences": 10,
                "threads": 2,
                "sorted_sequences_per_second": 500.0,
                "fixed_sequences_per_second": 100.0,
                "speedup": 5.0,
            },
            {
                "model": "nano",
                "kind": "real TNEWS, batch 1",
                "backend": "paddle",
                "threads": 2,  # an older format
                "latency_ms_p50": 6.6,
                "latency_over_flops_bound_p50": 6.5,
            },
            {
                "model": "nano",
                "kind": "real TNEWS, batch 1",
                "backend": "onnxruntime",
                "threads": 2,
                "matmul_peak_gflops": 207.0,
                "flops_bound_ms_p50": 1.1,
                "latency_ms_p50": 2.36,
                "latency_over_flops_bound_p50": 2.145,
            },
        ],
    }
    lines = tables.tables(results)
    assert lines[0] == "Test CPU (avx2); fp32 matmul peak GFLOP/s by threads: 1: 100, 2: 200"
    assert "| nano | paddle | 12.3 | 7.0 | 640 | 320 | 100.0 | 81% |" in lines
    assert "| nano | onnxruntime | 9.0 |  |  |  |  |  |" in lines  # what was not measured stays empty
    assert "| nano | 10 | 2 | 500 | 100 | 5.00× |" in lines
    batch_one = [line for line in lines if line.startswith("| nano | 2 |")]
    assert batch_one == ["| nano | 2 | onnxruntime | 207 | 1.10 | 2.36 | 2.15× |"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"results: file not found"),
        ("{", r"not valid JSON"),
        ("[1]", r"not a results file written by benchmarks\.bench_infer"),
    ],
)
def test_tables_refuse_what_is_not_a_results_file(content, message, tmp_path):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(runtime.UserError, match=message):
        tables.main([str(path)])


def test_plot_refuses_a_results_file_without_fixed_shape_rows(tmp_path):
    from benchmarks import plot_results

    path = tmp_path / "batch_one.json"
    path.write_text('{"machine": {}, "real_data": []}', encoding="utf-8")
    with pytest.raises(runtime.UserError, match=r"no fixed-shape batch-32 rows to plot"):
        plot_results.main([str(path), str(tmp_path / "plot.png")])
    assert not (tmp_path / "plot.png").exists()


def test_the_readmes_headline_numbers_are_the_committed_results():
    """The README's headline section is generated from benchmarks/results (python -m benchmarks.tables --readme)."""
    readme = open(os.path.join(tables.ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split(tables.HEADLINE_BEGIN, 1)[1].split(tables.HEADLINE_END, 1)[0]
    assert section.strip() == "\n".join(tables.headline()).strip()
    assert "× Paddle fp32" in section


def test_dimension_rows_get_the_trained_teachers_drop_for_the_same_dimensions(tmp_path):
    """bench_deploy --dimensions times random-weight shapes; the drop shown beside each is that of the candidate of
    the same width, depth, vocabulary and serving on the trained teacher (a DynaBERT one, or a student cut from the
    teacher), and the >= 8x target only counts rows within the budget."""

    def candidate(path, backend, drop, **dimensions):
        return {"relative_path": path, "backend": backend, "precision": "int8", "drop_points": drop, **dimensions}

    def run(strategy, *candidates):
        return {"strategy": strategy, "max_metric_drop": 1.0, "candidates": list(candidates)}

    full, half = (students.StudentSpec(None, 2, width).describe(4) for width in (1.0, 0.5))
    first = [
        run(
            "dynabert+ptq",
            candidate("width_mult_0.75/openvino_int8", "openvino", 0.7, width=0.75, depth=1.0),
            candidate("width_mult_0.75/onnxruntime_int8", "onnxruntime", 0.8, width=0.75, depth=1.0),
            candidate("width_mult_0.5_depth_mult_0.5/openvino_int8", "openvino", 5.5, width=0.5, depth=0.5),
            candidate("openvino_int8", "openvino", 0.1),  # the parent's own: no row of this shape
        ),
        run(
            "distill+ptq",
            candidate("student/openvino_int8", "openvino", 0.25, student=full),
            candidate("student_vocab_pruned/openvino_int8", "openvino", 2.0, student=half),
        ),
    ]
    second = [run("distill+ptq", candidate("student/openvino_int8", "openvino", -0.25, student=full))]
    for name, runs in (("compress_dimensions.json", first), ("compress_students_tnews.json", second)):
        (tmp_path / name).write_text(json.dumps({"results": {"tnews": {"strategies": runs}}}), encoding="utf-8")

    def row(path, speed, **dimensions):
        return {
            "path": path,
            "backend": "openvino",
            "precision": "int8",
            "sequences_per_second": speed,
            "fixed_32x128_ms": 1.0,
            "latency_ms_p50": 1.0,
            "served_bytes": 100,
            "peak_rss_mb": 100,
            **dimensions,
        }

    results = {
        "model": "medium",
        "sentences": 10,
        "machine": {"cpu": "Test CPU", "flags": ["avx2"]},
        "rows": [
            row("float default", 10.0),
            row("width 3/4, openvino int8", 70.0, width=0.75, depth=1.0, vocabulary_pruned=False),
            {**row("width 3/4, onnxruntime int8", 60.0, width=0.75, depth=1.0, vocabulary_pruned=False),
             "backend": "onnxruntime"},
            row("depth 1/2, openvino int8", 90.0, width=1.0, depth=0.5, vocabulary_pruned=False),
            row("width 1/2 depth 1/2, openvino int8", 200.0, width=0.5, depth=0.5, vocabulary_pruned=False),
            row("width 1/2 depth 1/2, vocabulary 9, openvino int8", 210.0, width=0.5, depth=0.5,
                vocabulary_pruned=True),
            row("nano-shaped student, openvino int8", 150.0),
        ],
    }  # fmt: skip
    lines = tables.dimensions_table(results, str(tmp_path))
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    drops = {row[0]: row[-1] for row in cells}
    assert drops["width 3/4, openvino int8"] == "0.70 (dynabert+ptq)"
    assert drops["width 3/4, onnxruntime int8"] == "0.80 (dynabert+ptq)"  # its own serving's drop
    # the student of 2 of 4 layers, at the worse of its two runs (each against its own teacher)
    assert drops["depth 1/2, openvino int8"] == "0.25 (distill+ptq, worst of 2 runs)"
    assert drops["width 1/2 depth 1/2, openvino int8"] == "5.50 (dynabert+ptq)"
    assert drops["width 1/2 depth 1/2, vocabulary 9, openvino int8"] == "2.00 (distill+ptq)"
    assert drops["nano-shaped student, openvino int8"] == ""  # not trained here
    assert (
        "- Fastest whose dimensions keep the trained teacher within its 1-point budget: depth 1/2, openvino int8, "
        "9.00× the float default (target 8×: met; its drop there 0.25 points)."
    ) in lines
    assert any(
        line.startswith("- Fastest Nano-shaped student: nano-shaped student, openvino int8, 15.00×") for line in lines
    )


# ---- bench_batching: schedules of one-sentence requests, costed on a grid ------------------------------------------
def flat_grid(fixed: float, per_token: float):
    """A call costing `fixed` plus per_token a padded token, on bench_batching's grid."""
    from benchmarks import bench_batching

    rows, lengths = bench_batching.GRID_ROWS, bench_batching.GRID_LENGTHS
    seconds = tuple(tuple(fixed + per_token * r * length for r in rows) for length in lengths)
    return serving.CallCost(rows, lengths, seconds)


def test_the_grid_cost_interpolates_between_its_points():
    grid = flat_grid(fixed=1.0, per_token=0.01)
    assert grid.of(4, 16) == pytest.approx(1.0 + 0.01 * 64)
    assert grid.of(5, 18) == pytest.approx((grid.of(4, 18) + grid.of(6, 18)) / 2)  # between rows 4 and 6
    assert grid.of(5, 18) == pytest.approx((grid.of(5, 16) + grid.of(5, 20)) / 2)


def test_packing_fills_rows_first_fit_longest_first():
    from benchmarks import bench_batching

    assert bench_batching.packed_rows([100, 30, 28, 60, 60, 8]) == 3  # 100+28, 60+60+8, 30
    assert bench_batching.packed_rows([128] * 4) == 4


def test_the_closed_loop_sends_each_clients_next_sentence_once_its_last_is_answered():
    from benchmarks import bench_batching

    lengths, grid = [10] * 10, flat_grid(fixed=1.0, per_token=0.0)
    whole = bench_batching.cut_rule(lengths, serving.CallCost.linear(1e12))  # one call a batch
    times = bench_batching.CallTimes(grid, grid)
    assert bench_batching.closed_loop(lengths, 4, whole, times) == {"model_seconds": 3.0, "model_calls": 3}  # 4, 4, 2


def test_a_held_back_call_waits_for_company_at_most_its_rounds():
    from benchmarks import bench_batching

    lengths = [10, 10, 10, 100, 10, 10, 10, 10]
    grid = flat_grid(fixed=0.5, per_token=0.01)  # a lone 100-token row is cut off from the 10-token ones
    schedule = bench_batching.held_back(lengths, grid, min_rows=2, max_rounds=1)
    queue, passed_over = [0, 1, 2, 3], collections.Counter()
    assert schedule(queue, passed_over) == [[0, 1, 2]]  # the 100-token call of 1 row waits
    passed_over[3] = 1
    assert sorted(map(sorted, schedule(queue, passed_over))) == [[0, 1, 2], [3]]  # not twice


def test_the_batching_table_shows_each_schedule_against_offline():
    model = {
        "path": "float",
        "schedules": {"cut rule": {"over_offline": 0.7912, "model_calls": 95}},
        "packed_into_rows_of_128": {"over_offline": 0.97},
    }
    results = {"machine": {"cpu": "Test CPU", "flags": ["avx2"]}, "model": "medium", "sentences": 1000, "clients": 32}
    lines = tables.tables({**results, "threads": 2, "batching": [model]})
    assert "| cut rule | 79% (95) |" in lines
    assert "| packed into rows of 128 tokens (an estimate: not built) | 97% |" in lines


def test_the_serving_targets_are_the_medians_of_the_paired_rounds():
    from benchmarks import bench_serve

    baseline = {"batch_32_sequences_per_second": 100.0, "batch_1_latency_ms_p50": 10.0}
    baseline["batch_32_sequences_per_cpu_second"] = 50.0
    rows = [
        {"concurrency": 1, "latency_ms_p50": 20.0, "sequences_per_second": 50.0, "server_cpu_cores_busy": 1.0},
        {"concurrency": 32, "sequences_per_second": 60.0, "server_cpu_cores_busy": 2.0},
    ]
    rounds = [
        {"server_over_offline": 0.9, "batcher_alone_over_offline": 0.95, "concurrency_1_added_ms": 1.0},
        {"server_over_offline": 0.7, "batcher_alone_over_offline": 0.8, "concurrency_1_added_ms": 3.0},
        {"server_over_offline": 0.86, "batcher_alone_over_offline": 0.9, "concurrency_1_added_ms": 1.5},
    ]
    for r, busy, calls in zip(rounds, (0.93, 0.97, 0.95), (0.8, 0.9, 0.85)):
        r.update(batcher_alone_model_busy_share=busy, batcher_alone_model_time_over_offline=calls)
    met = bench_serve.targets(baseline, rows, rounds)
    assert met["batcher_alone_model_busy_share"] == pytest.approx(0.95)
    assert met["batcher_alone_model_time_over_offline"] == pytest.approx(0.85)
    assert met["concurrency_32_over_offline"] == pytest.approx(0.86) and met["met_85_percent"]
    assert met["concurrency_1_p50_minus_offline_batch_1_ms"] == pytest.approx(1.5) and met["met_2_ms"]
    assert met["concurrency_1_p50_minus_offline_batch_1_ms_single_run"] == pytest.approx(10.0)  # 20 against 10
    assert tables.lone_rounds(rounds) == " (the median of the paired rounds: +1.0, +3.0, +1.5)"


def test_the_most_efficient_window_passes_no_sentence_over_more_than_its_rounds():
    from benchmarks import bench_batching

    lengths = [8 + (37 * i) % 90 for i in range(300)]  # mixed lengths, 8-97 tokens
    grid, most = flat_grid(fixed=0.5, per_token=0.01), []
    window = bench_batching.served_windows(lengths, grid, max_passed_over=3, kept=1)

    def watched(queue, passed_over):
        most.append(max([passed_over[i] for i in queue]))
        return window(queue, passed_over)

    bench_batching.closed_loop(lengths, 32, watched, bench_batching.CallTimes(grid, grid))
    assert max(most) == 3  # some sentence waited its 3 rounds, and none longer


def test_a_call_costs_its_cold_time_unless_the_backend_still_keeps_its_shape():
    from benchmarks import bench_batching

    times = bench_batching.CallTimes(flat_grid(fixed=1.0, per_token=0.0), flat_grid(fixed=5.0, per_token=0.0), kept=2)
    charge = times.charges()
    # kept: 8 | 8 | 8 4 | 4 8 | 8 2 (4 dropped) | 2 4 | 4 8
    assert [charge(rows, 16) for rows in (8, 8, 4, 8, 2, 4, 8)] == [5.0, 1.0, 5.0, 1.0, 5.0, 5.0, 5.0]
    assert bench_batching.offline_seconds([16] * 64 + [30], times) == 5.0 + 1.0 + 5.0  # 32, 32 rows at 16; 1 at 30


def test_the_batcher_alone_counts_its_model_calls_time():
    from benchmarks import bench_serve

    class Sleeps:
        length_bucket = 8

        def run(self, batch):
            time.sleep(0.01)
            return [batch]

    clock = bench_serve.ModelClock()
    timed = bench_serve.TimedPredictor(Sleeps(), clock)
    assert timed.run("batch") == ["batch"] and timed.run("batch") == ["batch"]
    assert 0.02 <= clock.seconds < 0.2 and timed.length_bucket == 8


def test_calls_of_two_streams_at_once_count_once_on_the_model_clock():
    from benchmarks import bench_serve

    class Sleeps:
        engine = "sleeps"

        def run(self, batch):
            time.sleep(0.3)
            return [batch]

    clock = bench_serve.ModelClock()
    streamed = bench_serve.timed_predictor(predictors.StreamedPredictor(Sleeps(), Sleeps(), 2, 2), clock)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: streamed.shared.run("batch"), range(2)))
    assert 0.3 <= clock.seconds < 0.55  # two 0.3 s calls side by side: 0.3 s of model time, not 0.6
    streamed.whole.run("batch")
    assert 0.6 <= clock.seconds < 1.2


def test_a_lone_request_is_timed_to_the_end_of_its_answer_and_leaves_the_next_one_on_the_connection():
    import socket

    from benchmarks import bench_serve

    client, server = socket.socketpair()
    answers = [
        b'HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{"result":1}',
        b"HTTP/1.1 503 X\r\ncontent-length: 2\r\n\r\n{}",
    ]
    with client, server:
        reader = client.makefile("rb")
        for answer in answers:
            server.sendall(answer)
        bench_serve.answer_seconds(client, reader, b"request")
        assert server.recv(100) == b"request"
        with pytest.raises(RuntimeError, match=r"answered b'HTTP/1\.1 503 X': b'\{\}'"):  # the 200's body was read
            bench_serve.answer_seconds(client, reader, b"again")
        server.sendall(b"HTTP/1.1 500 Y\r\n\r\n")
        with pytest.raises(RuntimeError, match="500 Y"):  # no content-length: a clear error
            bench_serve.answer_seconds(client, reader, b"third")


def test_an_ab_of_two_servers_is_summed_up_by_its_medians_and_the_rounds_b_won():
    from benchmarks import bench_serve

    labels = ("defaults", "--max_passed_over 0")

    def side(over_offline, p99, lone_ms):
        return {"sequences_per_second": 100 * over_offline, "latency_ms_p50": 1.0, "latency_ms_p99": p99,
                "over_offline": over_offline, "concurrency_1_p50_ms": lone_ms}  # fmt: skip

    def offline(lone_ms):
        return {"offline_batch_32": 100.0, "offline_batch_1_p50_ms": lone_ms}

    rounds = [
        {**offline(25.0), labels[0]: side(0.8, 300.0, 27.0), labels[1]: side(0.7, 200.0, 40.0), "b_over_a": 0.875},
        {**offline(29.0), labels[0]: side(0.6, 500.0, 31.0), labels[1]: side(0.9, 250.0, 44.0), "b_over_a": 1.5},
        {**offline(27.0), labels[0]: side(0.7, 400.0, 26.0), labels[1]: side(0.65, 220.0, 50.0), "b_over_a": 0.93},
    ]
    summary = bench_serve.compare_summary(labels, rounds)
    assert summary["a_over_offline"] == pytest.approx(0.7) and summary["b_over_offline"] == pytest.approx(0.7)
    assert summary["b_over_a"] == pytest.approx(0.93) and summary["b_won"] == 1
    assert summary["a_latency_ms_p99"] == 400.0 and summary["b_latency_ms_p99"] == 220.0
    assert summary["offline_batch_1_p50_ms"] == 27.0
    assert (summary["a_concurrency_1_p50_ms"], summary["b_concurrency_1_p50_ms"]) == (27.0, 44.0)
    results = {
        "machine": {"cpu": "Test CPU", "flags": ["avx2"]}, "model": "medium", "threads": 2, "sentences": 1000,
        "compare_flags": ["--max_passed_over", "0"],
        "compare": [{"path": "int8 best", "a": labels[0], "b": labels[1], "rounds": rounds, **summary}],
    }  # fmt: skip
    lines = tables.tables(results)
    assert "| int8 best | 1 | 100.0 | 80% | 70% | 0.88 | 25.0 | 27.0 | 40.0 |" in lines
    assert "|  | 2 | 100.0 | 60% | 90% | 1.50 | 29.0 | 31.0 | 44.0 |" in lines
    assert "|  | median |  | 70% | 70% | 0.93 (B won 1 of 3) | 27.0 | 27.0 | 44.0 |" in lines
