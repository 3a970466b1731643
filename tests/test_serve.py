"""serve.py as a real server on 127.0.0.1 (ephemeral ports, loopback only, every loop bounded): results equal
infer.py's, concurrent single-sentence requests batched together, every bad request a 4xx JSON message, overload a
503 with Retry-After, SIGTERM drains the queue and exits 0."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import infer
import serving
import utils
from conftest import free_port, qa_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "以色列大规模空袭开始",
    "出栏一头猪亏损300元",
    "洛杉矶市市长理查德·赖尔登为江主席举行了隆重的欢送仪式。",
    "我们在北京见面",
    "华为发布新款手机",
]


class Server:
    def __init__(self, model_dir, *extra, stdout=subprocess.DEVNULL):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "serve.py"),
                "--model_path",
                model_dir,
                "--port",
                str(self.port),
                "--num_threads",
                "1",
                *extra,
            ],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve.py exited: {self.process.stderr.read()[-2000:]}")
            try:
                if request(self, "GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve.py was not ready in time")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


def request(server, method, path, body=None, raw=None, timeout=60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(
        server.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


@pytest.fixture(scope="module")
def servers(tnews_run, ner_run, qa_run):
    started = {
        "tnews": Server(os.path.join(tnews_run, "export")),
        "msra_ner": Server(os.path.join(ner_run, "export")),
        "cmrc2018": Server(os.path.join(qa_run, "export"), "--max_seq_length", "128", "--doc_stride", "64"),
    }
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def infer_rows(model_dir, *args):
    return infer.main(["--model_path", model_dir, "--num_threads", "1", *args])["predictions"]


def test_classification_results_equal_infer_py(servers, tnews_run):
    status, body, _ = request(servers["tnews"], "POST", "/tnews", {"data": {"text": SENTENCES}, "parameters": {}})
    expected = infer_rows(os.path.join(tnews_run, "export"), *sum((["--text", s] for s in SENTENCES), []))
    assert status == 200
    assert [r["label"] for r in body["result"]] == [r["label"] for r in expected]
    assert [r["probability"] for r in body["result"]] == pytest.approx([r["probability"] for r in expected], abs=1e-5)


def test_entities_equal_infer_py(servers, ner_run):
    status, body, _ = request(servers["msra_ner"], "POST", "/msra_ner", {"data": {"text": SENTENCES[2:4]}})
    assert status == 200
    assert body["result"] == infer_rows(os.path.join(ner_run, "export"), "--text", SENTENCES[2], "--text", SENTENCES[3])


def test_answers_equal_infer_py(servers, qa_run):
    context = json.load(open(qa_file("dev.json"), encoding="utf-8"))["data"][0]["paragraphs"][0]["context"]
    status, body, _ = request(
        servers["cmrc2018"], "POST", "/cmrc2018", {"data": {"context": [context], "question": ["谁？"]}}
    )
    expected = infer_rows(
        os.path.join(qa_run, "export"),
        "--text",
        context,
        "--question",
        "谁？",
        "--max_seq_length",
        "128",
        "--doc_stride",
        "64",
    )
    assert status == 200
    assert body["result"][0]["answer"] == expected[0]["answer"]
    assert body["result"][0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-5)


def test_200_concurrent_single_sentence_requests_are_answered_correctly_and_batched(servers, tnews_run):
    server = servers["tnews"]
    expected = {
        row["text"]: row["label"]
        for row in infer_rows(os.path.join(tnews_run, "export"), *sum((["--text", s] for s in SENTENCES), []))
    }
    before = request(server, "GET", "/metrics?format=json")[1]
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda text: request(server, "POST", "/tnews", {"data": {"text": [text]}}), texts))
    assert all(status == 200 for status, _, _ in answers)
    assert [body["result"][0]["text"] for _, body, _ in answers] == texts
    assert all(body["result"][0]["label"] == expected[text] for (_, body, _), text in zip(answers, texts))
    after = request(server, "GET", "/metrics?format=json")[1]
    assert after["requests"] - before["requests"] == 200
    assert after["max_batch_size_seen"] > 1
    assert after["batches"] - before["batches"] < 200  # requests shared batches


def test_two_model_streams_answer_concurrent_requests_as_infer_py(tnews_run):
    """ONNX Runtime on 2 threads runs two batches at once by default (--model_streams), each on one thread; the
    answers are infer.py's (fp32: a row's scores do not depend on its batch)."""
    export = os.path.join(tnews_run, "export")
    expected = {
        row["text"]: row["probability"]
        for row in infer_rows(export, "--backend", "onnxruntime", *sum((["--text", s] for s in SENTENCES), []))
    }
    server = Server(export, "--backend", "onnxruntime", "--num_threads", "2").wait_ready()
    try:
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda text: request(server, "POST", "/tnews", {"data": {"text": [text]}}), texts))
        metrics = request(server, "GET", "/metrics?format=json")[1]
    finally:
        server.stop()
    assert all(status == 200 for status, _, _ in answers)
    assert [body["result"][0]["probability"] for _, body, _ in answers] == pytest.approx(
        [expected[text] for text in texts], abs=1e-5
    )
    assert metrics["model_streams"] == 2 and metrics["requests"] == 64


def bad_requests():
    long_text = "长" * 2001
    return {
        "not json": (None, b"{not json", 400, "the body is not JSON"),
        "not utf-8": (None, "体育新闻".encode("gbk"), 400, "the body is not UTF-8 text"),
        "no data": ({"parameters": {}}, None, 422, 'expected {"data"'),
        "text not a list of strings": ({"data": {"text": [1, 2]}}, None, 422, "data.text[0] must be a string"),
        "missing text": ({"data": {"sentence": ["x"]}}, None, 422, "data.text must be a non-empty list of strings"),
        "empty text": ({"data": {"text": [" "]}}, None, 422, "data.text[0] is empty"),
        "pair on a single-text task": ({"data": {"text": ["a"], "text_pair": ["b"]}}, None, 422, "takes single texts"),
        "parameters not an object": (
            {"data": {"text": ["a"]}, "parameters": []},
            None,
            422,
            "parameters must be an object",
        ),
        "too many texts": ({"data": {"text": ["a"] * 65}}, None, 413, "at most 64 a request"),
        "too long a text": ({"data": {"text": [long_text]}}, None, 413, "has 2001 characters; at most 2000"),
    }


@pytest.mark.parametrize("case", sorted(bad_requests()))
def test_bad_requests_get_one_json_message_and_the_server_keeps_serving(servers, case):
    body, raw, status, message = bad_requests()[case]
    got, answer, _ = request(servers["tnews"], "POST", "/tnews", body, raw)
    assert got == status, answer
    assert set(answer) == {"error"}, answer
    assert message in answer["error"], answer
    assert request(servers["tnews"], "GET", "/health")[0] == 200


def test_a_live_server_echoes_the_clients_request_id(servers):
    req = urllib.request.Request(
        servers["tnews"].url + "/tnews",
        data=json.dumps({"data": {"text": SENTENCES[:1]}}).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": "client-42"},
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        assert response.headers["X-Request-ID"] == "client-42"


def test_unknown_paths_and_methods_are_json_4xx(servers):
    status, body, _ = request(servers["tnews"], "POST", "/afqmc", {"data": {"text": ["a"]}})
    assert status == 404
    assert body == {"error": "this server serves tnews: POST /tnews"}
    status, body, _ = request(servers["tnews"], "GET", "/tnews")
    assert status == 405
    assert set(body) == {"error"}
    status, body, _ = request(servers["tnews"], "GET", "/nothing/here")
    assert status == 404
    assert set(body) == {"error"}


def test_the_try_it_page_and_the_openapi_docs(servers):
    with urllib.request.urlopen(servers["tnews"].url + "/", timeout=30) as response:
        page = response.read().decode()
    assert '<input id="text"' in page
    assert 'fetch("/tnews"' in page
    assert "text_pair" not in page
    with urllib.request.urlopen(servers["tnews"].url + "/openapi.json", timeout=30) as response:
        assert "/{task_name}" in json.loads(response.read())["paths"]


def test_pair_tasks_need_text_pair():
    task = utils.SEQ_CLS_TASKS["afqmc"]
    limits = serving.ServingLimits()
    with pytest.raises(serving.RequestError, match="compares two texts: give data.text_pair"):
        serving.request_examples(task, {"data": {"text": ["a"]}}, limits)
    examples = serving.request_examples(task, {"data": {"text": ["a"], "text_pair": ["b"]}}, limits)
    assert (examples[0].text_a, examples[0].text_b) == ("a", "b")


def test_overload_gives_503_with_retry_after(tnews_run):
    server = Server(os.path.join(tnews_run, "export"), "--max_queue", "1", "--max_wait_ms", "1500").wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, server, "POST", "/tnews", {"data": {"text": ["a"]}})
            time.sleep(0.4)  # the first request waits 1.5 s for company, filling the queue
            second = request(server, "POST", "/tnews", {"data": {"text": ["b"]}})
            assert first.result()[0] == 200
        assert second[0] == 503
        assert second[2].get("retry-after", second[2].get("Retry-After")) == "1"
        assert "overloaded" in second[1]["error"]
    finally:
        server.stop()


def test_sigterm_drains_the_queue_and_exits_0(tnews_run):
    server = Server(os.path.join(tnews_run, "export"), "--max_wait_ms", "1500").wait_ready()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(request, server, "POST", "/tnews", {"data": {"text": ["以色列大规模空袭开始"]}})
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        status, body, _ = pending.result()
    assert status == 200
    assert body["result"][0]["text"] == "以色列大规模空袭开始"
    assert server.process.wait(timeout=60) == 0


def test_the_page_works_in_a_headless_browser(servers, tmp_path):
    """The page in headless Chromium (Debian's chromium package; .ci/run installs it where it can): its form renders,
    and opened with ?text=... it sends the sentence itself and shows the label the server answered."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium): the page's browser check did not run")
    server = servers["tnews"]
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=8000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
            f"{server.url}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<button id="send"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=800,600",
            "--virtual-time-budget=8000",
            f"{server.url}/?text=以色列大规模空袭开始",
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file()
    assert shot.stat().st_size > 5000  # a rendered page, not an empty image
    rendered = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=8000",
            "--dump-dom",
            f"{server.url}/?text=以色列大规模空袭开始",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert '"label": "' in rendered  # the page sent the sentence and printed the server's label


