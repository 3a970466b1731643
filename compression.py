"""The compression pipeline of compress_*.py: its arguments, the strategies as steps that hand each other what the
next one needs (one table, STRATEGIES, whose help text and checks are generated from it), every candidate measured on
the dev set as it is served, the choice of the best within the accuracy budget, and the report. The algorithms live
in dynabert.py (width and depth pruning, distillation), students.py (distillation into a smaller student),
vocabulary.py (vocabulary pruning) and quantization.py (PTQ, QAT, NNCF).

Imports arguments.py, dynabert.py, model_folder.py, model_io.py, predictors.py, quantization.py, runtime.py,
students.py, utils.py and vocabulary.py.
"""

import copy
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.trainer import set_seed

from arguments import (
    DataArguments,
    QAWindowArguments,
    check_device,
    default_output_dir,
    parse_plain_arguments,
    user_argv,
    with_task_name,
)
from dynabert import DistillationSettings, dynabert_pruning, encoder_layers, parameter_count
from model_folder import (
    EXPORT_INPUT_NAMES,
    REPORT_FILE,
    Candidate,
    CompressionReport,
    ReportTask,
    Serving,
    TaskFile,
    read_task_file,
    report_path,
    write_report,
    write_task_file,
)
from model_io import (
    check_model_fits_task,
    export_static_model,
    load_deployed_tokenizer,
    load_model_config,
    load_task_model,
    load_tokenizer,
    model_head_family,
    save_deployable,
    task_file,
)
from predictors import (
    BACKENDS,
    PRECISIONS,
    PredictorOptions,
    create_predictor,
    native_bfloat16,
    run_predictor,
)
from quantization import (
    NNCF_RANGE_ESTIMATORS,
    PTQ_ALGORITHMS,
    calibration_grid,
    nncf_quantize,
    quantization_aware_training,
    quantization_grid,
)
from runtime import UserError, atomic_entries, logger, machine_details, read_json_file, setup_logging
from students import StudentSpec, distilled_student
from utils import (
    Family,
    TaskSpec,
    deployed_metrics,
    encode_examples,
    get_task,
    load_encoded_split,
    load_examples,
    metric_points,
)
from vocabulary import embedding_rows, kept_vocabulary, prune_vocabulary, used_token_counts


