"""Shared code for the ERNIE 3.0 suite: task registry, data reading, preprocessing, metrics, argument
parsing with per-task defaults, model loading, the Trainer workflow, output writing and static export.

Every run_*.py, compress_*.py and infer.py script imports from here; a piece of logic lives in one place.
"""
import argparse
import contextlib
import fnmatch
import json
import logging
import os
import shutil
import sys
import re
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

import paddle
from paddlenlp.data import DataCollatorForTokenClassification, DataCollatorWithPadding
from paddlenlp.datasets import MapDataset
from paddlenlp.trainer import EarlyStoppingCallback, PdArgumentParser, Trainer, TrainingArguments, set_seed
from paddlenlp.trainer.trainer_utils import get_last_checkpoint
from paddlenlp.transformers import AutoConfig, AutoTokenizer

logger = logging.getLogger("ernie_suite")

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG_FILE = os.path.join(SUITE_DIR, "configs", "default.yml")
DEFAULT_MODEL = "ernie-3.0-medium-zh"


# --------------------------------------------------------------------------------------------------
# Errors a user can cause
# --------------------------------------------------------------------------------------------------
class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


class FieldError(Exception):
    """A bad field in one data row; the reader adds the file and line."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(); a UserError becomes one 'error: ...' line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------------
def _text_field(row: dict, name: str) -> str:
    if name not in row:
        raise FieldError(f"missing field '{name}'")
    value = row[name]
    if not isinstance(value, str):
        raise FieldError(f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(f"field '{name}' is empty")
    return value


def single_sentence(row: dict) -> Tuple[str, Optional[str]]:
    return _text_field(row, "sentence"), None


def sentence_pair(row: dict) -> Tuple[str, Optional[str]]:
    return _text_field(row, "sentence1"), _text_field(row, "sentence2")


def csl_keywords_and_abstract(row: dict) -> Tuple[str, Optional[str]]:
    """CSL: the keywords joined by spaces are the first text, the abstract the second."""
    keywords = row.get("keyword")
    if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) for k in keywords):
        raise FieldError("field 'keyword' must be a non-empty list of strings")
    return " ".join(keywords), _text_field(row, "abst")


def mark_wsc_spans(text: str, span1_index: int, span1_text: str, span2_index: int, span2_text: str) -> str:
    """Wrap the candidate noun (span1) in _..._ and the pronoun (span2) in [...] at their character indexes.

    Each span must match the text at its index; markers are inserted right to left so that earlier
    insertions do not shift later indexes, whichever span comes first.
    """
    for name, index, span in (("span1", span1_index, span1_text), ("span2", span2_index, span2_text)):
        if not isinstance(index, int) or index < 0 or text[index : index + len(span)] != span:
            found = text[index : index + len(span)] if isinstance(index, int) else None
            raise FieldError(f"target.{name}_text {span!r} does not match the text at {name}_index {index} ({found!r})")
    insertions = [(span1_index, "_"), (span1_index + len(span1_text), "_"), (span2_index, "["), (span2_index + len(span2_text), "]")]
    marked = text
    for position, marker in sorted(insertions, key=lambda item: item[0], reverse=True):
        marked = marked[:position] + marker + marked[position:]
    return marked


def wsc_marked_text(row: dict) -> Tuple[str, Optional[str]]:
    text = _text_field(row, "text")
    target = row.get("target")
    keys = ("span1_index", "span1_text", "span2_index", "span2_text")
    if not isinstance(target, dict) or any(key not in target for key in keys):
        raise FieldError(f"field 'target' must hold {', '.join(keys)}")
    return mark_wsc_spans(text, *(target[key] for key in keys)), None


def custom_text(row: dict) -> Tuple[str, Optional[str]]:
    """A user's own data: 'sentence' for single texts, or 'sentence1' and 'sentence2' for pairs."""
    if "sentence1" in row or "sentence2" in row:
        return sentence_pair(row)
    return single_sentence(row)


@dataclass(frozen=True)
class TaskSpec:
    """One task: how to read its rows, its labels, its metric and where its predictions go."""

    name: str
    family: str  # "seq_cls", "token_cls" or "qa"
    labels: Tuple[str, ...]
    read_texts: Optional[Callable[[dict], Tuple[str, Optional[str]]]]  # classification: row -> (text_a, text_b)
    metric: str
    max_seq_length: int
    submission_file: str
    hub: Optional[Tuple[str, str]] = None  # paddlenlp.datasets.load_dataset(*hub, splits=split)
    hub_splits: Dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"})
    skip_labels: Tuple[str, ...] = ()  # gold label meaning "no agreement": such rows are left out
    file_format: str = "CLUE json lines"

    @property
    def per_token_outputs(self) -> bool:
        """NER logits and QA start/end logits have a value per input token; classification one per sequence."""
        return self.family != "seq_cls"

    @property
    def metric_names(self) -> Tuple[str, ...]:
        return FAMILY_METRICS[self.family]


FAMILY_METRICS = {
    "seq_cls": ("accuracy",),
    "token_cls": ("precision", "recall", "f1"),
    "qa": ("exact_match", "f1", "upstream_exact_match", "upstream_f1"),
}

TNEWS_LABELS = ("100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116")

SEQ_CLS_TASKS = {
    task.name: task
    for task in [
        TaskSpec("afqmc", "seq_cls", ("0", "1"), sentence_pair, "accuracy", 128, "afqmc_predict.json", ("clue", "afqmc")),
        TaskSpec("tnews", "seq_cls", TNEWS_LABELS, single_sentence, "accuracy", 128, "tnews11_predict.json", ("clue", "tnews")),
        TaskSpec(
            "iflytek", "seq_cls", tuple(str(i) for i in range(119)), single_sentence, "accuracy", 128,
            "iflytek_predict.json", ("clue", "iflytek"),
        ),
        TaskSpec(
            "cmnli", "seq_cls", ("contradiction", "entailment", "neutral"), sentence_pair, "accuracy", 128,
            "cmnli_predict.json", ("clue", "cmnli"), skip_labels=("-",),
        ),
        TaskSpec(
            "ocnli", "seq_cls", ("entailment", "contradiction", "neutral"), sentence_pair, "accuracy", 128,
            "ocnli_50k_predict.json", ("clue", "ocnli"), skip_labels=("-",),
        ),
        TaskSpec(
            "cluewsc2020", "seq_cls", ("true", "false"), wsc_marked_text, "accuracy", 128,
            "cluewsc11_predict.json", ("clue", "cluewsc2020"),
        ),
        TaskSpec("csl", "seq_cls", ("0", "1"), csl_keywords_and_abstract, "accuracy", 256, "csl_predict.json", ("clue", "csl")),
    ]
}

MSRA_NER = TaskSpec(
    "msra_ner", "token_cls", ("B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "O"), None, "f1", 128,
    "msra_ner_predict.json", ("msra_ner",),
    # MSRA_NER has no dev split: its test split is the evaluation set, as in every published number.
    hub_splits={"train": "train", "dev": "test", "test": "test"},
    file_format="MSRA_NER tsv (characters and tags joined by \\002, a tab between) or BIO columns (a 'char tag' line each, "
    "a blank line between sentences)",
)

CMRC2018 = TaskSpec(
    "cmrc2018", "qa", (), None, "f1", 512, "cmrc2018_predict.json", ("cmrc2018",),
    hub_splits={"train": "train", "dev": "dev"},  # the CMRC2018 test answers are not public
    file_format="SQuAD-style json, the CMRC2018 release format",
)

ALL_TASKS = {**SEQ_CLS_TASKS, MSRA_NER.name: MSRA_NER, CMRC2018.name: CMRC2018}
CUSTOM_TASK = "custom"
CUSTOM_TASK_DEFAULTS = {"max_seq_length": 128, "metric_for_best_model": "accuracy"}


def custom_seq_cls_task(label_list: Sequence[str]) -> TaskSpec:
    if not label_list:
        raise UserError("--task_name custom needs --label_list (the label strings, in id order)")
    if len(set(label_list)) != len(label_list):
        raise UserError(f"--label_list has repeated labels: {list(label_list)}")
    return TaskSpec(CUSTOM_TASK, "seq_cls", tuple(label_list), custom_text, "accuracy", 128, "custom_predict.json")


def get_task(name: str, family: str, label_list: Optional[Sequence[str]] = None) -> TaskSpec:
    """The registry entry for --task_name, or a clear error naming the tasks this script handles."""
    tasks = {n: t for n, t in ALL_TASKS.items() if t.family == family}
    if name == CUSTOM_TASK and family == "seq_cls":
        return custom_seq_cls_task(label_list)
    if name not in tasks:
        other = ALL_TASKS.get(name)
        hint = f" ({name} is a {FAMILY_NAMES[other.family]} task)" if other else ""
        choices = sorted(tasks) + ([CUSTOM_TASK] if family == "seq_cls" else [])
        raise UserError(f"unknown --task_name {name!r}{hint}; this script handles: {', '.join(choices)}")
    return tasks[name]


def get_task_any_family(name: str, info: Optional[dict] = None) -> TaskSpec:
    """Any registered task; a custom task takes its labels from the exported model's task.json."""
    if name == CUSTOM_TASK:
        return custom_seq_cls_task((info or {}).get("label_list"))
    if name not in ALL_TASKS:
        raise UserError(f"unknown --task_name {name!r}; choose from: {', '.join(sorted(ALL_TASKS) + [CUSTOM_TASK])}")
    return ALL_TASKS[name]


FAMILY_NAMES = {"seq_cls": "sequence classification", "token_cls": "token classification", "qa": "question answering"}
FAMILY_SCRIPTS = {"seq_cls": "run_seq_cls.py", "token_cls": "run_token_cls.py", "qa": "run_qa.py"}
HEAD_SUFFIXES = {
    "ForSequenceClassification": "seq_cls",
    "ForTokenClassification": "token_cls",
    "ForQuestionAnswering": "qa",
}


# --------------------------------------------------------------------------------------------------
# Reading data: local files in the original formats, or the hub copy by name
# --------------------------------------------------------------------------------------------------
@dataclass
class TextExample:
    id: object
    text_a: str
    text_b: Optional[str]
    label: Optional[str]
    where: str  # "file:line" or "hub split row", for error messages


def read_json_lines(path: str, option: str):
    """Yield ("path:line", row) for each non-blank line; malformed lines are errors naming file and line."""
    if not os.path.isfile(path):
        raise UserError(f"{option}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{where}: not a valid JSON line ({error.msg} at column {error.colno})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def hub_rows(dataset, where_prefix: str):
    """Rows of a paddlenlp hub dataset, with label ids turned back into the label strings of the files."""
    label_list = getattr(dataset, "label_list", None)
    for index, row in enumerate(dataset):
        label = row.get("label")
        if label_list and isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            row = {**row, "label": label_list[label]}
        if label_list and isinstance(row.get("labels"), list):  # token tags
            row = {**row, "labels": [label_list[i] if isinstance(i, (int, np.integer)) else i for i in row["labels"]]}
        yield f"{where_prefix} row {index}", row


def load_hub_rows(task: TaskSpec, split: str):
    """Download one split by name; on failure say what could not be fetched and which option to use."""
    option = SPLIT_OPTIONS[split]
    if task.hub is None:
        raise UserError(f"task {task.name} has no downloadable data; pass {option} PATH")
    from paddlenlp.datasets import load_dataset

    if split not in task.hub_splits:
        raise UserError(f"task {task.name} has no downloadable {split} split; pass {option} PATH")
    hub_split = task.hub_splits[split]
    try:
        dataset = load_dataset(*task.hub, splits=hub_split)  # a bare name, or (builder, config)
    except Exception as error:  # network errors surface as RuntimeError/OSError from several layers
        raise UserError(
            f"could not download the {task.name} {split} split ({first_line(error)}); "
            f"pass {option} PATH with a local copy ({task.file_format})"
        ) from None
    return list(hub_rows(dataset, f"{'/'.join(task.hub)} {hub_split}"))


SPLIT_OPTIONS = {"train": "--train_file", "dev": "--dev_file", "test": "--test_file"}


def rows_to_examples(task: TaskSpec, rows, split: str) -> List[TextExample]:
    """Turn raw rows into TextExamples: texts via the task's reader, labels checked against its label list.

    Rows whose gold label is one of task.skip_labels (CLUE's "-" for no annotator agreement) are left out.
    Test rows may lack labels; every other split needs one. An example's id is its own "id" (or "idx")
    field, else its position in the file.
    """
    examples, skipped = [], 0
    for position, (where, row) in enumerate(rows):
        try:
            text_a, text_b = task.read_texts(row)
        except FieldError as error:
            raise UserError(f"{where}: {error}") from None
        label = row.get("label")
        if label is None:
            if split != "test":
                raise UserError(f"{where}: missing field 'label' (needed in the {split} split)")
        else:
            label = str(label)
            if label in task.skip_labels:
                skipped += 1
                continue
            if label not in task.labels:
                shown = ", ".join(task.labels[:20]) + (", ..." if len(task.labels) > 20 else "")
                raise UserError(f"{where}: unknown label {label!r} for task {task.name} (expected one of: {shown})")
        example_id = row.get("id", row.get("idx", position))
        examples.append(TextExample(example_id, text_a, text_b, label, where))
    if skipped:
        logger.info("%s %s: left out %d rows labelled %s", task.name, split, skipped, "/".join(task.skip_labels))
    if not examples:
        raise UserError(f"the {task.name} {split} data holds no examples")
    return examples


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    dataset: MapDataset
    ids: list
    truncated: int


def encode_text_examples(examples: Sequence[TextExample], tokenizer, task: TaskSpec, max_seq_length: int,
                         truncate: bool = True) -> EncodedSplit:
    """Tokenize each example once; texts longer than max_seq_length are truncated (longest first) and
    counted, or, with truncate=False, rejected naming the example."""
    label_ids = {label: index for index, label in enumerate(task.labels)}
    features, truncated = [], 0
    for example in examples:
        ids_a = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.text_a))
        ids_b = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.text_b)) if example.text_b is not None else None
        length = len(ids_a) + len(ids_b or ()) + tokenizer.num_special_tokens_to_add(pair=ids_b is not None)
        if length > max_seq_length:
            if not truncate:
                raise UserError(
                    f"{example.where}: text is {length} tokens, longer than --max_seq_length {max_seq_length} "
                    "(pass --truncate_long_texts true to truncate)"
                )
            truncated += 1
        encoded = tokenizer.prepare_for_model(ids_a, ids_b, max_length=max_seq_length, truncation=True)
        feature = {"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"]}
        if example.label is not None:
            feature["labels"] = label_ids[example.label]
        features.append(feature)
    return EncodedSplit(MapDataset(features), [example.id for example in examples], truncated)


