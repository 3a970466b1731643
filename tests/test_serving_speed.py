"""The server's speed levers as behaviour (their speed is measured by benchmarks/bench_serve.py, not here): every
request is checked and encoded when it arrives, before it joins a batch, so a text the tokenizer refuses fails its
own request; batches and model calls are bounded by tokens as well as sequences; a batch is cut into length-sorted
calls where padding would cost more than another call; a lone client is not kept waiting for company; each request
has an id (the client's X-Request-ID, else a new one) in its answer's header and in the log lines about it."""

import dataclasses
import json
import logging
import os
import shutil
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_http_security import StubBatcher

import predictors
import serving
import utils
from runtime import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TNEWS = utils.SEQ_CLS_TASKS["tnews"]


# ---- model calls: length-sorted, bounded by rows and padded tokens --------------------------------------------------
def call_lengths(calls, lengths):
    return [[lengths[i] for i in call] for call in calls]


def test_calls_are_cut_where_padding_costs_more_than_a_call():
    lengths = [60, 4, 4, 4, 4, 60, 4, 4]
    calls = serving.length_sorted_calls(lengths, serving.CallCost.linear(fixed_tokens=10), 32, 10_000)
    assert call_lengths(calls, lengths) == [[4] * 6, [60, 60]]


def test_a_costly_call_keeps_the_batch_whole():
    lengths = [60, 4, 4, 4, 4, 60, 4, 4]
    calls = serving.length_sorted_calls(lengths, serving.CallCost.linear(fixed_tokens=10_000), 32, 10_000)
    assert call_lengths(calls, lengths) == [[4] * 6 + [60, 60]]


def test_a_shape_run_before_is_preferred_to_a_new_one_where_new_shapes_are_costly():
    lengths = [60, 4, 4, 4, 4, 60, 4, 4]
    cost = dataclasses.replace(serving.CallCost.linear(fixed_tokens=10), new_shape=1e6)
    calls = serving.length_sorted_calls(lengths, cost, 32, 10_000, shapes_run={(8, 60)})
    assert call_lengths(calls, lengths) == [[4] * 6 + [60, 60]]
    calls = serving.length_sorted_calls(lengths, cost, 32, 10_000, shapes_run={(6, 4), (2, 60)})
    assert call_lengths(calls, lengths) == [[4] * 6, [60, 60]]


def test_a_call_holds_at_most_max_batch_tokens_padded_tokens():
    calls = serving.length_sorted_calls([10] * 8, serving.CallCost.linear(fixed_tokens=1e12), 32, 40)
    assert [len(call) for call in calls] == [4, 4]


def test_a_call_holds_at_most_max_batch_size_rows():
    calls = serving.length_sorted_calls([10] * 8, serving.CallCost.linear(fixed_tokens=1e12), 3, 10_000)
    assert [len(call) for call in calls] == [3, 3, 2]


def test_a_sequence_longer_than_the_token_bound_runs_alone():
    lengths = [100, 5, 5]
    calls = serving.length_sorted_calls(lengths, serving.CallCost.linear(fixed_tokens=1e12), 32, 50)
    assert call_lengths(calls, lengths) == [[5, 5], [100]]


def test_padding_is_counted_to_the_predictors_length_bucket():
    calls = serving.length_sorted_calls([9, 9, 9], serving.CallCost.linear(fixed_tokens=1e12, bucket=16), 32, 40)
    assert [len(call) for call in calls] == [2, 1]  # 2 x 16 fits 40 tokens, 3 x 16 does not


def test_the_warm_up_gives_each_bucket_length_the_most_rows_a_call_holds_there():
    bucketed = type("Bucketed", (), {"length_bucket": 8})()
    assert serving.warmed_shapes(bucketed, 32, 64, 1024) == {
        (32, 8), (32, 16), (32, 24), (32, 32), (25, 40), (21, 48), (18, 56), (16, 64)
    }  # fmt: skip
    assert serving.warmed_shapes(bucketed, 32, 20, 1024) == {(32, 8), (32, 16), (32, 20)}
    assert serving.warmed_shapes(type("Exact", (), {})(), 32, 64, 1024) == set()  # no buckets: nothing to warm


