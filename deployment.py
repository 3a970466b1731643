"""Which model to deploy, and how, for infer.py and serve.py: the deployment options, the default model of a task
(output/<task>/export, or the compression report's choice), and the policy that resolves them with the model's
task.json into one frozen Deployment (the model's files, its task, the backend options) that is read once and
passed on. Nothing here imports paddle: an ONNX Runtime or OpenVINO model is resolved and served without it (a
deploy-only install, requirements-deploy.txt), and a compression folder moved or copied elsewhere serves its own
candidates (the report's relative paths).

Imports arguments.py, model_folder.py, predictors.py, runtime.py and utils.py.
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from arguments import check_minimums, default_device, default_output_dir
from model_folder import (
    CompressionReport,
    ModelFiles,
    TaskFile,
    read_model_files,
    read_report,
    read_task_file,
    report_path,
    task_file_path,
)
from predictors import PredictorOptions, backends_help, check_predictor_options
from runtime import UserError, logger
from utils import ALL_TASKS, TaskSpec, custom_family, get_task_any_family


@dataclass
class DeployArguments:
    task_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "The task; default: the model's task.json (checked when given). Without --model_path it picks "
            "the folder output/<task> (default tnews)."
        },
    )
    model_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "An export/ directory from run_*.py --do_export, a compressed candidate's directory, or a "
            "compression's output folder (its report's best; with --precision int8 its best_int8). Default: "
            "output/<task>/export, or with --precision int8 the best int8 candidate of "
            "output/<task>/compress/compress_report.json (with --use_trt: its tensorrt_int8, a Paddle int8 program)."
        },
    )
    backend: Optional[str] = field(
        default=None,
        metadata={
            "help": "Default: as the model's task.json says it was measured (compressed candidates), else paddle. "
            + backends_help()
        },
    )
    device: Optional[str] = field(
        default=None,
        metadata={
            "help": "cpu or gpu. Default: gpu for --backend paddle when paddle sees one (paddlepaddle-gpu), else cpu "
            "(onnxruntime and openvino default to the CPU without importing paddle)."
        },
    )
    use_trt: bool = field(default=False, metadata={"help": "TensorRT through Paddle Inference (--device gpu)."})
    allow_no_trt_engine: bool = field(
        default=False,
        metadata={
            "help": "With --use_trt, run a model TensorRT takes no subgraph of as plain GPU Paddle Inference (and say "
            "so) instead of stopping with an error."
        },
    )
    precision: Optional[str] = field(
        default=None,
        metadata={
            "help": "fp32, fp16 (GPU), bf16 (Paddle on a CPU with native bfloat16) or int8 (an int8 model from "
            "compress_*.py on oneDNN or TensorRT, or onnxruntime's dynamic quantization). Default: as the model's "
            "task.json says it was measured, else fp32."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Sequences per batch."})
    max_seq_length: Optional[int] = field(
        default=None, metadata={"help": "Tokens per sequence; default: the model's task.json."}
    )
    num_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "CPU threads."})
    enable_onednn: bool = field(
        default=True,
        metadata={"help": "oneDNN kernels on the paddle CPU backend (false is refused with the other backends)."},
    )
    onnxruntime_spinning: Optional[bool] = field(
        default=None,
        metadata={
            "help": "ONNX Runtime: whether its threads spin, waiting for work, between a call's parts and between "
            "calls (session.intra_op.allow_spinning). Default: on, ONNX Runtime's own (the fastest calls offline); "
            "false gives the cores to other threads, such as a server's event loop. Refused with other backends."
        },
    )
    length_bucket: Optional[int] = field(
        default=None,
        metadata={
            "help": "Paddle and OpenVINO on the CPU: pad each batch to a multiple of this many tokens, so that "
            "oneDNN and OpenVINO meet few shapes (1: to the batch's longest only). Default: Paddle 8 for float "
            "models, 16 for int8 ones; OpenVINO 8. Refused (above 1) where batches are padded to their longest "
            "(ONNX Runtime, Paddle on the GPU or without oneDNN)."
        },
    )


@dataclass(frozen=True)
class Deployment:
    """What infer.py and serve.py serve, resolved once: the model's files, its task file and task, and the options
    of the backend that runs it."""

    files: ModelFiles
    task_file: TaskFile
    task: TaskSpec
    options: PredictorOptions

    @property
    def model_path(self) -> str:
        return self.files.directory


DEFAULT_TASK = "tnews"


def default_model_path(task_name: str, precision: Optional[str], use_trt: bool = False) -> str:
    """output/<task>/export, or for int8 the best int8 candidate that compress_*.py chose (with TensorRT its
    "tensorrt_int8": a Paddle int8 program, the only int8 TensorRT runs); a missing one is one line naming the
    command that makes it."""
    family = ALL_TASKS[task_name].family if task_name in ALL_TASKS else custom_family()
    folder = default_output_dir(task_name)
    if precision == "int8":
        compress_dir = os.path.join(folder, "compress")
        if not os.path.isfile(report_path(compress_dir)):
            raise UserError(
                f"no compressed model in {compress_dir}: make one with "
                f"`python {family.compress_script} --task_name {task_name}`, or pass --model_path DIR"
            )
        return chosen_in_report(compress_dir, precision, use_trt)
    export_dir = os.path.join(folder, "export")
    if not os.path.isdir(export_dir):
        raise UserError(
            f"no exported model in {export_dir}: make one with `python {family.script} --task_name "
            f"{task_name} --do_train --do_eval --do_export`, or pass --model_path DIR"
        )
    return export_dir


def chosen_in_report(compress_dir: str, precision: Optional[str], use_trt: bool) -> str:
    """The candidate a compression folder's report chose: "best", or for int8 "best_int8" (with TensorRT
    "tensorrt_int8", a Paddle int8 program, the only int8 TensorRT runs)."""
    report = read_report(report_path(compress_dir))
    return candidate_folder(compress_dir, report, chosen_path(report, precision, use_trt, compress_dir))


def chosen_path(report: CompressionReport, precision: Optional[str], use_trt: bool, compress_dir: str) -> str:
    """The path the report records for its choice ("best", "best_int8" or "tensorrt_int8"); none is one line."""
    if precision == "int8":
        chosen = report.tensorrt_int8 if use_trt else report.best_int8
        kind = "Paddle int8 candidate (what TensorRT runs)" if use_trt else "int8 candidate"
    else:
        chosen, kind = report.best, "candidate faster than its parent"
    if not chosen:
        raise UserError(
            f"{report_path(compress_dir)} has no {kind} within its --max_metric_drop; compress again (a larger "
            "budget or another strategy) or pass --model_path DIR"
        )
    return chosen


def candidate_folder(compress_dir: str, report: CompressionReport, chosen: str) -> str:
    """Where a candidate of the report is now: its relative path under the report's folder, made absolute as the
    report records paths, so that a compression folder moved or copied to another place (or machine) serves its own
    candidates, not the old place's. A path that names no candidate of the report is returned as it is."""
    candidate = report.candidate(chosen)
    return os.path.abspath(os.path.join(compress_dir, candidate.relative_path)) if candidate else chosen