def report_truncation(task_name: str, split: str, encoded: EncodedSplit, max_seq_length: int) -> None:
    if encoded.truncated:
        logger.warning(
            "%s %s: %d of %d examples were longer than max_seq_length=%d and were truncated",
            task_name, split, encoded.truncated, len(encoded.ids), max_seq_length,
        )


# --------------------------------------------------------------------------------------------------
# Token classification (MSRA_NER): reading, label alignment, entities and metrics
# --------------------------------------------------------------------------------------------------
@dataclass
class TokenExample:
    id: int
    words: List[str]  # MSRA_NER: one character each
    tags: Optional[List[str]]
    where: str

    @property
    def text(self) -> str:
        return "".join(self.words)


def read_ner_file(path: str, option: str):
    """Yield (where, words, tags or None) from an MSRA_NER tsv file or a BIO column file.

    tsv: one sentence a line, characters joined by \002, a tab, tags joined by \002 (PaddleNLP's msra_ner).
    BIO columns: one 'char tag' line per character, sentences separated by blank lines.
    The format is recognised by the \002 separator; a file without it is read as columns.
    """
    lines = list(numbered_text_lines(path, option))
    reader = read_ner_tsv_lines if any("\002" in line for _, line in lines) else read_ner_column_lines
    yield from reader(path, lines)


def numbered_text_lines(path: str, option: str):
    if not os.path.isfile(path):
        raise UserError(f"{option}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            yield from ((number, line.rstrip("\r\n")) for number, line in enumerate(handle, 1))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_ner_tsv_lines(path: str, lines):
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) > 2:
            raise UserError(f"{where}: expected characters and tags separated by one tab, found {len(fields)} fields")
        words = fields[0].split("\002")
        tags = fields[1].split("\002") if len(fields) == 2 else None
        yield where, words, tags


def read_ner_column_lines(path: str, lines):
    words, tags, start = [], [], None
    for number, line in list(lines) + [(None, "")]:
        if line.strip():
            fields = line.split()
            if len(fields) > 2:
                raise UserError(f"{path}:{number}: expected 'char tag', found {len(fields)} fields")
            start = start or number
            words.append(fields[0])
            tags.append(fields[1] if len(fields) == 2 else None)
            continue
        if words:
            labelled = [tag is not None for tag in tags]
            if any(labelled) and not all(labelled):
                raise UserError(f"{path}:{start}: some characters of this sentence have a tag and some do not")
            yield f"{path}:{start}", words, tags if all(labelled) else None
        words, tags, start = [], [], None


def ner_hub_rows(task: TaskSpec, split: str):
    for where, row in load_hub_rows(task, split):
        words = [w for w in row.get("tokens") or [] if w != ""]
        if words:
            yield where, words, row.get("labels") or None


def rows_to_token_examples(task: TaskSpec, rows, split: str) -> List[TokenExample]:
    """Check each sentence (non-empty, one known tag per character) and number them in input order."""
    examples = []
    for where, words, tags in rows:
        if not words or not "".join(words).strip():
            raise UserError(f"{where}: empty sentence")
        if tags is None:
            if split != "test":
                raise UserError(f"{where}: sentence without tags (needed in the {split} split)")
        else:
            if len(tags) != len(words):
                raise UserError(f"{where}: {len(tags)} tags for {len(words)} characters")
            unknown = sorted(set(tags) - set(task.labels))
            if unknown:
                raise UserError(f"{where}: unknown tag {unknown[0]!r} (expected one of: {', '.join(task.labels)})")
        examples.append(TokenExample(len(examples), list(words), tags, where))
    if not examples:
        raise UserError(f"the {task.name} {split} data holds no sentences")
    return examples


IGNORE_INDEX = -100  # label of special tokens, padding and word pieces after the first: never scored


@dataclass
class EncodedTokens(EncodedSplit):
    word_positions: List[List[int]] = field(default_factory=list)  # input position of each seen word's first piece


def encode_token_examples(examples: Sequence[TokenExample], tokenizer, task: TaskSpec, max_seq_length: int,
                          truncate: bool = True) -> EncodedTokens:
    """One label per word on its first word piece; special tokens, padding and later pieces get IGNORE_INDEX.

    A word the tokenizer drops (a space, a control character) becomes [UNK] so that words and labels
    stay aligned. Sentences longer than max_seq_length keep their first words; the rest is not seen.
    """
    label_ids = {label: index for index, label in enumerate(task.labels)}
    pieces_of = {}
    budget = max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
    features, word_positions, truncated = [], [], 0
    for example in examples:
        ids, first_pieces = [], []
        for word in example.words:
            if word not in pieces_of:
                pieces_of[word] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)) or [tokenizer.unk_token_id]
            if len(ids) + len(pieces_of[word]) > budget:
                break
            first_pieces.append(len(ids))
            ids.extend(pieces_of[word])
        if len(first_pieces) < len(example.words):
            if not truncate:
                raise UserError(f"{example.where}: sentence needs more than --max_seq_length {max_seq_length} tokens "
                                "(pass --truncate_long_texts true to truncate)")
            truncated += 1
        input_ids = tokenizer.build_inputs_with_special_tokens(ids)
        if input_ids[1 : 1 + len(ids)] != ids:
            raise UserError(f"{type(tokenizer).__name__} does not lay out [CLS] text [SEP]; token classification needs that layout")
        positions = [1 + piece for piece in first_pieces]
        feature = {"input_ids": input_ids, "token_type_ids": tokenizer.create_token_type_ids_from_sequences(ids)}
        if example.tags is not None:
            labels = [IGNORE_INDEX] * len(input_ids)
            for position, tag in zip(positions, example.tags):
                labels[position] = label_ids[tag]
            feature["labels"] = labels
        features.append(feature)
        word_positions.append(positions)
    return EncodedTokens(MapDataset(features), [e.id for e in examples], truncated, word_positions)


def entities_from_tags(words: Sequence[str], tags: Sequence[str]) -> List[dict]:
    """Entities as seqeval reads BIO tags, with their text and character offsets (end exclusive)."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(int)
    text = "".join(words)
    return [
        {"text": text[starts[first]: starts[last + 1]], "type": kind, "start": int(starts[first]), "end": int(starts[last + 1])}
        for kind, first, last in get_entities(list(tags))
    ]


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Micro precision, recall and F1 over entities, exact span and type (seqeval's definition, 0..1)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, predicted = [list(t) for t in gold], [list(t) for t in predicted]
    return {
        "precision": float(precision_score(gold, predicted)),
        "recall": float(recall_score(gold, predicted)),
        "f1": float(f1_score(gold, predicted)),
    }


def scored_tags(logits: np.ndarray, label_ids: np.ndarray, labels: Sequence[str]):
    """(gold tags, predicted tags) of each sentence at the positions that carry a label."""
    predicted_ids = np.asarray(logits).argmax(axis=-1)
    gold_tags, predicted_tags = [], []
    for gold_row, predicted_row in zip(np.asarray(label_ids), predicted_ids):
        scored = gold_row != IGNORE_INDEX
        gold_tags.append([labels[i] for i in gold_row[scored]])
        predicted_tags.append([labels[i] for i in predicted_row[scored]])
    return gold_tags, predicted_tags


def token_cls_metrics(labels: Sequence[str]):
    def compute(eval_prediction) -> Dict[str, float]:
        return entity_metrics(*scored_tags(eval_prediction.predictions, eval_prediction.label_ids, labels))

    return compute


def predicted_word_tags(logits: np.ndarray, encoded: EncodedTokens, examples: Sequence[TokenExample],
                        labels: Sequence[str]) -> List[List[str]]:
    """The predicted tag of every word of every sentence; words past the truncation point get 'O'."""
    tags = []
    for row, example, positions in zip(np.asarray(logits).argmax(axis=-1), examples, encoded.word_positions):
        tags.append([labels[row[p]] for p in positions] + ["O"] * (len(example.words) - len(positions)))
    return tags


# --------------------------------------------------------------------------------------------------
# Question answering (CMRC2018): reading, sliding windows, post-processing and metrics
# --------------------------------------------------------------------------------------------------
@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: List[str]  # every gold answer text (the dev set has three; some are free-form)
    answer_start: Optional[int]  # character start of the answer the model learns to point at, None if unknown
    answer_text: Optional[str]
    where: str


def read_json_file(path: str, option: str):
    """One JSON document; a missing file, non-UTF-8 bytes or invalid JSON is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{option}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None


def read_squad_file(path: str, option: str):
    """Yield (where, row) for each question of a SQuAD-style json file, rows shaped like paddlenlp's cmrc2018."""
    document = read_json_file(path, option)
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise UserError(f"{path}: expected a SQuAD-style object with a 'data' list of articles")
    number = 0
    for article in articles:
        for paragraph in article.get("paragraphs") or []:
            for qa in paragraph.get("qas") or []:
                number += 1
                question_id = qa.get("id", f"#{number}")
                answers = qa.get("answers") or []
                if not all(isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers):
                    raise UserError(f"{path}: question {question_id}: each answer needs a 'text' string")
                yield f"{path}: question {question_id}", {
                    "id": question_id,
                    "context": paragraph.get("context"),
                    "question": qa.get("question"),
                    "answers": [a["text"] for a in answers],
                    "answer_starts": [a.get("answer_start", -1) for a in answers],
                }


ANSWER_SHIFT_LIMIT = 16  # characters; the CMRC2018 dev set has answer_starts off by 1 or 2


def locate_answer(context: str, text: str, start: int) -> Optional[int]:
    """The start of text in context: at start, else its nearest occurrence within ANSWER_SHIFT_LIMIT."""
    if not text or start is None or start < 0:
        return None
    if context[start: start + len(text)] == text:
        return start
    window_start = max(0, start - ANSWER_SHIFT_LIMIT)
    nearby = [window_start + i for i in range(min(len(context), start + ANSWER_SHIFT_LIMIT + len(text)) - window_start)
              if context.startswith(text, window_start + i)]
    return min(nearby, key=lambda i: abs(i - start)) if nearby else None


def training_answer(where: str, context: str, texts: List[str], starts: List[int], strict: bool) -> Tuple[Optional[int], Optional[str]]:
    """(start, text) of the first answer with a position. answer_start -1 marks a free-form answer (no position).

    strict (training data): an answer whose text is not at (or near) its answer_start is an error.
    """
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or start < 0:
            continue
        located = locate_answer(context, text, start)
        if located is None and strict:
            found = context[start: start + len(text)]
            raise UserError(f"{where}: answer {text!r} is not at answer_start {start} (the context there reads {found!r})")
        return (located, text) if located is not None else (None, None)
    if strict:
        raise UserError(f"{where}: no answer with an answer_start to train on")
    return None, None


