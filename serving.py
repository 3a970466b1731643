"""HTTP serving for serve.py: PaddleNLP SimpleServer's request body parsed and checked, a batcher that runs the
concurrent requests' texts through one predictor together (cross-request dynamic batching), the metrics, and the
FastAPI app with its try-it page.

One predictor per batcher thread (Paddle predictors are not thread-safe); several processes with serve.py --workers.
Imports model_io.py, predictors.py, runtime.py and utils.py.
"""

import asyncio
import collections
import concurrent.futures
import hmac
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from model_io import load_deployed_tokenizer
from predictors import create_predictor, run_predictor, warm_up_buckets
from runtime import UserError, first_line, json_error_reason, logger
from utils import (
    INPUT_FIELDS,
    MISSING_FIELD_WORDING,
    check_output_width,
    encode_examples,
    input_description,
    prediction_rows,
    raw_examples,
)


@dataclass(frozen=True)
class ServingLimits:
    """The batcher's and the request checks' limits (serve.py's options of the same names)."""

    max_batch_size: int = field(default=32, metadata={"help": "Sequences run together, across requests."})
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "How long a request waits for others to share its batch."}
    )
    max_queue: int = field(
        default=1024, metadata={"help": "Sequences that may wait; beyond it requests get 503 with Retry-After."}
    )
    max_texts_per_request: int = field(default=64, metadata={"help": "Texts one request may hold (more: 413)."})
    max_text_chars: int = field(default=2000, metadata={"help": "Characters one text may hold (more: 413)."})

    max_body_bytes: int = field(
        default=1 << 20, metadata={"help": "Bytes a request body may hold (more: 413, refused before reading it)."}
    )
    body_timeout_s: float = field(
        default=10.0, metadata={"help": "Seconds a client may take to send its body (more: 408)."}
    )

    MINIMUMS = {
        "max_batch_size": 1,
        "max_queue": 1,
        "max_texts_per_request": 1,
        "max_text_chars": 1,
        "max_wait_ms": 0,
        "max_body_bytes": 1,
        "body_timeout_s": 0.001,
    }


API_KEY_VARIABLE = "ERNIE_SERVE_API_KEY"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})  # no key


@dataclass(frozen=True)
class AccessRules:
    """Who may use the server, and by which names (serve.py's options of the same names)."""

    api_key: Optional[str] = field(
        default=None,
        metadata={
            "help": "Require this key on every request but GET /health, GET / and the API docs: 'Authorization: "
            f"Bearer KEY' or 'X-API-Key: KEY' (else 401). Default: ${API_KEY_VARIABLE} (out of the process list)."
        },
    )
    allowed_hosts: Optional[List[str]] = field(
        default=None,
        metadata={
            "help": "Host header names accepted besides the listening address's (on a loopback address: localhost, "
            "127.0.0.1 and ::1 only, so that a DNS-rebinding web page is refused with 421)."
        },
    )
    docs: bool = field(
        default=False,
        metadata={
            "help": "Serve /docs and /redoc (their scripts come from a CDN: blank offline, and third-party code in "
            "the browser); /openapi.json is always served."
        },
    )


class RequestError(Exception):
    """A request the server refuses: its HTTP status, one message, and any headers of the answer."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.headers = status, headers


# ---- who may call: the Host header, the API key, the content type ------------------------------------------------
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def accepted_hosts(bind_host: str, allowed_hosts: Optional[Sequence[str]]) -> Optional[frozenset]:
    """The Host header names a server listening on bind_host answers: on a loopback address its own names and
    allowed_hosts (a DNS-rebinding page sends its own name); elsewhere allowed_hosts, or any (None) without them."""
    names = {name.lower() for name in allowed_hosts or ()}
    if is_loopback(bind_host):
        return frozenset(names | LOOPBACK_NAMES | {bind_host.lower()})
    return frozenset(names | {bind_host.lower()}) if names else None


def host_name(header: str) -> str:
    """A Host header without its port: 'example.com:8189' -> 'example.com', '[::1]:8189' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def has_key(api_key: str, headers) -> bool:
    authorization = headers.get("authorization", "")
    given = authorization[len("bearer ") :] if authorization.lower().startswith("bearer ") else headers.get("x-api-key")
    return given is not None and hmac.compare_digest(given.strip().encode(), api_key.encode())


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def access_refusal(access: AccessRules, hosts: Optional[frozenset], method: str, path: str, headers):
    """The RequestError a request gets before it is routed, or None: a Host that is not this server's (421), no
    valid API key where one is required (401), a POST body that is not declared JSON (415; a web page can send
    text/plain to another site without asking, but not application/json)."""
    host = headers.get("host")
    if hosts is not None and host is not None and host_name(host) not in hosts:
        return RequestError(421, f"Host {host!r} is not a name of this server (serve.py --allowed_hosts adds names)")
    if access.api_key and path not in OPEN_PATHS and not has_key(access.api_key, headers):
        return RequestError(
            401,
            "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            {"WWW-Authenticate": "Bearer"},
        )
    if method == "POST" and not is_json(headers.get("content-type", "")):
        return RequestError(415, "the body must be JSON, sent with 'Content-Type: application/json'")
    return None