@dataclass
class CompressArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A fine-tuned output directory of run_*.py (the float parent); default output/<task>, where "
            "run_*.py writes."
        },
    )
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Upstream's name for the task: 'clue tnews', msra_ner, cmrc2018 (same as --task_name)."},
    )
    selection_samples: Optional[int] = field(
        default=None,
        metadata={
            "help": "Training examples held out (never trained on) to pick each DynaBERT width's best checkpoint, so "
            "the dev set that --max_metric_drop judges stays unseen; default 10%% of the training examples, at most "
            "1000."
        },
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where candidates and compress_report.json go; default <model_name_or_path>/compress."},
    )
    strategy: str = field(default="dynabert+ptq", metadata={"help": "What to try (the strategies are listed below)."})
    width_mult_list: List[str] = field(
        default_factory=lambda: ["3/4"],
        metadata={
            "help": "Widths to prune to (attention heads and feed-forward neurons kept), as fractions or decimals."
        },
    )
    depth_mult_list: List[str] = field(
        default_factory=lambda: ["1"],
        metadata={
            "help": "Depths to prune to (layers kept, by DynaBERT's rule: evenly spaced), e.g. 1 2/3 1/2; every "
            "width is trained and exported at every depth."
        },
    )
    student: Optional[str] = field(
        default=None,
        metadata={
            "help": "distill strategies: the student, a PaddleNLP name (ernie-3.0-nano-zh, -micro-, -mini-) or a "
            "pretrained folder sharing the teacher's vocabulary; default: layers and width cut from the teacher "
            "(--student_layers, --student_width)."
        },
    )
    student_layers: int = field(
        default=0, metadata={"help": "A student cut from the teacher: its layers (DynaBERT's rule); 0: half."}
    )
    student_width: str = field(
        default="1", metadata={"help": "A student cut from the teacher: the share of heads and neurons it keeps."}
    )
    hidden_distillation_weight: float = field(
        default=1.0,
        metadata={
            "help": "distill strategies: weight of TinyBERT's hidden-state loss beside the soft cross-entropy on the "
            "teacher's predictions; 0: predictions only."
        },
    )
    prune_vocabulary: bool = field(
        default=False,
        metadata={
            "help": "Also make each float model with only the tokens the training data uses (plus the special "
            "tokens; any other token reads as [UNK]), and offer those to every later step."
        },
    )
    max_vocab_size: Optional[int] = field(
        default=None, metadata={"help": "--prune_vocabulary: keep at most this many tokens, the most frequent first."}
    )
    algo_list: List[str] = field(
        default_factory=lambda: ["hist", "mse"],
        metadata={"help": "PTQ activation calibration: hist, mse, avg, abs_max, emd, KL (KL is very slow)."},
    )
    batch_size_list: List[int] = field(
        default_factory=lambda: [4, 8, 16], metadata={"help": "Calibration batch sizes."}
    )
    batch_num_list: List[int] = field(default_factory=lambda: [1], metadata={"help": "Calibration batch counts."})
    max_metric_drop: float = field(
        default=1.0,
        metadata={
            "help": "Largest drop below the float parent, in points of the task's main metric, that a candidate may "
            "have to be chosen."
        },
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "DynaBERT distillation learning rate."})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "DynaBERT distillation epochs over the training data."}
    )
    max_steps: int = field(default=-1, metadata={"help": "If > 0: distillation steps, overriding --num_train_epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Distillation batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation and latency batch size."})
    importance_batches: int = field(default=32, metadata={"help": "Training batches used to rank heads and neurons."})
    logging_steps: int = field(default=50, metadata={"help": "Log the distillation loss every N steps."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    device: str = field(default="cpu", metadata={"help": "cpu or gpu, for distillation."})
    num_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "CPU threads for evaluation and latency."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier compression output."})
    backends: List[str] = field(
        default_factory=lambda: ["paddle", "onnxruntime", "openvino"],
        metadata={
            "help": "Backends a candidate may be served with (deploying elsewhere: restrict them): paddle, "
            "onnxruntime, openvino."
        },
    )
    measure_memory: bool = field(
        default=True,
        metadata={
            "help": "Measure each candidate's peak resident memory as served: infer.py --perf on the first 512 dev "
            "examples in a process of its own (a few seconds a candidate)."
        },
    )
    precisions: List[str] = field(
        default_factory=lambda: ["fp32", "bf16", "int8"],
        metadata={"help": "Precisions a candidate may run in: fp32, bf16 (CPUs with native bfloat16 only), int8."},
    )


COMPRESSION_HELP = """
Every candidate is measured on the dev set with the deployed predictor, and the best one within
--max_metric_drop points of the float parent is chosen. PTQ algorithms (--algo_list): hist (activation range
from a histogram's 99.99th percentile), mse (the range that minimises quantization mean squared error),
avg (mean of per-batch maxima), abs_max (the largest value seen), KL (the range minimising KL divergence;
very slow), emd. Calibration batches come from the training data, never from the dev set.

Writes into --output_dir (default <model_name_or_path>/compress): parent/ (the float parent, exported for
comparison), width_mult_0.75/ (the pruned float model; width_mult_0.75_depth_mult_0.5/ with --depth_mult_list),
student/ (the distilled student), vocab_pruned/ and <model>_vocab_pruned/ (--prune_vocabulary),
[<model>/]<algo><batch size>_<batches>/ (each PTQ candidate), [<model>/]qat/ (the QAT model),
[<model>/]onnxruntime_int8/ and the other ways of serving each float model, and compress_report.json. Every
candidate directory is servable by infer.py.
"""


def parse_fraction(text: str, option: str) -> float:
    """A width or depth: a fraction (3/4) or a decimal, above 0 and at most 1."""
    try:
        numerator, _, denominator = str(text).partition("/")
        value = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option}: {text!r} is not a fraction such as 3/4 or 0.75") from None
    if not 0 < value <= 1:
        raise UserError(f"{option}: {text!r} must be above 0 and at most 1")
    return value


def pruned_shapes(args: CompressArguments) -> List[Tuple[float, float]]:
    """Every (width, depth) of --width_mult_list x --depth_mult_list but the parent's own (1, 1)."""
    widths = [parse_fraction(w, "--width_mult_list") for w in args.width_mult_list]
    depths = [parse_fraction(d, "--depth_mult_list") for d in args.depth_mult_list]
    shapes = [(w, d) for d in dict.fromkeys(depths) for w in dict.fromkeys(widths) if (w, d) != (1.0, 1.0)]
    if not shapes:
        raise UserError("--width_mult_list and --depth_mult_list give no smaller model than the parent (both 1)")
    return shapes


def shape_folder(width: float, depth: float) -> str:
    """width_mult_0.75, width_mult_0.75_depth_mult_0.5, width_mult_1_depth_mult_0.5: upstream's width folder name,
    the depth added when layers are dropped."""
    return f"width_mult_{width:g}" + (f"_depth_mult_{depth:g}" if depth < 1 else "")


def check_compress_arguments(args: CompressArguments, given: Sequence[str] = ()) -> List[Tuple[float, float]]:
    """The (width, depth) shapes to prune to, after every check; given: the options the command line named."""
    if args.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {args.strategy!r}")
    unknown = [algo for algo in args.algo_list if algo not in PTQ_ALGORITHMS]
    if unknown:
        raise UserError(f"--algo_list: unknown algorithm {unknown[0]!r}; choose from {', '.join(PTQ_ALGORITHMS)}")
    if any(size < 1 for size in args.batch_size_list + args.batch_num_list):
        raise UserError("--batch_size_list and --batch_num_list take positive numbers")
    for option, values, known in (
        ("--backends", args.backends, BACKENDS),
        ("--precisions", args.precisions, PRECISIONS),
    ):
        unknown = [value for value in values if value not in known]
        if unknown:
            raise UserError(f"{option}: unknown {unknown[0]!r}; choose from {', '.join(known)}")
    check_options_used(args, given)
    return pruned_shapes(args)


def option_default(name: str):
    item = next(f for f in dataclasses.fields(CompressArguments) if f.name == name)
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def options_named(argv: Sequence[str]) -> List[str]:
    """The option names a command line gives (--name or --name=value), without the dashes."""
    return [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]


def check_options_used(args: CompressArguments, named: Sequence[str] = ()) -> None:
    """No option is silently ignored: each one a step reads (named on the command line, or set to other than its
    default by an arguments file) needs a strategy (or flag) that runs that step."""
    steps = strategy_steps(args)
    for step, options in STEP_OPTIONS.items():
        given = [name for name in options if name in named or getattr(args, name) != option_default(name)]
        if given and step not in steps:
            users = [name for name, strategy in STRATEGIES.items() if step in strategy.steps]
            needs = f"--strategy {' or '.join(users)}" if users else "--prune_vocabulary"
            raise UserError(f"--{given[0]} needs {needs}; --strategy {args.strategy} does not use it")
    if args.student and (args.student_layers or args.student_width != option_default("student_width")):
        raise UserError("--student_layers and --student_width cut a student from the teacher; --student names one")


def within_budget(parent: Candidate, candidate: Candidate, max_drop: float) -> bool:
    return parent.metric_points - candidate.metric_points <= max_drop + 1e-9


def choose_best(parent: Candidate, candidates: Sequence[Candidate], max_drop: float) -> Optional[Candidate]:
    """The fastest candidate (dev-set sequences per second on this machine) among those at most max_drop points below
    the parent and faster than it; ties: the smaller, then the better metric. None when no candidate qualifies."""
    qualifying = [
        c
        for c in candidates
        if within_budget(parent, c, max_drop) and c.sequences_per_second > parent.sequences_per_second
    ]
    if not qualifying:
        return None
    return max(qualifying, key=lambda c: (c.sequences_per_second, -c.size_bytes, c.metric_points))


def choose_for_tensorrt(parent: Candidate, candidates: Sequence[Candidate], max_drop: float) -> Optional[Candidate]:
    """The int8 candidate `infer.py --use_trt --precision int8` serves: TensorRT runs Paddle int8 programs with their
    own scales (not ONNX Runtime's or NNCF's int8), and its speed on a GPU is not what this CPU measured, so the best
    metric within max_drop wins (ties: the smaller). None when no Paddle int8 candidate qualifies."""
    qualifying = [
        c for c in candidates if c.backend == "paddle" and c.precision == "int8" and within_budget(parent, c, max_drop)
    ]
    return max(qualifying, key=lambda c: (c.metric_points, -c.size_bytes)) if qualifying else None


INFER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infer.py")


def perf_in_own_process(model_dir: str, options: Sequence[str], timeout: Optional[float] = None) -> dict:
    """`infer.py --model_path model_dir --perf <options>` run as a user runs it, in a process of its own: its report
    (task.json says the backend and precision unless options do). UserError when it fails or runs out of time."""
    with tempfile.TemporaryDirectory() as scratch:
        output = os.path.join(scratch, "perf.json")
        command = [sys.executable, INFER_SCRIPT, "--model_path", model_dir, "--perf", *options, "--output_file", output]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"infer.py --perf on {model_dir} took more than {timeout:.0f} s") from None
        if done.returncode:
            raise UserError(f"infer.py --perf on {model_dir} failed: {done.stderr.strip()[-300:]}")
        return read_json_file(output, "infer.py --perf's report")