def rows_to_qa_examples(task: TaskSpec, rows, split: str) -> List[QAExample]:
    examples, seen, repaired = [], set(), 0
    for where, row in rows:
        for name in ("question", "context"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise UserError(f"{where}: the {name} is missing or empty")
        if row["id"] in seen:
            raise UserError(f"{where}: question id {row['id']!r} appears twice")
        seen.add(row["id"])
        texts, starts = list(row.get("answers") or []), list(row.get("answer_starts") or [])
        if split != "test" and not texts:
            raise UserError(f"{where}: no answers (needed in the {split} split)")
        start, text = training_answer(where, row["context"], texts, starts, strict=split == "train")
        repaired += start is not None and start not in starts
        examples.append(QAExample(row["id"], row["question"], row["context"], texts, start, text, where))
    if repaired:
        logger.warning("%s %s: %d answer_start values were off by a few characters and were moved to the answer text",
                       task.name, split, repaired)
    if not examples:
        raise UserError(f"the {task.name} {split} data holds no questions")
    return examples


def window_starts(num_tokens: int, window: int, stride: int) -> List[int]:
    """Token offsets of context windows: every stride tokens (BERT's doc_stride), the last one ending at the end.

    With stride <= window every context token lies in some window.
    """
    starts = [0]
    while starts[-1] + window < num_tokens:
        starts.append(min(starts[-1] + stride, num_tokens - window))
    return starts


def answer_token_span(offsets: Sequence[Tuple[int, int]], char_start: int, char_end: int) -> Optional[Tuple[int, int]]:
    """First and last context token that overlap the characters [char_start, char_end)."""
    covering = [i for i, (start, end) in enumerate(offsets) if start < char_end and end > char_start]
    return (covering[0], covering[-1]) if covering else None


def windows_with_answer(starts: List[int], span: Optional[Tuple[int, int]], window: int, num_tokens: int) -> List[int]:
    """Add a window around the answer when no stride window holds all of it (and it fits in one)."""
    if span is None or span[1] - span[0] + 1 > window or any(s <= span[0] and span[1] < s + window for s in starts):
        return starts
    centred = span[0] - (window - (span[1] - span[0] + 1)) // 2
    return sorted(starts + [max(0, min(centred, num_tokens - window))])


@dataclass
class QAFeatures:
    dataset: MapDataset
    example_index: List[int]  # the example each window belongs to
    offsets: List[List[Optional[Tuple[int, int]]]]  # character span of each context token, None elsewhere
    truncated_questions: int


DEFAULT_DOC_STRIDE = 128


def prepare_qa_features(examples: Sequence[QAExample], tokenizer, max_seq_length: int, doc_stride: Optional[int],
                        max_query_length: int, with_labels: bool) -> QAFeatures:
    """[CLS] question [SEP] context window [SEP] for every window of every example.

    Labels (with_labels): the answer's first and last token when the window holds all of it, else [CLS] (0).
    """
    features, example_index, all_offsets, truncated_questions = [], [], [], 0
    context_encodings = {}  # questions share paragraphs (CMRC2018 dev: 3,219 questions, 848 contexts)
    for index, example in enumerate(examples):
        question_ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.question))
        truncated_questions += len(question_ids) > max_query_length
        question_ids = question_ids[:max_query_length]
        window = max_seq_length - len(question_ids) - tokenizer.num_special_tokens_to_add(pair=True)
        stride = doc_stride or min(DEFAULT_DOC_STRIDE, window)
        if window < 1 or stride > window:
            raise UserError(f"--doc_stride {doc_stride} must be between 1 and the context window of {window} tokens "
                            f"(--max_seq_length {max_seq_length} minus the question and special tokens)")
        if example.context not in context_encodings:
            encoded = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
            context_encodings[example.context] = (encoded["input_ids"], [tuple(o) for o in encoded["offset_mapping"]])
        context_ids, offsets = context_encodings[example.context]
        span = None
        if with_labels and example.answer_start is not None:
            span = answer_token_span(offsets, example.answer_start, example.answer_start + len(example.answer_text))
        starts = window_starts(len(context_ids), window, stride)
        if with_labels:
            starts = windows_with_answer(starts, span, window, len(context_ids))
        for start in starts:
            feature, first = qa_window_feature(tokenizer, question_ids, context_ids[start: start + window], start, span, with_labels)
            token_offsets = [None] * len(feature["input_ids"])
            token_offsets[first: first + len(context_ids[start: start + window])] = offsets[start: start + window]
            features.append(feature)
            example_index.append(index)
            all_offsets.append(token_offsets)
    return QAFeatures(MapDataset(features), example_index, all_offsets, truncated_questions)


def qa_window_feature(tokenizer, question_ids, piece, start, span, with_labels) -> Tuple[dict, int]:
    """One window's model inputs (and labels), and the input position of its first context token."""
    input_ids = tokenizer.build_inputs_with_special_tokens(question_ids, piece)
    first = len(input_ids) - 1 - len(piece)  # [CLS] question [SEP] context [SEP]
    if input_ids[first: first + len(piece)] != piece:
        raise UserError(f"{type(tokenizer).__name__} does not lay out [CLS] question [SEP] context [SEP]")
    feature = {"input_ids": input_ids, "token_type_ids": tokenizer.create_token_type_ids_from_sequences(question_ids, piece)}
    if with_labels:
        inside = span is not None and start <= span[0] and span[1] < start + len(piece)
        feature["start_positions"] = first + span[0] - start if inside else 0
        feature["end_positions"] = first + span[1] - start if inside else 0
    return feature, first


def postprocess_qa_predictions(examples: Sequence[QAExample], features: QAFeatures, start_logits: np.ndarray,
                               end_logits: np.ndarray, n_best_size: int, max_answer_length: int):
    """Best answer and n-best list of each example from the start and end logits of all its windows.

    Candidates: the top n_best_size starts and ends of each window, inside the context, end >= start, at most
    max_answer_length tokens; score = start logit + end logit; text sliced from the context by character
    offsets; probabilities a softmax over the example's n-best scores. No candidate gives an empty answer.
    """
    candidates = [[] for _ in examples]
    for feature_number, example_number in enumerate(features.example_index):
        offsets = features.offsets[feature_number]
        starts, ends = np.asarray(start_logits[feature_number]), np.asarray(end_logits[feature_number])
        valid = [i for i in range(len(offsets)) if offsets[i] is not None]
        if not valid:
            continue
        best_starts = sorted(valid, key=lambda i: -starts[i])[:n_best_size]
        best_ends = sorted(valid, key=lambda i: -ends[i])[:n_best_size]
        context = examples[example_number].context
        for s in best_starts:
            for e in best_ends:
                if s <= e < s + max_answer_length:
                    candidates[example_number].append({
                        "text": context[offsets[s][0]: offsets[e][1]], "start_logit": float(starts[s]),
                        "end_logit": float(ends[e]), "score": float(starts[s] + ends[e]),
                    })
    predictions, nbest = {}, {}
    for example, found in zip(examples, candidates):
        top = sorted(found, key=lambda c: -c["score"])[:n_best_size]
        if top:
            scores = np.array([c["score"] for c in top])
            probabilities = np.exp(scores - scores.max())
            for candidate, probability in zip(top, probabilities / probabilities.sum()):
                candidate["probability"] = float(probability)
        predictions[example.id] = top[0]["text"] if top else ""
        nbest[example.id] = top
    return predictions, nbest


# The official CMRC2018 evaluation (cmrc2018_evaluate.py, v5) in our own code: punctuation it ignores (its
# list also holds '……', which as one list entry never equals a single character, so it is left out here).
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
ENGLISH_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+|\d+|[^\w\s]|_")


def is_cjk(character: str) -> bool:
    return "\u4e00" <= character <= "\u9fa5"


def mixed_segmentation(text: str, remove_punctuation: bool) -> List[str]:
    """Each Chinese character (and listed punctuation mark) is a segment; runs of other characters are
    split into words. With remove_punctuation the listed marks are dropped without ending the run they are in.

    The official script splits those runs with NLTK's word_tokenize (which needs a model download); here
    they are split on whitespace and punctuation, keeping numbers like 3.14 and 1,000 whole: the same on
    letters, digits and decimals.
    """
    segments, run = [], ""
    for character in text.lower().strip():
        if remove_punctuation and character in CMRC_PUNCTUATION:
            continue
        if is_cjk(character) or character in CMRC_PUNCTUATION:
            segments.extend(ENGLISH_TOKEN.findall(run))
            run = ""
            segments.append(character)
        else:
            run += character
    segments.extend(ENGLISH_TOKEN.findall(run))
    return segments


def longest_common_run(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest contiguous run of segments that both sequences share."""
    best, previous = 0, [0] * (len(second) + 1)
    for a in first:
        current = [0] * (len(second) + 1)
        for j, b in enumerate(second, 1):
            if a == b:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_f1(gold: str, prediction: str) -> float:
    gold_segments = mixed_segmentation(gold, remove_punctuation=True)
    predicted_segments = mixed_segmentation(prediction, remove_punctuation=True)
    common = longest_common_run(gold_segments, predicted_segments)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_segments), common / len(gold_segments)
    return 2 * precision * recall / (precision + recall)


def cmrc_exact(gold: str, prediction: str) -> float:
    def strip_punctuation(text):
        return "".join(c for c in text.lower().strip() if c not in CMRC_PUNCTUATION)

    return float(strip_punctuation(gold) == strip_punctuation(prediction))


def qa_metrics(examples: Sequence[QAExample], predictions: Dict[str, str]) -> Dict[str, float]:
    """exact_match and f1 as the official CMRC2018 script defines them (best over the gold answers, in
    percent), plus upstream PaddleNLP's simpler character-overlap scores as upstream_exact_match/upstream_f1."""
    from paddlenlp.metrics.squad import get_raw_scores

    exact = [max(cmrc_exact(gold, predictions.get(e.id, "")) for gold in e.answers) for e in examples]
    f1 = [max(cmrc_f1(gold, predictions.get(e.id, "")) for gold in e.answers) for e in examples]
    squad_examples = [{"id": e.id, "answers": {"text": e.answers}} for e in examples]
    upstream_exact, upstream_f1 = get_raw_scores(squad_examples, predictions, is_whitespace_splited=False)
    return {
        "exact_match": 100.0 * float(np.mean(exact)),
        "f1": 100.0 * float(np.mean(f1)),
        "upstream_exact_match": 100.0 * float(np.mean(list(upstream_exact.values()))),
        "upstream_f1": 100.0 * float(np.mean(list(upstream_f1.values()))),
    }


def qa_compute_metrics(examples: Sequence[QAExample], features: QAFeatures, window_args):
    """Trainer's compute_metrics for QA: from the start and end logits together, not from the label arrays
    (paddlenlp 3.0.0b4 passes compute_metrics only the first label array, the start positions)."""
    def compute(eval_prediction) -> Dict[str, float]:
        start_logits, end_logits = eval_prediction.predictions[:2]
        predictions, _ = postprocess_qa_predictions(examples, features, start_logits, end_logits,
                                                    window_args.n_best_size, window_args.max_answer_length)
        return qa_metrics(examples, predictions)

    return compute


# --------------------------------------------------------------------------------------------------
# Loading any task's split: one reader table, one function
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleReader:
    read_file: Callable  # (path, option) -> rows
    read_hub: Callable  # (task, split) -> rows
    to_examples: Callable  # (task, rows, split) -> examples


EXAMPLE_READERS = {
    "seq_cls": ExampleReader(read_json_lines, load_hub_rows, rows_to_examples),
    "token_cls": ExampleReader(read_ner_file, ner_hub_rows, rows_to_token_examples),
    "qa": ExampleReader(read_squad_file, load_hub_rows, rows_to_qa_examples),
}


def load_examples(task: TaskSpec, split: str, path: Optional[str], max_samples: Optional[int] = None) -> list:
    """Examples of one split from a local file in the task's original format (used as it is) or, without
    one, the hub copy; the first max_samples of them when given."""
    reader = EXAMPLE_READERS[task.family]
    rows = reader.read_file(path, SPLIT_OPTIONS[split]) if path else reader.read_hub(task, split)
    examples = reader.to_examples(task, rows, split)
    if max_samples is not None and max_samples > 0:
        examples = examples[:max_samples]
    logger.info("%s %s: %d examples from %s", task.name, split, len(examples), path or "/".join(task.hub or ()))
    return examples


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose argmax matches the gold label id (0..1)."""
    return float((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).mean())


def compute_accuracy_metrics(eval_prediction) -> Dict[str, float]:
    return {"accuracy": accuracy(eval_prediction.predictions, eval_prediction.label_ids)}


# --------------------------------------------------------------------------------------------------
# Argument dataclasses shared by the run_*.py scripts
# --------------------------------------------------------------------------------------------------
@dataclass
class DataArguments:
    task_name: str = field(
        metadata={"help": "afqmc, tnews, iflytek, cmnli, ocnli, cluewsc2020, csl or custom (run_seq_cls.py); "
                          "msra_ner (run_token_cls.py); cmrc2018 (run_qa.py)"}
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "Local training file in the task's original format; without it the hub copy is downloaded."})
    dev_file: Optional[str] = field(default=None, metadata={"help": "Local dev file (evaluation and best-model selection)."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Local test file for --do_predict."})
    label_list: Optional[List[str]] = field(default=None, metadata={"help": "Labels of --task_name custom, in id order."})
    max_seq_length: Optional[int] = field(default=None, metadata={"help": "Tokens per example, special tokens included; default: the task's (table below)."})
    truncate_long_texts: bool = field(
        default=True,
        metadata={"help": "Truncate longer examples to --max_seq_length (the count is logged and written to the results); "
                          "with false, such an example is an error naming its file and line."},
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Train on batches of similar lengths (shuffled within groups of 50 batches), so short texts "
                          "are not padded to long ones: faster on data like TNEWS. Single-process runs."},
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
        metadata={"help": "Tokens between the starts of consecutive context windows (BERT's doc_stride: a step, "
                          "not the overlap that Hugging Face's fast tokenizers call stride); at most the window length. "
                          "Default: 128, or the window length when that is shorter."},
    )
    max_query_length: int = field(default=64, metadata={"help": "Question tokens kept; longer questions are cut (counted)."})
    n_best_size: int = field(default=20, metadata={"help": "Start and end candidates per window, and answers kept per question."})
    max_answer_length: int = field(default=50, metadata={"help": "Longest answer in tokens."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "A PaddleNLP model name (downloaded) or a local directory (pretrained or fine-tuned)."},
    )
    dropout: Optional[float] = field(default=None, metadata={"help": "Hidden and classifier dropout; default: the model's own."})
    early_stopping_patience: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement of the dev metric."}
    )
    config: str = field(default=DEFAULT_CONFIG_FILE, metadata={"help": "YAML file of per-task defaults."})


# --------------------------------------------------------------------------------------------------
# Arguments: dataclasses + per-task defaults from configs/ that the command line overrides
# --------------------------------------------------------------------------------------------------
ARGS_FILE_SUFFIXES = (".json", ".yml", ".yaml")


def args_file_to_argv(path: str) -> List[str]:
    """A .json or .yml arguments file as the equivalent command-line tokens."""
    if not os.path.isfile(path):
        raise UserError(f"arguments file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
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


def option_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The last value given for --name in argv (either '--name value' or '--name=value')."""
    value = None
    for index, token in enumerate(argv):
        if token == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value


def load_config_defaults(config_file: str) -> dict:
    if not os.path.isfile(config_file):
        raise UserError(f"--config: file not found: {config_file}")
    with open(config_file, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    return config


def task_defaults(config: dict, task_name: Optional[str]) -> dict:
    """The 'common' defaults overlaid with the task's own block."""
    defaults = dict(config.get("common") or {})
    defaults.update((config.get("tasks") or {}).get(task_name) or {})
    return defaults


def defaults_epilog(config: dict, family: str, config_file: str) -> str:
    lines = [f"Per-task defaults (from {os.path.relpath(config_file)}; anything given on the command line wins):"]
    for name, task in ALL_TASKS.items():
        if task.family != family:
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


def parse_into_dataclasses(parser, argv: Sequence[str]):
    try:
        return parser.parse_args_into_dataclasses(args=list(argv))
    except ValueError as error:  # dataclass __post_init__ checks (TrainingArguments' among them) raise this
        raise UserError(first_line(error)) from None


def parse_plain_arguments(dataclass_types, description: str, argv: Optional[Sequence[str]] = None):
    """Parse a script's own dataclasses (flags or one .json/.yml file), with no training defaults."""
    parser = PdArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter)
    return parse_into_dataclasses(parser, user_argv(argv))


def parse_arguments(dataclass_types, family: str, description: str, argv: Optional[Sequence[str]] = None):
    """Parse the command line (or one .json/.yml arguments file) into the dataclasses.

    Defaults come in three layers, the later winning: the dataclass defaults, configs/default.yml
    ('common', then the task's block, then the task's registry max_seq_length), then what the user gave.
    """
    argv = user_argv(argv)
    config_file = option_value(argv, "config") or DEFAULT_CONFIG_FILE
    config = load_config_defaults(config_file)
    task_name = option_value(argv, "task_name")
    parser = PdArgumentParser(
        dataclass_types, description=description, epilog=defaults_epilog(config, family, config_file),
        formatter_class=HelpFormatter,
    )
    defaults = {"device": default_device(), **task_defaults(config, task_name)}
    task = ALL_TASKS.get(task_name)
    if task is not None:
        defaults.setdefault("max_seq_length", task.max_seq_length)
        defaults.setdefault("metric_for_best_model", task.metric)
    elif task_name == CUSTOM_TASK:
        defaults = {**CUSTOM_TASK_DEFAULTS, **defaults}
    if task_name and option_value(argv, "output_dir") is None:
        argv += ["--output_dir", os.path.join("output", task_name)]
    parser.set_defaults(**defaults)
    parsed = parse_into_dataclasses(parser, argv)
    apply_requested_actions(argv, parsed)
    return parsed


ACTIONS = ("do_train", "do_eval", "do_predict", "do_export")


def flag_value(argv: Sequence[str], name: str) -> bool:
    """Whether a boolean option is on in argv: '--name', '--name true' or '--name=true' (the last one wins)."""
    value = False
    for index, token in enumerate(argv):
        if token == f"--{name}":
            following = argv[index + 1] if index + 1 < len(argv) else ""
            value = following.lower() not in ("false", "0", "no") if following and not following.startswith("--") else True
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1].lower() not in ("false", "0", "no")
    return value