class AccessGuard:
    """ASGI middleware: a request that access_refusal refuses is answered by answer(refusal), before routing."""

    def __init__(self, app, refusal: Callable, answer: Callable):
        self.app, self.refusal, self.answer = app, refusal, answer

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from starlette.datastructures import Headers

            refused = self.refusal(scope["method"], scope["path"], Headers(scope=scope))
            if refused is not None:
                await self.answer(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- the request body ----------------------------------------------------------------------------------------------
def read_body(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the body is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the body is not JSON ({json_error_reason(error, line=True)})") from None
    except RecursionError:  # thousands of nested brackets
        raise RequestError(400, "the body nests too deeply") from None
    except ValueError as error:  # an integer of more digits than Python converts (4,300)
        raise RequestError(400, f"the body holds a number too large ({first_line(error)})") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise RequestError(422, 'expected {"data": {...}, "parameters": {...}} (PaddleNLP SimpleServer\'s body)')
    return body


def string_list(data: dict, name: str, limits: ServingLimits) -> List[str]:
    return checked_strings(data.get(name), f"data.{name}", limits)


def checked_strings(values, label: str, limits: ServingLimits) -> List[str]:
    """values as a non-empty list of non-empty strings within the limits (one string is a list of one)."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not values:
        raise RequestError(422, f"{label} must be a non-empty list of strings")
    if len(values) > limits.max_texts_per_request:
        raise RequestError(413, f"{label} has {len(values)} texts; at most {limits.max_texts_per_request} a request")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise RequestError(422, f"{label}[{index}] must be a string, got {type(value).__name__}")
        if not value.strip():
            raise RequestError(422, f"{label}[{index}] is empty")
        if len(value) > limits.max_text_chars:
            raise RequestError(413, f"{label}[{index}] has {len(value)} characters; at most {limits.max_text_chars}")
    return values


def string_lists(data: dict, name: str, limits: ServingLimits) -> List[List[str]]:
    """data.<name> as one list of strings for each context (multiple choice: the choices of each question)."""
    values = data.get(name)
    if not isinstance(values, list) or not values or not all(isinstance(v, list) for v in values):
        raise RequestError(422, f"data.{name} must be a list of string lists, one for each context")
    return [checked_strings(value, f"data.{name}[{index}]", limits) for index, value in enumerate(values)]


LIST_FIELDS = ("choices",)  # fields whose every item is itself a list of strings


def request_examples(task, body: dict, limits: ServingLimits) -> list:
    """The examples a request asks about: lists of the same length under data.<field> for each input field of the
    task's family (classification: text, and text_pair for pair tasks; NER: text; QA: context and question;
    multiple choice: context, question (C3) and choices, a list of choices for each context)."""
    data = body["data"]
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError(422, "parameters must be an object")
    required, optional = task.family.input_fields(task)
    fields = required + optional
    for name in INPUT_FIELDS:
        if name in data and name not in fields:
            raise RequestError(422, f"task {task.name} takes {input_description(fields)}: data.{name} is not used")
    first = required[0]
    values = {first: string_list(data, first, limits)}
    for name in fields[1:]:
        if name not in data and name in optional:
            continue
        if name not in data:
            raise RequestError(
                422, f"task {task.name} {MISSING_FIELD_WORDING[name]}: give data.{name}, one per data.{first}"
            )
        values[name] = string_lists(data, name, limits) if name in LIST_FIELDS else string_list(data, name, limits)
        if len(values[name]) != len(values[first]):
            raise RequestError(422, f"data.{first} has {len(values[first])} texts but data.{name} {len(values[name])}")
    try:
        return [
            example
            for i in range(len(values[first]))
            for example in raw_examples(task, i, {name: given[i] for name, given in values.items()}, f"request {i}")
        ]
    except UserError as refused:  # e.g. more choices than the task takes, a CHID passage without a blank
        raise RequestError(422, str(refused)) from None


async def capped_body(request, limits: ServingLimits) -> bytes:
    """The request's body, refused before it is read when its Content-Length is over max_body_bytes (413), cut off
    when more arrives than that (413), and given up on when the client takes longer than body_timeout_s (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"the body has {int(declared)} bytes; at most {limits.max_body_bytes}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise RequestError(413, f"the body has more than {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the body did not arrive within {limits.body_timeout_s:g} s") from None


# ---- batching across requests --------------------------------------------------------------------------------------
def input_rows(examples: list) -> int:
    """The model input rows examples make at least: one a choice of a multiple-choice question, else one each (QA
    contexts may make more windows, known only once encoded)."""
    return sum(len(getattr(example, "choices", None) or [None]) for example in examples)


class Overloaded(Exception):
    """The queue is full: the client should retry later (503 with Retry-After)."""


class Unavailable(Exception):
    """The model could not be loaded: no request can be answered (503 at once, no retry)."""


@dataclass
class Pending:
    examples: list
    future: concurrent.futures.Future
    queued_at: float
    rows: int  # model input rows its examples make at least (a multiple-choice question: one a choice)


class Batcher:
    """Runs the queued requests' examples together on one predictor in its own thread: up to max_batch_size
    sequences, or what arrived within max_wait_ms of the first; features sorted by length and padded per batch (the
    infer.py path); each request gets its own rows back, in order."""

    def __init__(
        self, make_predictor: Callable, model_path: str, task, window_args, max_seq_length: int, limits: ServingLimits
    ):
        self.make_predictor, self.model_path, self.task = make_predictor, model_path, task
        self.window_args, self.max_seq_length, self.limits = window_args, max_seq_length, limits
        self.queue = collections.deque()
        self.queued_sequences = 0
        self.lock = threading.Condition()
        self.ready = threading.Event()
        self.closing = False
        self.failed: Optional[str] = None
        self.stats = {
            "requests": 0,
            "errors": 0,
            "rejected_overload": 0,
            "batches": 0,
            "sequences": 0,
            "batch_sizes": collections.Counter(),
            "latency_ms": collections.deque(maxlen=2000),
        }
        self.thread = threading.Thread(target=self.loop, name="batcher", daemon=True)

    def start(self) -> "Batcher":
        self.thread.start()
        return self

    def submit(self, examples: list) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        rows = input_rows(examples)
        if rows > self.limits.max_queue:
            raise RequestError(413, f"the request makes {rows} sequences; at most {self.limits.max_queue} a request")
        with self.lock:
            if self.failed:
                raise Unavailable(f"the model could not be loaded: {self.failed}")
            if self.closing:
                raise Overloaded("the server is shutting down")
            if self.queued_sequences + rows > self.limits.max_queue:
                self.stats["rejected_overload"] += 1
                raise Overloaded(f"{self.queued_sequences} sequences are waiting (at most {self.limits.max_queue})")
            self.queue.append(Pending(examples, future, time.perf_counter(), rows))
            self.queued_sequences += rows
            self.stats["requests"] += 1
            self.lock.notify()
        return future

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, stop the thread."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.thread.join()

    def next_batch(self) -> List[Pending]:
        with self.lock:
            while not self.queue and not self.closing:
                self.lock.wait()
            if not self.queue:
                return []
            deadline = self.queue[0].queued_at + self.limits.max_wait_ms / 1000.0
            while self.queued_sequences < self.limits.max_batch_size and not self.closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.lock.wait(left)
            batch, size = [], 0
            while self.queue and (not batch or size + self.queue[0].rows <= self.limits.max_batch_size):
                pending = self.queue.popleft()
                batch.append(pending)
                size += pending.rows
                self.queued_sequences -= pending.rows
            return batch

    def loop(self) -> None:
        try:
            predictor = self.make_predictor()
            self.tokenizer = load_deployed_tokenizer(self.model_path)
            warm_up_buckets(predictor, self.limits.max_batch_size, self.max_seq_length)
        except Exception as error:  # the server reports it on /health and to every request instead of dying silently
            self.fail_all(f"{type(error).__name__}: {first_line(error)}")
            return
        self.ready.set()
        while True:
            batch = self.next_batch()
            if not batch:
                return
            self.run_batch(predictor, batch)

    def run_batch(self, predictor, batch: List[Pending]) -> None:
        """Encode each request, run all of their features as one set of length-sorted batches, split the outputs
        back by request and format each request's rows. A batch that fails is run again request by request, so
        that only the request that fails gets its error."""
        try:
            encoded = [
                encode_examples(
                    self.task,
                    "request",
                    p.examples,
                    self.tokenizer,
                    self.max_seq_length,
                    True,
                    self.window_args,
                    with_labels=False,
                )
                for p in batch
            ]
            features = [feature for one in encoded for feature in one.sequences]
            result = run_predictor(
                predictor, features, self.limits.max_batch_size, per_token=self.task.per_token_outputs
            )
            if not self.fits_task(result.outputs, batch):
                return
            start = 0
            for pending, one in zip(batch, encoded):
                count = len(one.sequences)
                outputs = [output[start : start + count] for output in result.outputs]
                start += count
                pending.future.set_result(prediction_rows(self.task, pending.examples, one, outputs, self.window_args))
            self.record(batch, len(features))
        except Exception as error:
            if len(batch) > 1:
                logger.warning("a batch of %d requests failed (%s); running them one by one", len(batch), error)
                for pending in batch:
                    if not pending.future.done():
                        self.run_batch(predictor, [pending])
                return
            if not isinstance(error, UserError):
                logger.exception("a request failed")
            batch[0].future.set_exception(error)

    def fits_task(self, outputs, batch: List[Pending]) -> bool:
        """Whether the model's outputs fit its task.json's task; if not, no request can be answered (503)."""
        try:
            check_output_width(self.task, outputs, self.model_path)
        except UserError as misfit:
            self.fail_all(str(misfit))
            for pending in batch:
                pending.future.set_exception(Unavailable(f"the model could not be loaded: {misfit}"))
            return False
        return True

    def fail_all(self, reason: str) -> None:
        """No predictor: later requests are refused at once, and those already queued get the reason."""
        logger.error("the predictor could not start: %s", reason)
        with self.lock:
            self.failed = reason
            while self.queue:
                pending = self.queue.popleft()
                self.queued_sequences -= pending.rows
                pending.future.set_exception(Unavailable(f"the model could not be loaded: {reason}"))

    def count_error(self) -> None:
        with self.lock:
            self.stats["errors"] += 1

    def record(self, batch: List[Pending], sequences: int) -> None:
        now = time.perf_counter()
        with self.lock:
            self.stats["batches"] += 1
            self.stats["sequences"] += sequences
            self.stats["batch_sizes"][sequences] += 1
            self.stats["latency_ms"].extend(1000.0 * (now - p.queued_at) for p in batch)

    def metrics(self) -> dict:
        with self.lock:
            latencies = np.array(self.stats["latency_ms"]) if self.stats["latency_ms"] else np.zeros(1)
            sizes = self.stats["batch_sizes"]
            return {
                "ready": self.ready.is_set(),
                "requests": self.stats["requests"],
                "errors": self.stats["errors"],
                "rejected_overload": self.stats["rejected_overload"],
                "batches": self.stats["batches"],
                "sequences": self.stats["sequences"],
                "queue_depth_sequences": self.queued_sequences,
                "queue_depth_requests": len(self.queue),
                "batch_sizes": {str(size): count for size, count in sorted(sizes.items())},
                "max_batch_size_seen": max(sizes) if sizes else 0,
                "latency_ms_p50": float(np.percentile(latencies, 50)),
                "latency_ms_p99": float(np.percentile(latencies, 99)),
            }


def start_batcher(served, window_args, limits: ServingLimits) -> Batcher:
    """A started batcher for a deployment.Deployment (its predictor is made in the batcher's thread)."""
    return Batcher(
        lambda: create_predictor(served.files, served.options),
        served.model_path,
        served.task,
        window_args,
        served.options.max_seq_length,
        limits,
    ).start()


# ---- the app -------------------------------------------------------------------------------------------------------
def create_app(
    batcher: Batcher, task, limits: ServingLimits, access: AccessRules = AccessRules(), bind_host: str = "127.0.0.1"
):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)  # SIGTERM: drain, then exit

    app = FastAPI(
        title=f"ERNIE 3.0 {task.name} server",
        lifespan=lifespan,
        description=f"POST /{task.name} with PaddleNLP SimpleServer's body; GET /health, /metrics, /.",
        docs_url="/docs" if access.docs else None,
        redoc_url="/redoc" if access.docs else None,
    )

    def error(status: int, message: str, headers: Optional[dict] = None):
        batcher.count_error()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    hosts = accepted_hosts(bind_host, access.allowed_hosts)
    app.add_middleware(
        AccessGuard,
        refusal=lambda method, path, headers: access_refusal(access, hosts, method, path, headers),
        answer=lambda refused: error(refused.status, str(refused), refused.headers),
    )

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        if exc.status_code == 405 and request.url.path not in known_paths(app, task):  # GET /anything matched POST's
            return error(404, f"no such path: {request.url.path}; this server serves POST /{task.name}")
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(422, "the request does not match this endpoint")

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):  # counted too; ServerErrorMiddleware logs the traceback
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health():
        if batcher.failed:
            return error(500, f"the model could not be loaded: {batcher.failed}")
        if not batcher.ready.is_set():
            return JSONResponse({"status": "warming up"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready", "task": task.name}

    @app.get("/metrics")
    async def metrics(format: str = "prometheus"):
        """Prometheus's text format; ?format=json for the same numbers as one JSON object."""
        if format == "json":
            return batcher.metrics()
        return PlainTextResponse(prometheus_text(batcher.metrics(), task.name), media_type=PROMETHEUS_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return try_it_page(task, asks_for_key=bool(access.api_key))

    @app.post("/{task_name}", openapi_extra=openapi_operation(task))
    async def predict(task_name: str, request: Request):
        if task_name != task.name:
            return error(404, f"this server serves {task.name}: POST /{task.name}")
        try:
            examples = request_examples(task, read_body(await capped_body(request, limits)), limits)
            future = batcher.submit(examples)
        except RequestError as refused:
            return error(refused.status, str(refused), refused.headers)
        except Overloaded as overloaded:
            return error(503, f"overloaded: {overloaded}; retry", headers={"Retry-After": "1"})
        except Unavailable as unavailable:
            return error(503, str(unavailable))
        try:
            return {"result": await asyncio.wrap_future(future)}
        except Unavailable as unavailable:
            return error(503, str(unavailable))
        except UserError as refused:  # e.g. a text longer than the model takes, with truncation off
            return error(422, str(refused))
        except Exception as failure:
            logger.exception("prediction failed")
            return error(500, f"prediction failed: {type(failure).__name__}")

    return app


def known_paths(app, task) -> set:
    """The paths this app answers (its routes, with POST's /{task_name} as the task's path)."""
    return {route.path for route in app.routes if "{" not in route.path} | {f"/{task.name}"}


# ---- the OpenAPI description of POST /<task> ---------------------------------------------------------------------
def openapi_operation(task) -> dict:
    """POST /<task>'s body (data's input fields of the task: each a list of strings, choices a list of string lists)
    and answers ({"result": [...]}, or {"error": "..."})."""
    required, optional = task.family.input_fields(task)
    strings = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    fields = {name: {"type": "array", "items": strings} if name in LIST_FIELDS else strings for name in required}
    fields.update({name: strings for name in optional})
    data = {"type": "object", "required": list(required), "properties": fields, "additionalProperties": False}
    body = {"type": "object", "required": ["data"], "properties": {"data": data, "parameters": {"type": "object"}}}
    example = {"data": {name: [["选项一", "选项二"]] if name in LIST_FIELDS else ["..."] for name in required}}
    error_body = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
    result = {"type": "object", "properties": {"result": {"type": "array", "items": {"type": "object"}}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body, "example": example}}},
        "responses": {
            "200": {
                "description": "one row a text, as infer.py --text prints it",
                "content": {"application/json": {"schema": result}},
            },
            **{
                str(status): {"description": meaning, "content": error_body}
                for status, meaning in ERROR_MEANINGS.items()
            },
        },
    }


ERROR_MEANINGS = {
    400: "not UTF-8, not JSON, or too deeply nested",
    401: "no valid API key (serve.py --api_key)",
    408: "the body did not arrive in time",
    413: "too large: the body, the number of texts, or a text",
    415: "not sent as application/json",
    421: "a Host header that is not this server's",
    422: "valid JSON that is not a request for this task",
    503: "overloaded (retry after Retry-After), or no model",
}


PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# metric name, type and help of each number of Batcher.metrics
PROMETHEUS_METRICS = (
    ("requests", "ernie_requests_total", "counter", "Requests queued for prediction."),
    ("errors", "ernie_errors_total", "counter", "Requests answered with an error (4xx or 5xx)."),
    ("rejected_overload", "ernie_rejected_overload_total", "counter", "Requests refused with 503: the queue was full."),
    ("batches", "ernie_batches_total", "counter", "Batches run."),
    ("sequences", "ernie_sequences_total", "counter", "Model input rows run."),
    ("ready", "ernie_ready", "gauge", "1 once the model is loaded and warmed up."),
    ("queue_depth_sequences", "ernie_queue_depth_sequences", "gauge", "Model input rows waiting."),
    ("queue_depth_requests", "ernie_queue_depth_requests", "gauge", "Requests waiting."),
    ("max_batch_size_seen", "ernie_max_batch_size_seen", "gauge", "The largest batch run, in rows."),
)


def prometheus_text(metrics: dict, task_name: str) -> str:
    """Batcher.metrics in Prometheus's text exposition format (version 0.0.4), labelled with the task."""
    label = f'task="{task_name}"'
    lines = []
    for key, name, kind, help_text in PROMETHEUS_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {float(metrics[key]):g}"]
    lines += ["# HELP ernie_request_latency_ms Queue-to-answer latency of recent requests.",
              "# TYPE ernie_request_latency_ms summary"]  # fmt: skip
    for quantile, key in (("0.5", "latency_ms_p50"), ("0.99", "latency_ms_p99")):
        lines.append(f'ernie_request_latency_ms{{{label},quantile="{quantile}"}} {metrics[key]:.3f}')
    lines += [
        "# HELP ernie_batches_by_size Batches run, by their number of rows.",
        "# TYPE ernie_batches_by_size gauge",
    ]
    for size, count in metrics["batch_sizes"].items():
        lines.append(f'ernie_batches_by_size{{{label},rows="{size}"}} {count}')
    return "\n".join(lines) + "\n"


# The form's widget and placeholder of each input field
FIELD_WIDGETS = {
    "text": '<input id="text" placeholder="sentence">',
    "text_pair": '<input id="text_pair" placeholder="second sentence">',
    "context": '<textarea id="context" rows="6" placeholder="context"></textarea>',
    "question": '<input id="question" placeholder="question">',
    "choices": '<textarea id="choices" rows="4" placeholder="one choice a line"></textarea>',
}


KEY_WIDGET = '<input id="api_key" type="password" placeholder="API key">'


def try_it_page(task, asks_for_key: bool = False) -> str:
    """A small form: type a sentence (or a context and a question, or a question and its choices), see the label,
    entities or answer; with asks_for_key, the API key too (sent as X-API-Key)."""
    names = list(task.family.input_fields(task)[0])  # the required fields (a custom task's pair is optional)
    fields = [FIELD_WIDGETS[name] for name in names] + ([KEY_WIDGET] if asks_for_key else [])
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>{task.name}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}
input,textarea{{width:100%;margin:.3em 0;font-size:1.1em}}
pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap}} button{{font-size:1.1em}}</style></head>
<body><h1>{task.name}</h1>
{"".join(fields)}
<button id="send" onclick="send()">Predict</button>
<pre id="result">—</pre>
<script>
async function send() {{
  const data = {{}};
  for (const name of {json.dumps(names)}) {{
    const value = document.getElementById(name).value;
    // a list field (choices) is typed one item a line
    data[name] = {json.dumps(list(LIST_FIELDS))}.includes(name) ? [value.split("\\n").filter(x => x.trim())] : [value];
  }}
  const headers = {{"Content-Type": "application/json"}};
  const key = document.getElementById("api_key");
  if (key) headers["X-API-Key"] = key.value;
  const response = await fetch("/{task.name}", {{method: "POST", headers: headers,
                                               body: JSON.stringify({{data: data}})}});
  const body = await response.json();
  document.getElementById("result").textContent = JSON.stringify(body.result ? body.result[0] : body, null, 2);
}}
// a link can carry the input (/?text=...): the page fills the form and sends it
const given = new URLSearchParams(location.search);
if ({json.dumps(names)}.every(name => given.has(name))) {{
  for (const name of {json.dumps(names)}) document.getElementById(name).value = given.get(name);
  send();
}}
</script></body></html>"""