def test_several_worker_processes_serve_the_same_results(tnews_run):
    server = Server(os.path.join(tnews_run, "export"), "--workers", "2", stdout=subprocess.PIPE)
    server.wait_ready(timeout=180)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda text: request(server, "POST", "/tnews", {"data": {"text": [text]}}), SENTENCES * 4)
            )
        assert all(status == 200 for status, _, _ in answers)
        assert [body["result"][0]["text"] for _, body, _ in answers] == SENTENCES * 4
        labels = {}
        for _, body, _ in answers:  # every process gives a sentence the same label
            row = body["result"][0]
            assert labels.setdefault(row["text"], row["label"]) == row["label"]
    finally:
        server.stop()
    assert server.process.returncode == 0
    # each worker drained and exited through uvicorn; none was aborted by Paddle's handler (its dump goes to stdout)
    assert "Termination signal" not in server.process.stdout.read() + server.process.stderr.read()


def test_serve_options_out_of_range_are_one_error_line(tnews_run):
    for options, message in (
        (["--workers", "0"], "--workers must be at least 1, not 0"),
        (["--max_wait_ms", "-1"], "--max_wait_ms must not be negative"),
        (["--max_batch_tokens", "0"], "--max_batch_tokens must be at least 1, not 0"),
        (["--loop", "bogus"], "--loop must be one of auto, uvloop, asyncio, not 'bogus'"),
        (["--split_by_length", "false", "--max_passed_over", "2"], "--max_passed_over 2 needs --split_by_length true"),
        (["--backend", "onnxruntime", "--lone_call_predictor", "true"], "--lone_call_predictor is for float models"),
        (["--model_streams", "0"], "--model_streams must be at least 1, not 0"),
        (["--model_streams", "2"], "--model_streams 2: only --backend onnxruntime and openvino on the CPU"),
        (
            ["--backend", "onnxruntime", "--num_threads", "1", "--model_streams", "2"],
            "--model_streams 2 splits --num_threads 1 unevenly",
        ),
    ):
        result = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "serve.py"),
                "--model_path",
                os.path.join(tnews_run, "export"),
                *options,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr[-1000:]
        assert len(lines) == 1, result.stderr[-1000:]
        assert message in lines[0], result.stderr[-1000:]


