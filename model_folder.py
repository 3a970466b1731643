"""The model folder format, owned here: what an exported or compressed model folder holds (a static program and its
parameters, the tokenizer files, task.json) and the typed files that compression writes and deployment reads: the
task file (task.json, TaskFile), each compression candidate (Candidate) and the compression report
(compress_report.json, CompressionReport). Each has one reader and one writer here, and no other module spells their
keys. A reader refuses a file of another format version, an unknown field, a missing one or one of the wrong type
with one line naming the file and the field.

Imports runtime.py only, and never paddle: deployment reads these files too.
"""

import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from runtime import UserError, read_json_file, write_json_atomic

FORMAT_VERSION = 1  # files written before the version was recorded have exactly version 1's fields
VERSION_FIELD = "format_version"
TASK_FILE = "task.json"
REPORT_FILE = "compress_report.json"

EXPORT_INPUT_NAMES = ("input_ids", "token_type_ids")
PROGRAM_FILES = ("model.json", "model.pdmodel", "int8.pdmodel", "int8.json")
QUANTIZED_OP_MARKERS = (b"quantize_linear", b"fake_quantize", b"fake_channel_wise")


# ---- the program files -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFiles:
    """The static program of a model folder, read once: its files and whether it is an int8 (quantized) program."""

    directory: str
    program: str
    params: str
    quantized: bool


def static_model_files(model_dir: str) -> Tuple[str, str]:
    """(program file, params file) of an exported or compressed model directory."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_path: no such directory: {model_dir}")
    for program in PROGRAM_FILES:
        params = os.path.join(model_dir, program.rsplit(".", 1)[0] + ".pdiparams")
        if os.path.isfile(os.path.join(model_dir, program)) and os.path.isfile(params):
            return os.path.join(model_dir, program), params
    raise UserError(
        f"{model_dir} holds no exported model ({' or '.join(PROGRAM_FILES)} with its .pdiparams); "
        "export one with run_*.py --do_export"
    )


def is_quantized(program_file: str) -> bool:
    with open(program_file, "rb") as handle:
        content = handle.read()
    return any(marker in content for marker in QUANTIZED_OP_MARKERS)


def read_model_files(model_dir: str) -> ModelFiles:
    program, params = static_model_files(model_dir)
    return ModelFiles(model_dir, program, params, is_quantized(program))


# ---- task.json -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Serving:
    """How a compressed candidate was measured, so that infer.py and serve.py serve it the same way."""

    backend: str
    precision: str


@dataclass(frozen=True)
class TaskFile:
    """task.json: what a deployed model needs to know about its task."""

    task_name: str
    family: str
    label_list: Tuple[str, ...]
    max_seq_length: int
    metric: str
    input_names: Tuple[str, ...] = EXPORT_INPUT_NAMES
    serving: Optional[Serving] = None  # compressed candidates only


def task_file_path(model_dir: str) -> str:
    return os.path.join(model_dir, TASK_FILE)


def read_task_file(model_dir: str) -> TaskFile:
    path = task_file_path(model_dir)
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no {TASK_FILE}: pass an export/ directory written by run_*.py --do_export")
    return read_typed_file(TaskFile, path)


def write_task_file(model_dir: str, task_file: TaskFile) -> None:
    write_typed_file(task_file_path(model_dir), task_file)


# ---- compression candidates and the report ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One model compression made (or the float parent), measured on the dev set as it is served."""

    path: str  # the candidate's folder
    relative_path: str  # the same, under the report's folder
    kind: str  # "float parent", "pruned float", "student float", "int8" or "bf16"
    source: str  # the float model it was made from
    backend: str
    precision: str
    metrics: Dict[str, float]
    metric_points: float  # the task's main metric in points
    size_bytes: int  # what its predictor loads
    latency_ms_p50: float  # per batch
    sequences_per_second: float  # dev-set sequences per second on the machine of the report
    parameters: int
    drop_points: Optional[float] = None  # below the parent (None for the parent itself)
    width: Optional[float] = None  # DynaBERT width of a pruned model
    depth: Optional[float] = None  # DynaBERT depth of a pruned model (the share of layers kept)
    student: Optional[str] = None  # the student distilled from the parent (its name, or how it was cut)
    vocabulary_size: Optional[int] = None  # tokens kept by vocabulary pruning (any other reads as [UNK])
    peak_memory_bytes: Optional[int] = None  # peak resident memory of infer.py --perf serving it (its own process)
    algo: Optional[str] = None  # quantization: PTQ algorithm, qat or NNCF's estimator
    calibration_batch_size: Optional[int] = None
    calibration_batches: Optional[int] = None
    calibration_examples: Optional[int] = None