def apply_requested_actions(argv: Sequence[str], parsed) -> None:
    """Do exactly the --do_* actions the user asked for.

    paddlenlp's TrainingArguments turns do_eval on whenever an evaluation strategy is set, so a plain
    --do_predict run would also evaluate (and download the dev split); the user's own flags win here.
    """
    requested = {action: flag_value(argv, action) for action in ACTIONS}
    if not any(requested.values()):
        raise UserError("nothing to do: pass one or more of --do_train --do_eval --do_predict --do_export")
    for arguments in parsed:
        if all(hasattr(arguments, action) for action in ACTIONS):
            for action, wanted in requested.items():
                setattr(arguments, action, wanted)


def default_device() -> str:
    return "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"


def check_device(device: str) -> None:
    """Refuse a GPU run on a CPU-only paddle instead of silently training on the CPU."""
    if device.startswith("gpu") and default_device() != "gpu":
        raise UserError(
            "--device gpu needs paddlepaddle-gpu and a visible GPU, but this paddle is CPU-only "
            "or sees no GPU; use --device cpu or install paddlepaddle-gpu (see README)"
        )


# --------------------------------------------------------------------------------------------------
# Model and tokenizer loading
# --------------------------------------------------------------------------------------------------
def could_not_load(what: str, name_or_path: str, error: BaseException) -> UserError:
    if os.path.isdir(name_or_path):
        return UserError(f"could not load the {what} from {name_or_path} ({first_line(error)})")
    logger.info("loading %r failed: %s", name_or_path, error)
    return UserError(
        f"could not download model {name_or_path!r} (no internet, or not a PaddleNLP model name): "
        "pass --model_name_or_path DIR with a local copy (config.json, weights, vocab.txt)"
    )


def load_tokenizer(name_or_path: str):
    """AutoTokenizer, falling back to the class named in tokenizer_config.json.

    paddlenlp 3.0.0b4's AutoTokenizer cannot reload a saved RobertaChineseTokenizer (the tokenizer of
    hfl/roberta-wwm-ext and hfl/rbt6): "Tokenizer class RobertaChineseTokenizer does not exist".
    """
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except ValueError as error:
        class_name = saved_tokenizer_class(name_or_path)
        import paddlenlp.transformers as transformers

        if class_name and hasattr(transformers, class_name):
            return getattr(transformers, class_name).from_pretrained(name_or_path)
        raise could_not_load("tokenizer", name_or_path, error) from None
    except Exception as error:  # download failures come as OSError, RuntimeError or requests errors
        raise could_not_load("tokenizer", name_or_path, error) from None


def saved_tokenizer_class(directory: str) -> Optional[str]:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("tokenizer_class")


def load_model_config(name_or_path: str):
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except Exception as error:
        raise could_not_load("model", name_or_path, error) from None


def model_head_family(config) -> Optional[str]:
    """'seq_cls', 'token_cls' or 'qa' for a fine-tuned model's config; None for a pretrained encoder."""
    for architecture in getattr(config, "architectures", None) or []:
        for suffix, family in HEAD_SUFFIXES.items():
            if architecture.endswith(suffix):
                return family
    return None


def model_labels(config) -> Optional[List[str]]:
    id2label = getattr(config, "id2label", None) or {}
    labels = [id2label[i] for i in sorted(id2label)]
    return None if all(label == f"LABEL_{i}" for i, label in enumerate(labels)) else labels


def check_model_fits_task(config, name_or_path: str, task: TaskSpec) -> None:
    """A fine-tuned model may only be used for a task of its own kind with its own label list."""
    head = model_head_family(config)
    if head is None:
        return
    if head != task.family:
        raise UserError(
            f"{name_or_path} is a fine-tuned {FAMILY_NAMES[head]} model, but task {task.name} needs a "
            f"{FAMILY_NAMES[task.family]} model; use {FAMILY_SCRIPTS[head]}, or start from a pretrained encoder"
        )
    if task.family == "qa":
        return
    labels = model_labels(config)
    if labels is None and config.num_labels != len(task.labels) or labels is not None and labels != list(task.labels):
        trained_for = getattr(config, "finetuning_task", None) or "another task"
        raise UserError(
            f"{name_or_path} was fine-tuned for {trained_for} with {config.num_labels} labels, which does not fit "
            f"task {task.name} ({len(task.labels)} labels); start from a pretrained encoder or pass the matching --task_name"
        )


def configure_for_task(config, task: TaskSpec, dropout: Optional[float] = None):
    """Record the task and its labels in the config, so a saved model says what it was trained for."""
    config.num_labels = len(task.labels)
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: index for index, label in enumerate(task.labels)}
    config.finetuning_task = task.name
    if dropout is not None:
        config.hidden_dropout_prob = dropout
        config.classifier_dropout = dropout
    return config


def load_task_model(model_class, name_or_path: str, task: TaskSpec, max_seq_length: int, dropout: Optional[float] = None):
    """Config, checks, then the model with a head sized for the task."""
    config = load_model_config(name_or_path)
    check_model_fits_task(config, name_or_path, task)
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_seq_length > positions:
        raise UserError(f"--max_seq_length {max_seq_length} exceeds the model's {positions} position embeddings")
    configure_for_task(config, task, dropout)
    try:
        # Fresh parameter names (embedding_0, ...) however many models this process built before: the
        # optimizer state in a checkpoint is keyed by them, so resuming needs the same names.
        with paddle.utils.unique_name.guard():
            return model_class.from_pretrained(name_or_path, config=config)
    except Exception as error:
        raise could_not_load("model", name_or_path, error) from None


# --------------------------------------------------------------------------------------------------
# Output directory, checkpoints and atomic writes
# --------------------------------------------------------------------------------------------------
EARLIER_RESULTS = (
    "config.json", "model_state.pdparams", "model.safetensors", "*_results.json", "*_predict.json",
    "export", "checkpoint-*",
)


def earlier_results(output_dir: str, patterns: Sequence[str] = EARLIER_RESULTS) -> List[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if any(fnmatch.fnmatch(name, p) for p in patterns))


def planned_outputs(training_args, submission_file: str) -> List[str]:
    """The files an evaluation, prediction or export run writes into output_dir."""
    outputs = {"do_eval": "eval_results.json", "do_predict": submission_file, "do_export": "export"}
    return [name for action, name in outputs.items() if getattr(training_args, action)]


def check_output_dir(training_args, resume_checkpoint: Optional[str], submission_file: str) -> None:
    """Never replace a user's earlier results by accident.

    Training refuses an output_dir that holds results of an earlier run (unless resuming from it);
    evaluation, prediction and export refuse to replace the files they would write. Either way
    --overwrite_output_dir allows it.
    """
    if training_args.overwrite_output_dir:
        return
    output_dir = training_args.output_dir
    if training_args.do_train and not resume_checkpoint:
        found = earlier_results(output_dir)
    else:
        found = earlier_results(output_dir, planned_outputs(training_args, submission_file))
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise UserError(
            f"--output_dir {output_dir} already holds results of an earlier run ({shown}); pass --overwrite_output_dir "
            "to replace them, --resume_from_checkpoint to continue training, or choose another --output_dir"
        )