def test_max_passed_over_left_unset_follows_split_by_length():
    """Windows of like lengths by default; without length-sorted calls, first come first (not windows ignored)."""
    assert serving.ServingLimits().max_passed_over == 3
    assert serving.ServingLimits(split_by_length=False).max_passed_over == 0
    assert serving.ServingLimits(split_by_length=False, max_passed_over=0).max_passed_over == 0


def test_metrics_are_in_prometheus_text_format(servers):
    request(servers["tnews"], "POST", "/tnews", {"data": {"text": SENTENCES[:1]}})
    with urllib.request.urlopen(servers["tnews"].url + "/metrics", timeout=30) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode("utf-8")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(samples['ernie_requests_total{task="tnews"}']) >= 1
    assert samples['ernie_ready{task="tnews"}'] == "1"
    assert 'ernie_request_latency_ms{task="tnews",quantile="0.99"}' in samples
    assert all(line.startswith(("# HELP ", "# TYPE ", "ernie_")) for line in text.splitlines())


def test_the_prometheus_text_holds_every_number_of_the_json_form():
    metrics = {
        "ready": True, "requests": 3, "errors": 1, "rejected_overload": 0, "batches": 2, "sequences": 5,
        "model_calls": 3, "tokens": 40, "padded_tokens": 52,
        "queue_depth_sequences": 0, "queue_depth_requests": 0, "batch_sizes": {"2": 1, "3": 1},
        "max_batch_size_seen": 3, "latency_ms_p50": 4.5, "latency_ms_p99": 9.25,
    }  # fmt: skip
    text = serving.prometheus_text(metrics, "afqmc")
    assert 'ernie_errors_total{task="afqmc"} 1\n' in text
    assert 'ernie_padded_tokens_total{task="afqmc"} 52\n' in text
    assert 'ernie_batches_by_size{task="afqmc",rows="3"} 1\n' in text
    assert 'ernie_request_latency_ms{task="afqmc",quantile="0.5"} 4.500\n' in text