def test_a_predictor_that_keeps_its_last_shapes_forgets_the_older_ones():
    kept = serving.KeptShapes(kept=2)
    kept.update([(32, 16), (32, 24), (8, 64)])
    assert (32, 16) not in kept and (32, 24) in kept and (8, 64) in kept
    kept.add((32, 24))  # run again: now the most recent
    kept.add((4, 32))
    assert (8, 64) not in kept and (32, 24) in kept and (4, 32) in kept
    every = serving.KeptShapes()
    every.update([(32, 16), (32, 24), (8, 64)])
    assert (32, 16) in every


def test_a_shape_the_predictor_no_longer_keeps_costs_its_first_call_again(tokenizer_folder):
    predictor = RecordingPredictor()
    predictor.shapes_kept = 2
    batcher = started_batcher(tokenizer_folder, predictor)
    batcher.close()
    assert set(batcher.shapes) == {(5, 16), (5, 64)}  # the last two run: first_call_cost's last fresh shapes
    assert [tuple(shape) for shape in predictor.shapes[-6:]] == [(5, 16)] * 3 + [(5, 64)] * 3  # each: first + 2


# ---- what a call costs: a grid of rows x lengths ---------------------------------------------------------------------
def two_length_cost(fixed: float, per_token: float, **more) -> serving.CallCost:
    """A call costing `fixed` plus per_token a padded token, timed at 1, 2, 4, ... 32 rows of 16 and 64 tokens."""
    rows = tuple(serving.calibration_sizes(32))
    seconds = tuple(tuple(fixed + per_token * n * length for n in rows) for length in (16, 64))
    return serving.CallCost(rows, (16, 64), seconds, **more)


def test_a_call_timed_at_two_lengths_keeps_its_fixed_part_at_every_length():
    cost = two_length_cost(fixed=1.0, per_token=0.01)
    for rows, length in [(4, 40), (3, 16), (32, 128), (8, 8), (1, 200)]:
        assert cost.of(rows, length) == pytest.approx(1.0 + 0.01 * rows * length), (rows, length)
    assert cost.of(64, 32) == pytest.approx(2 * cost.of(32, 32))  # beyond the rows timed: in proportion
    one_length = serving.CallCost((1, 32), (32,), ((1.32, 11.24),))  # 1 + 0.01 x n x 32, at 32 tokens only
    assert one_length.of(32, 64) == pytest.approx(2 * one_length.of(32, 32))  # in proportion to the length


def test_a_call_timed_faster_than_one_with_fewer_rows_costs_as_much():
    cost = serving.CallCost((1, 2, 4), (16,), ((1.0, 3.0, 2.0),))
    assert cost.of(4, 16) == pytest.approx(3.0) and cost.of(3, 16) == pytest.approx(3.0)


def test_the_costs_of_many_calls_at_once_are_those_of_each():
    cost = two_length_cost(fixed=1.0, per_token=0.01, bucket=8, new_shape=0.5)
    rows, padded = np.array([[1, 5, 32, 40]]), np.array([[8], [24], [64], [136]])
    kept = serving.KeptShapes()
    kept.update([(5, 24), (32, 64)])
    many = cost.of_many(rows, padded, kept)
    for i, j in np.ndindex(many.shape):
        assert many[i, j] == pytest.approx(cost.of(int(rows[0, j]), int(padded[i, 0]), kept))


# ---- the queue's most efficient window ----------------------------------------------------------------------------
def window(lengths, cost, overdue=(), max_rows=32, max_tokens=10_000, rows=None):
    rows = rows or [1] * len(lengths)
    tokens = [n * length for n, length in zip(rows, lengths)]
    chosen = serving.efficient_window(lengths, rows, tokens, cost, max_rows, max_tokens, overdue)
    return sorted(lengths[i] for i in chosen)


def test_a_batch_runs_the_queues_requests_of_like_lengths_that_make_the_most_of_a_call():
    lengths = [10, 100, 10, 12, 100, 10, 11, 100, 10, 10]
    cost = serving.CallCost.linear(fixed_tokens=50)
    assert window(lengths, cost) == [100, 100, 100]  # 300 tokens for 350, where the short ones' 73 cost 134
    assert window([10] * 30 + [100], cost) == [10] * 30  # 300 for 350, the long one's 100 for 150


