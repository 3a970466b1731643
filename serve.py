"""Serve an exported (or compressed) model over HTTP, with PaddleNLP SimpleServer's API and cross-request batching.

    python serve.py                                           # output/tnews/export on 127.0.0.1:8189
    python serve.py --model_path output/tnews/compress/width_mult_0.75/hist16_1
    python serve.py --task_name msra_ner --port 8190 --workers 2

    curl -s 127.0.0.1:8189/tnews -H 'Content-Type: application/json' \\
         -d '{"data": {"text": ["以色列大规模空袭开始"]}, "parameters": {}}'

POST /<task> takes {"data": {"text": [...], "text_pair": [...]}, "parameters": {...}} (QA: "context" and "question"
lists; multiple choice: "context", "question" for C3, and "choices", a list for each context) and answers
{"result": [...]}, the rows infer.py --text prints. GET /health is ready after the warm-up, GET /metrics counts
requests, errors, batch sizes, queue depth and latency (Prometheus's text format; ?format=json), GET / is a page to
try it, GET /openapi.json the OpenAPI description (GET /docs and /redoc with --docs). The model folder, backend and
precision options and their defaults are infer.py's. Every answer carries X-Request-ID (the client's, else a new
one), which every log line about the request names (--access_log: one line a request).

It listens on 127.0.0.1 by default and answers there only requests whose Host header names this machine (a
DNS-rebinding page is refused) and bodies sent as application/json (a web page cannot send those to another site
unasked); another --host prints a warning. --api_key (or $ERNIE_SERVE_API_KEY) requires 'Authorization: Bearer KEY'
or 'X-API-Key: KEY' on every request but /health, / and the API description.
"""

import dataclasses
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field

import arguments
import deployment
import predictors
import runtime
import serving

APP_CONFIG_VARIABLE = "ERNIE_SERVE_CONFIG"  # how serve.py hands its arguments to --workers processes


@dataclass
class ServeArguments:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8189, metadata={"help": "Port to listen on."})
    workers: int = field(default=1, metadata={"help": "Processes, each with its own predictor and batcher."})
    loop: str = field(
        default="auto",
        metadata={"help": "uvicorn's event loop: auto (uvloop where installed), uvloop or asyncio."},
    )
    http: str = field(
        default="auto",
        metadata={"help": "uvicorn's HTTP parser: auto (httptools where installed), httptools or h11."},
    )
    access_log: bool = field(
        default=False,
        metadata={"help": "Log one line a request: its id (X-Request-ID), method, path, status and milliseconds."},
    )


SERVER_CHOICES = {"loop": ("auto", "uvloop", "asyncio"), "http": ("auto", "httptools", "h11")}


def check_server_choices(serve: ServeArguments) -> None:
    for name, choices in SERVER_CHOICES.items():
        if getattr(serve, name) not in choices:
            raise runtime.UserError(f"--{name} must be one of {', '.join(choices)}, not {getattr(serve, name)!r}")


def build_app(
    served: deployment.Deployment,
    window_args,
    limits: serving.ServingLimits,
    access,
    host: str,
    access_log=False,
    model_first=False,
):
    """The app of one process: a batcher with its own predictor for the resolved deployment (with model_first, the
    call returns once the predictor is loaded or failed). The app is built before the batcher's thread starts: its
    imports hold the GIL for a few hundred ms, which would inflate the call costs the batcher measures at start
    (a 1-row call timed at 11-23 ms instead of 5), and with them its choice of model calls for as long as it runs."""
    batcher = serving.new_batcher(served, window_args, limits)
    started = None if model_first else threading.Event()  # model_first: the server starts after the model
    app = serving.create_app(batcher, served.task, limits, access, host, access_log, started)
    batcher.start(measure_after=started)
    if model_first:
        batcher.settled.wait()
    return app


def with_key_from_environment(access: serving.AccessRules) -> serving.AccessRules:
    """--api_key, else the environment's (which the process list does not show)."""
    return dataclasses.replace(access, api_key=access.api_key or os.environ.get(serving.API_KEY_VARIABLE) or None)