MEMORY_SAMPLES = 512  # dev examples infer.py --perf runs to measure a candidate's peak memory
MEMORY_TIMEOUT_S = 600


def served_peak_memory(model_dir: str, run: "CompressionRun") -> Optional[int]:
    """Peak resident memory (bytes) of infer.py --perf serving the folder on the first MEMORY_SAMPLES dev examples (or
    --max_eval_samples) in a process of its own; None, with a warning, when that run fails."""
    samples = min(MEMORY_SAMPLES, run.data_args.max_eval_samples or MEMORY_SAMPLES)
    options = ["--num_threads", str(run.args.num_threads), "--batch_size", str(run.args.per_device_eval_batch_size)]
    options += ["--max_eval_samples", str(samples)]
    options += ["--dev_file", run.data_args.dev_file] if run.data_args.dev_file else []
    try:
        report = perf_in_own_process(model_dir, options, MEMORY_TIMEOUT_S)
    except UserError as error:
        logger.warning("%s: no peak memory (%s)", model_dir, error)
        return None
    return int(report["perf"]["peak_rss_mb"] * 2**20)


@dataclass(frozen=True)
class Measurement:
    """A model folder measured on the dev set through the predictor it is served with."""

    backend: str
    precision: str
    metrics: Dict[str, float]
    metric_points: float
    size_bytes: int  # what the predictor loads
    latency_ms_p50: float
    sequences_per_second: float


