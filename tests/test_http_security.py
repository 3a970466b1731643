"""serve.py's HTTP stance, on the app in this process (a stub batcher, no model): unknown paths are 404 and a known
path's wrong method a 405 with Allow; on a loopback address only this machine's names are answered (DNS rebinding
is a 421); bodies must be declared JSON (415); --api_key requires a key (401) on all but /health, / and the API
description; /docs is off unless asked for (its scripts come from a CDN); the OpenAPI description holds each task's
body; every refusal is counted in /metrics; a non-loopback --host is warned about."""

import concurrent.futures
import threading

import pytest
from fastapi.testclient import TestClient

import serve
import serving
import utils

TNEWS = utils.SEQ_CLS_TASKS["tnews"]
BODY = {"data": {"text": ["上海"]}}


class StubBatcher:
    """What create_app needs of a Batcher: each text answered with itself."""

    def __init__(self):
        self.failed, self.ready, self.errors = None, threading.Event(), 0
        self.ready.set()

    def submit(self, examples):
        future = concurrent.futures.Future()
        future.set_result([{"text": example.text_a} for example in examples])
        return future

    def count_error(self):
        self.errors += 1

    def metrics(self):
        return {"errors": self.errors}

    def close(self):
        pass


def client(task=TNEWS, host="127.0.0.1", base_url="http://127.0.0.1:8189", **access):
    batcher = StubBatcher()
    app = serving.create_app(batcher, task, serving.ServingLimits(), serving.AccessRules(**access), host)
    return TestClient(app, base_url=base_url), batcher


def test_an_unknown_path_is_404_and_a_wrong_method_405_with_allow():
    http, _ = client()
    unknown = http.get("/nothing")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "no such path: /nothing; this server serves POST /tnews"},
    )
    wrong_method = http.get("/tnews")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def test_a_body_not_declared_json_is_415():
    http, _ = client()
    answer = http.post("/tnews", content=b'{"data": {"text": ["a"]}}', headers={"Content-Type": "text/plain"})
    assert (answer.status_code, answer.json()) == (
        415,
        {"error": "the body must be JSON, sent with 'Content-Type: application/json'"},
    )
    assert http.post("/tnews", json=BODY).status_code == 200


def test_a_body_sent_in_chunks_past_max_body_bytes_is_413():
    batcher = StubBatcher()
    app = serving.create_app(batcher, TNEWS, serving.ServingLimits(max_body_bytes=64))
    http = TestClient(app, base_url="http://127.0.0.1:8189")
    chunks = (b'{"data": {"text": ["' + b"a" * 30 + b'"]}}' for _ in range(3))  # no Content-Length: chunked
    answer = http.post("/tnews", content=chunks, headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()) == (413, {"error": "the body has more than 64 bytes"})
    assert http.post("/tnews", json=BODY).json() == {"result": [{"text": "上海"}]}


def test_predictions_skip_fastapis_routing_and_other_paths_keep_it(monkeypatch):
    """POST /<task> is answered before FastAPI (its route handler is never entered); the rest is FastAPI's."""
    from fastapi import routing

    entered = []
    original = routing.request_response

    def recording(handler):
        inner = original(handler)

        async def app(scope, receive, send):
            entered.append(scope["path"])
            await inner(scope, receive, send)

        return app

    monkeypatch.setattr(routing, "request_response", recording)
    http, _ = client()
    assert http.post("/tnews", json=BODY).status_code == 200
    assert http.post("/afqmc", json=BODY).status_code == 404
    assert http.get("/health").status_code == 200
    assert entered == ["/afqmc", "/health"]


@pytest.mark.parametrize("host", ["evil.example:8189", "evil.example", "192.168.1.5:8189"])
def test_a_loopback_server_refuses_other_host_names(host):
    http, _ = client()
    answer = http.post("/tnews", json=BODY, headers={"Host": host})
    assert answer.status_code == 421
    assert answer.json() == {
        "error": f"Host {host!r} is not a name of this server (serve.py --allowed_hosts adds names)"
    }