def resolve_resume_checkpoint(training_args) -> Optional[str]:
    """--resume_from_checkpoint DIR, or 'true'/'last' for the newest checkpoint-* in --output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("true", "last"):
        checkpoint = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if checkpoint is None:
            raise UserError(f"--resume_from_checkpoint {value}: no checkpoint-* directory in {training_args.output_dir}")
        return checkpoint
    if not os.path.isdir(value):
        raise UserError(f"--resume_from_checkpoint: no such checkpoint directory: {value}")
    return value


def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def write_json_lines_atomic(path: str, rows: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_text_atomic(path: str, text: str) -> None:
    """Write to a temporary file beside path, then rename: readers never see a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary directory beside path; on success it replaces path, on failure it is removed."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    os.chmod(temporary, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories
    try:
        yield temporary
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# Library compatibility fixes (one place; each names the version and the failure it covers)
# --------------------------------------------------------------------------------------------------
def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> List[List[int]]:
    """A random order cut into groups of `group` batches; each group sorted by length and cut into batches;
    the batches shuffled, the longest first (a memory problem shows at once)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = sorted(order[start: start + batch_size * group], key=lambda i: -lengths[i])
        batches.extend([int(i) for i in chunk[j: j + batch_size]] for j in range(0, len(chunk), batch_size))
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


class LengthGroupedBatchSampler(paddle.io.Sampler):
    """Batches of similar lengths, reshuffled each epoch (set_epoch, which the Trainer calls)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class SuiteTrainer(Trainer):
    """paddlenlp's Trainer with the fixes this suite needs on paddlenlp 3.0.0b4, and length-grouped batches."""

    def __init__(self, *args, group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length

    def _get_train_sampler(self):
        if not self.group_by_length or self.train_dataset is None:
            return super()._get_train_sampler()
        if self.args.world_size > 1:
            logger.warning("--group_by_length applies to single-process training; %d processes use random batches",
                           self.args.world_size)
            return super()._get_train_sampler()
        lengths = [len(feature["input_ids"]) for feature in self.train_dataset]
        return LengthGroupedBatchSampler(lengths, self.args.per_device_train_batch_size, self.args.seed)

    def _save_checkpoint(self, model, metrics=None):
        super()._save_checkpoint(model, metrics=metrics)
        # paddlenlp 3.0.0b4 rotates checkpoints only when local_rank == 0, and local_rank is -1 in a
        # single-process run, so --save_total_limit was ignored and every checkpoint stayed on disk.
        if self.args.local_rank == -1 and self.args.should_save:
            self._rotate_checkpoints(use_mtime=True, output_dir=self.args.output_dir)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test"):
        # paddlenlp 3.0.0b4's predict() asks for the loss alone when compute_metrics is None, so a run without a
        # metric (QA prediction without a dev set) got predictions=None. A metric that is never called (the test
        # data has no labels) restores them.
        if self.compute_metrics is not None:
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        self.compute_metrics = lambda _: {}
        try:
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self.compute_metrics = None


def keep_float_for_quantization(model) -> None:
    """paddlenlp 3.0.0b4's ERNIE and BERT forward read pooler.dense.weight.dtype to build the attention mask;
    paddle 3.0.0's QAT wraps a quantized Linear in a layer without .weight ("'MAOutputScaleLayer' object has
    no attribute 'weight'"), so the pooler's one dense layer stays float (skip_quant is QAT's own switch)."""
    pooler = getattr(getattr(model, model.base_model_prefix, None), "pooler", None)
    if pooler is not None and hasattr(pooler, "dense"):
        pooler.dense.skip_quant = True


# --------------------------------------------------------------------------------------------------
# Trainer workflow shared by the run_*.py scripts
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    model_args: "ModelArguments"
    data_args: "DataArguments"
    training_args: TrainingArguments
    task: TaskSpec
    resume_checkpoint: Optional[str]
    extra: tuple = ()  # instances of the script's extra argument dataclasses


def start_run(family: str, description: str, argv=None, extra_classes: tuple = ()) -> Run:
    """The opening every run_*.py shares: arguments, logging, device, task, checkpoint, output-dir safety."""
    model_args, data_args, *extra, training_args = parse_arguments(
        (ModelArguments, DataArguments, *extra_classes, TrainingArguments), family, description, argv
    )
    setup_logging(training_args.should_log)
    check_device(training_args.device)
    task = get_task(data_args.task_name, family, data_args.label_list)
    resume_checkpoint = resolve_resume_checkpoint(training_args)
    check_output_dir(training_args, resume_checkpoint, task.submission_file)
    return Run(model_args, data_args, training_args, task, resume_checkpoint, tuple(extra))


def setup_logging(verbose: bool = True) -> None:
    """The suite's log lines (INFO, or WARNING only in processes that should not log, like extra ranks)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def needed_splits(training_args) -> List[str]:
    """The data splits this run reads: training evaluates on dev unless --evaluation_strategy no."""
    splits = []
    if training_args.do_train:
        splits.append("train")
    evaluates_while_training = training_args.do_train and str(training_args.evaluation_strategy) not in ("no", "IntervalStrategy.NO")
    if training_args.do_eval or evaluates_while_training:
        splits.append("dev")
    if training_args.do_predict:
        splits.append("test")
    return splits


def task_info(task: TaskSpec, data_args) -> dict:
    """What a deployed model needs to know about its task (export/task.json)."""
    return {
        "task_name": task.name,
        "family": task.family,
        "label_list": list(task.labels),
        "max_seq_length": data_args.max_seq_length,
        "metric": task.metric,
    }


def encode_examples(task: TaskSpec, split: str, examples, tokenizer, max_seq_length: int, truncate: bool,
                    window_args=None, with_labels: bool = True):
    """Model features of any task's examples: classification and NER features with truncation reported, or
    QA windows (labelled when with_labels)."""
    if task.family == "qa":
        encoded = prepare_qa_features(examples, tokenizer, max_seq_length, window_args.doc_stride,
                                      window_args.max_query_length, with_labels=with_labels)
        logger.info("%s %s: %d windows for %d questions (%d questions cut to --max_query_length)", task.name, split,
                    len(encoded.example_index), len(examples), encoded.truncated_questions)
        return encoded
    encode = {"seq_cls": encode_text_examples, "token_cls": encode_token_examples}[task.family]
    encoded = encode(examples, tokenizer, task, max_seq_length, truncate)
    report_truncation(task.name, split, encoded, max_seq_length)
    return encoded


def load_encoded_split(task: TaskSpec, split: str, data_args, tokenizer, window_args=None):
    """(examples, encoded) of one split; QA windows are labelled except in the test split."""
    examples = load_examples(task, split, data_args.split_file(split), data_args.split_max_samples(split))
    encoded = encode_examples(task, split, examples, tokenizer, data_args.max_seq_length, data_args.truncate_long_texts,
                              window_args, with_labels=split != "test")
    return examples, encoded


def load_model_and_tokenizer(run: Run, model_class):
    """Seed, then the tokenizer and the model with a head sized for the task."""
    set_seed(run.training_args.seed)
    name = run.model_args.model_name_or_path
    tokenizer = load_tokenizer(name)
    model = load_task_model(model_class, name, run.task, run.data_args.max_seq_length, run.model_args.dropout)
    return model, tokenizer


def build_trainer(run: Run, model, tokenizer, splits: dict, data_collator, compute_metrics) -> "SuiteTrainer":
    """The Trainer over the encoded train and dev splits (each split is (examples, encoded))."""
    patience = run.model_args.early_stopping_patience
    return SuiteTrainer(
        model=model,
        args=run.training_args,
        train_dataset=splits["train"][1].dataset if "train" in splits else None,
        eval_dataset=splits["dev"][1].dataset if "dev" in splits else None,
        tokenizer=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience)] if patience else [],
        group_by_length=run.data_args.group_by_length,
    )


def export_if_asked(run: Run, trainer, tokenizer) -> None:
    if run.training_args.do_export and run.training_args.should_save:
        export_dir = os.path.join(run.training_args.output_dir, "export")
        export_static_model(trainer.model, tokenizer, export_dir, task_info(run.task, run.data_args))


def train_and_save(trainer, resume_checkpoint: Optional[str], train_samples: int) -> dict:
    """Train (or resume), keep the best model at the top of output_dir and write train_results.json."""
    with paddle.utils.unique_name.guard():  # optimizer accumulator names as in a fresh process, see load_task_model
        result = trainer.train(resume_from_checkpoint=resume_checkpoint)
    trainer.save_model()  # the best model, because load_best_model_at_end is on by default
    metrics = {**result.metrics, "train_samples": train_samples, "global_step": trainer.state.global_step}
    if trainer.state.best_model_checkpoint:
        metrics["best_checkpoint"] = os.path.basename(trainer.state.best_model_checkpoint)
        metrics["best_metric"] = trainer.state.best_metric
    trainer.save_state()
    if trainer.args.should_save:
        write_json_atomic(os.path.join(trainer.args.output_dir, "train_results.json"), metrics)
    return metrics


def train_if_asked(run: Run, trainer, splits: dict) -> None:
    if run.training_args.do_train:
        train_and_save(trainer, run.resume_checkpoint, len(splits["train"][0]))


def evaluate_if_asked(run: Run, trainer, splits: dict) -> None:
    """eval_results.json: the task's metrics, eval_samples (examples), and how many were truncated (or, for QA,
    how many windows the questions made)."""
    if not run.training_args.do_eval:
        return
    examples, encoded = splits["dev"]
    extra = {"eval_samples": len(examples)}
    if run.task.family == "qa":
        extra["eval_windows"] = len(encoded.example_index)
    else:
        extra["eval_truncated"] = encoded.truncated
    evaluate_and_save(trainer, encoded.dataset, run.task.metric_names, extra)


def predict_if_asked(run: Run, trainer, splits: dict, write: Callable) -> None:
    """Predict the test split; write(output_dir, examples, encoded, outputs) writes the task's prediction files
    (once, from the main process)."""
    if not run.training_args.do_predict:
        return
    examples, encoded = splits["test"]
    outputs = predict_outputs(trainer, encoded.dataset)
    if run.training_args.should_save:
        write(run.training_args.output_dir, examples, encoded, outputs)


def evaluate_and_save(trainer, dataset, metric_names: Sequence[str], extra: dict) -> dict:
    """Evaluate on dataset and write eval_results.json with the task's metric names unprefixed."""
    metrics = trainer.evaluate(eval_dataset=dataset)
    renamed = {name[len("eval_"):] if name[len("eval_"):] in metric_names else name: value for name, value in metrics.items()}
    results = {**renamed, **extra}
    logger.info("eval results: %s", json.dumps(results, ensure_ascii=False))
    if trainer.args.should_save:
        write_json_atomic(os.path.join(trainer.args.output_dir, "eval_results.json"), results)
    return results


def predict_outputs(trainer, dataset) -> List[np.ndarray]:
    """Every model output (logits; QA: start and end logits) for each example of dataset, in order."""
    predictions = trainer.predict(dataset).predictions
    arrays = predictions if isinstance(predictions, (tuple, list)) else [predictions]
    return [np.asarray(array)[: len(dataset)] for array in arrays]


# --------------------------------------------------------------------------------------------------
# Static export
# --------------------------------------------------------------------------------------------------
EXPORT_INPUT_NAMES = ("input_ids", "token_type_ids")


def export_input_spec() -> list:
    """The exported models' inputs: int64 ids of any batch size and length, fed by name."""
    from paddle.static import InputSpec

    return [InputSpec(shape=[None, None], dtype="int64", name=name) for name in EXPORT_INPUT_NAMES]


def save_deployable(model_dir: str, tokenizer, info: dict) -> None:
    """The tokenizer files and task.json beside a static model, so infer.py can serve that directory."""
    tokenizer.save_pretrained(model_dir)
    write_json_atomic(os.path.join(model_dir, "task.json"), {**info, "input_names": list(EXPORT_INPUT_NAMES)})


def static_copy(model):
    """An eval-mode copy to convert: paddle.jit.to_static converts a layer in place, and a model that went on
    to be trained or hooked after conversion runs as a static program (a masked DynaBERT student crashed)."""
    import copy

    duplicate = copy.deepcopy(model)
    duplicate.eval()
    return without_dropout(duplicate)


def without_dropout(model):
    """Dropout is the identity at inference, but an exported dropout op still runs (and copies) in Paddle
    Inference: without them batch-1 latency at 26 tokens drops 16% for nano and 6% for medium. With p = 0,
    paddle's dropout returns its input, so no op is exported. Only for copies that are converted."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
        elif isinstance(layer, paddle.nn.MultiHeadAttention):
            layer.dropout = 0.0
    return model


def export_static_model(model, tokenizer, export_dir: str, task_info: dict) -> str:
    """Save model as a static inference model (model.json or model.pdmodel + model.pdiparams), with the
    tokenizer files and task.json, into export_dir, atomically."""
    static_model = paddle.jit.to_static(static_copy(model), input_spec=export_input_spec(), full_graph=True)
    with atomic_directory(export_dir) as staging:
        paddle.jit.save(static_model, os.path.join(staging, "model"))
        save_deployable(staging, tokenizer, task_info)
    logger.info("exported the static inference model to %s", export_dir)
    return export_dir


# --------------------------------------------------------------------------------------------------
# Deployment: predictors over an exported model, length-aware batching (infer.py, compression, benchmarks)
# --------------------------------------------------------------------------------------------------
PROGRAM_FILES = ("model.json", "model.pdmodel", "int8.pdmodel", "int8.json")
QUANTIZED_OP_MARKERS = (b"quantize_linear", b"fake_quantize", b"fake_channel_wise")


def static_model_files(model_dir: str) -> Tuple[str, str]:
    """(program file, params file) of an exported or compressed model directory."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_path: no such directory: {model_dir}")
    for program in PROGRAM_FILES:
        params = os.path.join(model_dir, program.rsplit(".", 1)[0] + ".pdiparams")
        if os.path.isfile(os.path.join(model_dir, program)) and os.path.isfile(params):
            return os.path.join(model_dir, program), params
    raise UserError(f"{model_dir} holds no exported model ({' or '.join(PROGRAM_FILES)} with its .pdiparams); "
                    "export one with run_*.py --do_export")


def read_task_info(model_dir: str) -> dict:
    path = os.path.join(model_dir, "task.json")
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no task.json: pass an export/ directory written by run_*.py --do_export")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_model_task(info: dict, model_dir: str, task: TaskSpec) -> None:
    if info.get("task_name") != task.name or (task.labels and tuple(info.get("label_list") or ()) != task.labels):
        raise UserError(f"{model_dir} was exported for task {info.get('task_name')!r}, not {task.name!r}")