def test_of_the_runs_nearly_as_efficient_as_the_best_the_longest_goes():
    cost = serving.CallCost.linear(fixed_tokens=1)  # 80 tokens for 81 units, or 164 for 169 (within 3%)
    assert window([20] * 4 + [21] * 4, cost) == [20] * 4 + [21] * 4
    assert window([20] * 4 + [30] * 4, cost) == [30] * 4  # 120 for 121; all 8: 200 for 241


def test_a_request_passed_over_often_enough_runs_with_its_like():
    lengths = [10, 100, 10, 12, 100, 10, 11, 100, 10, 10]
    cost, overdue = serving.CallCost.linear(fixed_tokens=50), [False] * len(lengths)
    overdue[0] = True  # a 10-token request: its run is the short ones' (73 tokens for 134)
    assert window(lengths, cost, overdue) == [10, 10, 10, 10, 10, 11, 12]
    overdue[1] = True  # and a 100-token one: the run holds both, the whole queue (373 for 1,050)
    assert window(lengths, cost, overdue) == sorted(lengths)


def test_a_window_fits_one_call_unless_a_request_alone_does_not():
    lengths = [10] * 40
    assert window(lengths, serving.CallCost.linear(fixed_tokens=50)) == [10] * 32  # max_batch_size rows
    assert window(lengths, serving.CallCost.linear(fixed_tokens=50), max_tokens=100) == [10] * 10
    assert window([500, 500], serving.CallCost.linear(fixed_tokens=50), max_tokens=100) == [500]
    assert window([10, 10, 10], serving.CallCost.linear(fixed_tokens=50), rows=[20, 20, 1]) == [10, 10]  # 21 rows


# ---- the batcher, on a stub predictor -------------------------------------------------------------------------------
class RecordingPredictor:
    """Gives TNEWS's 15 scores a row and records each call's shape; with hold set, calls wait until it is released."""

    def __init__(self):
        self.shapes, self.hold, self.entered = [], False, threading.Event()
        self.release = threading.Event()

    def run(self, batch):
        if self.hold:
            self.entered.set()
            self.release.wait(60)
        self.shapes.append(batch["input_ids"].shape)
        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]


@pytest.fixture()
def tokenizer_folder(tmp_path):
    shutil.copy(os.path.join(ROOT, "tests", "data", "ernie-3.0-vocab.txt"), tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ErnieTokenizer"}))
    return str(tmp_path)


def started_batcher(folder, predictor, **limits):
    batcher = serving.Batcher(lambda: predictor, folder, TNEWS, None, 128, serving.ServingLimits(**limits)).start()
    assert batcher.ready.wait(60)
    return batcher


def test_the_batcher_warms_its_buckets_largest_first_within_max_batch_tokens(tokenizer_folder):
    predictor = RecordingPredictor()
    predictor.length_bucket = 32
    batcher = started_batcher(tokenizer_folder, predictor, max_batch_tokens=2048, split_by_length=False)
    batcher.close()
    assert predictor.shapes == [(16, 128), (32, 64), (21, 96), (32, 32)]  # 2048 (the longer first), 2016, 1024


def test_max_batch_tokens_left_unset_is_the_predictors_and_given_is_kept(tokenizer_folder):
    for batch_tokens, given, expected in ((None, None, 1024), (2048, None, 2048), (2048, 512, 512)):
        predictor = RecordingPredictor()
        predictor.length_bucket = 32
        if batch_tokens:
            predictor.batch_tokens = batch_tokens
        limits = {} if given is None else {"max_batch_tokens": given}
        batcher = started_batcher(tokenizer_folder, predictor, split_by_length=False, **limits)
        batcher.close()
        assert batcher.limits.max_batch_tokens == expected
        assert max(rows * length for rows, length in predictor.shapes) == expected  # the warm-up's largest call


class SlowedForAWhile:
    """A model whose call takes half a millisecond a row, and 20 ms more in its first calls (another thread holding
    the GIL, a neighbour on the cores: what slowed a server's own start-up timing)."""

    def __init__(self, slowed_calls: int):
        self.calls, self.slowed_calls = 0, slowed_calls

    def run(self, batch):
        self.calls += 1
        time.sleep(0.0005 * len(batch["input_ids"]) + (0.02 if self.calls <= self.slowed_calls else 0.0))
        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]


