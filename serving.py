"""HTTP serving for serve.py: PaddleNLP SimpleServer's request body parsed and checked, a batcher that runs the
concurrent requests' texts through one predictor together (cross-request dynamic batching), the metrics, and the
FastAPI app with its try-it page.

One predictor per batcher thread (Paddle predictors are not thread-safe); several processes with serve.py --workers.
Imports model_io.py, predictors.py, runtime.py and utils.py.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import hmac
import ipaddress
import itertools
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from uvicorn.protocols.http.h11_impl import H11Protocol

from model_io import load_deployed_tokenizer
from predictors import (
    OPENVINO_INT8_BATCH_TOKENS,
    bucket_lengths,
    create_streamed_predictor,
    default_model_streams,
    ones_batch,
    run_predictor,
    warm_up_shapes,
)
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

try:  # uvicorn's faster HTTP parser, where installed (requirements.txt)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:
    HttpToolsProtocol = None

try:  # a faster JSON encoder for the answers, where installed (requirements.txt); the standard library's otherwise
    import orjson
except ImportError:
    orjson = None


DEFAULT_PASSED_OVER = 3  # ServingLimits.max_passed_over with split_by_length
DEFAULT_BATCH_TOKENS = 1024  # ServingLimits.max_batch_tokens for a predictor that names none (batch_tokens)


@dataclass(frozen=True)
class ServingLimits:
    """The batcher's and the request checks' limits (serve.py's options of the same names)."""

    max_batch_size: int = field(default=32, metadata={"help": "Sequences run together, across requests."})
    max_batch_tokens: Optional[int] = field(
        default=None,
        metadata={
            "help": "Tokens run together: a batch takes requests up to this many tokens, and each model call holds at "
            "most this many counted padded to its longest sequence (a longer single sequence runs alone). It bounds "
            "the memory a backend keeps for its largest shapes. Default: the backend's, OpenVINO int8 "
            f"{OPENVINO_INT8_BATCH_TOKENS} (its calls gained from more rows on a Xeon with AMX), the others "
            f"{DEFAULT_BATCH_TOKENS}."
        },
    )
    split_by_length: bool = field(
        default=True,
        metadata={
            "help": "Run a batch as length-sorted model calls, cut where the padding saved outweighs another call's "
            "cost (measured at start); false: one padded call per max_batch_size sequences."
        },
    )
    max_passed_over: Optional[int] = field(
        default=None,
        metadata={
            "help": "Times a queued request may be left for a later batch, so that each batch runs sequences of like "
            "lengths: of the queue sorted by length, the run that one model call holds with the most tokens a second "
            "of model time (measured at start) goes first, and a request left this many times goes in the next "
            f"batch. 0: each batch takes the queue first come first. Default {DEFAULT_PASSED_OVER}; with "
            "--split_by_length false it is 0, and a larger value is refused (windows need length-sorted calls)."
        },
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata={
            "help": "How long a request waits at most for others to share its batch; it waits only while fewer "
            "requests are queued than were in flight around the last batch."
        },
    )
    lone_call_predictor: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Float models on --backend paddle with oneDNN: run 1-row model calls (a lone request) on a second "
            "predictor built for batch 1, whose unfused matmuls skip the weight reorder an fc op pays for each new "
            "length (a Medium model's p50 at batch 1: 26-27 against 43-44 ms, AMD EPYC), at the memory of a second "
            "copy of the model. Default: on where it applies; elsewhere giving it is refused."
        },
    )
    model_streams: Optional[int] = field(
        default=None,
        metadata={
            "help": "Batches run at once on the model, each on --num_threads / N threads (ONNX Runtime: one thread "
            "each, so N = --num_threads; OpenVINO: its CPU streams); a lone request still runs on every thread, on "
            "a second copy of the model. Default: 2 for --backend onnxruntime on the CPU with --num_threads 2 (the "
            "3/4-width Medium int8, AMD EPYC: concurrency 32 at 0.86 of offline batch 32's throughput against 0.61 "
            "with 1; peak 315 against 262 MB), else 1 (OpenVINO int8 with 2: 0.81 against 0.71, but a peak of about "
            "630 against 400 MB)."
        },
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
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "Seconds a client may take to send a request's headers, from its connection or the previous "
            "answer (more: 408 and the connection closed)."
        },
    )

    def __post_init__(self):
        """max_passed_over left unset is the default of split_by_length's mode; windows asked for without
        length-sorted calls are refused (the parsers turn the ValueError into one line), not ignored."""
        if self.max_passed_over is None:
            object.__setattr__(self, "max_passed_over", DEFAULT_PASSED_OVER if self.split_by_length else 0)
        elif self.max_passed_over > 0 and not self.split_by_length:
            raise ValueError(
                f"--max_passed_over {self.max_passed_over} needs --split_by_length true (windows of like lengths "
                "run as length-sorted calls); with --split_by_length false give --max_passed_over 0 or leave it out"
            )

    def for_predictor(self, predictor) -> "ServingLimits":
        """These limits with max_batch_tokens, when left unset, the predictor's (its batch_tokens, else
        DEFAULT_BATCH_TOKENS)."""
        if self.max_batch_tokens is not None:
            return self
        return replace(self, max_batch_tokens=getattr(predictor, "batch_tokens", None) or DEFAULT_BATCH_TOKENS)

    MINIMUMS = {
        "max_batch_size": 1,
        "max_batch_tokens": 1,
        "max_queue": 1,
        "max_texts_per_request": 1,
        "max_text_chars": 1,
        "max_wait_ms": 0,
        "max_passed_over": 0,
        "model_streams": 1,
        "max_body_bytes": 1,
        "body_timeout_s": 0.001,
        "header_timeout_s": 0.001,
    }


WINDOW_CHOICE = 4  # efficient_window chooses among this many batches' worth of the queue
WINDOW_SLACK = 0.03  # efficient_window takes the run with the most tokens among those within 3% of the most efficient

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