def is_quantized(program_file: str) -> bool:
    with open(program_file, "rb") as handle:
        content = handle.read()
    return any(marker in content for marker in QUANTIZED_OP_MARKERS)


@dataclass
class PredictorOptions:
    backend: str = "paddle"  # "paddle" or "onnxruntime"
    device: str = "cpu"
    use_trt: bool = False
    precision: str = "fp32"  # "fp32", "fp16", "bf16" or "int8"
    num_threads: int = 2
    enable_onednn: bool = True
    batch_size: int = 32
    max_seq_length: int = 128


def public_options(options: PredictorOptions) -> dict:
    return dict(options.__dict__)


def check_predictor_options(options: PredictorOptions, quantized: bool, model_dir: str) -> None:
    """Refuse combinations this machine or this model cannot run, instead of silently running something else."""
    if options.backend not in ("paddle", "onnxruntime"):
        raise UserError(f"--backend must be paddle or onnxruntime, not {options.backend!r}")
    if options.precision not in ("fp32", "fp16", "bf16", "int8"):
        raise UserError(f"--precision must be fp32, fp16, bf16 or int8, not {options.precision!r}")
    if options.device not in ("cpu", "gpu"):
        raise UserError(f"--device must be cpu or gpu, not {options.device!r}")
    if options.device == "gpu" and options.backend == "paddle" and default_device() != "gpu":
        raise UserError("--device gpu needs paddlepaddle-gpu and a visible GPU, but this paddle is CPU-only or sees no GPU "
                        "(see the README's GPU section)")
    if options.use_trt and (options.backend != "paddle" or options.device != "gpu"):
        raise UserError("--use_trt runs TensorRT through Paddle Inference: it needs --backend paddle --device gpu")
    if options.use_trt and tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
        raise UserError("--use_trt needs a paddlepaddle-gpu build with TensorRT; this paddle was compiled without it")
    if options.precision == "fp16" and not options.use_trt:
        raise UserError("--precision fp16 runs through TensorRT: use --device gpu --use_trt")
    if options.precision == "bf16":
        check_bfloat16(options, quantized)
    if options.precision == "int8" and options.backend == "paddle" and not quantized and not options.use_trt:
        raise UserError(f"{model_dir} is a float model: int8 on the Paddle backend needs an int8 model from compress_*.py "
                        "(or use --backend onnxruntime, which quantizes the float model dynamically)")
    if quantized and options.backend == "onnxruntime":
        raise UserError(f"{model_dir} is a Paddle int8 model, which paddle2onnx cannot convert faithfully; give the float "
                        "export to --backend onnxruntime --precision int8 instead")


def native_bfloat16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN would emulate it, slower than fp32."""
    return bool(paddle.base.core.supports_bfloat16_fast_performance())


def check_bfloat16(options: PredictorOptions, quantized: bool) -> None:
    if options.backend != "paddle" or options.device != "cpu" or not options.enable_onednn:
        raise UserError("--precision bf16 runs oneDNN's bfloat16 kernels: it needs --backend paddle --device cpu with oneDNN on")
    if quantized:
        raise UserError("--precision bf16 needs a float model, not an int8 one")
    if not native_bfloat16():
        raise UserError("--precision bf16 needs a CPU with native bfloat16 (avx512_bf16 or AMX); on this one it would be "
                        "emulated and slower than fp32")


class PaddlePredictor:
    """Paddle Inference: CPU (oneDNN on or off, threads), GPU, or TensorRT with shape ranges cached beside the model."""

    def __init__(self, model_dir: str, options: PredictorOptions):
        self.program, self.params = static_model_files(model_dir)
        self.model_dir, self.options = model_dir, options
        if options.use_trt:
            self.shape_file = self.collect_shape_ranges()
        self.predictor = paddle.inference.create_predictor(self.config())
        self.input_names = self.predictor.get_input_names()

    def config(self, collect_shapes_to: Optional[str] = None):
        options = self.options
        config = paddle.inference.Config(self.program, self.params)
        config.disable_glog_info()
        if options.device == "gpu":
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(options.num_threads)
            config.enable_mkldnn() if options.enable_onednn else config.disable_mkldnn()
            if options.precision == "bf16":
                config.enable_mkldnn_bfloat16()
        if collect_shapes_to:
            config.collect_shape_range_info(collect_shapes_to)
        elif options.use_trt:
            precision = {"fp32": paddle.inference.PrecisionType.Float32, "fp16": paddle.inference.PrecisionType.Half,
                         "int8": paddle.inference.PrecisionType.Int8}[options.precision]
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=options.batch_size, min_subgraph_size=5,
                                          precision_mode=precision, use_static=False, use_calib_mode=False)
            config.enable_tuned_tensorrt_dynamic_shape(self.shape_file, True)
        return config

    def collect_shape_ranges(self) -> str:
        """TensorRT needs each tensor's min/max/opt shape. The first run records them with batches of the
        smallest, largest and a typical shape, and caches the file beside the model for later runs."""
        options = self.options
        path = os.path.join(self.model_dir, f"trt_shape_range_b{options.batch_size}_s{options.max_seq_length}.pbtxt")
        if os.path.isfile(path):
            return path
        temporary = f"{path}.tmp-{os.getpid()}"
        collector = paddle.inference.create_predictor(self.config(collect_shapes_to=temporary))
        for batch, length in ((1, 1), (options.batch_size, options.max_seq_length), (options.batch_size, max(1, options.max_seq_length // 4))):
            for name in collector.get_input_names():
                collector.get_input_handle(name).copy_from_cpu(np.ones((batch, length), dtype="int64"))
            collector.run()
        del collector  # the shape file is written when the predictor goes away
        os.replace(temporary, path)
        logger.info("collected TensorRT shape ranges into %s", path)
        return path

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        for name in self.input_names:
            self.predictor.get_input_handle(name).copy_from_cpu(batch[name])
        self.predictor.run()
        return [self.predictor.get_output_handle(name).copy_to_cpu() for name in self.predictor.get_output_names()]


ORT_ERRORS_ONLY = 3  # ONNX Runtime log severity: errors and fatal only


class OnnxRuntimePredictor:
    """ONNX Runtime on the model converted once by paddle2onnx (cached as model.onnx beside it); int8 is ONNX
    Runtime's dynamic quantization of that float model (cached as model.int8.onnx). Inputs are fed by name."""

    def __init__(self, model_dir: str, options: PredictorOptions):
        import onnxruntime

        onnx_file = self.converted(model_dir)
        if options.precision == "int8":
            onnx_file = self.quantized(onnx_file)
        providers = ["CPUExecutionProvider"]
        if options.device == "gpu":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise UserError("--backend onnxruntime --device gpu needs the onnxruntime-gpu package and a GPU")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(onnx_file, self.session_options(options), providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]

    @staticmethod
    def session_options(options: PredictorOptions):
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = ORT_ERRORS_ONLY
        return session_options

    @staticmethod
    def converted(model_dir: str) -> str:
        program, params = static_model_files(model_dir)
        target = os.path.join(model_dir, "model.onnx")
        if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(params):
            return target
        import paddle2onnx

        temporary = f"{target}.tmp-{os.getpid()}"
        try:
            # No optimize_tool: the default (polygraphy) pip-installs packages at run time, and 2.1.0's onnxoptimizer
            # step always fails on a misspelt pass name ("eliminate_nop_cast ") and writes the unoptimized model with
            # a warning. ONNX Runtime optimizes the graph itself when it loads it (running the intended passes
            # here measured no faster).
            paddle2onnx.export(program, params, save_file=temporary, opset_version=14, enable_onnx_checker=True,
                               optimize_tool="None", verbose=False)
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        logger.info("converted %s to %s", program, target)
        return target

    @staticmethod
    def quantized(onnx_file: str) -> str:
        target = onnx_file.replace(".onnx", ".int8.onnx")
        if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(onnx_file):
            return target
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # its optimizing session would warn about a leftover paddle2onnx constant it drops
        onnxruntime.set_default_logger_severity(ORT_ERRORS_ONLY)

        prepared, temporary = f"{target}.pre-{os.getpid()}.onnx", f"{target}.tmp-{os.getpid()}.onnx"
        try:
            # paddle2onnx stores every weight as a Constant node; quantize_dynamic only quantizes initializers, so
            # without this preparation (which folds them into initializers) "int8" would be the float model.
            quant_pre_process(onnx_file, prepared, skip_symbolic_shape=True)
            quantize_dynamic(prepared, temporary, weight_type=QuantType.QInt8)
            os.replace(temporary, target)
        finally:
            for leftover in (prepared, temporary):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)
        logger.info("quantized %s to int8 weights in %s", onnx_file, target)
        return target

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self.session.run(None, {name: batch[name] for name in self.input_names})


def create_predictor(model_dir: str, options: PredictorOptions):
    program, _ = static_model_files(model_dir)
    check_predictor_options(options, is_quantized(program), model_dir)
    return (PaddlePredictor if options.backend == "paddle" else OnnxRuntimePredictor)(model_dir, options)


def pad_features(features: Sequence[dict], length: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Model inputs of features padded with 0 (the pad id of these vocabularies) to one length."""
    length = length or max(len(f["input_ids"]) for f in features)
    return {name: np.array([f[name] + [0] * (length - len(f[name])) for f in features], dtype="int64")
            for name in EXPORT_INPUT_NAMES}


def batch_order(features: Sequence[dict], batch_size: int, sort_by_length: bool) -> List[List[int]]:
    """Indices of each batch: by length (similar lengths share a batch, so little padding) or in input order."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"])) if sort_by_length else list(range(len(features)))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class PredictionRun:
    outputs: List[List[np.ndarray]]  # per model output, one unpadded array per feature, in input order
    batch_seconds: List[float]
    batch_sizes: List[int]


def run_predictor(predictor, features: Sequence[dict], batch_size: int, per_token: bool, sort_by_length: bool = True,
                  pad_to: Optional[int] = None, warmup_batches: int = 0) -> PredictionRun:
    """Run every feature through the predictor in batches; results come back in input order.

    per_token: the outputs have a value per input token (NER logits, QA start/end logits), which are cut back
    to each feature's own length; otherwise one value per sequence (classification logits).
    warmup_batches: run (and leave untimed) this many batches first.
    """
    import time

    batches = batch_order(features, batch_size, sort_by_length)
    for indices in batches[:warmup_batches]:
        predictor.run(pad_features([features[i] for i in indices], pad_to))
    outputs, seconds = None, []
    for indices in batches:
        batch = pad_features([features[i] for i in indices], pad_to)
        started = time.perf_counter()
        results = predictor.run(batch)
        seconds.append(time.perf_counter() - started)
        if outputs is None:
            outputs = [[None] * len(features) for _ in results]
        for output, result in zip(outputs, results):
            for row, index in enumerate(indices):
                output[index] = result[row][: len(features[index]["input_ids"])] if per_token else result[row]
    return PredictionRun(outputs or [], seconds, [len(b) for b in batches])


