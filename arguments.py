"""Command-line arguments of the fine-tuning and compression scripts: the argument dataclasses, one .json or
.yml arguments file in place of flags, per-task defaults from configs/ that the command line overrides, and
the device checks. The fine-tuning scripts parse with paddlenlp's PdArgumentParser (TrainingArguments); the
scripts without training (infer.py, serve.py, compress_*.py) with DataclassParser, so that the deployment
scripts never import paddlenlp; paddle is imported only by the device check, so that they run without it (a
deploy-only install, requirements-deploy.txt).

Imports runtime.py and utils.py.
"""

import argparse
import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from runtime import UserError, first_line
from utils import ALL_TASKS, CUSTOM_TASK, CUSTOM_TASK_DEFAULTS, FAMILIES, Family, family_task_names

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))


DEFAULT_CONFIG_FILE = os.path.join(SUITE_DIR, "configs", "default.yml")


DEFAULT_MODEL = "ernie-3.0-medium-zh"


def task_names_help() -> str:
    """Every task, by the script that fine-tunes it, from the registry."""
    return "; ".join(f"{', '.join(family_task_names(family))} ({family.script})" for family in FAMILIES.values())


@dataclass
class DataArguments:
    task_name: str = field(metadata={"help": task_names_help()})
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Local training file in the task's original format; without it the hub copy is downloaded."},
    )
    dev_file: Optional[str] = field(
        default=None, metadata={"help": "Local dev file (evaluation and best-model selection)."}
    )
    test_file: Optional[str] = field(default=None, metadata={"help": "Local test file for --do_predict."})
    label_list: Optional[List[str]] = field(
        default=None, metadata={"help": "Labels of --task_name custom, in id order."}
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per example, special tokens included; default: the task's (table below)."},
    )
    truncate_long_texts: bool = field(
        default=True,
        metadata={
            "help": "Truncate longer examples to --max_seq_length (the count is logged and written to the results); "
            "with false, such an example is an error naming its file and line."
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Train on batches of similar lengths (shuffled within groups of 50 batches), so short texts "
            "are not padded to long ones: faster on data like TNEWS. Single-process runs."
        },
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N dev examples."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N test examples."})

    def split_file(self, split: str) -> Optional[str]:
        return {"train": self.train_file, "dev": self.dev_file, "test": self.test_file}[split]

    def split_max_samples(self, split: str) -> Optional[int]:
        return {"train": self.max_train_samples, "dev": self.max_eval_samples, "test": self.max_predict_samples}[split]


@dataclass
class QAWindowArguments:
    """How run_qa.py and infer.py cut contexts into windows and pick answers."""

    doc_stride: Optional[int] = field(
        default=None,
        metadata={
            "help": "Tokens between the starts of consecutive context windows (BERT's doc_stride: a step, "
            "not the overlap that Hugging Face's fast tokenizers call stride); at most the window length. "
            "Default: 128, or the window length when that is shorter."
        },
    )
    max_query_length: int = field(
        default=64, metadata={"help": "Question tokens kept; longer questions are cut (counted)."}
    )
    n_best_size: int = field(
        default=20, metadata={"help": "Start and end candidates per window, and answers kept per question."}
    )
    max_answer_length: int = field(default=50, metadata={"help": "Longest answer in tokens."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "A PaddleNLP model name (downloaded) or a local directory (pretrained or fine-tuned)."},
    )
    dropout: Optional[float] = field(
        default=None, metadata={"help": "Hidden and classifier dropout; default: the model's own."}
    )
    early_stopping_patience: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement of the dev metric."}
    )
    config: str = field(default=DEFAULT_CONFIG_FILE, metadata={"help": "YAML file of per-task defaults."})


ARGS_FILE_SUFFIXES = (".json", ".yml", ".yaml")