@dataclass(frozen=True)
class ReportTask:
    name: str
    metric: str
    points: str  # "percent" or "fraction x 100"


@dataclass(frozen=True)
class CompressionReport:
    """compress_report.json: the parent and every candidate, and which of them infer.py serves by default."""

    task: ReportTask
    strategy: str
    max_metric_drop: float
    calibration_examples: int
    measured_on: Dict[str, object]  # the machine (runtime.machine_details) and how it measured
    checkpoint_selection: Dict[str, object]
    parent: Candidate
    candidates: Tuple[Candidate, ...]
    best: Optional[str]  # the fastest candidate within the budget and faster than the parent
    best_int8: Optional[str]  # the same among int8 candidates: what infer.py --precision int8 serves
    tensorrt_int8: Optional[str]  # the Paddle int8 candidate with the best metric: infer.py --use_trt --precision int8

    def candidate(self, path: Optional[str]) -> Optional[Candidate]:
        return next((c for c in self.candidates if c.path == path), None)


def report_path(compress_dir: str) -> str:
    return os.path.join(compress_dir, REPORT_FILE)


def read_report(path: str) -> CompressionReport:
    if not os.path.isfile(path):
        raise UserError(f"no compression report: {path}")
    return read_typed_file(CompressionReport, path)


def write_report(path: str, report: CompressionReport) -> None:
    write_typed_file(path, report)


def candidate_json(candidate: Candidate) -> dict:
    """A candidate as the report writes it (for results files that keep candidates)."""
    return to_json(candidate)


# ---- one typed reader and writer for all of them --------------------------------------------------------------------
def read_typed_file(cls, path: str):
    """The dataclass cls from the JSON file at path, its format version checked."""
    value = read_json_file(path, os.path.basename(path))
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
    value = dict(value)
    version = value.pop(VERSION_FIELD, FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {version!r}, but this suite reads version {FORMAT_VERSION}; write it again with "
            "this version (run_*.py --do_export or compress_*.py)"
        )
    return from_json(cls, value, path, "")


def write_typed_file(path: str, value) -> None:
    write_json_atomic(path, {VERSION_FIELD: FORMAT_VERSION, **to_json(value)})


def to_json(value):
    if dataclasses.is_dataclass(value):
        return {item.name: to_json(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def from_json(cls, value, path: str, where: str):
    """cls built from a JSON object: every field without a default present, no field cls lacks, each of its type."""
    if not isinstance(value, dict):
        raise UserError(f"{path}: {where or 'the file'} must be an object, got {type(value).__name__}")
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise UserError(f"{path}: unknown field {where}{unknown[0]!r} (this suite's {cls.__name__} has no such field)")
    missing = [name for name, item in fields.items() if name not in value and not has_default(item)]
    if missing:
        raise UserError(f"{path}: missing field {where}{missing[0]!r}")
    hints = typing.get_type_hints(cls)
    values = {name: typed_value(hints[name], value[name], path, f"{where}{name}") for name in fields if name in value}
    return cls(**values)


def has_default(item: dataclasses.Field) -> bool:
    return item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING


JSON_TYPES = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


def typed_value(hint, value, path: str, where: str):
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return typed_value(next(a for a in arguments if a is not type(None)), value, path, where)
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, path, f"{where}.")
    if origin is tuple:
        if not isinstance(value, list):
            raise UserError(f"{path}: field {where!r} must be a list, got {type(value).__name__}")
        return tuple(typed_value(arguments[0], item, path, f"{where}[{index}]") for index, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: field {where!r} must be an object, got {type(value).__name__}")
        return {key: typed_value(arguments[1], item, path, f"{where}.{key}") for key, item in value.items()}
    if hint is object:
        return value
    accepted = JSON_TYPES[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise UserError(f"{path}: field {where!r} must be {hint.__name__}, got {type(value).__name__}")
    return value