class TaskRoute:
    """ASGI middleware: POST <path> answered by answer(scope, receive) straight away, everything else by the app
    (FastAPI). The prediction route is the one every request of a busy server takes: FastAPI's routing, its
    middlewares and its Request object cost as much event-loop time as the request's own work
    (benchmarks/bench_serve.py measures both)."""

    def __init__(self, app, path: str, answer: Callable):
        self.app, self.path, self.answer = app, path, answer

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            response = await self.answer(scope, receive)
            await response(scope, receive, send)
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


def header_value(scope, name: bytes) -> Optional[str]:
    """The first value of an ASGI request's header (name in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def capped_body(scope, receive, limits: ServingLimits) -> bytes:
    """An ASGI request's body, refused before it is read when its Content-Length is over max_body_bytes (413), cut
    off when more arrives than that (413), and given up on when the client takes longer than body_timeout_s (408)."""
    declared = header_value(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"the body has {int(declared)} bytes; at most {limits.max_body_bytes}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):  # a timer, not a task (asyncio.wait_for makes one)
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away: nobody reads the answer
                    raise RequestError(400, "the client disconnected before sending its body")
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limits.max_body_bytes:
                    raise RequestError(413, f"the body has more than {limits.max_body_bytes} bytes")
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {limits.body_timeout_s:g} s") from None


class HeaderDeadline:
    """Mixed into uvicorn's HTTP protocols: a request's headers must arrive within header_timeout_s of the connection
    or of the previous answer, else the client gets a 408 and the connection is closed. uvicorn (0.54) has no such
    limit: its keep-alive timeout starts again with every byte, so a client sending a header a byte at a time held a
    connection for ever. (The body has its own limit, body_timeout_s, in capped_body.)"""

    header_timeout_s = ServingLimits.header_timeout_s  # this process's: set_header_timeout

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.arm_header_deadline()

    def arm_header_deadline(self) -> None:
        self.request_before = self.cycle  # a new request's headers have arrived when uvicorn makes a new cycle
        self.bytes_since_armed = False
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self.headers_too_slow)

    def disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def data_received(self, data: bytes) -> None:
        self.bytes_since_armed = True
        super().data_received(data)
        if self.cycle is not self.request_before:
            self.disarm_header_deadline()

    def on_response_complete(self) -> None:
        """The next request's deadline starts now, unless uvicorn has already started a pipelined one (its headers
        arrived: its cycle is not complete)."""
        super().on_response_complete()
        self.disarm_header_deadline()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.arm_header_deadline()

    def connection_lost(self, exc) -> None:
        self.disarm_header_deadline()
        super().connection_lost(exc)

    def headers_too_slow(self) -> None:
        """A 408 to a client that began a request; a connection that sent nothing since is closed without one (a
        client about to reuse it would read the 408 as its answer)."""
        self.header_deadline = None
        if self.transport.is_closing():
            return
        if not self.bytes_since_armed:
            self.transport.close()
            return
        message = {"error": f"the request's headers did not arrive within {self.header_timeout_s:g} s"}
        body = json.dumps(message).encode()
        head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()
        logger.warning("closed a connection whose request headers took more than %g s", self.header_timeout_s)


def set_header_timeout(seconds: float) -> None:
    HeaderDeadline.header_timeout_s = seconds


def http_protocol(name: str):
    """uvicorn's HTTP protocol class for --http (auto: httptools where installed, as uvicorn picks), with the header
    deadline; a class at this module's top level, so that --workers processes find it by name."""
    if name == "httptools" or (name == "auto" and HttpToolsWithHeaderDeadline is not None):
        if HttpToolsWithHeaderDeadline is None:
            raise UserError("--http httptools needs the httptools package (requirements.txt); or use --http h11")
        return HttpToolsWithHeaderDeadline
    return H11WithHeaderDeadline


class H11WithHeaderDeadline(HeaderDeadline, H11Protocol):
    pass


if HttpToolsProtocol is not None:

    class HttpToolsWithHeaderDeadline(HeaderDeadline, HttpToolsProtocol):
        pass

else:
    HttpToolsWithHeaderDeadline = None


# ---- request ids: in the answer's X-Request-ID header and in every log line about the request -------------------
REQUEST_ID: contextvars.ContextVar = contextvars.ContextVar("request_id", default=None)
GIVEN_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")  # a client's own id, kept when it is one of these


def request_id_of(headers: Sequence) -> str:
    """The client's X-Request-ID when it is a plain token of at most 128 characters, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1").strip()
            if GIVEN_REQUEST_ID.fullmatch(given):
                return given
    return f"{ID_PREFIX}{next(ID_COUNTER):016x}"


ID_PREFIX, ID_COUNTER = uuid.uuid4().hex[:16], itertools.count()  # new ids: unique, without a system call each


@contextlib.contextmanager
def request_context(request_id: str):
    """Log lines inside are about this request (the batcher's thread, which no request's context reaches)."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Prefixes a log line logged while a request is handled with the request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
            record.msg = f"request {request_id}: {record.msg}"
        return True


def log_request_ids() -> None:
    if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
        logger.addFilter(RequestIdFilter())