def timed_cells() -> list:
    """The (rows, length) calls measure_call_cost times at 32 rows, 128 tokens and 1,024 tokens a call."""
    return serving.calibration_cells(object(), 32, 128, 1024)


def test_the_calls_timed_at_start_are_two_lengths_up_to_half_the_token_bound():
    assert timed_cells() == [
        (1, 16),
        (2, 16),
        (4, 16),
        (8, 16),
        (16, 16),
        (32, 16),
        (1, 64),
        (2, 64),
        (4, 64),
        (8, 64),
    ]
    bucketed = type("Bucketed", (), {"length_bucket": 24})()
    assert serving.calibration_cells(bucketed, 4, 40, 1024) == [(1, 24), (2, 24), (4, 24), (1, 40), (2, 40), (4, 40)]


def test_the_call_costs_are_not_skewed_by_a_slow_while_at_their_start():
    cost = serving.measure_call_cost(SlowedForAWhile(slowed_calls=20), 32, 128, 1024)
    for rows, length in timed_cells():  # the first pass and the first timed one slowed: each cell's was one
        assert 0.0005 * rows <= cost.of(rows, length) < 0.0005 * rows + 0.004, (rows, length)
    assert cost.of(32, 64) == pytest.approx(4 * cost.of(8, 64), rel=0.05)  # more rows than timed there: in proportion


class KeepsTwoShapes:
    """A model whose call takes half a millisecond a row, and 20 ms more for a shape not among its last two (what
    Paddle's oneDNN does with FLOAT_ONEDNN_CACHED_SHAPES)."""

    def __init__(self):
        self.recent = []

    def run(self, batch):
        shape = batch["input_ids"].shape
        time.sleep(0.0005 * shape[0] + (0.0 if shape in self.recent else 0.02))
        self.recent = (self.recent + [shape])[-2:]
        return [np.zeros((shape[0], 15), dtype="float32")]


def test_the_call_costs_are_those_of_a_shape_the_backend_still_keeps():
    cost = serving.measure_call_cost(KeepsTwoShapes(), 32, 128, 1024)
    for rows, length in timed_cells():
        assert 0.0005 * rows <= cost.of(rows, length) < 0.0005 * rows + 0.004, (rows, length)
    assert 0.015 < cost.new_shape < 0.03  # a first call's 20 ms more


class GrowsAtItsLargest:
    """A model whose call takes half a millisecond a row, and 20 ms more whenever a call is larger than any before
    (a memory arena growing), whatever its shape (ONNX Runtime: a fresh shape's first call costs nothing more)."""

    def __init__(self):
        self.largest = 0

    def run(self, batch):
        size = batch["input_ids"].size
        time.sleep(0.0005 * len(batch["input_ids"]) + (0.02 if size > self.largest else 0.0))
        self.largest = max(self.largest, size)
        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]


def test_a_backend_that_grows_at_its_largest_calls_has_no_new_shape_cost():
    cost = serving.measure_call_cost(GrowsAtItsLargest(), 32, 128, 1024)
    assert cost.new_shape < 0.005  # each timed cell's first call was its largest yet: 20 ms more, not a shape's


def test_the_first_call_cost_is_timed_on_shapes_the_start_runs_nowhere_else():
    predictor = type("Bucketed", (), {"length_bucket": 8})()
    fresh = serving.fresh_cells(predictor, 32, 128, 1024)
    warmed = serving.warmed_shapes(predictor, 32, 128, 1024)
    assert len(fresh) == 4 and {length for _, length in fresh} == {16, 64}
    assert not set(fresh) & (set(serving.calibration_cells(predictor, 32, 128, 1024)) | warmed)
    # two rows a call at most: every row count is timed, so the fresh shapes are a bucket longer
    assert serving.fresh_cells(predictor, 2, 128, 1024) == [(1, 24), (1, 72)]
    assert serving.fresh_cells(predictor, 2, 16, 1024) == []  # nothing fresh left: no new-shape cost is timed
    # one row a call at 72 tokens (64 tokens a call): (1, 72) is warmed, so not fresh
    assert serving.fresh_cells(predictor, 32, 128, 64) == [(3, 16), (1, 24)]