def pad_rows(rows: Sequence[np.ndarray], fill) -> np.ndarray:
    """Stack arrays of different first lengths into one, padded with fill."""
    length = max(len(row) for row in rows)
    first = np.asarray(rows[0])
    padded = np.full((len(rows), length) + first.shape[1:], fill, dtype=first.dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def deployed_metrics(task: TaskSpec, examples, encoded, outputs: List[List[np.ndarray]], window_args) -> Dict[str, float]:
    """The fine-tuning scripts' metrics, computed with the same functions from a predictor's outputs."""
    if task.family == "seq_cls":
        labels = np.array([feature["labels"] for feature in encoded.dataset])
        return {"accuracy": accuracy(np.stack(outputs[0]), labels)}
    if task.family == "token_cls":
        labels = pad_rows([np.array(feature["labels"]) for feature in encoded.dataset], IGNORE_INDEX)
        return entity_metrics(*scored_tags(pad_rows(outputs[0], 0.0), labels, task.labels))
    predictions, _ = postprocess_qa_predictions(examples, encoded, outputs[0], outputs[1], window_args.n_best_size,
                                                window_args.max_answer_length)
    return qa_metrics(examples, predictions)


# --------------------------------------------------------------------------------------------------
# Compression: DynaBERT width pruning with distillation, post-training int8 quantization
# --------------------------------------------------------------------------------------------------
PTQ_ALGORITHMS = ("hist", "mse", "avg", "abs_max", "KL", "emd")


class DygraphPredictor:
    """A dynamic-graph model behind the predictor interface, so run_predictor and the metrics serve it too."""

    def __init__(self, model):
        self.model = model

    def run(self, batch: Dict[str, np.ndarray]) -> List[np.ndarray]:
        self.model.eval()
        with paddle.no_grad():
            outputs = self.model(**{name: paddle.to_tensor(value) for name, value in batch.items()})
        return [o.numpy() for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


def encoder_layers(model) -> list:
    """The encoder layers width pruning works on: paddle.nn.TransformerEncoderLayer (ERNIE, BERT, RoBERTa)."""
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layers", None)
    if not layers or not all(isinstance(layer, paddle.nn.TransformerEncoderLayer) for layer in layers):
        raise UserError(f"width pruning needs an encoder of paddle.nn.TransformerEncoderLayer; {type(model).__name__} has none")
    return list(layers)


def kept_units(width: float, total: int) -> int:
    return max(1, int(width * total))


class WidthMasks:
    """Masks over each layer's attention heads and feed-forward neurons, applied by forward pre-hooks on the
    layers that consume them (out_proj and linear2): a masked head or neuron contributes nothing, exactly as
    if it were cut out. With gradients on, the masks' gradients measure each unit's importance."""

    def __init__(self, model):
        self.layers = encoder_layers(model)
        attention = self.layers[0].self_attn
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.intermediate = self.layers[0].linear1.weight.shape[1]
        self.set_width(1.0)
        self.handles = []
        for index, layer in enumerate(self.layers):
            self.handles.append(layer.self_attn.out_proj.register_forward_pre_hook(self._masking_hook(index, heads=True)))
            self.handles.append(layer.linear2.register_forward_pre_hook(self._masking_hook(index, heads=False)))

    def _masking_hook(self, index: int, heads: bool):
        def hook(layer, inputs):
            mask = paddle.repeat_interleave(self.head_mask[index], self.head_dim) if heads else self.neuron_mask[index]
            return (inputs[0] * mask,) + tuple(inputs[1:])

        return hook

    def set_width(self, width: float) -> None:
        """Keep the first width share of heads and neurons in every layer (after reordering, the most important)."""
        heads, neurons = kept_units(width, self.num_heads), kept_units(width, self.intermediate)
        self.head_mask = paddle.to_tensor([[1.0] * heads + [0.0] * (self.num_heads - heads)] * len(self.layers))
        self.neuron_mask = paddle.to_tensor([[1.0] * neurons + [0.0] * (self.intermediate - neurons)] * len(self.layers))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def width_importance(model, masks: WidthMasks, batches) -> Tuple[np.ndarray, np.ndarray]:
    """Head and neuron importance: the summed |gradient of the task loss| with respect to each unit's mask
    (DynaBERT; Michel et al. 2019 for heads), over batches that carry labels."""
    masks.set_width(1.0)
    masks.head_mask.stop_gradient = False
    masks.neuron_mask.stop_gradient = False
    head_importance = np.zeros([len(masks.layers), masks.num_heads])
    neuron_importance = np.zeros([len(masks.layers), masks.intermediate])
    model.eval()  # no dropout, gradients still flow
    for batch in batches:
        loss = model(**batch)[0]
        loss.backward()
        head_importance += np.abs(masks.head_mask.grad.numpy())
        neuron_importance += np.abs(masks.neuron_mask.grad.numpy())
        masks.head_mask.clear_grad()
        masks.neuron_mask.clear_grad()
        model.clear_gradients()
    masks.set_width(1.0)
    return head_importance, neuron_importance


def reorder_by_importance(masks: WidthMasks, head_importance: np.ndarray, neuron_importance: np.ndarray) -> None:
    """Permute every layer's heads and neurons, most important first; the model computes the same function."""
    dim = masks.head_dim
    for layer, heads, neurons in zip(masks.layers, head_importance, neuron_importance):
        head_order = np.argsort(-heads, kind="stable")
        columns = (head_order[:, None] * dim + np.arange(dim)).reshape(-1)
        attention = layer.self_attn
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight.set_value(projection.weight.numpy()[:, columns])
            projection.bias.set_value(projection.bias.numpy()[columns])
        attention.out_proj.weight.set_value(attention.out_proj.weight.numpy()[columns, :])
        neuron_order = np.argsort(-neurons, kind="stable")
        layer.linear1.weight.set_value(layer.linear1.weight.numpy()[:, neuron_order])
        layer.linear1.bias.set_value(layer.linear1.bias.numpy()[neuron_order])
        layer.linear2.weight.set_value(layer.linear2.weight.numpy()[neuron_order, :])


def sliced_linear(linear, inputs: Optional[int] = None, outputs: Optional[int] = None):
    """A new Linear holding the first inputs rows and outputs columns of linear's weight."""
    weight = linear.weight.numpy()
    inputs, outputs = inputs or weight.shape[0], outputs or weight.shape[1]
    sliced = paddle.nn.Linear(inputs, outputs)
    sliced.weight.set_value(weight[:inputs, :outputs])
    sliced.bias.set_value(linear.bias.numpy()[:outputs])
    return sliced


def slice_to_width(model, width: float):
    """Cut every layer down to its first width share of heads and neurons: the pruned model really is smaller."""
    for layer in encoder_layers(model):
        attention = layer.self_attn
        heads = kept_units(width, attention.num_heads)
        kept = heads * attention.head_dim
        attention.q_proj = sliced_linear(attention.q_proj, outputs=kept)
        attention.k_proj = sliced_linear(attention.k_proj, outputs=kept)
        attention.v_proj = sliced_linear(attention.v_proj, outputs=kept)
        attention.out_proj = sliced_linear(attention.out_proj, inputs=kept)
        attention.num_heads = heads
        neurons = kept_units(width, layer.linear1.weight.shape[1])
        layer.linear1 = sliced_linear(layer.linear1, outputs=neurons)
        layer.linear2 = sliced_linear(layer.linear2, inputs=neurons)
    return model


def parameter_count(model) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))


def soft_cross_entropy(student, teacher, axis: int = -1):
    return -(paddle.nn.functional.softmax(teacher, axis=axis) * paddle.nn.functional.log_softmax(student, axis=axis)).sum(axis=axis)


def distillation_loss(family: str, student_outputs, teacher_outputs, input_ids, pad_token_id: int):
    """Soft cross-entropy from the teacher's distribution: over classes (per sequence, or per real token for
    NER), or over positions for QA's start and end (padding excluded)."""
    real = (input_ids != pad_token_id).astype("float32")
    if family == "seq_cls":
        return soft_cross_entropy(student_outputs[0], teacher_outputs[0]).mean()
    if family == "token_cls":
        return (soft_cross_entropy(student_outputs[0], teacher_outputs[0]) * real).sum() / real.sum()
    padding = (1.0 - real) * -1e4
    losses = [soft_cross_entropy(s + padding, t + padding).mean() for s, t in zip(student_outputs, teacher_outputs)]
    return sum(losses) / len(losses)


def model_outputs(model, batch: dict) -> list:
    outputs = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def export_legacy_static_model(model, directory: str) -> Tuple[str, str]:
    """model.pdmodel + model.pdiparams in the legacy program format, which Paddle's post-training
    quantization reads (paddle 3.0.0: inside OldIrGuard; later releases can no longer export ERNIE this way)."""
    duplicate = static_copy(model)  # parameters can only be built outside OldIrGuard
    with paddle.pir_utils.OldIrGuard():
        paddle.jit.save(paddle.jit.to_static(duplicate, input_spec=export_input_spec(), full_graph=True),
                        os.path.join(directory, "model"))
    return os.path.join(directory, "model.pdmodel"), os.path.join(directory, "model.pdiparams")


def quantize_post_training(legacy_dir: str, output_dir: str, calibration: Sequence[dict], algo: str, batch_size: int,
                           batch_nums: int) -> None:
    """int8.pdmodel + int8.pdiparams: the transformer matmuls quantized (weights per channel, activations per
    tensor) from calibration batches; embeddings, layer norms and softmax stay fp32."""
    from paddle.static.quantization import PostTrainingQuantization

    def calibration_batches():
        for start in range(0, min(len(calibration), batch_size * batch_nums), batch_size):
            yield pad_features(calibration[start: start + batch_size])

    with paddle.pir_utils.OldIrGuard():
        paddle.enable_static()
        try:
            quantizer = PostTrainingQuantization(
                executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=legacy_dir, model_filename="model.pdmodel",
                params_filename="model.pdiparams", data_loader=calibration_batches, batch_size=batch_size,
                batch_nums=batch_nums, algo=algo, hist_percent=0.9999, quantizable_op_type=["matmul", "matmul_v2"],
                is_full_quantize=False, weight_bits=8, activation_bits=8, weight_quantize_type="channel_wise_abs_max",
                onnx_format=True, optimize_model=False,
            )
            quantizer.quantize()
            quantizer.save_quantized_model(output_dir, model_filename="int8.pdmodel", params_filename="int8.pdiparams")
        finally:
            paddle.disable_static()