class RequestIds:
    """ASGI middleware, outermost: each HTTP request's id (request_id_of) in REQUEST_ID while it is handled and in
    its answer's X-Request-ID header; with access_log, one log line a request (method, path, status, milliseconds);
    an unexpected error is logged with its traceback and the id (and answered 500 by answer_error() if the app's
    own handler has not answered it)."""

    def __init__(self, app, access_log: bool, answer_error: Callable):
        self.app, self.access_log, self.answer_error = app, access_log, answer_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        header, status, started = (b"x-request-id", request_id.encode()), [None], time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with request_context(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as failure:  # answered 500 by the app's handler already, or here
                logger.error("%s %s failed", scope["method"], scope["path"], exc_info=failure)
                if status[0] is None:
                    await self.answer_error(failure)(scope, receive, send_with_id)
            if self.access_log:
                milliseconds = 1000 * (time.perf_counter() - started)
                logger.info("%s %s %s %.1f ms", scope["method"], scope["path"], status[0], milliseconds)


# ---- batching across requests --------------------------------------------------------------------------------------
START_WAIT_S = 30  # how long a batcher waits for its server's start before timing its model calls anyway


class Overloaded(Exception):
    """The queue is full: the client should retry later (503 with Retry-After)."""


class Unavailable(Exception):
    """The model could not be loaded: no request can be answered (503 at once, no retry)."""


@dataclass
class Pending:
    """A request waiting for the model: its examples, encoded when it arrived (one feature a model input row)."""

    examples: list
    encoded: object  # utils' encoded examples: .sequences, one feature a model input row
    future: concurrent.futures.Future
    queued_at: float
    request_id: str = "-"
    passed_over: int = 0  # batches that ran while this request waited (efficient_window left it)

    def __post_init__(self):
        self.rows = len(self.encoded.sequences)
        lengths = [len(feature["input_ids"]) for feature in self.encoded.sequences]
        self.tokens, self.longest = sum(lengths), max(lengths, default=0)


@dataclass(frozen=True)
class CallCost:
    """What a model call of n rows padded to L tokens costs, from its times on a grid of rows x lengths (measured at
    start: measure_call_cost), made to grow with both: interpolated between the grid's points; beyond its most rows,
    in proportion to the rows; beyond its lengths, along the nearest two lengths' line (a call's fixed part and its
    part a token: a short call costs more than its share of a long one), or in proportion to the length where one
    length was timed; a shape (rows x padded length) not run before costs new_shape more (Paddle's oneDNN builds its
    kernels for each new shape)."""

    rows: Tuple[int, ...] = (1,)
    lengths: Tuple[int, ...] = (1,)
    seconds: Tuple[Tuple[float, ...], ...] = ((1.0,),)  # seconds[length index][rows index]: one row a time unit
    bucket: int = 1  # the predictor pads each call to a multiple of this many tokens
    new_shape: float = 0.0

    def __post_init__(self):
        grown = np.maximum.accumulate(np.maximum.accumulate(np.array(self.seconds, dtype=float), axis=0), axis=1)
        object.__setattr__(self, "grown", grown)
        object.__setattr__(self, "known", {})

    @classmethod
    def linear(cls, fixed_tokens: float, rows: int = 32, bucket: int = 1, length: int = 32) -> "CallCost":
        """A call costing fixed_tokens' worth of time besides one unit a padded token."""
        seconds = tuple((fixed_tokens + at, fixed_tokens + at * rows) for at in (length, 2 * length))
        return cls((1, rows), (length, 2 * length), seconds, bucket)

    def padded_length(self, longest):
        """The length a call whose longest feature has `longest` tokens is padded to (an array for an array)."""
        return -(-longest // self.bucket) * self.bucket

    def shape(self, rows: int, longest: int) -> Tuple[int, int]:
        """A call's (rows, padded length): what KeptShapes holds."""
        return rows, self.padded_length(longest)

    def describe(self) -> str:
        """'at 16 tokens 5.1 9.0 ... ms, at 64 tokens ... ms for 1, 2, 4, ... rows; a new shape 0.4 ms more'."""
        at_lengths = ", ".join(
            f"at {length} tokens {' '.join(f'{1000 * t:.1f}' for t in times)} ms"
            for length, times in zip(self.lengths, self.seconds)
        )
        rows = ", ".join(str(rows) for rows in self.rows)
        return f"{at_lengths} for {rows} rows; a new shape {1000 * self.new_shape:.1f} ms more"

    def of(self, rows: int, longest: int, shapes_run=None) -> float:
        shape = self.shape(rows, longest)
        new = self.new_shape if shapes_run is not None and shape not in shapes_run else 0.0
        return self.seconds_at(*shape) + new

    def of_many(self, rows: np.ndarray, padded: np.ndarray, shapes_run=None) -> np.ndarray:
        """`of` for arrays of rows and padded lengths (efficient_window's every window at once)."""
        seconds = self.grid_seconds(rows, padded)
        if shapes_run is None or not self.new_shape:
            return seconds
        kept = np.array([kept_rows * SHAPE_CODE + length for kept_rows, length in shapes_run], dtype=np.int64)
        return seconds + self.new_shape * ~np.isin(np.asarray(rows) * SHAPE_CODE + padded, kept)

    def seconds_at(self, rows: int, padded: int) -> float:
        """grid_seconds of one shape, kept (length_sorted_calls asks for the same few shapes at every batch)."""
        seconds = self.known.get((rows, padded))
        if seconds is None:
            seconds = self.known[rows, padded] = float(self.grid_seconds(rows, padded))
        return seconds

    def grid_seconds(self, rows, padded) -> np.ndarray:
        rows, padded = np.broadcast_arrays(np.asarray(rows, dtype=float), np.asarray(padded, dtype=float))
        most = self.rows[-1]
        at_rows = np.stack([np.interp(np.minimum(rows, most), self.rows, times) for times in self.grown])
        at_rows = at_rows * np.maximum(1.0, rows / most)  # [length index, ...]
        lengths = np.asarray(self.lengths, dtype=float)
        in_proportion = at_rows[0] * padded / lengths[0]
        if len(lengths) == 1:
            return in_proportion
        segment = np.clip(np.searchsorted(lengths, padded, side="right") - 1, 0, len(lengths) - 2)
        low = np.take_along_axis(at_rows, segment[None], axis=0)[0]
        high = np.take_along_axis(at_rows, segment[None] + 1, axis=0)[0]
        along = low + (high - low) * (padded - lengths[segment]) / (lengths[segment + 1] - lengths[segment])
        return np.where(padded < lengths[0], np.maximum(along, in_proportion), along)


SHAPE_CODE = 1_000_003  # a shape (rows, padded length) as one integer: rows * SHAPE_CODE + padded length


def length_sorted_calls(
    lengths: Sequence[int], cost: CallCost, max_rows: int, max_tokens: int, shapes_run=None
) -> List[List[int]]:
    """The model calls to run features of these lengths in: indices sorted by length, cut where the padding a cut
    saves outweighs another call's cost (the cheapest cutting, by dynamic programming over the sorted lengths; a shape
    not in shapes_run, when given, costs cost.new_shape more); a call holds at most max_rows rows and max_tokens padded
    tokens (one row is always a call)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        most = rows_within(max_rows, max_tokens, cost.padded_length(longest))
        for start in range(end - 1, max(-1, end - 1 - most), -1):
            rows = end - start
            total = best[start] + cost.of(rows, longest, shapes_run)
            if total < best[end]:
                best[end], cut[end] = total, start
    calls, end = [], len(order)
    while end:
        calls.append(order[cut[end] : end])
        end = cut[end]
    return calls[::-1]


def efficient_window(
    longest: Sequence[int],
    rows: Sequence[int],
    tokens: Sequence[int],
    cost: CallCost,
    max_rows: int,
    max_tokens: int,
    overdue: Sequence[bool] = (),
    shapes_run=None,
) -> List[int]:
    """Which queued requests (each one's longest feature, rows and real tokens) to run now: sorted by longest, the
    contiguous run with the most real tokens a second of model time (cost.of, a shape not in shapes_run paying
    cost.new_shape), among the runs one model call holds (max_rows rows, max_tokens padded tokens; a request alone
    always qualifies) or, where any request is overdue, among the runs that hold every overdue one; of the runs within
    WINDOW_SLACK of the most, the one with the most tokens (a call's time a row is flat from about 8 rows up: fewer
    batches, fewer requests left waiting). The others wait for requests of their own lengths. Indices into the
    arguments, in their order."""
    count = len(longest)
    order = np.argsort(np.asarray(longest), kind="stable")
    sorted_longest = np.asarray(longest)[order]
    row_sums = np.concatenate([[0], np.cumsum(np.asarray(rows)[order])])
    token_sums = np.concatenate([[0], np.cumsum(np.asarray(tokens)[order])])
    start, end = np.arange(count)[:, None], np.arange(1, count + 1)[None, :]
    window_rows = np.maximum(row_sums[end] - row_sums[start], 1)
    padded = cost.padded_length(sorted_longest)[end - 1]
    window_tokens = token_sums[end] - token_sums[start]
    seconds = np.maximum(cost.of_many(window_rows, padded, shapes_run), 1e-9)  # a model that takes no time: all
    late = np.flatnonzero(np.asarray(overdue, dtype=bool)[order]) if len(overdue) else np.array([], dtype=int)
    if late.size:
        allowed = (start <= late.min()) & (end > late.max())
    else:
        allowed = (end > start) & ((window_rows <= rows_within(max_rows, max_tokens, padded)) | (end == start + 1))
    efficiency = np.where(allowed, window_tokens / seconds, -np.inf)
    near_best = efficiency >= (1.0 - WINDOW_SLACK) * efficiency.max()
    first, stop = np.unravel_index(np.argmax(np.where(near_best, window_tokens, -1)), efficiency.shape)
    return sorted(int(index) for index in order[first : stop + 1])


def calibration_sizes(max_rows: int) -> List[int]:
    return sorted({min(2**k, max_rows) for k in range(max_rows.bit_length() + 1)})


CALIBRATION_LENGTHS = (16, 64)  # two lengths: a call's fixed part and its part a token (most requests lie between)


def calibration_cells(predictor, max_rows: int, max_seq_length: int, max_tokens: int) -> List[Tuple[int, int]]:
    """The (rows, padded length) calls measure_call_cost times, in the order of each of its passes: at each of
    CALIBRATION_LENGTHS (padded to the predictor's length_bucket, at most max_seq_length), 1, 2, 4, ... rows, up to
    max_rows and half max_tokens (a call's time a row is flat from about 8 rows up: beyond, measure_call_cost takes it
    in proportion to the rows, and the start is seconds shorter for the float model)."""
    bucketed = CallCost(bucket=getattr(predictor, "length_bucket", 1)).padded_length
    lengths = sorted({min(bucketed(length), max_seq_length) for length in CALIBRATION_LENGTHS})
    most = {length: rows_within(max_rows, max(1, max_tokens // 2), length) for length in lengths}
    return [(rows, length) for length in lengths for rows in calibration_sizes(most[length])]


FRESH_ROWS = (3, 5, 6, 7)  # not powers of two: rows no calibration cell has
FRESH_SHAPES = 4


def fresh_cells(predictor, max_rows: int, max_seq_length: int, max_tokens: int) -> List[Tuple[int, int]]:
    """Up to FRESH_SHAPES (rows, padded length) shapes that neither calibration_cells nor warmed_shapes run, for
    first_call_cost: at each timed length, rows of FRESH_ROWS within a call's bounds, else one row a bucket longer."""
    cells = calibration_cells(predictor, max_rows, max_seq_length, max_tokens)
    bucket, lengths = getattr(predictor, "length_bucket", 1), sorted({length for _, length in cells})
    fresh = [
        (rows, length) for rows in FRESH_ROWS for length in lengths if rows < rows_within(max_rows, max_tokens, length)
    ]
    fresh += [(1, length + bucket) for length in lengths if length + bucket <= max_seq_length]
    run = set(cells) | warmed_shapes(predictor, max_rows, max_seq_length, max_tokens)
    return [cell for cell in dict.fromkeys(fresh) if cell not in run][:FRESH_SHAPES]


def calibration_shapes(predictor, max_rows: int, max_seq_length: int, max_tokens: int) -> List[Tuple[int, int]]:
    """Every shape measure_call_cost runs, in the order of its last calls (what a backend that keeps its last few
    shapes still keeps)."""
    return calibration_cells(predictor, max_rows, max_seq_length, max_tokens) + fresh_cells(
        predictor, max_rows, max_seq_length, max_tokens
    )


def first_call_cost(predictor, cells: Sequence[Tuple[int, int]]) -> float:
    """What a shape's first call takes more than its next ones: the median, over shapes run here for the first time,
    of the first call's time less the faster of the next two (0 without such shapes). Shapes new to the predictor, not
    the calibration's own first pass (each cell's first call against its fastest), which put ONNX Runtime int8's new
    shape at 0-14 ms in five calibrations on one machine, where a fresh shape's first call took 0.2 ms more than its
    next (the median of 30 such shapes)."""
    extra = []
    for cell in cells:
        batch = ones_batch(cell)
        first = timed_call(predictor, batch)
        extra.append(max(0.0, first - min(timed_call(predictor, batch), timed_call(predictor, batch))))
    return float(np.median(extra)) if extra else 0.0


def measure_call_cost(predictor, max_rows: int, max_seq_length: int, max_tokens: int, repeats: int = 2) -> CallCost:
    """The time of a call of each of calibration_cells' shapes, and what a shape's first call takes more
    (first_call_cost, on fresh_cells); a call of more rows than timed at a length is taken to cost in proportion to
    its rows. After a first pass that builds each shape, the shapes are timed in turn, repeats passes over all of
    them, and each keeps its fastest pass: whatever else the process or the machine does for a while (another thread
    holding the GIL, a neighbour on the cores) slows some passes of a shape, not all of them, and not one shape more
    than the others, as timing each shape's repeats back to back did. Each timed call follows an untimed one of its
    shape, so that it meets what a backend keeps for its last shapes (Paddle's oneDNN keeps two:
    FLOAT_ONEDNN_CACHED_SHAPES)."""
    cells = calibration_cells(predictor, max_rows, max_seq_length, max_tokens)
    batches = {cell: ones_batch(cell) for cell in cells}
    for cell in cells:
        predictor.run(batches[cell])
    fastest = {cell: float("inf") for cell in cells}
    for _ in range(max(1, repeats)):
        for cell in cells:
            predictor.run(batches[cell])
            fastest[cell] = min(fastest[cell], timed_call(predictor, batches[cell]))
    sizes, lengths = calibration_sizes(max_rows), sorted({length for _, length in cells})
    seconds = []
    for length in lengths:
        timed = {rows: fastest[rows, cell_length] for rows, cell_length in cells if cell_length == length}
        most = max(timed)
        seconds.append(tuple(timed.get(rows, timed[most] * rows / most) for rows in sizes))
    new_shape = first_call_cost(predictor, fresh_cells(predictor, max_rows, max_seq_length, max_tokens))
    bucket = getattr(predictor, "length_bucket", 1)
    return CallCost(tuple(sizes), tuple(lengths), tuple(seconds), bucket, new_shape)


def timed_call(predictor, batch) -> float:
    started = time.perf_counter()
    predictor.run(batch)
    return time.perf_counter() - started


class KeptShapes:
    """The (rows, padded length) shapes whose first call a predictor has paid for and still keeps: every shape it
    has run, or its last `kept` (predictor.shapes_kept: Paddle's float oneDNN keeps two, so a shape run three
    shapes ago costs its first call again)."""

    def __init__(self, kept: Optional[int] = None):
        self.kept, self.order = kept, collections.OrderedDict()

    def add(self, shape: Tuple[int, int]) -> None:
        self.order[shape] = None
        self.order.move_to_end(shape)
        while self.kept is not None and len(self.order) > self.kept:
            self.order.popitem(last=False)

    def update(self, shapes) -> None:
        for shape in shapes:
            self.add(shape)

    def __contains__(self, shape) -> bool:
        return shape in self.order

    def __iter__(self):
        return iter(list(self.order))


def rows_within(max_rows: int, max_tokens: int, padded_length):
    """The most rows a model call of this padded length holds: max_rows, and max_tokens padded tokens (at least 1);
    for an array of lengths, an array."""
    most = np.maximum(1, np.minimum(max_rows, max_tokens // padded_length))
    return most if np.ndim(most) else int(most)


def warmed_shapes(predictor, max_rows: int, max_seq_length: int, max_tokens: int) -> set:
    """The (rows, padded length) shapes a batcher warms up: at every bucket length, the most rows a call holds."""
    return {(rows_within(max_rows, max_tokens, length), length) for length in bucket_lengths(predictor, max_seq_length)}


class Batcher:
    """Runs the queued requests together on one predictor in its own thread. Each request is checked and encoded as
    it arrives (submit: its own errors are its own), then waits for company: up to max_batch_size sequences and
    max_batch_tokens tokens, for at most max_wait_ms, and only while fewer requests are queued than were in flight
    around the last batch (a lone client is not kept waiting). Of the queue, a batch takes the requests of like
    lengths that make the most of a model call (efficient_window), leaving the others for requests of their own
    lengths, at most max_passed_over times; it runs as length-sorted model calls cut where padding would cost more
    than another call (split_by_length); each request is answered as soon as its own rows have run, in order."""

    def __init__(
        self, make_predictor: Callable, model_path: str, task, window_args, max_seq_length: int, limits: ServingLimits
    ):
        self.make_predictor, self.model_path, self.task = make_predictor, model_path, task
        self.window_args, self.max_seq_length, self.limits = window_args, max_seq_length, limits
        self.queue = collections.deque()
        self.queued_sequences = self.queued_tokens = 0
        self.in_flight = 0  # requests submitted and not yet answered
        self.running = 0  # of those, the ones a stream has taken (in a model call or about to be)
        self.collecting = threading.Lock()  # one stream at a time waits for company and takes a batch
        self.expected_requests = float("inf")  # in flight around the last batch (unknown before the first: wait)
        self.lock = threading.Condition()
        self.ready = threading.Event()
        self.settled = threading.Event()  # the predictor made, or failed to be
        self.closing = False
        self.failed: Optional[str] = None
        self.tokenizer = None
        self.call_cost = CallCost()
        self.shapes = KeptShapes()  # (rows, padded length) of the calls run whose first-call cost is paid
        self.stats = {
            "requests": 0,
            "errors": 0,
            "rejected_overload": 0,
            "batches": 0,
            "sequences": 0,
            "model_calls": 0,
            "tokens": 0,
            "padded_tokens": 0,
            "batch_sizes": collections.Counter(),
            "latency_ms": collections.deque(maxlen=2000),
        }
        self.thread = threading.Thread(target=self.loop, name="batcher", daemon=True)
        self.streams = max(1, limits.model_streams or 1)  # batches run at once, each by a thread of its own
        self.measure_after: Optional[threading.Event] = None

    def start(self, measure_after: Optional[threading.Event] = None) -> "Batcher":
        """Load the tokenizer (requests are encoded as they arrive), then make the predictor in the thread; with
        measure_after, the thread times its model calls (measure_call_cost) once that is set (at most
        START_WAIT_S later): the server's own start-up holds the GIL and inflated a 1-row call's time 1.5-4x, and
        with it every choice of model calls for as long as the server runs."""
        self.measure_after = measure_after
        try:
            self.tokenizer = load_deployed_tokenizer(self.model_path)
        except Exception as error:  # reported on /health and to every request instead of dying silently
            self.fail_all(f"{type(error).__name__}: {first_line(error)}")
            return self
        self.thread.start()
        return self

    def encode(self, examples: list):
        """The request's model features (its windows, its choices), as infer.py encodes them."""
        return encode_examples(
            self.task, "request", examples, self.tokenizer, self.max_seq_length, True, self.window_args,
            with_labels=False,
        )  # fmt: skip

    def submit(self, examples: list) -> concurrent.futures.Future:
        """Encode the request's examples (a UserError is the request's own) and queue them, with the id of the
        request being handled (REQUEST_ID)."""
        if self.failed:
            raise Unavailable(f"the model could not be loaded: {self.failed}")
        encoded, request_id = self.encode(examples), REQUEST_ID.get() or "-"
        pending = Pending(examples, encoded, concurrent.futures.Future(), time.perf_counter(), request_id)
        if pending.rows > self.limits.max_queue:
            raise RequestError(
                413, f"the request makes {pending.rows} sequences; at most {self.limits.max_queue} a request"
            )
        with self.lock:
            if self.failed:
                raise Unavailable(f"the model could not be loaded: {self.failed}")
            if self.closing:
                raise Overloaded("the server is shutting down")
            if self.queued_sequences + pending.rows > self.limits.max_queue:
                self.stats["rejected_overload"] += 1
                raise Overloaded(f"{self.queued_sequences} sequences are waiting (at most {self.limits.max_queue})")
            self.queue.append(pending)
            self.queued_sequences += pending.rows
            self.queued_tokens += pending.tokens
            self.in_flight += 1
            self.expected_requests = max(self.expected_requests, self.in_flight)
            self.stats["requests"] += 1
            self.lock.notify()
        return pending.future

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, stop the threads."""
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        if self.thread.ident is not None:
            self.thread.join()

    def batch_is_full(self) -> bool:
        return (
            len(self.queue) >= self.expected_requests - self.running  # those another stream runs cannot come
            or self.queued_sequences >= self.limits.max_batch_size
            or self.queued_tokens >= self.limits.max_batch_tokens
        )

    def next_batch(self) -> List[Pending]:
        """The next batch, once it is full (batch_is_full) or max_wait_ms after the first request could have run:
        the later of its arrival and the model's last batch (else a busy model would never wait, and batches that
        start small would stay small)."""
        model_free = time.perf_counter()
        with self.lock:
            while not self.queue and not self.closing:
                self.lock.wait()
            if not self.queue:
                return []
            deadline = max(self.queue[0].queued_at, model_free) + self.limits.max_wait_ms / 1000.0
            while not self.batch_is_full() and not self.closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.lock.wait(left)
            if self.chooses_windows():
                batch = self.efficient_batch()
            else:
                batch = self.take_batch(self.limits.max_batch_size, self.limits.max_batch_tokens)
            self.expected_requests = self.in_flight  # this batch's and those queued; later arrivals raise it
            self.running += len(batch)
            return batch

    def chooses_windows(self) -> bool:
        return self.limits.split_by_length and self.limits.max_passed_over > 0 and len(self.queue) > 1

    def take_batch(self, max_rows: int, max_tokens: int) -> List[Pending]:
        """The queued requests, first come first, that fit max_rows sequences and max_tokens tokens (the first always
        does)."""
        batch, rows, tokens = [], 0, 0
        while self.queue:
            pending = self.queue[0]
            if batch and not (rows + pending.rows <= max_rows and tokens + pending.tokens <= max_tokens):
                break
            batch.append(self.queue.popleft())
            rows, tokens = rows + pending.rows, tokens + pending.tokens
            self.queued_sequences -= pending.rows
            self.queued_tokens -= pending.tokens
        return batch

    def efficient_batch(self) -> List[Pending]:
        """Of the first WINDOW_CHOICE batches' worth of the queue, the requests efficient_window runs now (those
        passed over max_passed_over times among them); the others go back to the queue's head, in their order."""
        limits = self.limits
        queued = self.take_batch(WINDOW_CHOICE * limits.max_batch_size, WINDOW_CHOICE * limits.max_batch_tokens)
        chosen = set(
            efficient_window(
                [pending.longest for pending in queued], [pending.rows for pending in queued],
                [pending.tokens for pending in queued], self.call_cost, limits.max_batch_size, limits.max_batch_tokens,
                [pending.passed_over >= limits.max_passed_over for pending in queued], self.shapes,
            )
        )  # fmt: skip
        for index in reversed(range(len(queued))):
            if index not in chosen:
                pending = queued[index]
                pending.passed_over += 1
                self.queue.appendleft(pending)
                self.queued_sequences += pending.rows
                self.queued_tokens += pending.tokens
        return [queued[index] for index in sorted(chosen)]

    def loop(self) -> None:
        try:
            predictor = self.make_predictor()
            self.limits = limits = self.limits.for_predictor(predictor)  # before the first batch is taken
            logger.info("model calls hold at most %d tokens (--max_batch_tokens)", limits.max_batch_tokens)
            warmed = warmed_shapes(predictor, limits.max_batch_size, self.max_seq_length, limits.max_batch_tokens)
            self.shapes = KeptShapes(getattr(predictor, "shapes_kept", None))
            self.shapes.update(warm_up_shapes(predictor, warmed))
            if self.streams > 1:  # the streams' model too, before a request waits on its first calls
                warm_up_shapes(predictor.shared, warmed)
            if limits.split_by_length:
                if self.measure_after is not None and not self.measure_after.wait(START_WAIT_S):
                    logger.warning(
                        "the server had not started %d s after the model: timing its calls anyway", START_WAIT_S
                    )
                sizes = (limits.max_batch_size, self.max_seq_length, limits.max_batch_tokens)
                self.call_cost = measure_call_cost(predictor, *sizes)
                self.shapes.update(calibration_shapes(predictor, *sizes))
                logger.info("model calls take %s", self.call_cost.describe())
            if self.streams > 1:
                logger.info("%d batches run at once (--model_streams), each on its share of the threads", self.streams)
            self.ready.set()
        except Exception as error:  # the server reports it on /health and to every request instead of dying silently
            self.fail_all(f"{type(error).__name__}: {first_line(error)}")
            return
        finally:  # whatever ended the start (a BaseException too): a worker waiting on it goes on
            self.settled.set()
        others = [
            threading.Thread(target=self.run_stream, args=(predictor,), name=f"batcher-{index}", daemon=True)
            for index in range(1, self.streams)
        ]
        for thread in others:
            thread.start()
        self.run_stream(predictor)
        for thread in others:
            thread.join()

    def run_stream(self, predictor) -> None:
        """Take batches and run them until the batcher closes; with model_streams, several threads do so at once on
        the one predictor, one of them at a time collecting its batch."""
        while True:
            with self.collecting:
                batch = self.next_batch()
            if not batch:
                return
            self.run_batch(self.predictor_for(predictor), batch)

    def predictor_for(self, predictor):
        """With model streams (a predictors.StreamedPredictor): a lone request (none other in flight) runs on all the
        threads, every other batch on a stream's share of them. Running every batch that holds all the requests in
        flight on all the threads lost at concurrency 32 (77% of offline batch 32, where shares alone had 88%; one
        stream 65%), presumably because the 32 clients then stay in one batch, one call at a time."""
        if self.streams == 1:
            return predictor
        with self.lock:
            alone = self.in_flight == 1
        return predictor.whole if alone else predictor.shared

    def model_calls(self, features: list) -> List[List[int]]:
        lengths = [len(feature["input_ids"]) for feature in features]
        if not self.limits.split_by_length:
            cost = CallCost.linear(1e12, bucket=self.call_cost.bucket)  # one call, unless the limits cut it
            return length_sorted_calls(lengths, cost, self.limits.max_batch_size, self.limits.max_batch_tokens)
        limits = self.limits
        return length_sorted_calls(lengths, self.call_cost, limits.max_batch_size, limits.max_batch_tokens, self.shapes)

    def run_batch(self, predictor, batch: List[Pending]) -> None:
        """Run the batch's features in model calls (model_calls), answering each request once its last row has run
        (its outputs split back and formatted). A batch that fails is run again request by request, so that only the
        request that fails gets its error."""
        try:
            features = [feature for pending in batch for feature in pending.encoded.sequences]
            owner = [index for index, pending in enumerate(batch) for _ in range(pending.rows)]
            outputs, left = [None] * len(features), [pending.rows for pending in batch]
            for call in self.model_calls(features):
                result = run_predictor(
                    predictor, [features[i] for i in call], len(call), self.task.per_token_outputs, False
                )
                if not self.fits_task(result.outputs, batch):
                    return
                self.record_call(features, call)
                for row, index in enumerate(call):
                    outputs[index] = [output[row] for output in result.outputs]
                    left[owner[index]] -= 1
                    if not left[owner[index]]:
                        self.answer(batch, owner[index], outputs)
            self.record(batch, len(features))
        except Exception as error:
            self.run_alone(predictor, batch, error)

    def answer(self, batch: List[Pending], index: int, outputs: list) -> None:
        """Answer batch[index] with its rows of outputs (one list of model outputs a feature of the batch)."""
        pending = batch[index]
        start = sum(p.rows for p in batch[:index])
        mine = outputs[start : start + pending.rows]
        per_output = [[feature[k] for feature in mine] for k in range(len(mine[0]))] if mine else []
        rows = prediction_rows(self.task, pending.examples, pending.encoded, per_output, self.window_args)
        self.finish(pending)
        pending.future.set_result(rows)

    def finish(self, pending: Pending) -> None:
        with self.lock:
            self.in_flight -= 1
            self.running -= 1
            self.stats["latency_ms"].append(1000.0 * (time.perf_counter() - pending.queued_at))

    def run_alone(self, predictor, batch: List[Pending], error: Exception) -> None:
        """After a failed batch: run its unanswered requests one by one; a request that fails alone gets the error."""
        if len(batch) > 1:
            unanswered = [pending for pending in batch if not pending.future.done()]
            logger.warning(
                "a batch of %d requests failed (%s); running the %d unanswered one by one (requests %s)",
                len(batch), error, len(unanswered), ", ".join(p.request_id for p in unanswered),
            )  # fmt: skip
            for pending in unanswered:
                self.run_batch(predictor, [pending])
            return
        pending = batch[0]
        if pending.future.done():
            return
        if not isinstance(error, UserError):
            with request_context(pending.request_id):
                logger.error("a request failed", exc_info=error)
        self.finish(pending)
        pending.future.set_exception(error)

    def fits_task(self, outputs, batch: List[Pending]) -> bool:
        """Whether the model's outputs fit its task.json's task; if not, no request can be answered (503)."""
        try:
            check_output_width(self.task, outputs, self.model_path)
        except UserError as misfit:
            self.fail_all(str(misfit))
            for pending in batch:
                if not pending.future.done():
                    self.finish(pending)
                    pending.future.set_exception(Unavailable(f"the model could not be loaded: {misfit}"))
            return False
        return True

    def fail_all(self, reason: str) -> None:
        """No predictor: later requests are refused at once, and those already queued get the reason."""
        logger.error("the predictor could not start: %s", reason)
        with self.lock:
            self.failed = reason
            self.settled.set()
            while self.queue:
                pending = self.queue.popleft()
                self.queued_sequences -= pending.rows
                self.queued_tokens -= pending.tokens
                self.in_flight -= 1
                pending.future.set_exception(Unavailable(f"the model could not be loaded: {reason}"))

    def count_error(self) -> None:
        with self.lock:
            self.stats["errors"] += 1

    def record_call(self, features: list, call: List[int]) -> None:
        longest = max(len(features[i]["input_ids"]) for i in call)
        with self.lock:
            self.shapes.add(self.call_cost.shape(len(call), longest))
            self.stats["model_calls"] += 1
            self.stats["tokens"] += sum(len(features[i]["input_ids"]) for i in call)
            self.stats["padded_tokens"] += len(call) * self.call_cost.padded_length(longest)

    def record(self, batch: List[Pending], sequences: int) -> None:
        with self.lock:
            self.stats["batches"] += 1
            self.stats["sequences"] += sequences
            self.stats["batch_sizes"][sequences] += 1

    def metrics(self) -> dict:
        with self.lock:
            latencies = np.array(self.stats["latency_ms"]) if self.stats["latency_ms"] else np.zeros(1)
            sizes = self.stats["batch_sizes"]
            return {
                "ready": self.ready.is_set(),
                "model_streams": self.streams,
                "requests": self.stats["requests"],
                "errors": self.stats["errors"],
                "rejected_overload": self.stats["rejected_overload"],
                "batches": self.stats["batches"],
                "sequences": self.stats["sequences"],
                "model_calls": self.stats["model_calls"],
                "tokens": self.stats["tokens"],
                "padded_tokens": self.stats["padded_tokens"],
                "queue_depth_sequences": self.queued_sequences,
                "queue_depth_requests": len(self.queue),
                "batch_sizes": {str(size): count for size, count in sorted(sizes.items())},
                "max_batch_size_seen": max(sizes) if sizes else 0,
                "latency_ms_p50": float(np.percentile(latencies, 50)),
                "latency_ms_p99": float(np.percentile(latencies, 99)),
            }


def new_batcher(served, window_args, limits: ServingLimits) -> Batcher:
    """A batcher for a deployment.Deployment, not started (its predictor is made in its thread once it is)."""
    streams = limits.model_streams or default_model_streams(served.options)
    return Batcher(
        lambda: create_streamed_predictor(served.files, served.options, limits.lone_call_predictor, streams),
        served.model_path,
        served.task,
        window_args,
        served.options.max_seq_length,
        replace(limits, model_streams=streams),
    )


def start_batcher(served, window_args, limits: ServingLimits) -> Batcher:
    """A started batcher for a deployment.Deployment (its predictor is made in the batcher's thread)."""
    return new_batcher(served, window_args, limits).start()


def json_answer(value, status: int = 200, headers: Optional[dict] = None):
    """value as a JSON answer, encoded by orjson where it is installed (the same bytes as Starlette's JSONResponse,
    in a fraction of the time)."""
    from starlette.responses import Response

    if orjson is not None:
        body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)  # a numpy number as its value, not an error
    else:
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


# ---- the app -------------------------------------------------------------------------------------------------------
def create_app(
    batcher: Batcher,
    task,
    limits: ServingLimits,
    access: AccessRules = AccessRules(),
    bind_host: str = "127.0.0.1",
    access_log: bool = False,
    started: Optional[threading.Event] = None,
):
    """The app: RequestIds (so that every answer, a refusal or a 500 too, carries its id) around AccessGuard around
    TaskRoute, which answers POST /<task> itself and hands every other request to the FastAPI app. started, when
    given, is set when the server starts the app (its lifespan), its own start-up done."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app):
        if started is not None:
            started.set()
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

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        if exc.status_code == 405 and request.url.path not in known_paths(app, task):  # GET /anything matched POST's
            return error(404, f"no such path: {request.url.path}; this server serves POST /{task.name}")
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(422, "the request does not match this endpoint")

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):  # counted too; RequestIds logs the traceback with the request's id
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

    async def predict(scope, receive):
        """The answer to POST /<task> (TaskRoute's, without FastAPI)."""
        try:
            examples = request_examples(task, read_body(await capped_body(scope, receive, limits)), limits)
            future = batcher.submit(examples)  # checked and encoded here, before it joins a batch
        except RequestError as refused:
            return error(refused.status, str(refused), refused.headers)
        except UserError as refused:  # e.g. a text longer than the model takes, with truncation off
            return error(422, str(refused))
        except Overloaded as overloaded:
            return error(503, f"overloaded: {overloaded}; retry", headers={"Retry-After": "1"})
        except Unavailable as unavailable:
            return error(503, str(unavailable))
        try:
            return json_answer({"result": await asyncio.wrap_future(future)})
        except Unavailable as unavailable:
            return error(503, str(unavailable))
        except UserError as refused:
            return error(422, str(refused))
        except Exception as failure:
            logger.error("prediction failed", exc_info=failure)
            return error(500, f"prediction failed: {type(failure).__name__}")

    @app.post("/{task_name}", openapi_extra=openapi_operation(task))
    async def another_task(task_name: str):
        """POST /<task> itself is TaskRoute's (predict); this route describes it in the OpenAPI document and answers
        the other names."""
        return error(404, f"this server serves {task.name}: POST /{task.name}")

    log_request_ids()
    guarded = AccessGuard(
        TaskRoute(app, f"/{task.name}", predict),
        refusal=lambda method, path, headers: access_refusal(access, hosts, method, path, headers),
        answer=lambda refused: error(refused.status, str(refused), refused.headers),
    )
    return RequestIds(guarded, access_log, lambda failure: error(500, f"internal error: {type(failure).__name__}"))


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
    ("model_calls", "ernie_model_calls_total", "counter", "Model calls run (a batch runs as length-sorted calls)."),
    ("tokens", "ernie_tokens_total", "counter", "Tokens run, without padding."),
    ("padded_tokens", "ernie_padded_tokens_total", "counter", "Tokens run, with each call's padding."),
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