def measure_candidate(
    model_dir: str,
    task: TaskSpec,
    dev_examples,
    dev_encoded,
    window_args,
    args: CompressArguments,
    max_seq_length: int,
    backend: str = "paddle",
    precision: str = "fp32",
) -> Measurement:
    """A compressed (or parent) static model's dev metric through the predictor it is served with, the size of what
    that predictor loads, and its speed (after one batch of every shape its batches have, as infer.py --perf)."""
    options = PredictorOptions(
        backend=backend,
        precision=precision,
        num_threads=args.num_threads,
        batch_size=args.per_device_eval_batch_size,
        max_seq_length=max_seq_length,
    )
    features = list(dev_encoded.sequences)
    predictor = create_predictor(model_dir, options)
    result = run_predictor(
        predictor, features, options.batch_size, per_token=task.per_token_outputs, warmup_batches=2, warm_shapes=True
    )
    metrics = deployed_metrics(task, dev_examples, dev_encoded, result.outputs, window_args)
    return Measurement(
        backend=backend,
        precision=precision,
        metrics=metrics,
        metric_points=metric_points(task, metrics[task.metric]),
        size_bytes=sum(os.path.getsize(path) for path in predictor.model_files),
        latency_ms_p50=float(np.median(result.batch_seconds) * 1000.0),
        sequences_per_second=len(features) / float(np.sum(result.batch_seconds)),
    )