@dataclass
class CompressArguments:
    model_name_or_path: str = field(metadata={"help": "A fine-tuned output directory of run_*.py (the float parent)."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where candidates and compress_report.json go; default <model_name_or_path>/compress."})
    strategy: str = field(default="dynabert+ptq", metadata={"help": "dynabert+ptq, dynabert, ptq, qat or dynabert+qat."})
    width_mult_list: List[str] = field(default_factory=lambda: ["3/4"], metadata={"help": "Widths to prune to, as fractions (3/4) or decimals."})
    algo_list: List[str] = field(default_factory=lambda: ["hist", "mse"], metadata={"help": "PTQ activation calibration: hist, mse, avg, abs_max, emd, KL (KL is very slow)."})
    batch_size_list: List[int] = field(default_factory=lambda: [4, 8, 16], metadata={"help": "Calibration batch sizes."})
    batch_num_list: List[int] = field(default_factory=lambda: [1], metadata={"help": "Calibration batch counts."})
    max_metric_drop: float = field(default=1.0, metadata={"help": "Largest drop below the float parent, in points of the task's main metric, that a candidate may have to be chosen."})
    learning_rate: float = field(default=2e-5, metadata={"help": "DynaBERT distillation learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "DynaBERT distillation epochs over the training data."})
    max_steps: int = field(default=-1, metadata={"help": "If > 0: distillation steps, overriding --num_train_epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Distillation batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation and latency batch size."})
    importance_batches: int = field(default=32, metadata={"help": "Training batches used to rank heads and neurons."})
    logging_steps: int = field(default=50, metadata={"help": "Log the distillation loss every N steps."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    device: str = field(default="cpu", metadata={"help": "cpu or gpu, for distillation."})
    num_threads: int = field(default=os.cpu_count() or 1, metadata={"help": "CPU threads for evaluation and latency."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier compression output."})


STRATEGIES = ("dynabert+ptq", "dynabert", "ptq", "qat", "dynabert+qat")
COMPRESSION_HELP = """
DynaBERT width pruning with distillation, then int8 post-training quantization over a grid of calibration
settings; every candidate is measured on the dev set and the best one within --max_metric_drop points of the
float parent is chosen.

Strategies: dynabert+ptq (default), dynabert, ptq, qat (quantization-aware training by distillation from the
float parent; dynabert+qat on the pruned model). PTQ algorithms (--algo_list): hist (activation range
from a histogram's 99.99th percentile), mse (the range that minimises quantization mean squared error),
avg (mean of per-batch maxima), abs_max (the largest value seen), KL (the range minimising KL divergence;
very slow), emd. Calibration batches come from the training data, never from the dev set.

Writes into --output_dir (default <model_name_or_path>/compress): parent/ (the float parent, exported for
comparison), width_mult_0.75/ (the pruned float model), [width_mult_0.75/]<algo><batch size>_<batches>/ (each
PTQ candidate), [width_mult_0.75/]qat/ (the QAT model), and compress_report.json. Every candidate directory is servable by infer.py.
"""


def parse_width(text: str) -> float:
    try:
        numerator, _, denominator = str(text).partition("/")
        width = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--width_mult_list: {text!r} is not a width such as 3/4 or 0.75") from None
    if not 0 < width < 1:
        raise UserError(f"--width_mult_list: {text!r} must be between 0 and 1")
    return width


def check_compress_arguments(args: CompressArguments) -> List[float]:
    if args.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {args.strategy!r}")
    unknown = [algo for algo in args.algo_list if algo not in PTQ_ALGORITHMS]
    if unknown:
        raise UserError(f"--algo_list: unknown algorithm {unknown[0]!r}; choose from {', '.join(PTQ_ALGORITHMS)}")
    if any(size < 1 for size in args.batch_size_list + args.batch_num_list):
        raise UserError("--batch_size_list and --batch_num_list take positive numbers")
    return [parse_width(width) for width in args.width_mult_list]


def metric_points(task: TaskSpec, value: float) -> float:
    """The main metric in points: accuracy and NER F1 are fractions, CMRC2018 F1 is already in percent."""
    return value if task.family == "qa" else 100.0 * value


def choose_best(parent_points: float, candidates: List[dict], max_drop: float) -> Optional[dict]:
    """The candidate with the best metric among those at most max_drop points below the parent; among
    equals, the smaller file, then the faster one. None when no candidate qualifies."""
    qualifying = [c for c in candidates if parent_points - c["metric_points"] <= max_drop + 1e-9]
    if not qualifying:
        return None
    return max(qualifying, key=lambda c: (c["metric_points"], -c["size_bytes"], -c["latency_ms_p50"]))


def directory_model_bytes(model_dir: str) -> int:
    return sum(os.path.getsize(path) for path in static_model_files(model_dir))


def family_collator(family: str, tokenizer):
    """Pads a batch of features: labels of NER with the ignore index, everything else with the pad id."""
    if family == "token_cls":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
    return DataCollatorWithPadding(tokenizer)


def measure_candidate(model_dir: str, task: TaskSpec, dev_examples, dev_encoded, window_args, args: CompressArguments,
                      max_seq_length: int) -> dict:
    """A compressed (or parent) static model's dev metric through Paddle Inference, its size and latency."""
    options = PredictorOptions(num_threads=args.num_threads, batch_size=args.per_device_eval_batch_size, max_seq_length=max_seq_length)
    features = list(dev_encoded.dataset)
    result = run_predictor(PaddlePredictor(model_dir, options), features, options.batch_size,
                           per_token=task.per_token_outputs, warmup_batches=2)
    metrics = deployed_metrics(task, dev_examples, dev_encoded, result.outputs, window_args)
    return {
        "metrics": metrics,
        "metric_points": metric_points(task, metrics[task.metric]),
        "size_bytes": directory_model_bytes(model_dir),
        "latency_ms_p50": float(np.median(result.batch_seconds) * 1000.0),
        "sequences_per_second": len(features) / float(np.sum(result.batch_seconds)),
    }


def training_batches(features: Sequence[dict], collator, batch_size: int, shuffle: bool, seed: int = 0):
    """Collated batches of features (labels included), shuffled with a seed or in order."""
    order = list(range(len(features)))
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collator([features[i] for i in order[start: start + batch_size]])


def width_points(student, masks: WidthMasks, width: float, task: TaskSpec, dev_examples, dev_encoded, window_args,
                 batch_size: int) -> float:
    masks.set_width(width)
    result = run_predictor(DygraphPredictor(student), list(dev_encoded.dataset), batch_size, per_token=task.per_token_outputs)
    return metric_points(task, deployed_metrics(task, dev_examples, dev_encoded, result.outputs, window_args)[task.metric])


def distillation_training(student, teacher, task: TaskSpec, features: Sequence[dict], tokenizer, args: "CompressArguments",
                          variants: Sequence[Callable[[], None]], on_epoch_end: Callable[[], None], description: str) -> None:
    """Train student to match teacher's outputs (distillation_loss) on the training features. Each batch runs
    once per variant (DynaBERT: one per width, set by the variant), gradients summed, then one optimizer step."""
    import math

    from paddlenlp.transformers import LinearDecayWithWarmup
    from tqdm import tqdm

    collator = family_collator(task.family, tokenizer)
    batches_per_epoch = math.ceil(len(features) / args.per_device_train_batch_size)
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * batches_per_epoch))
    scheduler = LinearDecayWithWarmup(args.learning_rate, total_steps, 0.1)
    no_decay = {p.name for n, p in student.named_parameters() if "bias" in n or "norm" in n}
    optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=student.parameters(), weight_decay=0.01,
                                       apply_decay_param_fun=lambda name: name not in no_decay,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
    teacher.eval()
    step, epoch = 0, 0
    progress = tqdm(total=total_steps, desc=description)
    while step < total_steps:
        for batch in training_batches(features, collator, args.per_device_train_batch_size, shuffle=True, seed=args.seed + epoch):
            with paddle.no_grad():
                teacher_outputs = model_outputs(teacher, batch)
            student.train()
            loss_sum = 0.0
            for prepare in variants:
                prepare()
                loss = distillation_loss(task.family, model_outputs(student, batch), teacher_outputs, batch["input_ids"],
                                         tokenizer.pad_token_id)
                loss.backward()
                loss_sum += float(loss)
            optimizer.step()
            scheduler.step()
            optimizer.clear_grad()
            step += 1
            progress.update(1)
            if step % args.logging_steps == 0:
                logger.info("%s step %d/%d: distillation loss %.4f, lr %.2e", description, step, total_steps,
                            loss_sum / len(variants), scheduler.get_lr())
            if step >= total_steps:
                break
        epoch += 1
        on_epoch_end()
    progress.close()


def dynabert_width_pruning(parent, tokenizer, task: TaskSpec, widths: List[float], train_encoded, dev_examples,
                           dev_encoded, window_args, args: "CompressArguments") -> Dict[float, object]:
    """DynaBERT's width stage: rank heads and neurons by importance, reorder them, then train the narrower
    networks by distillation from the parent, every width on every batch; keep each width's best dev state
    and cut it to size."""
    import copy

    features = list(train_encoded.dataset)
    student = copy.deepcopy(parent)
    masks = WidthMasks(student)
    importance_batches = list(training_batches(features, family_collator(task.family, tokenizer),
                                               args.per_device_train_batch_size, shuffle=False))
    reorder_by_importance(masks, *width_importance(student, masks, importance_batches[: args.importance_batches]))
    best = {width: (-float("inf"), None) for width in widths}

    def keep_best():
        for width in widths:
            points = width_points(student, masks, width, task, dev_examples, dev_encoded, window_args, args.per_device_eval_batch_size)
            logger.info("DynaBERT width %g: dev %s %.4f points", width, task.metric, points)
            if points > best[width][0]:
                best[width] = (points, {k: v.numpy().copy() for k, v in student.state_dict().items()})

    variants = [lambda width=width: masks.set_width(width) for width in widths]
    distillation_training(student, parent, task, features, tokenizer, args, variants, keep_best, "DynaBERT distillation")
    masks.remove()
    pruned = {}
    for width in widths:
        model = copy.deepcopy(student)
        model.set_state_dict(best[width][1])
        pruned[width] = slice_to_width(model, width)
    return pruned


def quantization_aware_training(source_model, teacher, tokenizer, task: TaskSpec, train_encoded, target_dir: str,
                                args: "CompressArguments") -> None:
    """Fake-quantize every Linear (weights per channel, activations by moving average), train by distillation
    from the float parent, and save int8.pdmodel + int8.pdiparams in the legacy format."""
    import copy

    from paddle.quantization import ImperativeQuantAware

    student = copy.deepcopy(source_model)
    keep_float_for_quantization(student)
    quantizer = ImperativeQuantAware(weight_quantize_type="channel_wise_abs_max", activation_quantize_type="moving_average_abs_max",
                                     quantizable_layer_type=["Linear"], onnx_format=True)
    quantizer.quantize(student)
    distillation_training(student, teacher, task, list(train_encoded.dataset), tokenizer, args, [lambda: None], lambda: None,
                          "QAT distillation")
    student.eval()
    with paddle.pir_utils.OldIrGuard():
        quantizer.save_quantized_model(student, os.path.join(target_dir, "int8"), input_spec=export_input_spec())


def quantization_grid(source_model, source_dir: str, relative_prefix: str, staging: str, calibration, tokenizer,
                      info: dict, args: CompressArguments) -> List[Tuple[str, dict]]:
    """Every algorithm x batch size x batch count as an int8 candidate of one float model: (relative path, extras)."""
    candidates = []
    with tempfile.TemporaryDirectory() as legacy_dir:
        export_legacy_static_model(source_model, legacy_dir)
        for algo in args.algo_list:
            for batch_size in args.batch_size_list:
                for batch_nums in args.batch_num_list:
                    if batch_size * batch_nums > len(calibration):
                        logger.warning("skipping %s%d_%d: the calibration set has only %d examples", algo, batch_size, batch_nums, len(calibration))
                        continue
                    relative = os.path.join(relative_prefix, f"{algo}{batch_size}_{batch_nums}")
                    target = os.path.join(staging, relative)
                    logger.info("post-training quantization %s", relative)
                    quantize_post_training(legacy_dir, target, calibration, algo, batch_size, batch_nums)
                    save_deployable(target, tokenizer, info)
                    candidates.append((relative, {"kind": "int8", "source": source_dir, "algo": algo,
                                                  "calibration_batch_size": batch_size, "calibration_batches": batch_nums}))
    return candidates


def compression_table(report: dict) -> str:
    rows = [("candidate", report["task"]["metric"], "drop", "size MB", "p50 ms/batch", "params")]
    for entry in [report["parent"]] + report["candidates"]:
        rows.append((entry["relative_path"], f"{entry['metric_points']:.2f}", f"{entry.get('drop_points', 0.0):.2f}",
                     f"{entry['size_bytes'] / 2**20:.2f}", f"{entry['latency_ms_p50']:.1f}", str(entry.get("parameters", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def run_compression(family: str, model_class, description: str, argv=None) -> dict:
    """compress_*.py: DynaBERT width pruning and/or int8 PTQ of a fine-tuned model, every candidate measured on
    the dev set, the best one within --max_metric_drop of the parent chosen, all in compress_report.json."""
    extra_classes = (QAWindowArguments,) if family == "qa" else ()
    args, data_args, *extra = parse_plain_arguments((CompressArguments, DataArguments, *extra_classes),
                                                    description + COMPRESSION_HELP, argv)
    window_args = extra[0] if extra else None
    setup_logging()
    check_device(args.device)
    paddle.set_device(args.device)
    task = get_task(data_args.task_name, family, data_args.label_list)
    widths = check_compress_arguments(args)
    config = load_model_config(args.model_name_or_path)
    if model_head_family(config) is None:
        raise UserError(f"{args.model_name_or_path} is not a fine-tuned model (its config names no task head): "
                        f"compress an output directory of {FAMILY_SCRIPTS[family]}")
    check_model_fits_task(config, args.model_name_or_path, task)
    data_args.max_seq_length = data_args.max_seq_length or task.max_seq_length
    output_dir = os.path.abspath(args.output_dir or os.path.join(args.model_name_or_path, "compress"))
    if os.path.exists(output_dir) and not args.overwrite_output_dir:
        raise UserError(f"--output_dir {output_dir} already exists; pass --overwrite_output_dir to replace it or choose another")

    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path)
    parent = load_task_model(model_class, args.model_name_or_path, task, data_args.max_seq_length)
    _, train_encoded = load_encoded_split(task, "train", data_args, tokenizer, window_args)
    dev_examples, dev_encoded = load_encoded_split(task, "dev", data_args, tokenizer, window_args)
    calibration = [{name: f[name] for name in EXPORT_INPUT_NAMES} for f in train_encoded.dataset]
    np.random.default_rng(args.seed).shuffle(calibration)
    info = task_info(task, data_args)

    def measured(relative: str, extras: dict) -> dict:
        entry = measure_candidate(os.path.join(staging, relative), task, dev_examples, dev_encoded, window_args, args,
                                  data_args.max_seq_length)
        return {"path": os.path.join(output_dir, relative), "relative_path": relative, **extras, **entry}

    with atomic_directory(output_dir) as staging:
        export_static_model(parent, tokenizer, os.path.join(staging, "parent"), info)
        parent_entry = measured("parent", {"kind": "float parent", "source": args.model_name_or_path,
                                           "parameters": parameter_count(parent)})
        candidates, sources = [], [(parent, args.model_name_or_path, "")]
        if args.strategy.startswith("dynabert"):
            pruned = dynabert_width_pruning(parent, tokenizer, task, widths, train_encoded, dev_examples, dev_encoded, window_args, args)
            sources = []
            for width, model in pruned.items():
                relative = f"width_mult_{width:g}"
                export_static_model(model, tokenizer, os.path.join(staging, relative), info)
                candidates.append(measured(relative, {"kind": "pruned float", "width": width, "parameters": parameter_count(model)}))
                sources.append((model, os.path.join(output_dir, relative), relative))
        if args.strategy.endswith("ptq"):
            for model, source_dir, prefix in sources:
                for relative, extras in quantization_grid(model, source_dir, prefix, staging, calibration, tokenizer, info, args):
                    candidates.append(measured(relative, {**extras, "parameters": parameter_count(model)}))
        if args.strategy.endswith("qat"):
            for model, source_dir, prefix in sources:
                relative = os.path.join(prefix, "qat")
                quantization_aware_training(model, parent, tokenizer, task, train_encoded, os.path.join(staging, relative), args)
                save_deployable(os.path.join(staging, relative), tokenizer, info)
                candidates.append(measured(relative, {"kind": "int8", "source": source_dir, "algo": "qat",
                                                      "parameters": parameter_count(model)}))
        for candidate in candidates:
            candidate["drop_points"] = parent_entry["metric_points"] - candidate["metric_points"]
        best = choose_best(parent_entry["metric_points"], candidates, args.max_metric_drop)
        report = {
            "task": {"name": task.name, "metric": task.metric, "points": "percent" if family == "qa" else "fraction x 100"},
            "strategy": args.strategy, "max_metric_drop": args.max_metric_drop, "calibration_examples": len(calibration),
            "parent": parent_entry, "candidates": candidates, "best": best["path"] if best else None,
        }
        write_json_atomic(os.path.join(staging, "compress_report.json"), report)
    print(compression_table(report))
    if best is None:
        raise UserError(f"no candidate is within --max_metric_drop {args.max_metric_drop} points of the float parent "
                        f"({parent_entry['metric_points']:.2f}); nothing is chosen (see {output_dir}/compress_report.json)")
    print(f"best: {best['path']} ({task.metric} {best['metric_points']:.2f} points, drop {best['drop_points']:.2f})")
    return report
