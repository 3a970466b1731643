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
    assert (32, 32) in batcher.shapes and (16, 32) in batcher.shapes  # the last two timed
    assert (1, 32) not in batcher.shapes


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


class SlowedForAWhile:
    """A model whose call takes half a millisecond a row, and 20 ms more in its first calls (another thread holding
    the GIL, a neighbour on the cores: what slowed a server's own start-up timing)."""

    def __init__(self, slowed_calls: int):
        self.calls, self.slowed_calls = 0, slowed_calls

    def run(self, batch):
        self.calls += 1
        time.sleep(0.0005 * len(batch["input_ids"]) + (0.02 if self.calls <= self.slowed_calls else 0.0))
        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]


def test_the_call_costs_are_not_skewed_by_a_slow_while_at_their_start():
    cost = serving.measure_call_cost(SlowedForAWhile(slowed_calls=10), 32)
    for rows in serving.calibration_sizes(32):  # the first 10 of 24 calls: each size's timing was back to back
        assert 0.0005 * rows <= cost.row_times[rows] < 0.0005 * rows + 0.004, rows


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
    cost = serving.measure_call_cost(KeepsTwoShapes(), 32)
    for rows in serving.calibration_sizes(32):
        assert 0.0005 * rows <= cost.row_times[rows] < 0.0005 * rows + 0.004, rows
    assert 0.015 < cost.new_shape < 0.03  # a first call's 20 ms more


def test_the_batcher_times_its_model_calls_only_once_its_server_has_started(tokenizer_folder):
    predictor, server_started = RecordingPredictor(), threading.Event()
    batcher = serving.Batcher(lambda: predictor, tokenizer_folder, TNEWS, None, 128, serving.ServingLimits())
    batcher.start(measure_after=server_started)
    try:
        assert not batcher.ready.wait(0.5)
        assert predictor.shapes == []  # no bucket to warm: nothing run yet
        server_started.set()
        assert batcher.ready.wait(60)
        assert {(rows, 32) for rows in serving.calibration_sizes(32)} <= set(predictor.shapes)
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