def test_the_batcher_times_its_model_calls_only_once_its_server_has_started(tokenizer_folder):
    predictor, server_started = RecordingPredictor(), threading.Event()
    batcher = serving.Batcher(lambda: predictor, tokenizer_folder, TNEWS, None, 128, serving.ServingLimits())
    batcher.start(measure_after=server_started)
    try:
        assert not batcher.ready.wait(0.5)
        assert predictor.shapes == []  # no bucket to warm: nothing run yet
        server_started.set()
        assert batcher.ready.wait(60)
        assert set(timed_cells()) <= set(predictor.shapes)
    finally:
        batcher.close()


def test_the_app_tells_when_its_server_has_started_it():
    started = threading.Event()
    app = serving.create_app(StubBatcher(), TNEWS, serving.ServingLimits(), started=started)
    assert not started.is_set()
    with TestClient(app):
        assert started.is_set()


def examples(*texts):
    return serving.request_examples(TNEWS, {"data": {"text": list(texts)}}, serving.ServingLimits())


def test_each_request_is_encoded_when_it_arrives_before_it_joins_a_batch(tokenizer_folder):
    predictor = RecordingPredictor()
    batcher = started_batcher(tokenizer_folder, predictor, max_wait_ms=0)
    try:
        predictor.hold = True
        first = batcher.submit(examples("以色列大规模空袭开始"))
        assert predictor.entered.wait(60)  # the model is busy with the first request
        second = batcher.submit(examples("华为发布新款手机", "出栏一头猪"))
        waiting = batcher.queue[0]
        assert [len(f["input_ids"]) for f in waiting.encoded.sequences] == [10, 7]  # [CLS] ... [SEP], encoded
        predictor.release.set()
        assert [row["text"] for row in second.result(60)] == ["华为发布新款手机", "出栏一头猪"]
        assert first.result(60)[0]["text"] == "以色列大规模空袭开始"
    finally:
        predictor.release.set()
        batcher.close()