@pytest.mark.parametrize("host", ["127.0.0.1:8189", "localhost:8189", "[::1]:8189", "LOCALHOST", "model.lan:8189"])
def test_a_loopback_server_answers_its_own_names_and_allowed_ones(host):
    http, _ = client(allowed_hosts=["model.lan"])
    assert http.post("/tnews", json=BODY, headers={"Host": host}).status_code == 200


def test_a_server_on_every_interface_answers_any_host_unless_restricted():
    open_to_all, _ = client(host="0.0.0.0")
    assert open_to_all.post("/tnews", json=BODY, headers={"Host": "10.0.0.7:8189"}).status_code == 200
    restricted, _ = client(host="0.0.0.0", allowed_hosts=["model.lan"])
    assert restricted.post("/tnews", json=BODY, headers={"Host": "10.0.0.7:8189"}).status_code == 421
    assert restricted.post("/tnews", json=BODY, headers={"Host": "model.lan"}).status_code == 200


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Bearer s3cret"}, 200),
        ({"X-API-Key": "s3cret"}, 200),
    ],
)
def test_an_api_key_is_required_when_given(headers, status):
    http, _ = client(api_key="s3cret")
    answer = http.post("/tnews", json=BODY, headers=headers)
    assert answer.status_code == status
    if status == 401:
        assert answer.json() == {
            "error": "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        }
        assert answer.headers["www-authenticate"] == "Bearer"


def test_with_an_api_key_health_and_the_page_stay_open_and_metrics_need_it():
    http, _ = client(api_key="s3cret")
    assert http.get("/health").status_code == 200
    page = http.get("/")
    assert page.status_code == 200
    assert 'id="api_key"' in page.text
    assert http.get("/metrics?format=json").status_code == 401
    assert http.get("/metrics?format=json", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_docs_are_off_unless_asked_for():
    http, _ = client()
    assert http.get("/docs").status_code == 404
    assert http.get("/redoc").status_code == 404
    assert http.get("/openapi.json").status_code == 200
    with_docs, _ = client(docs=True)
    assert with_docs.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "task, required",
    [(TNEWS, ["text"]), (utils.ALL_TASKS["afqmc"], ["text", "text_pair"]), (utils.ALL_TASKS["c3"], None)],
    ids=["tnews", "afqmc", "c3"],
)
def test_the_openapi_description_holds_the_tasks_body(task, required):
    http, _ = client(task)
    operation = http.get("/openapi.json").json()["paths"]["/{task_name}"]["post"]
    data = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]
    fields, _ = task.family.input_fields(task)
    assert data["required"] == list(required or fields)
    assert set(operation["responses"]) >= {"200", "401", "413", "415", "421", "422", "503"}


def test_every_refusal_is_counted_in_the_metrics():
    http, batcher = client(api_key="k")
    http.get("/nothing")  # 404
    http.post("/tnews", json=BODY)  # 401
    http.post("/tnews", json=BODY, headers={"Host": "evil.example"})  # 421
    http.post("/tnews", content=b"{}", headers={"X-API-Key": "k", "Content-Type": "text/plain"})  # 415
    assert http.get("/metrics?format=json", headers={"X-API-Key": "k"}).json()["errors"] == 4


def test_listening_beyond_this_machine_is_warned_about():
    assert serve.exposure_warning("127.0.0.1", serving.AccessRules()) is None
    assert serve.exposure_warning("::1", serving.AccessRules()) is None
    assert serve.exposure_warning("0.0.0.0", serving.AccessRules()) == (
        "--host 0.0.0.0 listens beyond this machine: anyone who can reach it can use the model, with no key (give "
        "--api_key to require one); requests and answers travel as plain HTTP (put a TLS proxy in front)"
    )
    assert "with no key" not in serve.exposure_warning("0.0.0.0", serving.AccessRules(api_key="k"))