def is_compression_folder(path: str) -> bool:
    return os.path.isfile(report_path(path)) and not os.path.isfile(task_file_path(path))


def check_model_task(task_file: TaskFile, model_dir: str, task: TaskSpec) -> None:
    """A model serves the task it was exported for, with that task's labels."""
    if task_file.task_name != task.name:
        raise UserError(f"{model_dir} was exported for task {task_file.task_name!r}, not {task.name!r}")
    if task.labels and tuple(task_file.label_list) != task.labels:
        raise UserError(
            f"{model_dir}: the label_list of its task.json is not task {task.name}'s labels; export the model again"
        )


def backend_default_device(backend: str) -> str:
    """--device's default: Paddle's GPU when it sees one for the paddle backend; the CPU for the others, which are
    then served without importing paddle (--device gpu asks for onnxruntime-gpu)."""
    return default_device() if backend == "paddle" else "cpu"


def resolve_deployment(args: DeployArguments) -> Deployment:
    """The Deployment of DeployArguments: the model folder (given, or the default products of output/<task>), its
    task from task.json (a given --task_name is checked against it), and the backend, precision and sequence length
    it is served with (task.json's measured way unless given), checked against what this machine and model can run."""
    check_minimums(args, {"batch_size": 1, "num_threads": 1, "max_seq_length": 1, "length_bucket": 1})
    model_path = args.model_path
    if model_path is None:
        model_path = default_model_path(args.task_name or DEFAULT_TASK, args.precision, args.use_trt)
        logger.info("serving %s", model_path)
    elif is_compression_folder(model_path):
        chosen = chosen_in_report(model_path, args.precision, args.use_trt)
        logger.info("%s is a compression output: serving the candidate its report chose, %s", model_path, chosen)
        model_path = chosen
    task_file = read_task_file(model_path)
    task = get_task_any_family(args.task_name or task_file.task_name, task_file.label_list)
    check_model_task(task_file, model_path, task)
    files = read_model_files(model_path)
    serving = task_file.serving
    backend = args.backend or (serving.backend if serving else "paddle")
    options = PredictorOptions(
        backend=backend,
        device=args.device or backend_default_device(backend),
        use_trt=args.use_trt,
        precision=args.precision or (serving.precision if serving else ("int8" if files.quantized else "fp32")),
        num_threads=args.num_threads,
        enable_onednn=args.enable_onednn,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length or task_file.max_seq_length or task.max_seq_length,
        length_bucket=args.length_bucket,
        allow_no_trt_engine=args.allow_no_trt_engine,
        onnxruntime_spinning=args.onnxruntime_spinning,
    )
    check_predictor_options(options, files)
    return Deployment(files, task_file, task, options)