class RefusingTokenizer:
    """The deployed tokenizer, refusing any text holding 坏 (as a tokenizer refuses what it cannot encode)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def tokenize(self, text):
        if "坏" in text:
            raise UserError("this text cannot be encoded")
        return self.tokenizer.tokenize(text)


def test_a_text_the_tokenizer_refuses_fails_its_own_request_at_submit(tokenizer_folder):
    batcher = started_batcher(tokenizer_folder, RecordingPredictor())
    batcher.tokenizer = RefusingTokenizer(batcher.tokenizer)
    try:
        with pytest.raises(UserError, match="cannot be encoded"):
            batcher.submit(examples("坏句子"))
        assert not batcher.queue
        assert batcher.submit(examples("好句子")).result(60)[0]["text"] == "好句子"
    finally:
        batcher.close()


def test_a_batch_takes_requests_up_to_max_batch_tokens(tokenizer_folder):
    predictor = RecordingPredictor()
    batcher = started_batcher(tokenizer_folder, predictor, max_batch_tokens=24, max_wait_ms=0, split_by_length=False)
    try:
        predictor.hold = True
        futures = [batcher.submit(examples("以色列大规模空袭开始"))]  # 12 tokens
        assert predictor.entered.wait(60)
        futures += [batcher.submit(examples("以色列大规模空袭开始")) for _ in range(5)]  # queued while it runs
        predictor.hold = False
        predictor.release.set()
        assert all(len(future.result(60)) == 1 for future in futures)
        assert predictor.shapes[-4:] == [(1, 12), (2, 12), (2, 12), (1, 12)]  # two of 12 tokens fit 24
        assert batcher.metrics()["max_batch_size_seen"] == 2
    finally:
        predictor.release.set()
        batcher.close()


@pytest.mark.parametrize("max_passed_over, calls", [(3, [(3, 92), (6, 4)]), (0, [(6, 4), (3, 92)])])
def test_a_batch_runs_like_lengths_together_and_leaves_the_others_for_the_next(
    tokenizer_folder, max_passed_over, calls
):
    """Three 92-token requests make the most of a call (276 tokens for 326 time units); six of 4 tokens wait for the
    next batch. Without windows (--max_passed_over 0), one batch takes them all, cut in two calls, the short first."""
    predictor = RecordingPredictor()
    batcher = started_batcher(tokenizer_folder, predictor, max_wait_ms=0, max_passed_over=max_passed_over)
    batcher.call_cost = serving.CallCost.linear(fixed_tokens=50)
    try:
        predictor.hold = True
        futures = [batcher.submit(examples("短"))]
        assert predictor.entered.wait(60)
        futures += [batcher.submit(examples("短句")) for _ in range(6)] + [
            batcher.submit(examples("长" * 90)) for _ in range(3)
        ]
        predictor.hold = False
        predictor.release.set()
        assert all(len(future.result(60)) == 1 for future in futures)
        assert predictor.shapes[-2:] == calls
        assert batcher.metrics()["batches"] == (3 if max_passed_over else 2)
    finally:
        predictor.release.set()
        batcher.close()


class SteppedPredictor(RecordingPredictor):
    """A RecordingPredictor whose held calls each wait for a step of their own (step), one call a step."""

    def __init__(self):
        super().__init__()
        self.steps, self.calls_entered = threading.Semaphore(0), threading.Semaphore(0)

    def run(self, batch):
        if self.hold:
            self.calls_entered.release()
            assert self.steps.acquire(timeout=60)
        self.shapes.append(batch["input_ids"].shape)
        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]

    def step(self) -> None:
        """Let the held call finish, and wait until the next one is held."""
        self.steps.release()
        assert self.calls_entered.acquire(timeout=60)


def test_a_request_is_passed_over_at_most_max_passed_over_times(tokenizer_folder):
    """A lone short request among a stream of long ones, each batch of which makes more of a call than it would:
    it runs in the batch after its second passing over."""
    predictor = SteppedPredictor()
    batcher = started_batcher(tokenizer_folder, predictor, max_wait_ms=0, max_passed_over=2)
    batcher.call_cost = serving.CallCost.linear(fixed_tokens=50)
    try:
        predictor.shapes.clear()  # those timed at start
        predictor.hold = True
        futures = [batcher.submit(examples("短"))]
        assert predictor.calls_entered.acquire(timeout=60)
        short = batcher.submit(examples("短句"))
        for _ in range(3):  # each time the model is busy, three more long requests arrive
            futures += [batcher.submit(examples("长" * 90)) for _ in range(3)]
            predictor.step()
        predictor.hold = False
        predictor.steps.release()
        assert len(short.result(60)) == 1 and all(len(future.result(60)) == 1 for future in futures)
        # left by two batches, it is in the third, which the cut rule runs as two calls (54 and 326 units for 418)
        assert predictor.shapes == [(1, 3), (3, 92), (3, 92), (1, 4), (3, 92)]
        assert batcher.metrics()["batches"] == 4
    finally:
        predictor.steps.release()
        batcher.close()


def test_a_lone_client_is_not_kept_waiting_for_company(tokenizer_folder):
    """After the first batch (before it, the batcher knows nothing and waits), a request with no other in flight runs
    at once, though max_wait_ms would let it wait a minute."""
    batcher = started_batcher(tokenizer_folder, RecordingPredictor(), max_wait_ms=60_000)
    try:
        batcher.expected_requests = 1  # as the first batch leaves it, without waiting a minute here
        for text in ("以色列大规模空袭开始", "华为发布新款手机"):
            assert batcher.submit(examples(text)).result(timeout=30)[0]["text"] == text
    finally:
        batcher.close()


class FirstCallHeld(RecordingPredictor):
    """A RecordingPredictor whose first call after hold is set waits until released; the others run at once."""

    def run(self, batch):
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(60)
        return super().run(batch)


def test_with_two_model_streams_a_batch_runs_while_another_is_in_its_call(tokenizer_folder):
    """A lone request runs on every thread (whole); the next, arriving while it is in its call, runs at once on a
    stream's share (shared), though max_wait_ms would let it wait a minute: the running request cannot join it."""
    whole, shared = FirstCallHeld(), RecordingPredictor()
    whole.engine = shared.engine = "fake"
    streamed = predictors.StreamedPredictor(whole, shared, streams=2, threads=2)
    batcher = started_batcher(tokenizer_folder, streamed, max_wait_ms=60_000, model_streams=2)
    try:
        batcher.expected_requests = 1  # as the first batch leaves it, without waiting a minute here
        shared.shapes.clear()
        whole.hold = True
        held = batcher.submit(examples("以色列大规模空袭开始"))
        assert whole.entered.wait(30)
        assert batcher.submit(examples("华为发布新款手机")).result(timeout=10)[0]["text"] == "华为发布新款手机"
        assert not held.done() and len(shared.shapes) == 1
        whole.release.set()
        assert held.result(timeout=30)[0]["text"] == "以色列大规模空袭开始"
        batcher.expected_requests = 1
        assert batcher.submit(examples("出栏一头猪")).result(timeout=30)  # alone again: on every thread
        assert len(shared.shapes) == 1
        assert batcher.metrics()["model_streams"] == 2
    finally:
        whole.release.set()
        batcher.close()
    assert not batcher.thread.is_alive()
    assert not [thread for thread in threading.enumerate() if thread.name == "batcher-1"]  # the second stream's