def compression_table(report: CompressionReport) -> str:
    rows = [("candidate", "backend", "precision", report.task.metric, "drop", "size MB", "seq/s", "speed-up", "params")]
    parent_speed = report.parent.sequences_per_second
    for entry in (report.parent, *report.candidates):
        rows.append(
            (
                entry.relative_path,
                entry.backend,
                entry.precision,
                f"{entry.metric_points:.2f}",
                f"{entry.drop_points or 0.0:.2f}",
                f"{entry.size_bytes / 2**20:.2f}",
                f"{entry.sequences_per_second:.1f}",
                f"{entry.sequences_per_second / parent_speed:.2f}x",
                str(entry.parameters),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


@dataclass(frozen=True)
class Source:
    """A float model that later steps start from: the parent, or a pruned width."""

    model: object
    directory: str  # where the float model is (for the report)
    prefix: str  # candidates made from it go under this relative path
    dimensions: Dict[str, object] = field(default_factory=dict)  # its Candidate fields: width, depth, student, ...


@dataclass(frozen=True)
class PipelineState:
    """What one strategy step hands the next."""

    sources: Tuple[Source, ...]  # the float models the next step starts from
    float_models: Tuple[Source, ...]  # every float model made so far (the parent, pruned ones, students)


@dataclass
class CompressionRun:
    """What every strategy step needs: arguments, task, data, the parent, and where candidates are staged."""

    args: CompressArguments
    task: TaskSpec
    window_args: object
    tokenizer: object
    parent: object
    info: TaskFile
    shapes: List[Tuple[float, float]]  # (width, depth) of each pruned model
    train_encoded: object
    selection: Tuple[list, object]  # (examples, encoded) held out from the training data
    dev_examples: list
    dev_encoded: object
    calibration: List[dict]
    staging: str
    output_dir: str
    model_class: object  # the family's model class (a named --student is loaded with it)
    data_args: object  # the data files (infer.py --perf measures peak memory on the same dev set)

    @property
    def distillation(self) -> DistillationSettings:
        return DistillationSettings.of(self.args)

    def measured(
        self, relative: str, kind: str, source: str, model, backend: str = "paddle", precision: str = "fp32", **details
    ) -> Candidate:
        """Measure a staged candidate as it will be served, and record that in its task.json (infer.py's defaults).
        details: the Candidate fields of its kind (width, algo, calibration settings)."""
        directory = os.path.join(self.staging, relative)
        write_task_file(directory, dataclasses.replace(read_task_file(directory), serving=Serving(backend, precision)))
        measurement = measure_candidate(
            directory,
            self.task,
            self.dev_examples,
            self.dev_encoded,
            self.window_args,
            self.args,
            self.info.max_seq_length,
            backend,
            precision,
        )
        peak_memory = served_peak_memory(directory, self) if self.args.measure_memory else None
        return Candidate(
            path=os.path.join(self.output_dir, relative),
            relative_path=relative,
            kind=kind,
            source=source,
            parameters=parameter_count(model),
            peak_memory_bytes=peak_memory,
            **dataclasses.asdict(measurement),
            **details,
        )

    def allows(self, backend: str, precision: str) -> bool:
        return backend in self.args.backends and precision in self.args.precisions


StepResult = Tuple[List[Candidate], PipelineState]


def prune_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """DynaBERT width and depth pruning of the parent: one pruned float candidate per (width, depth), and the pruned
    models become the sources of any later quantization step."""
    pruned = dynabert_pruning(
        run.parent,
        run.tokenizer,
        run.task,
        run.shapes,
        run.train_encoded,
        *run.selection,
        run.window_args,
        run.distillation,
    )
    candidates, pruned_sources = [], []
    for (width, depth), model in pruned.items():
        relative = shape_folder(width, depth)
        export_static_model(model, run.tokenizer, os.path.join(run.staging, relative), run.info)
        source = Source(model, os.path.join(run.output_dir, relative), relative, dict(width=width, depth=depth))
        candidates.append(
            run.measured(relative, "pruned float", run.args.model_name_or_path, model, **source.dimensions)
        )
        pruned_sources.append(source)
    return candidates, PipelineState(tuple(pruned_sources), state.float_models + tuple(pruned_sources))


def distill_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """Distillation of the parent into a smaller student (students.py): one float candidate, the source of any
    later quantization step."""
    spec = StudentSpec(
        run.args.student, run.args.student_layers, parse_fraction(run.args.student_width, "--student_width")
    )
    student = distilled_student(
        run.parent, spec, run.model_class, run.task, run.tokenizer, run.train_encoded, run.selection,
        run.window_args, run.distillation, run.info.max_seq_length, run.args.hidden_distillation_weight,
    )  # fmt: skip
    relative = "student"
    export_static_model(student, run.tokenizer, os.path.join(run.staging, relative), run.info)
    described = spec.describe(len(encoder_layers(run.parent)))
    source = Source(student, os.path.join(run.output_dir, relative), relative, dict(student=described))
    candidate = run.measured(relative, "student float", run.args.model_name_or_path, student, **source.dimensions)
    return [candidate], PipelineState((source,), state.float_models + (source,))


def vocabulary_folder(prefix: str) -> str:
    return f"{prefix}_vocab_pruned" if prefix else "vocab_pruned"


def vocabulary_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """--prune_vocabulary: each source again with only the tokens the training data uses (vocabulary.py), a float
    candidate each; the later steps get both."""
    counts = used_token_counts([*run.train_encoded.sequences, *run.selection[1].sequences])
    kept = kept_vocabulary(
        counts, run.tokenizer.all_special_ids, run.tokenizer.unk_token_id, embedding_rows(run.parent),
        run.args.max_vocab_size,
    )  # fmt: skip
    logger.info("vocabulary pruning keeps %d of %d tokens", len(kept.kept_ids), kept.full_size)
    candidates, pruned = [], []
    for source in state.sources:
        model = prune_vocabulary(copy.deepcopy(source.model), kept)
        relative = vocabulary_folder(source.prefix)
        export_static_model(model, run.tokenizer, os.path.join(run.staging, relative), run.info)
        dimensions = dict(source.dimensions, vocabulary_size=len(kept.kept_ids))
        pruned.append(Source(model, os.path.join(run.output_dir, relative), relative, dimensions))
        candidates.append(run.measured(relative, "pruned float", source.directory, model, **dimensions))
    return candidates, PipelineState(state.sources + tuple(pruned), state.float_models + tuple(pruned))


def ptq_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """The post-training quantization grid over each source, served on Paddle's int8 kernels."""
    candidates = []
    if not run.allows("paddle", "int8"):
        return candidates, state
    args = run.args
    grid = calibration_grid(args.algo_list, args.batch_size_list, args.batch_num_list, len(run.calibration))
    for source in state.sources:
        made = quantization_grid(
            source.model, source.prefix, run.staging, run.calibration, run.tokenizer, run.info, grid
        )
        for relative, setting in made:
            candidates.append(
                run.measured(
                    relative,
                    "int8",
                    source.directory,
                    source.model,
                    "paddle",
                    "int8",
                    algo=setting.algo,
                    calibration_batch_size=setting.batch_size,
                    calibration_batches=setting.batches,
                    **source.dimensions,
                )
            )
    return candidates, state


def qat_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """Quantization-aware training of each source, distilled from the float parent."""
    candidates = []
    if not run.allows("paddle", "int8"):
        return candidates, state
    for source in state.sources:
        relative = os.path.join(source.prefix, "qat")
        target = os.path.join(run.staging, relative)
        quantization_aware_training(
            source.model, run.parent, run.tokenizer, run.task, run.train_encoded, target, run.distillation
        )
        save_deployable(target, run.tokenizer, run.info)
        candidates.append(
            run.measured(
                relative, "int8", source.directory, source.model, "paddle", "int8", algo="qat", **source.dimensions
            )
        )
    return candidates, state


def nncf_int8(run: CompressionRun, folder: str) -> dict:
    """model.ov_int8.xml for the folder's float model, calibrated on max(--batch_size_list) x max(--batch_num_list)
    training examples with the first --algo_list range estimator NNCF has (NNCF_RANGE_ESTIMATORS); returns the
    candidate's details."""
    subset = run.calibration[: max(run.args.batch_size_list) * max(run.args.batch_num_list)]
    algo = next((a for a in run.args.algo_list if a in NNCF_RANGE_ESTIMATORS), None)
    nncf_quantize(folder, subset, algo)
    estimator = NNCF_RANGE_ESTIMATORS[algo].lower() if algo else "default"
    return dict(algo=f"nncf {estimator}", calibration_examples=len(subset))


@dataclass(frozen=True)
class FloatDeployment:
    """Another way to serve a float model: its folder name, backend, precision, and what makes its files."""

    name: str
    backend: str
    precision: str
    prepare: Optional[Callable] = None  # (run, folder) -> the candidate's details


FLOAT_DEPLOYMENTS = (
    FloatDeployment("bf16", "paddle", "bf16"),  # oneDNN bfloat16, where the CPU has it natively
    FloatDeployment("onnxruntime_int8", "onnxruntime", "int8"),  # ONNX Runtime's dynamic quantization
    FloatDeployment("openvino_bf16", "openvino", "bf16"),  # OpenVINO's bfloat16, where the CPU has it natively
    FloatDeployment("openvino_int8", "openvino", "int8", nncf_int8),  # NNCF post-training quantization
)


def deployment_step(run: CompressionRun, state: PipelineState) -> StepResult:
    """Each float model served the other fast ways this machine and --backends/--precisions allow, each in its own
    folder (the float files linked, not copied) whose task.json says how to serve it."""
    candidates = []
    for source in state.float_models:
        for way in FLOAT_DEPLOYMENTS:
            if not run.allows(way.backend, way.precision) or (way.precision == "bf16" and not native_bfloat16()):
                continue
            relative = os.path.join(source.prefix, way.name)
            folder = os.path.join(run.staging, relative)
            link_model_folder(os.path.join(run.staging, source.prefix or "parent"), folder)
            logger.info("candidate %s: %s %s", relative, way.backend, way.precision)
            details = way.prepare(run, folder) if way.prepare else {}
            candidates.append(
                run.measured(
                    relative,
                    way.precision,
                    source.directory,
                    source.model,
                    way.backend,
                    way.precision,
                    **details,
                    **source.dimensions,
                )
            )
    return candidates, state


def link_model_folder(source: str, target: str) -> None:
    """target gets source's files (hard links where the file system allows, else copies), not its sub-folders."""
    os.makedirs(target)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and not name.endswith(".onnx"):
            try:
                os.link(path, os.path.join(target, name))
            except OSError:
                shutil.copy2(path, os.path.join(target, name))


@dataclass(frozen=True)
class Strategy:
    steps: Tuple[Callable, ...]  # each (run, state) -> (candidates, the next state); the last one (deployment_step)
    # adds the other ways of serving each float model (FLOAT_DEPLOYMENTS)
    help: str


STRATEGIES = {
    "dynabert+ptq": Strategy(
        (prune_step, ptq_step, deployment_step),
        "DynaBERT width (and --depth_mult_list depth) pruning with distillation, then int8 post-training quantization "
        "of each pruned model over the calibration grid",
    ),
    "dynabert": Strategy(
        (prune_step, deployment_step), "DynaBERT width and depth pruning with distillation only (float candidates)"
    ),
    "ptq": Strategy(
        (ptq_step, deployment_step), "int8 post-training quantization of the parent over the calibration grid"
    ),
    "qat": Strategy(
        (qat_step, deployment_step), "int8 quantization-aware training of the parent, by distillation from it"
    ),
    "dynabert+qat": Strategy(
        (prune_step, qat_step, deployment_step),
        "DynaBERT width and depth pruning, then quantization-aware training of each pruned model",
    ),
    "distill": Strategy(
        (distill_step, deployment_step),
        "distillation into a smaller student (--student; predictions and hidden states), float candidates",
    ),
    "distill+ptq": Strategy(
        (distill_step, ptq_step, deployment_step),
        "distillation into a smaller student, then int8 post-training quantization of it over the calibration grid",
    ),
}

# --prune_vocabulary runs vocabulary_step before the first of these (on the parent, the pruned models or the student)
STEPS_AFTER_MODELS = (ptq_step, qat_step, deployment_step)
# the options each step reads (check_options_used)
STEP_OPTIONS = {
    prune_step: ("width_mult_list", "depth_mult_list"),
    distill_step: ("student", "student_layers", "student_width", "hidden_distillation_weight"),
    vocabulary_step: ("max_vocab_size",),
}


def check_compression_output(output_dir: str, overwrite: bool) -> None:
    """Never replace an earlier compression by accident; any other folder (upstream writes into ./) is fine."""
    if os.path.exists(report_path(output_dir)) and not overwrite:
        raise UserError(
            f"--output_dir {output_dir} already holds a compression ({REPORT_FILE}); pass "
            "--overwrite_output_dir to replace it or choose another --output_dir"
        )


def strategies_help() -> str:
    return "Strategies (--strategy):\n" + "\n".join(
        f"  {name}: {strategy.help}" for name, strategy in STRATEGIES.items()
    )


def parse_compress_arguments(family: Family, description: str, argv=None):
    """(args, data_args, window_args or None, the option names given), with the task from --task_name, upstream's
    --dataset, or the family's only task, and the parent model defaulting to output/<task>."""
    extra_classes = (QAWindowArguments,) if family.uses_windows else ()
    argv, _ = with_task_name(user_argv(argv), family)
    args, data_args, *extra = parse_plain_arguments(
        (CompressArguments, DataArguments, *extra_classes),
        description + "\n" + strategies_help() + "\n" + COMPRESSION_HELP,
        argv,
    )
    if args.model_name_or_path is None:
        args.model_name_or_path = default_output_dir(data_args.task_name)
        if not os.path.isdir(args.model_name_or_path):
            raise UserError(
                f"no fine-tuned model in {args.model_name_or_path}: make one with `python {family.script} "
                f"--task_name {data_args.task_name}` (it writes there), or pass --model_name_or_path DIR"
            )
    return args, data_args, extra[0] if extra else None, options_named(argv)


def split_selection(examples: list, requested: Optional[int], seed: int) -> Tuple[list, list]:
    """(training examples, selection examples): a seeded random slice held out for choosing checkpoints."""
    if len(examples) < 2:
        raise UserError("compression needs at least 2 training examples (one is held out to select checkpoints)")
    count = requested if requested is not None else min(1000, max(1, len(examples) // 10))
    if not 0 < count < len(examples):
        raise UserError(
            f"--selection_samples must be between 1 and {len(examples) - 1} (the training data has "
            f"{len(examples)} examples)"
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    held_out = set(int(i) for i in order[:count])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [e for i, e in enumerate(examples) if i in held_out],
    )


def load_training_and_selection(task: TaskSpec, data_args, tokenizer, window_args, args: CompressArguments):
    """The encoded training split without the held-out selection examples, and (selection examples, encoded)."""
    examples = load_examples(task, "train", data_args.train_file, data_args.max_train_samples)
    training, selection = split_selection(examples, args.selection_samples, args.seed)
    logger.info(
        "%s: %d training examples for distillation and calibration, %d held out to select checkpoints",
        task.name,
        len(training),
        len(selection),
    )
    encode = functools.partial(
        encode_examples,
        task,
        tokenizer=tokenizer,
        max_seq_length=data_args.max_seq_length,
        truncate=data_args.truncate_long_texts,
        window_args=window_args,
    )
    return encode("train", training, with_labels=True), (selection, encode("selection", selection, with_labels=False))


def strategy_steps(args: CompressArguments) -> List[Callable]:
    """--strategy's steps, with vocabulary_step before the first that works on the models made (--prune_vocabulary)."""
    steps = list(STRATEGIES[args.strategy].steps)
    if args.prune_vocabulary:
        first = next(i for i, step in enumerate(steps) if step in STEPS_AFTER_MODELS)
        steps.insert(first, vocabulary_step)
    return steps


def run_strategy(run: CompressionRun, parent: Candidate) -> List[Candidate]:
    """The steps of --strategy, each from the state the one before left; every candidate with its drop."""
    parent_source = Source(run.parent, run.args.model_name_or_path, "")
    state = PipelineState((parent_source,), (parent_source,))
    candidates = []
    for step in strategy_steps(run.args):
        made, state = step(run, state)
        candidates.extend(made)
    return [dataclasses.replace(c, drop_points=parent.metric_points - c.metric_points) for c in candidates]


def compression_report(run: CompressionRun, parent: Candidate, candidates: List[Candidate]) -> CompressionReport:
    """The report: the parent, every candidate, and the choices infer.py serves, with the machine they were measured
    on."""
    args = run.args
    best = choose_best(parent, candidates, args.max_metric_drop)
    best_int8 = choose_best(parent, [c for c in candidates if c.precision == "int8"], args.max_metric_drop)
    tensorrt_int8 = choose_for_tensorrt(parent, candidates, args.max_metric_drop)
    return CompressionReport(
        task=ReportTask(
            run.task.name, run.task.metric, "percent" if run.task.family.metric_in_percent else "fraction x 100"
        ),
        strategy=args.strategy,
        max_metric_drop=args.max_metric_drop,
        calibration_examples=len(run.calibration),
        measured_on={
            **machine_details(),
            "threads": args.num_threads,
            "batch_size": args.per_device_eval_batch_size,
            "note": "speeds are dev-set sequences per second on this machine; best is the fastest "
            "candidate within --max_metric_drop that is faster than the parent",
        },
        checkpoint_selection={
            "examples": len(run.selection[0]),
            "data": "held out from the training data (never trained on); the dev set judges the candidates against "
            "--max_metric_drop",
        },
        parent=parent,
        candidates=tuple(candidates),
        best=best.path if best else None,
        best_int8=best_int8.path if best_int8 else None,
        tensorrt_int8=tensorrt_int8.path if tensorrt_int8 else None,
    )


def run_compression(family: Family, model_class, description: str, argv=None) -> CompressionReport:
    """compress_*.py: the steps of --strategy over a fine-tuned model, every candidate measured on the dev set, the
    best one within --max_metric_drop of the parent chosen, all in compress_report.json."""
    args, data_args, window_args, given = parse_compress_arguments(family, description, argv)
    setup_logging()
    check_device(args.device)
    paddle.set_device(args.device)
    task = get_task(data_args.task_name, family, data_args.label_list)
    shapes = check_compress_arguments(args, given)
    config = load_model_config(args.model_name_or_path)
    if model_head_family(config) is None:
        raise UserError(
            f"{args.model_name_or_path} is not a fine-tuned model (its config names no task head): "
            f"compress an output directory of {family.script}"
        )
    check_model_fits_task(config, args.model_name_or_path, task)
    data_args.max_seq_length = data_args.max_seq_length or task.max_seq_length
    output_dir = os.path.abspath(args.output_dir or os.path.join(args.model_name_or_path, "compress"))
    check_compression_output(output_dir, args.overwrite_output_dir)

    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path)
    parent = load_task_model(model_class, args.model_name_or_path, task, data_args.max_seq_length)
    train_encoded, selection = load_training_and_selection(task, data_args, tokenizer, window_args, args)
    # the dev set as infer.py encodes it, so that each candidate's measured metric is the one infer.py reports
    dev_examples, dev_encoded = load_encoded_split(
        task, "dev", data_args, load_deployed_tokenizer(args.model_name_or_path), window_args
    )
    calibration = [{name: f[name] for name in EXPORT_INPUT_NAMES} for f in train_encoded.sequences]
    np.random.default_rng(args.seed).shuffle(calibration)
    info = task_file(task, data_args.max_seq_length)

    with atomic_entries(output_dir, args.overwrite_output_dir) as staging:
        run = CompressionRun(
            args, task, window_args, tokenizer, parent, info, shapes, train_encoded, selection, dev_examples,
            dev_encoded, calibration, staging, output_dir, model_class, data_args,
        )  # fmt: skip
        export_static_model(parent, tokenizer, os.path.join(staging, "parent"), info)
        parent_entry = run.measured("parent", "float parent", args.model_name_or_path, parent)
        report = compression_report(run, parent_entry, run_strategy(run, parent_entry))
        write_report(report_path(staging), report)
    print(compression_table(report))
    best = report.candidate(report.best)
    if best is None:
        raise UserError(
            f"no candidate is within --max_metric_drop {args.max_metric_drop} points of the float parent "
            f"({parent_entry.metric_points:.2f}) and faster than it; nothing is chosen (see {report_path(output_dir)})"
        )
    speedup = best.sequences_per_second / parent_entry.sequences_per_second
    print(
        f"best: {best.path} ({best.backend} {best.precision}, {task.metric} {best.metric_points:.2f} points, "
        f"drop {best.drop_points:.2f}, {speedup:.2f}x the parent's speed)"
    )
    return report