def exposure_warning(host: str, access: serving.AccessRules):
    """What to tell the user who listens beyond this machine (None on a loopback address)."""
    if serving.is_loopback(host):
        return None
    without_key = "" if access.api_key else ", with no key (give --api_key to require one)"
    return (
        f"--host {host} listens beyond this machine: anyone who can reach it can use the model{without_key}; "
        "requests and answers travel as plain HTTP (put a TLS proxy in front)"
    )


def worker_config(served: deployment.Deployment, deploy, window_args, limits, access, host, access_log=False) -> dict:
    """What each --workers process resolves its deployment from: the options as this process resolved them, so that
    every worker serves the same model the same way."""
    resolved = dataclasses.replace(
        deploy,
        model_path=served.model_path,
        backend=served.options.backend,
        precision=served.options.precision,
        max_seq_length=served.options.max_seq_length,
    )
    return {
        "deploy": vars(resolved),
        "window": vars(window_args),
        "limits": dataclasses.asdict(limits),
        "access": dataclasses.asdict(access),
        "host": host,
        "access_log": access_log,
    }


def app_from_environment():
    """uvicorn's factory in each --workers process. uvicorn calls it after setting its SIGINT/SIGTERM handlers, and
    importing paddle (where the predictor is made) replaces them with Paddle's (a C++ dump on stdout and an abort on
    SIGTERM, dropping the requests in flight): uvicorn's are put back once the predictor is made, so a worker drains
    and exits as a single process does."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    runtime.setup_logging()
    config = json.loads(os.environ[APP_CONFIG_VARIABLE])
    served = deployment.resolve_deployment(deployment.DeployArguments(**config["deploy"]))
    window_args = arguments.QAWindowArguments(**config["window"])
    limits, access = serving.ServingLimits(**config["limits"]), serving.AccessRules(**config["access"])
    serving.set_header_timeout(limits.header_timeout_s)
    app = build_app(served, window_args, limits, access, config["host"], config.get("access_log", False), True)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    return app


def exit_cleanly_on_sigterm() -> None:
    """uvicorn (0.54) drains in-flight requests on SIGTERM, then raises the signal again under the handler it found
    when it started: with this one the process then exits 0 instead of dying of the signal."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def main(argv=None):
    import uvicorn

    deploy, serve, limits, access, window_args = arguments.parse_plain_arguments(
        (deployment.DeployArguments, ServeArguments, serving.ServingLimits, serving.AccessRules)
        + (arguments.QAWindowArguments,),
        __doc__,
        argv,
    )
    runtime.setup_logging()
    access = with_key_from_environment(access)
    arguments.check_minimums(serve, {"workers": 1})
    check_server_choices(serve)
    arguments.check_minimums(limits, serving.ServingLimits.MINIMUMS)
    served = deployment.resolve_deployment(deploy)  # refuse a missing model or bad options before listening
    predictors.refuse_lone_call_predictor_elsewhere(served.files, served.options, limits.lone_call_predictor)
    predictors.check_model_streams(served.options, limits.model_streams)
    task, options = served.task, served.options
    runtime.logger.info(
        "serving %s (%s %s) at http://%s:%d/%s with %d worker(s)",
        served.model_path,
        options.backend,
        options.precision,
        serve.host,
        serve.port,
        task.name,
        serve.workers,
    )
    warning = exposure_warning(serve.host, access)
    if warning:
        runtime.logger.warning(warning)
    exit_cleanly_on_sigterm()
    serving.set_header_timeout(limits.header_timeout_s)
    http = serving.http_protocol(serve.http)
    if serve.workers > 1:
        config = worker_config(served, deploy, window_args, limits, access, serve.host, serve.access_log)
        os.environ[APP_CONFIG_VARIABLE] = json.dumps(config)
        uvicorn.run(
            "serve:app_from_environment",
            factory=True,
            host=serve.host,
            port=serve.port,
            workers=serve.workers,
            log_level="warning",
            loop=serve.loop,
            http=http,
        )
    else:
        app = build_app(served, window_args, limits, access, serve.host, serve.access_log)
        uvicorn.run(app, host=serve.host, port=serve.port, log_level="warning", loop=serve.loop, http=http)


if __name__ == "__main__":
    runtime.run_cli(main)