def test_with_one_model_stream_a_batch_waits_for_the_call_before_it(tokenizer_folder):
    predictor = FirstCallHeld()
    batcher = started_batcher(tokenizer_folder, predictor, max_wait_ms=0, model_streams=1)
    try:
        predictor.hold = True
        held = batcher.submit(examples("以色列大规模空袭开始"))
        assert predictor.entered.wait(30)
        second = batcher.submit(examples("华为发布新款手机"))
        time.sleep(0.5)
        assert not second.done()
        predictor.release.set()
        assert second.result(timeout=30) and held.result(timeout=30)
    finally:
        predictor.release.set()
        batcher.close()


def test_two_model_streams_are_the_default_for_onnx_runtime_on_two_threads():
    options = predictors.PredictorOptions(backend="onnxruntime", num_threads=2)
    assert predictors.default_model_streams(options) == 2
    assert predictors.stream_options(options, 2).streams == 2
    for other in (
        dataclasses.replace(options, num_threads=1),
        dataclasses.replace(options, num_threads=3),
        dataclasses.replace(options, num_threads=4),  # calls at once share a session's pool: not measured
        dataclasses.replace(options, backend="paddle"),
        dataclasses.replace(options, backend="openvino"),  # a second compiled model: over #24's memory target
        dataclasses.replace(options, device="gpu"),
    ):
        assert predictors.default_model_streams(other) == 1


def test_more_model_streams_than_one_are_refused_where_calls_cannot_run_at_once():
    predictors.check_model_streams(predictors.PredictorOptions(backend="paddle", num_threads=2), 1)
    predictors.check_model_streams(predictors.PredictorOptions(backend="onnxruntime", num_threads=4), 4)
    predictors.check_model_streams(predictors.PredictorOptions(backend="openvino", num_threads=4), 2)
    with pytest.raises(UserError, match="runs each call on one thread"):
        predictors.check_model_streams(predictors.PredictorOptions(backend="onnxruntime", num_threads=4), 2)
    predictors.check_model_streams(predictors.PredictorOptions(backend="openvino", num_threads=2), 2)
    with pytest.raises(UserError, match="only --backend onnxruntime and openvino on the CPU"):
        predictors.check_model_streams(predictors.PredictorOptions(backend="paddle", num_threads=2), 2)
    with pytest.raises(UserError, match="unevenly"):
        predictors.check_model_streams(predictors.PredictorOptions(backend="onnxruntime", num_threads=3), 2)


class TenScores(RecordingPredictor):
    """A model of another task: 10 scores a row where TNEWS has 15 labels."""

    def run(self, batch):
        super().run(batch)
        return [np.zeros((len(batch["input_ids"]), 10), dtype="float32")]


def test_a_model_that_misfits_its_task_fails_its_batch_and_leaves_no_request_counted_in_flight(tokenizer_folder):
    batcher = started_batcher(tokenizer_folder, TenScores(), max_wait_ms=0)
    try:
        with pytest.raises(serving.Unavailable, match="gives 10 scores"):
            batcher.submit(examples("以色列大规模空袭开始")).result(timeout=30)
        assert (batcher.in_flight, batcher.running) == (0, 0)
        with pytest.raises(serving.Unavailable):
            batcher.submit(examples("华为发布新款手机"))
    finally:
        batcher.close()


