"""Serve an exported (or compressed) model over HTTP, with PaddleNLP SimpleServer's API and cross-request batching.

    python serve.py                                           # output/tnews/export on 127.0.0.1:8189
    python serve.py --model_path output/tnews/compress/width_mult_0.75/hist16_1
    python serve.py --task_name msra_ner --port 8190 --workers 2

    curl -s 127.0.0.1:8189/tnews -H 'Content-Type: application/json' \\
         -d '{"data": {"text": ["以色列大规模空袭开始"]}, "parameters": {}}'

POST /<task> takes {"data": {"text": [...], "text_pair": [...]}, "parameters": {...}} (QA: "context" and "question"
lists) and answers {"result": [...]}, the rows infer.py --text prints. GET /health is ready after the warm-up,
GET /metrics counts requests, errors, batch sizes, queue depth and latency, GET / is a page to try it, GET /docs the
OpenAPI docs. The model folder, backend and precision options and their defaults are infer.py's.
"""

import json
import os
import signal
import sys
from dataclasses import dataclass, field

import arguments
import model_io
import predictors
import runtime
import serving

APP_CONFIG_VARIABLE = "ERNIE_SERVE_CONFIG"  # how serve.py hands its arguments to --workers processes


@dataclass
class ServeArguments:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8189, metadata={"help": "Port to listen on."})
    workers: int = field(default=1, metadata={"help": "Processes, each with its own predictor and batcher."})
    max_batch_size: int = field(default=32, metadata={"help": "Sequences run together, across requests."})
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "How long a request waits for others to share its batch."}
    )
    max_queue: int = field(
        default=1024, metadata={"help": "Sequences that may wait; beyond it requests get 503 with Retry-After."}
    )
    max_texts_per_request: int = field(default=64, metadata={"help": "Texts one request may hold (more: 413)."})
    max_text_chars: int = field(default=2000, metadata={"help": "Characters one text may hold (more: 413)."})


def build_app(config: dict):
    """The app of one process: the model resolved as infer.py does, a batcher with its own predictor."""
    deploy = predictors.DeployArguments(**config["deploy"])
    window_args = arguments.QAWindowArguments(**config["window"])
    limits = serving.ServingLimits(**config["limits"])
    task, options = predictors.resolve_deployment(deploy)
    batcher = serving.start_batcher(deploy.model_path, options, task, window_args, limits)
    return serving.create_app(batcher, task, task.takes_pairs, limits)


def app_from_environment():
    """uvicorn's factory in each --workers process."""
    runtime.setup_logging()
    return build_app(json.loads(os.environ[APP_CONFIG_VARIABLE]))


def exit_cleanly_on_sigterm() -> None:
    """uvicorn (0.54) drains in-flight requests on SIGTERM, then raises the signal again under the handler it found
    when it started: with this one the process then exits 0 instead of dying of the signal."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def main(argv=None):
    import uvicorn

    deploy, serve, window_args = arguments.parse_plain_arguments(
        (predictors.DeployArguments, ServeArguments, arguments.QAWindowArguments), __doc__, argv
    )
    runtime.setup_logging()
    arguments.check_minimums(
        serve,
        {
            "workers": 1,
            "max_batch_size": 1,
            "max_queue": 1,
            "max_texts_per_request": 1,
            "max_text_chars": 1,
            "max_wait_ms": 0,
        },
    )
    limits = serving.ServingLimits(
        serve.max_batch_size, serve.max_wait_ms, serve.max_queue, serve.max_texts_per_request, serve.max_text_chars
    )
    task, options = predictors.resolve_deployment(deploy)  # refuse a missing model or bad options before listening
    predictors.check_predictor_options(
        options, model_io.is_quantized(model_io.static_model_files(deploy.model_path)[0]), deploy.model_path
    )
    config = {"deploy": vars(deploy), "window": vars(window_args), "limits": vars(limits)}
    runtime.logger.info(
        "serving %s (%s %s) at http://%s:%d/%s with %d worker(s)",
        deploy.model_path,
        options.backend,
        options.precision,
        serve.host,
        serve.port,
        task.name,
        serve.workers,
    )
    exit_cleanly_on_sigterm()
    if serve.workers > 1:
        os.environ[APP_CONFIG_VARIABLE] = json.dumps(config)
        uvicorn.run(
            "serve:app_from_environment",
            factory=True,
            host=serve.host,
            port=serve.port,
            workers=serve.workers,
            log_level="warning",
        )
    else:
        uvicorn.run(build_app(config), host=serve.host, port=serve.port, log_level="warning")


if __name__ == "__main__":
    runtime.run_cli(main)