def args_file_to_argv(path: str) -> List[str]:
    """A .json or .yml arguments file as the equivalent command-line tokens."""
    if not os.path.isfile(path):
        raise UserError(f"arguments file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a UTF-8 BOM some editors write is dropped
            values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{path}: cannot parse arguments file ({first_line(error)})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: an arguments file must hold a mapping of option names to values")
    return dict_to_argv(values)


def dict_to_argv(values: dict) -> List[str]:
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        else:
            argv.append(str(value))
    return argv


def load_config_defaults(config_file: str) -> dict:
    """The per-task defaults file: a mapping with an optional 'common' mapping and a 'tasks' mapping of task
    name to mapping. Anything else is one error line naming the file."""
    if not os.path.isfile(config_file):
        raise UserError(f"--config: file not found: {config_file}")
    try:
        with open(config_file, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise UserError(f"--config {config_file}: not valid YAML ({first_line(error)})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"--config {config_file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    check_config_shape(config, config_file)
    return config


def check_config_shape(config, config_file: str) -> None:
    if not isinstance(config, dict):
        raise UserError(
            f"--config {config_file}: expected a mapping with 'common' and 'tasks', got {type(config).__name__}"
        )
    for section in ("common", "tasks"):
        if not isinstance(config.get(section) or {}, dict):
            raise UserError(
                f"--config {config_file}: '{section}' must be a mapping of names to values, "
                f"got {type(config[section]).__name__}"
            )
    for name, block in (config.get("tasks") or {}).items():
        if not isinstance(block or {}, dict):
            raise UserError(
                f"--config {config_file}: tasks.{name} must be a mapping of option names to values, "
                f"got {type(block).__name__}"
            )


def task_defaults(config: dict, task_name: Optional[str]) -> dict:
    """The 'common' defaults overlaid with the task's own block."""
    defaults = dict(config.get("common") or {})
    defaults.update((config.get("tasks") or {}).get(task_name) or {})
    return defaults


def defaults_epilog(config: dict, family: Family, config_file: str) -> str:
    lines = [f"Per-task defaults (from {os.path.relpath(config_file)}; anything given on the command line wins):"]
    for name, task in ALL_TASKS.items():
        if task.family is not family:
            continue
        values = {"max_seq_length": task.max_seq_length, **((config.get("tasks") or {}).get(name) or {})}
        lines.append(f"  {name}: " + ", ".join(f"{key}={value}" for key, value in values.items()))
    return "\n".join(lines)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults after each option and keeps the per-task table's line breaks."""


def user_argv(argv: Optional[Sequence[str]]) -> List[str]:
    """The command line, or the tokens of a single .json/.yml arguments file given in its place."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(ARGS_FILE_SUFFIXES):
        argv = args_file_to_argv(argv[0])
    return argv


UNUSED_ARGUMENTS = "Some specified arguments are not used by the PdArgumentParser: "


def str_to_bool(value) -> bool:
    """A boolean option's value, spelt as PdArgumentParser accepts it."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class DataclassParser(argparse.ArgumentParser):
    """The command line of plain dataclasses, read as PdArgumentParser reads them (Optional[X] is X; a bool takes
    an optional true/false and, when it defaults to true, a --no_ form; List[X] takes one or more values; field
    metadata are add_argument's keywords) without importing paddlenlp: importing it costs infer.py and serve.py
    ~2.6 s and ~290 MB of resident memory."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(**kwargs)
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            hints = typing.get_type_hints(dtype)
            for item in dataclasses.fields(dtype):
                if item.init:
                    self.add_field(item, hints[item.name])

    def add_field(self, item: dataclasses.Field, hint) -> None:
        kwargs = dict(item.metadata)
        arguments = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union and type(None) in arguments:
            hint = next(argument for argument in arguments if argument is not type(None))
        if item.default is not dataclasses.MISSING:
            kwargs["default"] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            kwargs["default"] = item.default_factory()
        else:
            kwargs["required"] = True
        if hint is bool:
            kwargs.update(type=str_to_bool, nargs="?", const=True)
        elif typing.get_origin(hint) is list:
            kwargs.setdefault("nargs", "+")
            kwargs["type"] = typing.get_args(hint)[0]
        else:
            kwargs["type"] = hint
        self.add_argument(f"--{item.name}", **kwargs)
        if hint is bool and item.default is True:
            self.add_argument(f"--no_{item.name}", action="store_false", dest=item.name, help=f"--{item.name} false")

    def parse_args_into_dataclasses(self, args: Sequence[str]):
        namespace, remaining = self.parse_known_args(args=list(args))
        if remaining:
            raise ValueError(f"{UNUSED_ARGUMENTS}{remaining}")
        values = vars(namespace)
        return tuple(
            dtype(**{item.name: values[item.name] for item in dataclasses.fields(dtype) if item.init})
            for dtype in self.dataclass_types
        )


def check_minimums(values, minimums: dict) -> None:
    """One error line for the first numeric option below its minimum (an option left unset, None, is skipped)."""
    for option, minimum in minimums.items():
        value = getattr(values, option)
        if value is not None and value < minimum:
            bound = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise UserError(f"--{option} {bound}, not {value}")


def parse_into_dataclasses(parser, argv: Sequence[str]):
    """The parsed dataclasses; an unknown or abbreviated option (the parsers refuse abbreviations, so that no option
    is half-read) and a dataclass check that fails are one UserError each."""
    try:
        return parser.parse_args_into_dataclasses(args=list(argv))
    except ValueError as error:  # dataclass __post_init__ checks (TrainingArguments' among them) raise this
        message = first_line(error)
        if message.startswith(UNUSED_ARGUMENTS):
            message = (
                f"unrecognized arguments: {message[len(UNUSED_ARGUMENTS) :]} (options are spelt out in full; "
                "see --help)"
            )
        raise UserError(message) from None


def parse_plain_arguments(dataclass_types, description: str, argv: Optional[Sequence[str]] = None):
    """Parse a script's own dataclasses (flags or one .json/.yml file), with no training defaults."""
    parser = DataclassParser(
        dataclass_types, description=description, formatter_class=HelpFormatter, allow_abbrev=False
    )
    return parse_into_dataclasses(parser, user_argv(argv))


def parse_arguments(dataclass_types, family: Family, description: str, argv: Sequence[str]):
    """Parse the command line (argv, after user_argv) into the dataclasses; returns (them, the first pass).

    Defaults come in three layers, the later winning: the dataclass defaults, configs/default.yml
    ('common', then the task's block, then the task's registry max_seq_length), then what the user gave.
    A family with one task (NER, QA) defaults --task_name to it; --output_dir defaults to output/<task>.
    """
    argv, first = with_task_name(argv, family)
    config_file = first.config or DEFAULT_CONFIG_FILE
    config = load_config_defaults(config_file)
    from paddlenlp.trainer import PdArgumentParser  # here, not at the top: see DataclassParser

    parser = PdArgumentParser(
        dataclass_types,
        description=description,
        epilog=defaults_epilog(config, family, config_file),
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    defaults = {"device": default_device(), **task_defaults(config, first.task_name)}
    task = ALL_TASKS.get(first.task_name)
    if task is not None:
        defaults.setdefault("max_seq_length", task.max_seq_length)
        defaults.setdefault("metric_for_best_model", task.metric)
    elif first.task_name == CUSTOM_TASK:
        defaults = {**CUSTOM_TASK_DEFAULTS, **defaults}
    if first.task_name and first.output_dir is None:
        argv += ["--output_dir", default_output_dir(first.task_name)]
    parser.set_defaults(**defaults)
    parsed = parse_into_dataclasses(parser, argv)
    apply_requested_actions(first.requested_actions, parsed)
    return parsed, first


def default_task_name(family: Family) -> Optional[str]:
    """The task a family's scripts take without --task_name (msra_ner, cmrc2018, c3); None where the user must
    choose."""
    return family.default_task


def task_from_dataset(dataset: str) -> str:
    """Upstream's --dataset: 'clue tnews' (a CLUE task), msra_ner or cmrc2018."""
    words = dataset.split()
    return words[1] if len(words) == 2 and words[0].lower() == "clue" else dataset.strip()


ACTIONS = ("do_train", "do_eval", "do_predict", "do_export")
DEFAULT_ACTIONS = ("do_train", "do_eval")  # what a run without any --do_* flag does


@dataclass(frozen=True)
class FirstPass:
    """The options that decide how the rest of a fine-tuning or compression command line is parsed, read by the real
    parser with the one boolean vocabulary (str_to_bool) before the full parse."""

    task_name: Optional[str]
    dataset: Optional[str]
    config: Optional[str]
    output_dir: Optional[str]
    actions: Dict[str, Optional[bool]]  # each --do_* action: its value, None when not given

    @property
    def actions_given(self) -> bool:
        """Whether any --do_* option is named on the command line (even as false)."""
        return any(value is not None for value in self.actions.values())

    @property
    def requested_actions(self) -> Dict[str, bool]:
        """The --do_* actions asked for; with none named, training and evaluation."""
        if not self.actions_given:
            return {action: action in DEFAULT_ACTIONS for action in ACTIONS}
        return {action: bool(value) for action, value in self.actions.items()}


def first_pass(argv: Sequence[str]) -> FirstPass:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name in ("task_name", "dataset", "config", "output_dir"):
        parser.add_argument(f"--{name}")
    for action in ACTIONS:
        parser.add_argument(f"--{action}", type=str_to_bool, nargs="?", const=True)
    try:
        known, _ = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as error:
        raise UserError(str(error)) from None
    values = vars(known)
    return FirstPass(
        values["task_name"],
        values["dataset"],
        values["config"],
        values["output_dir"],
        {action: values[action] for action in ACTIONS},
    )


def with_task_name(argv: Sequence[str], family: Family) -> Tuple[List[str], FirstPass]:
    """argv with --task_name made explicit (from --dataset, upstream's option, else the family's only task), and its
    first pass."""
    argv, first = list(argv), first_pass(argv)
    task_name = first.task_name
    if first.dataset is not None:
        if task_name is not None and task_name != task_from_dataset(first.dataset):
            raise UserError(
                f"--dataset {first.dataset!r} and --task_name {task_name!r} name different tasks; give one of them"
            )
        task_name = task_from_dataset(first.dataset)
    task_name = task_name or default_task_name(family)
    if task_name and first.task_name is None:
        argv += ["--task_name", task_name]
        first = dataclasses.replace(first, task_name=task_name)
    return argv, first


def default_output_dir(task_name: str) -> str:
    """Where run_*.py writes, compress_*.py reads and infer.py looks by default."""
    return os.path.join("output", task_name)


def apply_requested_actions(requested: dict, parsed) -> None:
    """Do exactly the --do_* actions the user asked for.

    paddlenlp's TrainingArguments turns do_eval on whenever an evaluation strategy is set, so a plain
    --do_predict run would also evaluate (and download the dev split); the user's own flags win here.
    """
    if not any(requested.values()):
        raise UserError("nothing to do: pass one or more of --do_train --do_eval --do_predict --do_export")
    for arguments in parsed:
        if all(hasattr(arguments, action) for action in ACTIONS):
            for action, wanted in requested.items():
                setattr(arguments, action, wanted)


def default_device() -> str:
    """gpu when paddle sees one (paddlepaddle-gpu), else cpu (also where paddle is not installed)."""
    try:
        import paddle
    except ImportError:
        return "cpu"
    return "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"


def check_device(device: str) -> None:
    """Refuse a GPU run on a CPU-only paddle instead of silently training on the CPU."""
    if device.startswith("gpu") and default_device() != "gpu":
        raise UserError(
            "--device gpu needs paddlepaddle-gpu and a visible GPU, but this paddle is CPU-only "
            "or sees no GPU; use --device cpu or install paddlepaddle-gpu (see README)"
        )