def test_the_metrics_count_model_calls_and_padding(tokenizer_folder):
    batcher = started_batcher(tokenizer_folder, RecordingPredictor(), max_wait_ms=0)
    try:
        batcher.submit(examples("以色列大规模空袭开始", "出栏一头猪")).result(60)
        metrics = batcher.metrics()
        assert metrics["tokens"] == 12 + 7
        assert metrics["padded_tokens"] >= metrics["tokens"]
        assert metrics["model_calls"] >= 1
    finally:
        batcher.close()


# ---- request ids ---------------------------------------------------------------------------------------------------
class EchoBatcher(StubBatcher):
    """StubBatcher (each text answered with itself) whose submit raises for a text 'crash' and logs what it queues."""

    def submit(self, examples):
        if examples[0].text_a == "crash":
            raise RuntimeError("a bug")
        serving.logger.info("queued %d texts", len(examples))
        return super().submit(examples)


def client(access_log=False):
    app = serving.create_app(EchoBatcher(), TNEWS, serving.ServingLimits(), access_log=access_log)
    return TestClient(app, base_url="http://127.0.0.1:8189", raise_server_exceptions=False)


def test_a_clients_request_id_is_kept_and_echoed():
    answer = client().post("/tnews", json={"data": {"text": ["上海"]}}, headers={"X-Request-ID": "abc-123"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "abc-123"


def test_a_request_without_an_id_gets_a_new_one():
    http = client()
    first, second = (http.post("/tnews", json={"data": {"text": ["上海"]}}) for _ in range(2))
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("given", ["has spaces in it", "x" * 129, "bad\tid"])
def test_an_implausible_request_id_is_replaced(given):
    answer = client().post("/tnews", json={"data": {"text": ["上海"]}}, headers={"X-Request-ID": given})
    assert answer.headers["x-request-id"] != given


def test_refusals_and_errors_carry_the_request_id_too():
    http = client()
    refused = http.post("/tnews", content=b"{", headers={"X-Request-ID": "r1", "Content-Type": "application/json"})
    assert (refused.status_code, refused.headers["x-request-id"]) == (400, "r1")
    wrong_host = http.post("/tnews", json={"data": {"text": ["a"]}}, headers={"X-Request-ID": "r2", "Host": "evil"})
    assert (wrong_host.status_code, wrong_host.headers["x-request-id"]) == (421, "r2")
    crashed = http.post("/tnews", json={"data": {"text": ["crash"]}}, headers={"X-Request-ID": "r3"})
    assert (crashed.status_code, crashed.headers["x-request-id"]) == (500, "r3")
    assert crashed.json() == {"error": "internal error: RuntimeError"}


def test_every_log_line_about_a_request_names_its_id(caplog):
    http = client(access_log=True)
    with caplog.at_level(logging.INFO, logger=serving.logger.name):
        http.post("/tnews", json={"data": {"text": ["上海"]}}, headers={"X-Request-ID": "id-7"})
        http.post("/tnews", json={"data": {"text": ["crash"]}}, headers={"X-Request-ID": "id-8"})
    lines = [record.getMessage() for record in caplog.records if record.name == serving.logger.name]
    assert "request id-7: queued 1 texts" in lines
    assert "request id-7: POST /tnews 200" in [line.rsplit(" ", 2)[0] for line in lines]  # the access log line
    assert "request id-8: POST /tnews failed" in lines  # with its traceback
    assert all(line.startswith(("request id-7: ", "request id-8: ")) for line in lines)


def test_the_batchers_log_lines_about_a_request_name_its_id(tokenizer_folder, caplog):
    class FailingPredictor(RecordingPredictor):
        def run(self, batch):
            if batch["input_ids"].shape[0] and self.entered.is_set():
                raise RuntimeError("the model broke")
            return super().run(batch)

    predictor = FailingPredictor()
    batcher = started_batcher(tokenizer_folder, predictor, max_wait_ms=0)
    serving.log_request_ids()
    predictor.entered.set()  # from now on every call fails
    try:
        with caplog.at_level(logging.INFO, logger=serving.logger.name), serving.request_context("id-9"):
            future = batcher.submit(examples("上海"))
        with pytest.raises(RuntimeError, match="the model broke"):
            future.result(60)
    finally:
        batcher.close()
    assert "request id-9: a request failed" in [record.getMessage() for record in caplog.records]
