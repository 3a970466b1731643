"""What the task card gives the suite: the task registry (one TaskSpec row per task), the family table (one Family
row per task family: classification, NER, extractive QA, holding everything that differs between them), readers of
the original file formats, preprocessing, the metrics as officially defined, and what a prediction looks like.

Imports runtime.py only; every concern module may import it.
"""

import collections
import functools
import json
import os
import re
import string
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime import UserError, file_lines, first_line, json_error_reason, logger, read_json_file

# --------------------------------------------------------------------------------------------------
# Errors a user can cause
# --------------------------------------------------------------------------------------------------


class FieldError(Exception):
    """A bad field in one data row; the reader adds the file and line."""


# --------------------------------------------------------------------------------------------------
# Reading the texts of classification rows
# --------------------------------------------------------------------------------------------------
def lone_surrogate(text: str) -> Optional[int]:
    """Where text holds a lone surrogate (JSON's "\\ud800", or undecodable command-line bytes): such a string is not
    Unicode text, and the tokenizers fail on it. None when it has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def check_unicode(text: str, what: str) -> str:
    position = lone_surrogate(text)
    if position is not None:
        raise UserError(f"{what} is not Unicode text: a lone surrogate ({text[position]!r}) at character {position}")
    return text


def _text_field(row: dict, name: str) -> str:
    if name not in row:
        raise FieldError(f"missing field '{name}'")
    value = row[name]
    if not isinstance(value, str):
        raise FieldError(f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(f"field '{name}' is empty")
    position = lone_surrogate(value)
    if position is not None:
        raise FieldError(f"field '{name}' is not Unicode text (a lone surrogate at character {position})")
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
    insertions = [
        (span1_index, "_"),
        (span1_index + len(span1_text), "_"),
        (span2_index, "["),
        (span2_index + len(span2_text), "]"),
    ]
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


# --------------------------------------------------------------------------------------------------
# Tasks (the registry itself follows the family table, at the end)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """One task: its family, labels, metric, how to read its rows and where its predictions go."""

    name: str
    family: "Family"
    labels: Tuple[str, ...]
    metric: str
    max_seq_length: int
    submission_file: str
    read_texts: Optional[Callable[[dict], Tuple[str, Optional[str]]]] = None  # classification: row -> (text_a, text_b)
    pairs: Optional[bool] = False  # a raw input is two texts (True), one (False) or either (None: a custom task)
    hub: Optional[Tuple[str, ...]] = None  # paddlenlp.datasets.load_dataset(*hub, splits=split)
    hub_splits: Dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"})
    skip_labels: Tuple[str, ...] = ()  # gold label meaning "no agreement": such rows are left out
    file_format: str = "CLUE json lines"
    read_file: Optional[Callable] = None  # (path, option) -> rows, where the task's files differ from its family's
    read_hub: Optional[Callable] = None  # (task, split) -> rows, likewise
    choice_inputs: Optional[Callable] = None  # multiple choice: (example, tokenizer, max_seq_length) -> text pairs
    max_choices: Optional[int] = None  # multiple choice: the most choices a question has (the head's num_choices)
    questions: bool = False  # multiple choice: each example asks a question (C3), or fills a blank (CHID)
    assign_groups: bool = False  # multiple choice: the blanks of a group share candidates, each used at most once

    @property
    def per_token_outputs(self) -> bool:
        """NER logits and QA start/end logits have a value per input token; classification and multiple choice one
        per sequence."""
        return self.family.outputs in ("token", "span")

    @property
    def metric_names(self) -> Tuple[str, ...]:
        return self.family.metric_names


# --------------------------------------------------------------------------------------------------
# Reading classification data: local files in the original formats, or the hub copy by name
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
    for line_number, line, _ in file_lines(path, option):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not a valid JSON line ({json_error_reason(error)})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


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
    if split not in task.hub_splits:
        raise UserError(f"task {task.name} has no downloadable {split} split; pass {option} PATH")
    hub_split = task.hub_splits[split]
    try:
        from paddlenlp.datasets import load_dataset
    except ImportError:  # the deploy-only install (requirements-deploy.txt)
        raise UserError(
            f"downloading the {task.name} {split} split by name needs paddlenlp (requirements.txt); "
            f"pass {option} PATH with a local copy ({task.file_format})"
        ) from None
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
# Preprocessing classification data
# --------------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    dataset: list  # of feature dicts: what paddlenlp's Trainer and the predictors read alike
    ids: list
    truncated: int

    @property
    def sequences(self) -> list:
        """What the predictors run: one feature a model input row."""
        return self.dataset


def encode_text_examples(
    examples: Sequence[TextExample], tokenizer, task: TaskSpec, max_seq_length: int, truncate: bool = True
) -> EncodedSplit:
    """Tokenize each example once; texts longer than max_seq_length are truncated (longest first) and
    counted, or, with truncate=False, rejected naming the example."""
    label_ids = {label: index for index, label in enumerate(task.labels)}
    features, truncated = [], 0
    for example in examples:
        ids_a = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.text_a))
        ids_b = (
            tokenizer.convert_tokens_to_ids(tokenizer.tokenize(example.text_b)) if example.text_b is not None else None
        )
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
    return EncodedSplit(features, [example.id for example in examples], truncated)


def report_truncation(task_name: str, split: str, encoded: EncodedSplit, max_seq_length: int) -> None:
    if encoded.truncated:
        logger.warning(
            "%s %s: %d of %d examples were longer than max_seq_length=%d and were truncated",
            task_name,
            split,
            encoded.truncated,
            len(encoded.ids),
            max_seq_length,
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
    yield from ((number, line) for number, line, _ in file_lines(path, option))


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


def encode_token_examples(
    examples: Sequence[TokenExample], tokenizer, task: TaskSpec, max_seq_length: int, truncate: bool = True
) -> EncodedTokens:
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
                raise UserError(
                    f"{example.where}: sentence needs more than --max_seq_length {max_seq_length} tokens "
                    "(pass --truncate_long_texts true to truncate)"
                )
            truncated += 1
        input_ids = tokenizer.build_inputs_with_special_tokens(ids)
        if input_ids[1 : 1 + len(ids)] != ids:
            raise UserError(
                f"{type(tokenizer).__name__} does not lay out [CLS] text [SEP]; token classification needs that layout"
            )
        positions = [1 + piece for piece in first_pieces]
        feature = {"input_ids": input_ids, "token_type_ids": tokenizer.create_token_type_ids_from_sequences(ids)}
        if example.tags is not None:
            labels = [IGNORE_INDEX] * len(input_ids)
            for position, tag in zip(positions, example.tags):
                labels[position] = label_ids[tag]
            feature["labels"] = labels
        features.append(feature)
        word_positions.append(positions)
    return EncodedTokens(features, [e.id for e in examples], truncated, word_positions)


def entities_from_tags(words: Sequence[str], tags: Sequence[str]) -> List[dict]:
    """Entities as seqeval reads BIO tags, with their text and character offsets (end exclusive)."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(int)
    text = "".join(words)
    return [
        {
            "text": text[starts[first] : starts[last + 1]],
            "type": kind,
            "start": int(starts[first]),
            "end": int(starts[last + 1]),
        }
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


def predicted_word_tags(
    logits: np.ndarray, encoded: EncodedTokens, examples: Sequence[TokenExample], labels: Sequence[str]
) -> List[List[str]]:
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


def read_squad_file(path: str, option: str):
    """Yield (where, row) for each question of a SQuAD-style json file, rows shaped like paddlenlp's cmrc2018."""
    return read_squad_rows(read_json_file(path, option), path)


def read_squad_rows(document, path: str):
    """The questions of a SQuAD-style document (path names it in errors)."""
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
                yield (
                    f"{path}: question {question_id}",
                    {
                        "id": question_id,
                        "context": paragraph.get("context"),
                        "question": qa.get("question"),
                        "answers": [a["text"] for a in answers],
                        "answer_starts": [a.get("answer_start", -1) for a in answers],
                    },
                )


ANSWER_SHIFT_LIMIT = 16  # characters; the CMRC2018 dev set has answer_starts off by 1 or 2


def locate_answer(context: str, text: str, start: int) -> Optional[int]:
    """The start of text in context: at start, else its nearest occurrence within ANSWER_SHIFT_LIMIT."""
    if not text or start is None or start < 0:
        return None
    if context[start : start + len(text)] == text:
        return start
    window_start = max(0, start - ANSWER_SHIFT_LIMIT)
    nearby = [
        window_start + i
        for i in range(min(len(context), start + ANSWER_SHIFT_LIMIT + len(text)) - window_start)
        if context.startswith(text, window_start + i)
    ]
    return min(nearby, key=lambda i: abs(i - start)) if nearby else None


def training_answer(context: str, texts: List[str], starts: List[int]) -> Tuple[Optional[int], Optional[str]]:
    """(start, text) of the first answer found at (or near) its answer_start; (None, None) when none is (a free-form
    answer has answer_start -1, or its text is not in the context there)."""
    for text, start in zip(texts, starts):
        if isinstance(start, int) and start >= 0:
            located = locate_answer(context, text, start)
            if located is not None:
                return located, text
    return None, None


def odd_qa_row(row: dict, split: str, answer_start: Optional[int]) -> Optional[str]:
    """Why a well-formed row cannot be trained on (None when it can): real CMRC2018 files hold empty questions
    and answers with no position. Evaluation keeps every row, as the official script scores every question."""
    if split != "train":
        return None
    if not row["question"].strip():
        return "empty question"
    if not row["context"].strip():
        return "empty context"
    if not row["answers"]:
        return "no answer"
    if answer_start is None:
        return "no answer found at its answer_start (free-form)"
    return None


def rows_to_qa_examples(task: TaskSpec, rows, split: str) -> List[QAExample]:
    """Check each question's structure (a malformed one is an error naming it) and build the examples; odd but
    well-formed training rows are left out and counted (odd_qa_row)."""
    examples, seen, repaired, left_out = [], set(), 0, {}
    for where, row in rows:
        for name in ("question", "context"):
            if not isinstance(row.get(name), str):
                raise UserError(f"{where}: the {name} is missing or not a string")
            check_unicode(row[name], f"{where}: the {name}")
        if row["id"] in seen:
            raise UserError(f"{where}: question id {row['id']!r} appears twice")
        seen.add(row["id"])
        texts, starts = list(row.get("answers") or []), list(row.get("answer_starts") or [])
        start, text = training_answer(row["context"], texts, starts)
        reason = odd_qa_row({**row, "answers": texts}, split, start)
        if reason:
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        repaired += start is not None and start not in starts
        examples.append(QAExample(row["id"], row["question"], row["context"], texts, start, text, where))
    if repaired:
        logger.warning(
            "%s %s: %d answer_start values were off by a few characters and were moved to the answer text",
            task.name,
            split,
            repaired,
        )
    reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(left_out.items()))
    if left_out:
        logger.warning(
            "%s %s: left out %d questions that cannot be trained on (%s)",
            task.name,
            split,
            sum(left_out.values()),
            reasons,
        )
    if not examples:
        raise UserError(
            f"the {task.name} {split} data holds no questions" + (f" to train on ({reasons})" if left_out else "")
        )
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
    dataset: list  # of feature dicts: what paddlenlp's Trainer and the predictors read alike
    example_index: List[int]  # the example each window belongs to
    offsets: List[List[Optional[Tuple[int, int]]]]  # character span of each context token, None elsewhere
    truncated_questions: int

    @property
    def sequences(self) -> list:
        return self.dataset


DEFAULT_DOC_STRIDE = 128


def prepare_qa_features(
    examples: Sequence[QAExample],
    tokenizer,
    max_seq_length: int,
    doc_stride: Optional[int],
    max_query_length: int,
    with_labels: bool,
) -> QAFeatures:
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
            raise UserError(
                f"--doc_stride {doc_stride} must be between 1 and the context window of {window} tokens "
                f"(--max_seq_length {max_seq_length} minus the question and special tokens)"
            )
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
            feature, first = qa_window_feature(
                tokenizer, question_ids, context_ids[start : start + window], start, span, with_labels
            )
            token_offsets = [None] * len(feature["input_ids"])
            token_offsets[first : first + len(context_ids[start : start + window])] = offsets[start : start + window]
            features.append(feature)
            example_index.append(index)
            all_offsets.append(token_offsets)
    return QAFeatures(features, example_index, all_offsets, truncated_questions)


def qa_window_feature(tokenizer, question_ids, piece, start, span, with_labels) -> Tuple[dict, int]:
    """One window's model inputs (and labels), and the input position of its first context token."""
    input_ids = tokenizer.build_inputs_with_special_tokens(question_ids, piece)
    first = len(input_ids) - 1 - len(piece)  # [CLS] question [SEP] context [SEP]
    if input_ids[first : first + len(piece)] != piece:
        raise UserError(f"{type(tokenizer).__name__} does not lay out [CLS] question [SEP] context [SEP]")
    feature = {
        "input_ids": input_ids,
        "token_type_ids": tokenizer.create_token_type_ids_from_sequences(question_ids, piece),
    }
    if with_labels:
        inside = span is not None and start <= span[0] and span[1] < start + len(piece)
        feature["start_positions"] = first + span[0] - start if inside else 0
        feature["end_positions"] = first + span[1] - start if inside else 0
    return feature, first


def postprocess_qa_predictions(
    examples: Sequence[QAExample],
    features: QAFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
):
    """Best answer and n-best list of each example from the start and end logits of all its windows.

    Candidates: the top n_best_size starts and ends of each window, inside the context, end >= start, at most
    max_answer_length tokens; score = start logit + end logit; text sliced from the context by character
    offsets; probabilities a softmax over all of the example's candidates, summed over candidates with the same
    text (merged_by_text). The answer is the best-scoring span's text. No candidate gives an empty answer.
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
                    candidates[example_number].append(
                        {
                            "text": context[offsets[s][0] : offsets[e][1]],
                            "start_logit": float(starts[s]),
                            "end_logit": float(ends[e]),
                            "score": float(starts[s] + ends[e]),
                        }
                    )
    predictions, nbest = {}, {}
    for example, found in zip(examples, candidates):
        top = merged_by_text(sorted(found, key=lambda c: -c["score"]))[:n_best_size]
        predictions[example.id] = top[0]["text"] if top else ""
        nbest[example.id] = top
    return predictions, nbest


def merged_by_text(ranked: List[dict]) -> List[dict]:
    """Candidates (best score first) with probabilities, a softmax over all of them; the same text found in
    several spans or overlapping windows is one entry (its best span's scores), holding their summed probability."""
    if not ranked:
        return []
    scores = np.array([c["score"] for c in ranked])
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    merged = {}
    for candidate, probability in zip(ranked, probabilities):
        entry = merged.setdefault(candidate["text"], {**candidate, "probability": 0.0})
        entry["probability"] += float(probability)
    return list(merged.values())


# The official CMRC2018 evaluation (cmrc2018_evaluate.py, v5) in our own code: punctuation it ignores (its
# list also holds '……', which as one list entry never equals a single character, so it is left out here).
CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")


def is_cjk(character: str) -> bool:
    return "\u4e00" <= character <= "\u9fa5"


@functools.lru_cache(maxsize=1)
def english_word_tokenizer():
    """NLTK's Treebank-style word tokenizer, the one nltk.word_tokenize applies to each sentence; it needs no
    downloaded data (word_tokenize's sentence splitter, punkt, does)."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def mixed_segmentation(text: str, remove_punctuation: bool) -> List[str]:
    """Each Chinese character (and listed punctuation mark) is a segment; each run of other characters is split
    into words as the official script does, with NLTK's word tokenizer (iphone4s, h1n1 and mp3 stay whole;
    don't -> do n't; 3.5% -> 3.5 %). With remove_punctuation the listed marks are dropped without ending the run
    they are in.

    The one difference from the official nltk.word_tokenize: no sentence splitting inside a run (punkt needs a
    download), so a run holding several English sentences keeps the periods that end its inner sentences on
    their words.
    """
    tokenize = english_word_tokenizer().tokenize
    segments, run = [], ""
    for character in text.lower().strip():
        if remove_punctuation and character in CMRC_PUNCTUATION:
            continue
        if is_cjk(character) or character in CMRC_PUNCTUATION:
            segments.extend(tokenize(run) if run else [])
            run = ""
            segments.append(character)
        else:
            run += character
    segments.extend(tokenize(run) if run else [])
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


ASCII_PUNCTUATION = frozenset(string.punctuation)
ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def upstream_normalized(text: str) -> str:
    """An answer as upstream PaddleNLP's SQuAD scoring (paddlenlp.metrics.squad, 3.0.0b4) compares it: lower-cased,
    without ASCII or the CMRC2018 punctuation, English articles replaced by a space, runs of whitespace one space."""
    kept = "".join(c for c in text.lower() if c not in ASCII_PUNCTUATION).strip()
    kept = "".join(c for c in kept if c not in CMRC_PUNCTUATION)
    return " ".join(ENGLISH_ARTICLES.sub(" ", kept).split())


def upstream_scores(golds: Sequence[str], prediction: str) -> Tuple[float, float]:
    """(exact, f1) of one prediction as upstream scores Chinese answers (is_whitespace_splited=False): the best over
    the gold answers that are not empty once normalized (or the empty answer when none is), f1 counting the
    characters shared by each side's first whitespace-separated word."""
    golds = [gold for gold in golds if upstream_normalized(gold)] or [""]
    predicted = upstream_normalized(prediction)
    predicted_word = predicted.split()[0] if predicted else ""
    exact, f1 = 0.0, 0.0
    for gold in golds:
        normalized = upstream_normalized(gold)
        gold_word = normalized.split()[0] if normalized else ""
        exact = max(exact, float(normalized == predicted))
        f1 = max(f1, character_overlap_f1(gold_word, predicted_word))
    return exact, f1


def character_overlap_f1(gold: str, predicted: str) -> float:
    if not gold or not predicted:
        return float(gold == predicted)
    same = sum((collections.Counter(gold) & collections.Counter(predicted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(examples: Sequence[QAExample], predictions: Dict[str, str]) -> Dict[str, float]:
    """exact_match and f1 as the official CMRC2018 script defines them (best over the gold answers, in
    percent), plus upstream PaddleNLP's simpler character-overlap scores as upstream_exact_match/upstream_f1
    (upstream_scores: our own code, so that the deploy-only install evaluates QA too). Every question counts for the
    official scores; one without gold answers scores 0 (the official script would stop on it); upstream's count only
    the questions that have a prediction, as upstream does."""
    exact = [max((cmrc_exact(gold, predictions.get(e.id, "")) for gold in e.answers), default=0.0) for e in examples]
    f1 = [max((cmrc_f1(gold, predictions.get(e.id, "")) for gold in e.answers), default=0.0) for e in examples]
    upstream = [upstream_scores(e.answers, predictions[e.id]) for e in examples if e.id in predictions]
    return {
        "exact_match": 100.0 * float(np.mean(exact)),
        "f1": 100.0 * float(np.mean(f1)),
        "upstream_exact_match": 100.0 * float(np.mean([score[0] for score in upstream])),
        "upstream_f1": 100.0 * float(np.mean([score[1] for score in upstream])),
    }


def qa_compute_metrics(examples: Sequence[QAExample], features: QAFeatures, window_args):
    """Trainer's compute_metrics for QA: from the start and end logits together, not from the label arrays
    (paddlenlp 3.0.0b4 passes compute_metrics only the first label array, the start positions)."""

    def compute(eval_prediction) -> Dict[str, float]:
        start_logits, end_logits = eval_prediction.predictions[:2]
        predictions, _ = postprocess_qa_predictions(
            examples, features, start_logits, end_logits, window_args.n_best_size, window_args.max_answer_length
        )
        return qa_metrics(examples, predictions)

    return compute


# --------------------------------------------------------------------------------------------------
# Multiple choice (C3, CHID): reading, one text pair per choice, the passage-level assignment, metrics
# --------------------------------------------------------------------------------------------------
@dataclass
class ChoiceExample:
    id: object  # C3: the question's own id, else "<document id>-<question number>"; CHID: the blank's tag or row id
    context: str  # C3: the document; CHID: the passage holding the blank
    question: str  # C3: the question; CHID: the blank's tag in the passage (#idiomNNNNNN#, or FewCLUE's #idiom#)
    choices: List[str]
    label: Optional[int]  # the answer's index among the choices
    group: str  # CHID: the blanks sharing one candidate list, each candidate used at most once among them
    where: str
    positions: Optional[List[int]] = None  # each choice's index in the row as given (repeats dropped); None: the same

    def given_index(self, index: int) -> int:
        """A choice's index among the choices as the row or request gave them (what submission files hold)."""
        return self.positions[index] if self.positions else index


def unique_choices(choices: Sequence[str]) -> Tuple[List[str], List[int]]:
    """The non-blank choices kept once each (the first of repeats), and each one's index as given."""
    kept = {}
    for index, choice in enumerate(choices):
        if choice.strip() and choice not in kept:
            kept[choice] = index
    return list(kept), list(kept.values())


QUESTION_TOKEN_CAP = 64  # C3 questions and choices are kept whole up to these many tokens; the document gives way
CHOICE_TOKEN_CAP = 32
CHID_BLANK = re.compile(r"#idiom\d*#")
OPTION_SPLITS = {"--train_file": "train", "--dev_file": "dev", "--test_file": "test"}


def c3_files(path: str, option: str) -> List[str]:
    """A C3 file, files separated by commas, or a folder of the release (its c3-d- and c3-m- files of the split)."""
    if os.path.isdir(path):
        split = OPTION_SPLITS.get(option, "test")
        files = [os.path.join(path, f"c3-{part}-{split}.json") for part in ("d", "m")]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise UserError(f"{option}: {path} holds neither c3-d-{split}.json nor c3-m-{split}.json")
        return files
    return [part for part in path.split(",") if part]


def read_c3_file(path: str, option: str):
    """Yield (where, row) for each question of the C3 files: [[document lines], [{question, choice, answer}], id]."""
    for file in c3_files(path, option):
        documents = read_json_file(file, option)
        if not isinstance(documents, list):
            raise UserError(f"{file}: expected a JSON list of [document lines, questions, id] entries")
        for number, document in enumerate(documents, 1):
            yield from c3_document_rows(document, f"{file}: document {number}")


def c3_document_rows(document, where: str):
    if not (isinstance(document, list) and len(document) == 3 and isinstance(document[1], list)):
        raise UserError(f"{where}: expected [document lines, questions, id]")
    lines, questions, document_id = document
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise UserError(f"{where}: the document must be a list of lines (strings)")
    for number, question in enumerate(questions):
        if not isinstance(question, dict):
            raise UserError(f"{where}: question {number + 1} is not an object")
        yield (
            f"{where} question {number + 1}",
            {
                "id": question.get("id", f"{document_id}-{number}"),
                "context": "\n".join(lines),
                "question": question.get("question"),
                "choices": question.get("choice"),
                "answer": question.get("answer") or None,
                "group": f"{document_id}-{number}",
            },
        )


def c3_hub_rows(task: "TaskSpec", split: str):
    """PaddleNLP's c3 rows (one a question: context lines, question, choice, answer), d- and m- parts together."""
    for number, (where, row) in enumerate(load_hub_rows(task, split)):
        context = row.get("context")
        yield (
            where,
            {
                "id": row.get("id", number),
                "context": "\n".join(context) if isinstance(context, list) else context,
                "question": row.get("question"),
                "choices": row.get("choice"),
                "answer": row.get("answer") or None,
                "group": str(number),
            },
        )


def read_chid_file(path: str, option: str):
    """Yield (where, row) for each blank of a CHID file: FewCLUE's JSON lines ({id, candidates, content with one
    #idiom#, answer index}) or CLUE's ({candidates, content: passages with #idiomNNNNNN# blanks}, the answers in
    <name>_answer.json beside it)."""
    answers = chid_answers(path)
    for where, row in read_json_lines(path, option):
        yield from chid_line_rows(row, where, answers)


def chid_answers(path: str) -> Optional[dict]:
    """CLUE CHID's answers (tag -> candidate index) from <name>_answer.json beside the data file, if there."""
    stem, extension = os.path.splitext(path)
    answer_file = f"{stem}_answer{extension}"
    if not os.path.isfile(answer_file):
        return None
    answers = read_json_file(answer_file, "the CHID answers")
    if not isinstance(answers, dict):
        raise UserError(f"{answer_file}: expected an object of blank tag -> candidate index")
    return answers


def chid_hub_rows(task: "TaskSpec", split: str):
    for where, row in load_hub_rows(task, split):
        yield from chid_line_rows(row, where, None)


def chid_line_rows(row: dict, where: str, answers: Optional[dict]):
    candidates, content = row.get("candidates"), row.get("content")
    passages = content if isinstance(content, list) else [content]
    if not all(isinstance(p, str) for p in passages):
        raise UserError(f"{where}: field 'content' must be a passage or a list of passages (strings)")
    for passage in passages:
        if not CHID_BLANK.search(passage):
            raise UserError(f"{where}: a passage holds no #idiom# blank")
        few_clue = "#idiom#" in passage  # FewCLUE's one unnumbered blank, its answer in the row
        passage = numbered_blanks(passage)  # repeated blanks told apart, so each is its own example's target
        for tag in CHID_BLANK.findall(passage):
            answer = row.get("answer") if few_clue else (answers or {}).get(tag)
            yield (
                where,
                {
                    "id": row.get("id", where) if few_clue else tag,
                    "context": passage,
                    "question": tag,
                    "choices": candidates,
                    "answer": answer,
                    "group": where,
                },
            )


def odd_choice_row(choices, answer, split: str) -> Optional[str]:
    """Why a row cannot be trained on or scored (None when it can); test rows need no answer."""
    if not choices:
        return "no choices"
    if answer is None:
        return None if split == "test" else "no answer"
    if isinstance(answer, str):
        return None if answer in choices else "an answer that is not among its choices"
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return "an answer index outside its choices"
    return None


def rows_to_choice_examples(task: "TaskSpec", rows, split: str) -> List[ChoiceExample]:
    """Check each row's structure (a malformed one is an error naming it); rows without choices or whose answer is
    not among them are left out and counted, as CMRC2018's odd rows are. Repeated choices are kept once (the
    first), so that no two choices compete for one answer."""
    examples, left_out = [], {}
    for where, row in rows:
        for name in ("context", "question"):
            if not isinstance(row.get(name), str):
                raise UserError(f"{where}: the {name} is missing or not a string")
            check_unicode(row[name], f"{where}: the {name}")
        choices = row.get("choices")
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            raise UserError(f"{where}: the choices must be a list of strings")
        for number, choice in enumerate(choices or []):
            check_unicode(choice, f"{where}: choice {number + 1}")
        choices, positions = unique_choices(choices or [])
        answer, given = row["answer"], row.get("choices") or []
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(given):
            answer = given[answer]  # an index into the choices as given
        if len(choices) > task.max_choices:
            raise UserError(f"{where}: {len(choices)} choices; task {task.name} takes at most {task.max_choices}")
        reason = odd_choice_row(choices, answer, split)
        if reason:
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        label = choices.index(answer) if answer is not None else None
        examples.append(
            ChoiceExample(row["id"], row["context"], row["question"], choices, label, row["group"], where, positions)
        )
    if left_out:
        reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(left_out.items()))
        logger.warning("%s %s: left out %d rows (%s)", task.name, split, sum(left_out.values()), reasons)
    if not examples:
        raise UserError(f"the {task.name} {split} data holds no usable questions")
    return examples


def token_ids(tokenizer, text: str) -> List[int]:
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def c3_choice_inputs(example: ChoiceExample, tokenizer, max_seq_length: int) -> Tuple[List[Tuple[list, list]], bool]:
    """([CLS] document [SEP] question choice [SEP] of each choice, whether the document was cut): the question and
    each choice whole up to their caps, the document cut to what the longest question+choice leaves, the same for
    every choice of the question."""
    question = token_ids(tokenizer, example.question)
    choices = [token_ids(tokenizer, choice) for choice in example.choices]
    capped = len(question) > QUESTION_TOKEN_CAP or any(len(c) > CHOICE_TOKEN_CAP for c in choices)
    answers = [question[:QUESTION_TOKEN_CAP] + choice[:CHOICE_TOKEN_CAP] for choice in choices]
    budget = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - max(len(a) for a in answers)
    if budget < 1:
        raise UserError(f"{example.where}: max_seq_length {max_seq_length} leaves no room for the document")
    document = token_ids(tokenizer, example.context)
    return [(document[:budget], answer) for answer in answers], capped or len(document) > budget


def chid_choice_inputs(example: ChoiceExample, tokenizer, max_seq_length: int) -> Tuple[List[Tuple[list, list]], bool]:
    """([CLS] candidate [SEP] window [SEP] of each candidate, whether the passage was cut): the window is the
    passage around this blank, which is four [MASK] (an idiom's four characters); its other blanks are one [UNK]."""
    mask, unknown = tokenizer.convert_tokens_to_ids(["[MASK]", "[UNK]"])
    pieces = CHID_BLANK.split(example.context)
    blanks = CHID_BLANK.findall(example.context)
    target = blanks.index(example.question) if example.question in blanks else 0
    tokens, position = [], 0
    for index, piece in enumerate(pieces):
        tokens.extend(token_ids(tokenizer, piece))
        if index < len(blanks):
            position = len(tokens) if index == target else position
            tokens.extend([mask] * 4 if index == target else [unknown])
    candidates = [token_ids(tokenizer, candidate)[:CHOICE_TOKEN_CAP] for candidate in example.choices]
    budget = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - max(len(c) for c in candidates)
    if budget < 4:
        raise UserError(f"{example.where}: max_seq_length {max_seq_length} leaves no room for the passage")
    start = min(max(0, position + 2 - budget // 2), max(0, len(tokens) - budget))
    window = tokens[start : start + budget]
    return [(candidate, window) for candidate in candidates], False  # a window by design, as upstream: not a cut


@dataclass
class EncodedChoices:
    """dataset: one feature a question (every choice's inputs, the label), what the Trainer reads; choice_sequences:
    one feature a choice, what the predictors run; choice_ranges: each question's choices among them."""

    dataset: list
    ids: list
    truncated: int
    choice_sequences: list
    choice_ranges: List[Tuple[int, int]]

    @property
    def sequences(self) -> list:
        return self.choice_sequences


def encode_choice_examples(
    examples: Sequence[ChoiceExample], tokenizer, task: "TaskSpec", max_seq_length: int, truncate: bool = True
) -> EncodedChoices:
    """Each choice of each question as one text pair (the task's choice_inputs); a cut context is counted or, with
    truncate=False, an error naming the question."""
    features, sequences, ranges, truncated = [], [], [], 0
    for example in examples:
        pairs, cut = task.choice_inputs(example, tokenizer, max_seq_length)
        if cut and not truncate:
            raise UserError(
                f"{example.where}: the context is longer than --max_seq_length {max_seq_length} allows "
                "(pass --truncate_long_texts true to truncate)"
            )
        truncated += cut
        encoded = [tokenizer.prepare_for_model(a, b, max_length=max_seq_length, truncation=True) for a, b in pairs]
        inputs = [{"input_ids": e["input_ids"], "token_type_ids": e["token_type_ids"]} for e in encoded]
        ranges.append((len(sequences), len(sequences) + len(inputs)))
        sequences.extend(inputs)
        feature = {name: [one[name] for one in inputs] for name in ("input_ids", "token_type_ids")}
        if example.label is not None:
            feature["labels"] = example.label
        features.append(feature)
    return EncodedChoices(features, [e.id for e in examples], truncated, sequences, ranges)


def choice_collator(task: "TaskSpec", tokenizer):
    """Pads every question to the task's max_choices (a padded choice is masked out of the softmax: never
    predicted, never trained towards) and every choice to the batch's longest sequence."""
    import paddle

    def collate(features: Sequence[dict]) -> dict:
        length = max(len(ids) for f in features for ids in f["input_ids"])
        batch = {
            name: np.full((len(features), task.max_choices, length), 0, dtype="int64")
            for name in ("input_ids", "token_type_ids")
        }
        mask = np.zeros((len(features), task.max_choices), dtype="float32")
        for row, feature in enumerate(features):
            for column, ids in enumerate(feature["input_ids"]):
                batch["input_ids"][row, column, : len(ids)] = ids
                batch["token_type_ids"][row, column, : len(ids)] = feature["token_type_ids"][column]
                mask[row, column] = 1.0
        tensors = {name: paddle.to_tensor(value) for name, value in batch.items()}
        tensors["choice_mask"] = paddle.to_tensor(mask)
        if "labels" in features[0]:
            tensors["labels"] = paddle.to_tensor(np.array([f["labels"] for f in features], dtype="int64"))
        return tensors

    return collate


PADDED_CHOICE = -1e4  # what a padded choice's logit becomes: it never wins a softmax


def masked_choice_logits(logits, choice_mask):
    return logits + (1.0 - choice_mask) * PADDED_CHOICE


def choice_training_loss(model, inputs: dict):
    """(loss, logits) of a multiple-choice batch: cross-entropy over each question's real choices only."""
    import paddle

    inputs = dict(inputs)
    mask, labels = inputs.pop("choice_mask"), inputs.pop("labels", None)
    outputs = model(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"])
    logits = masked_choice_logits(outputs[0] if isinstance(outputs, (tuple, list)) else outputs, mask)
    loss = paddle.nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return loss, logits


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.asarray(scores, dtype="float64") - np.max(scores)
    return shifted - np.log(np.exp(shifted).sum())


def assigned_choices(scores: Sequence[np.ndarray]) -> List[int]:
    """Each blank's candidate when the blanks of one passage share a candidate list (CHID): the highest log-probability
    first, each blank and each candidate used at most once (upstream's rule, over the whole passage); blanks left
    when the candidates run out take their own best."""
    ranked = sorted(
        ((float(value), blank, choice) for blank, row in enumerate(scores) for choice, value in enumerate(row)),
        key=lambda item: -item[0],
    )
    chosen, used = {}, set()
    for _, blank, choice in ranked:
        if blank not in chosen and choice not in used:
            chosen[blank] = choice
            used.add(choice)
    return [chosen.get(blank, int(np.argmax(row))) for blank, row in enumerate(scores)]


def choice_scores(encoded: EncodedChoices, outputs) -> List[np.ndarray]:
    """Each question's log-probabilities over its real choices, from one score a sequence (the predictors' outputs)."""
    scores = np.array([float(np.asarray(row).reshape(-1)[0]) for row in outputs[0]])
    return [log_softmax(scores[start:end]) for start, end in encoded.choice_ranges]


def predicted_choices(task: "TaskSpec", examples: Sequence[ChoiceExample], scores: Sequence[np.ndarray]) -> List[int]:
    """The chosen index of each question: its best choice, or (task.assign_groups) the passage-level assignment of
    the blanks of each group, whatever order or batch they came in."""
    if not task.assign_groups:
        return [int(np.argmax(row)) for row in scores]
    groups: Dict[str, List[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.group, []).append(index)
    chosen = [0] * len(examples)
    for members in groups.values():
        for index, choice in zip(members, assigned_choices([scores[i] for i in members])):
            chosen[index] = choice
    return chosen


def choice_accuracy(task: "TaskSpec", examples: Sequence[ChoiceExample], scores) -> Dict[str, float]:
    """Accuracy per question (C3) or per blank (CHID), in 0..1."""
    chosen = predicted_choices(task, examples, scores)
    return {"accuracy": float(np.mean([c == e.label for c, e in zip(chosen, examples)]))}


def choice_output_metrics(task: "TaskSpec", examples, encoded, outputs, window_args) -> Dict[str, float]:
    return choice_accuracy(task, examples, choice_scores(encoded, outputs))


def question_scores(logits, examples: Sequence[ChoiceExample]) -> List[np.ndarray]:
    """Each question's log-probabilities over its real choices, from the Trainer's masked logits (one row a
    question, padded choices at PADDED_CHOICE)."""
    return [log_softmax(row[: len(e.choices)]) for row, e in zip(np.asarray(logits), examples)]


def choice_compute_metrics(task: "TaskSpec", examples: Sequence[ChoiceExample]):
    """Trainer's compute_metrics: the masked logits of each question (padded choices at PADDED_CHOICE)."""

    def compute(eval_prediction) -> Dict[str, float]:
        return choice_accuracy(task, examples, question_scores(eval_prediction.predictions, examples))

    return compute


def choice_rows(task, examples, encoded, outputs, window_args) -> List[dict]:
    scores = choice_scores(encoded, outputs)
    chosen = predicted_choices(task, examples, scores)
    return [
        {
            "id": e.id,
            **({"question": e.question} if task.questions else {"blank": e.question}),
            "answer": e.choices[c],
            "index": e.given_index(c),
            "probability": float(np.exp(s[c])),
        }
        for e, s, c in zip(examples, scores, chosen)
    ]


def choice_fields(task: "TaskSpec") -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """C3: a document, its question and the choices; CHID: a passage with #idiom# blanks and the candidates."""
    return (("context", "question", "choices") if task.questions else ("context", "choices")), ()


def numbered_blanks(passage: str) -> str:
    """A passage whose repeated #idiom# blanks are told apart (#idiom1#, #idiom2#, ...); distinct tags stay."""
    tags = CHID_BLANK.findall(passage)
    if len(set(tags)) == len(tags):
        return passage
    count = iter(range(1, len(tags) + 1))
    return CHID_BLANK.sub(lambda _: f"#idiom{next(count)}#", passage)


def choice_raw_examples(task: "TaskSpec", index: int, values: dict, where: str) -> List[ChoiceExample]:
    """One question (C3), or one example per blank of the passage (CHID: the blanks share the candidates)."""
    choices, positions = unique_choices(values["choices"])
    if len(choices) > task.max_choices:
        raise UserError(f"{where}: {len(choices)} choices; task {task.name} takes at most {task.max_choices}")
    if task.questions:
        return [
            ChoiceExample(
                str(index), values["context"], values["question"], choices, None, str(index), where, positions
            )
        ]
    passage = numbered_blanks(values["context"])
    blanks = CHID_BLANK.findall(passage)
    if not blanks:
        raise UserError(f"{where}: the passage holds no #idiom# blank")
    return [
        ChoiceExample(f"{index}-{tag}", passage, tag, choices, None, str(index), where, positions) for tag in blanks
    ]


def choice_line(task: "TaskSpec", line: str, where: str) -> dict:
    """One --input_file line: a JSON object with the task's fields (context, question, choices)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not a valid JSON line ({json_error_reason(error)})") from None
    required, _ = choice_fields(task)
    if not isinstance(value, dict) or any(name not in value for name in required):
        raise UserError(f"{where}: expected a JSON object with {', '.join(required)}")
    unused = sorted(set(value) & set(INPUT_FIELDS) - set(required))
    if unused:
        raise UserError(f"{where}: task {task.name} takes {input_description(required)}: {unused[0]!r} is not used")
    choices = value["choices"]
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise UserError(f"{where}: field 'choices' must be a non-empty list of non-empty strings")
    for name in (n for n in required if n != "choices"):
        if not isinstance(value[name], str) or not value[name].strip():
            raise UserError(f"{where}: field '{name}' must be a non-empty string")
    return {name: value[name] for name in required}


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose argmax matches the gold label id (0..1)."""
    return float((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).mean())


def compute_accuracy_metrics(eval_prediction) -> Dict[str, float]:
    return {"accuracy": accuracy(eval_prediction.predictions, eval_prediction.label_ids)}


def pad_rows(rows: Sequence[np.ndarray], fill) -> np.ndarray:
    """Stack arrays of different first lengths into one, padded with fill."""
    length = max(len(row) for row in rows)
    first = np.asarray(rows[0])
    padded = np.full((len(rows), length) + first.shape[1:], fill, dtype=first.dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def classification_output_metrics(task: TaskSpec, examples, encoded, outputs, window_args) -> Dict[str, float]:
    labels = np.array([feature["labels"] for feature in encoded.dataset])
    return {"accuracy": accuracy(np.stack(outputs[0]), labels)}


def ner_output_metrics(task: TaskSpec, examples, encoded, outputs, window_args) -> Dict[str, float]:
    labels = pad_rows([np.array(feature["labels"]) for feature in encoded.dataset], IGNORE_INDEX)
    return entity_metrics(*scored_tags(pad_rows(outputs[0], 0.0), labels, task.labels))


def qa_output_metrics(task: TaskSpec, examples, encoded, outputs, window_args) -> Dict[str, float]:
    predictions, _ = postprocess_qa_predictions(
        examples, encoded, outputs[0], outputs[1], window_args.n_best_size, window_args.max_answer_length
    )
    return qa_metrics(examples, predictions)


def deployed_metrics(
    task: TaskSpec, examples, encoded, outputs: List[List[np.ndarray]], window_args
) -> Dict[str, float]:
    """The fine-tuning scripts' metrics, computed with the same functions from a predictor's outputs."""
    return task.family.output_metrics(task, examples, encoded, outputs, window_args)


def metric_points(task: TaskSpec, value: float) -> float:
    """The main metric in points: accuracy and NER F1 are fractions, CMRC2018 F1 is already in percent."""
    return value if task.family.metric_in_percent else 100.0 * value


# --------------------------------------------------------------------------------------------------
# The task families: one row each (reading, encoding, collating, metrics, the script and model head)
# --------------------------------------------------------------------------------------------------
def truncation_reported(encode: Callable):
    """An encoder of classification or NER examples that logs how many were truncated."""

    def encode_split(task, split, examples, tokenizer, max_seq_length, truncate, window_args, with_labels):
        encoded = encode(examples, tokenizer, task, max_seq_length, truncate)
        report_truncation(task.name, split, encoded, max_seq_length)
        return encoded

    return encode_split


def encode_qa_split(task, split, examples, tokenizer, max_seq_length, truncate, window_args, with_labels):
    encoded = prepare_qa_features(
        examples,
        tokenizer,
        max_seq_length,
        window_args.doc_stride,
        window_args.max_query_length,
        with_labels=with_labels,
    )
    logger.info(
        "%s %s: %d windows for %d questions (%d questions cut to --max_query_length)",
        task.name,
        split,
        len(encoded.example_index),
        len(examples),
        encoded.truncated_questions,
    )
    return encoded


def padding_collator(task, tokenizer):
    from paddlenlp.data import DataCollatorWithPadding  # training only: the deployment scripts never import paddlenlp

    return DataCollatorWithPadding(tokenizer)


def ner_collator(task, tokenizer):
    """Pads labels with the ignore index, inputs with the pad id."""
    from paddlenlp.data import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)


# ---- raw input (infer.py --text and --input_file, serve.py requests) ---------------------------------------------
INPUT_FIELDS = ("text", "text_pair", "context", "question", "choices")  # every family's raw input fields
# how infer.py and serve.py describe a task when one of its fields is missing, or others are given
MISSING_FIELD_WORDING = {
    "text_pair": "compares two texts",
    "question": "answers a question about each context",
    "choices": "chooses among given answers",
}
INPUT_DESCRIPTIONS = {
    ("text",): "single texts",
    ("text", "text_pair"): "pairs of texts",
    ("context", "question"): "contexts and questions",
    ("context", "question", "choices"): "documents with a question and its choices",
    ("context", "choices"): "passages with #idiom# blanks and their candidates",
}


def input_description(fields: Tuple[str, ...]) -> str:
    return INPUT_DESCRIPTIONS.get(tuple(fields), " and ".join(fields))


def classification_fields(task: TaskSpec) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """A text, and its pair for pair tasks (a custom task: the pair is optional)."""
    if task.pairs is None:
        return ("text",), ("text_pair",)
    return (("text", "text_pair") if task.pairs else ("text",)), ()


def classification_examples(task: TaskSpec, index: int, values: dict, where: str) -> List[TextExample]:
    return [TextExample(index, values["text"], values.get("text_pair"), None, where)]


def classification_line(task: TaskSpec, line: str, where: str) -> dict:
    """text<TAB>pair for pair tasks (a custom task: either); a tab in a single-text task's line is text."""
    if task.pairs is False:
        return {"text": line}
    text, tab, pair = line.partition("\t")
    if task.pairs and not tab:
        raise UserError(f"{where}: task {task.name} compares two texts: give text<TAB>pair")
    if not text.strip() or tab and not pair.strip():
        raise UserError(f"{where}: empty text")
    return {"text": text, **({"text_pair": pair} if tab else {})}


def truncation_extras(encoded) -> dict:
    return {"eval_truncated": encoded.truncated}


def raw_examples(task: TaskSpec, index: int, values: dict, where: str) -> list:
    """The unlabelled examples of the task's family from one raw input's values keyed by field (Family.input_fields):
    a text and its pair (classification), a text whose characters are tagged (NER), a context with its question
    (QA), or a question with its choices (multiple choice; CHID: one example a blank). A value that is not Unicode
    text is one error naming it, before any tokenizer sees it."""
    for name, value in values.items():
        for number, text in enumerate(value if isinstance(value, list) else [value]):
            check_unicode(text, f"{where}: {name}" + (f"[{number}]" if isinstance(value, list) else ""))
    return task.family.raw_examples(task, index, values, where)


# ---- what a prediction looks like (infer.py --text/--input_file, serve.py) ----------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def classification_rows(task, examples, encoded, outputs, window_args) -> List[dict]:
    probabilities = softmax(np.stack(outputs[0]))
    return [
        {
            "text": e.text_a,
            **({"text_pair": e.text_b} if e.text_b else {}),
            "label": task.labels[int(p.argmax())],
            "probability": float(p.max()),
        }
        for e, p in zip(examples, probabilities)
    ]


def entity_rows(task, examples, encoded, outputs, window_args) -> List[dict]:
    tags = predicted_word_tags(pad_rows(outputs[0], 0.0), encoded, examples, task.labels)
    return [{"text": e.text, "entities": entities_from_tags(e.words, t)} for e, t in zip(examples, tags)]


def answer_rows(task, examples, encoded, outputs, window_args) -> List[dict]:
    _, nbest = postprocess_qa_predictions(
        examples, encoded, outputs[0], outputs[1], window_args.n_best_size, window_args.max_answer_length
    )
    return [
        {
            "id": e.id,
            "question": e.question,
            "answer": (nbest[e.id] or [{"text": ""}])[0]["text"],
            "probability": (nbest[e.id] or [{"probability": 0.0}])[0]["probability"],
        }
        for e in examples
    ]


def prediction_rows(task, examples, encoded, outputs, window_args) -> List[dict]:
    """Each example's prediction from the model outputs of its features: label and probability, entities with
    character offsets, or the answer with its probability."""
    return task.family.prediction_rows(task, examples, encoded, outputs, window_args)


def check_output_width(task, outputs, model_path: str) -> None:
    """A model whose head is sized by its labels has one score a label of its task.json's task: a task.json of
    another task would index past the labels, or name the wrong ones. outputs: per model output, one array a feature."""
    width = outputs[0][0].shape[-1] if outputs and len(outputs[0]) else None
    if task.family.labels_in_head and width is not None and width != len(task.labels):
        raise UserError(
            f"{model_path}: the model gives {width} scores but its task.json's task {task.name} has "
            f"{len(task.labels)} labels (a task.json of another task?); export the model again"
        )


@dataclass(frozen=True)
class Family:
    """Everything that differs between task families. Adding a family is one row of FAMILIES and its functions."""

    name: str
    title: str
    script: str  # the fine-tuning script
    compress_script: str
    head_suffix: str  # of the PaddleNLP model class that fine-tunes it
    metric_names: Tuple[str, ...]  # what eval_results.json holds
    metric_in_percent: bool  # the metrics are already in percent (CMRC2018), not fractions
    outputs: str  # "sequence" (logits a sequence), "token" (a token), "span" (start and end logits a token) or
    # "choice" (one score a choice's sequence)
    labels_in_head: bool  # the model's head is sized by the task's label list (multiple choice: by max_choices)
    uses_windows: bool  # contexts are cut into windows (QAWindowArguments)
    custom_tasks: bool  # --task_name custom (a user's own data) belongs to this family
    default_task: Optional[str]  # the --task_name its scripts take when none is given
    read_file: Optional[Callable]  # (path, option) -> rows (None: each task has its own, TaskSpec.read_file)
    read_hub: Optional[Callable]  # (task, split) -> rows, likewise
    to_examples: Callable  # (task, rows, split) -> examples
    encode: Callable  # (task, split, examples, tokenizer, max_seq_length, truncate, window_args, with_labels)
    collator: Callable  # (task, tokenizer) -> a collator that pads training batches
    training_loss: Optional[Callable]  # (model, batch) -> (loss, logits) where the model's own loss does not fit
    output_metrics: Callable  # (task, examples, encoded, outputs, window_args) -> metrics
    eval_extras: Callable  # encoded dev split -> what eval_results.json adds (truncated examples, windows)
    prediction_rows: Callable  # (task, examples, encoded, outputs, window_args) -> one dict per example
    input_fields: Callable  # task -> (required, optional) fields of a raw input (infer.py --text, serve.py)
    raw_examples: Callable  # (task, index, values by field, where) -> unlabelled examples (CHID: one a blank)
    input_line: Optional[Callable]  # (task, line, where) -> values of one --input_file line; None: read whole


FAMILIES = {
    family.name: family
    for family in [
        Family(
            name="seq_cls",
            title="sequence classification",
            script="run_seq_cls.py",
            compress_script="compress_seq_cls.py",
            head_suffix="ForSequenceClassification",
            metric_names=("accuracy",),
            metric_in_percent=False,
            outputs="sequence",
            labels_in_head=True,
            uses_windows=False,
            custom_tasks=True,
            default_task=None,
            read_file=read_json_lines,
            read_hub=load_hub_rows,
            to_examples=rows_to_examples,
            encode=truncation_reported(encode_text_examples),
            collator=padding_collator,
            training_loss=None,
            output_metrics=classification_output_metrics,
            eval_extras=truncation_extras,
            prediction_rows=classification_rows,
            input_fields=classification_fields,
            raw_examples=classification_examples,
            input_line=classification_line,
        ),
        Family(
            name="token_cls",
            title="token classification",
            script="run_token_cls.py",
            compress_script="compress_token_cls.py",
            head_suffix="ForTokenClassification",
            metric_names=("precision", "recall", "f1"),
            metric_in_percent=False,
            outputs="token",
            labels_in_head=True,
            uses_windows=False,
            custom_tasks=False,
            default_task="msra_ner",
            read_file=read_ner_file,
            read_hub=ner_hub_rows,
            to_examples=rows_to_token_examples,
            encode=truncation_reported(encode_token_examples),
            collator=ner_collator,
            training_loss=None,
            output_metrics=ner_output_metrics,
            eval_extras=truncation_extras,
            prediction_rows=entity_rows,
            input_fields=lambda task: (("text",), ()),
            raw_examples=lambda task, index, values, where: [TokenExample(index, list(values["text"]), None, where)],
            input_line=lambda task, line, where: {"text": line},
        ),
        Family(
            name="qa",
            title="question answering",
            script="run_qa.py",
            compress_script="compress_qa.py",
            head_suffix="ForQuestionAnswering",
            metric_names=("exact_match", "f1", "upstream_exact_match", "upstream_f1"),
            metric_in_percent=True,
            outputs="span",
            labels_in_head=False,
            uses_windows=True,
            custom_tasks=False,
            default_task="cmrc2018",
            read_file=read_squad_file,
            read_hub=load_hub_rows,
            to_examples=rows_to_qa_examples,
            encode=encode_qa_split,
            collator=padding_collator,
            training_loss=None,
            output_metrics=qa_output_metrics,
            eval_extras=lambda encoded: {"eval_windows": len(encoded.example_index)},
            prediction_rows=answer_rows,
            input_fields=lambda task: (("context", "question"), ()),
            raw_examples=lambda task, index, values, where: [
                QAExample(str(index), values["question"], values["context"], [], None, None, where)
            ],
            input_line=None,  # a SQuAD-style file, read whole
        ),
        Family(
            name="multiple_choice",
            title="multiple choice",
            script="run_multiple_choice.py",
            compress_script="compress_multiple_choice.py",
            head_suffix="ForMultipleChoice",
            metric_names=("accuracy",),
            metric_in_percent=False,
            outputs="choice",
            labels_in_head=False,
            uses_windows=False,
            custom_tasks=False,
            default_task="c3",
            read_file=None,  # C3 and CHID files differ: TaskSpec.read_file
            read_hub=None,
            to_examples=rows_to_choice_examples,
            encode=truncation_reported(encode_choice_examples),
            collator=choice_collator,
            training_loss=choice_training_loss,
            output_metrics=choice_output_metrics,
            eval_extras=truncation_extras,
            prediction_rows=choice_rows,
            input_fields=choice_fields,
            raw_examples=choice_raw_examples,
            input_line=choice_line,
        ),
    ]
}


# --------------------------------------------------------------------------------------------------
# The task registry: one row per task
# --------------------------------------------------------------------------------------------------
TNEWS_LABELS = ("100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116")
SEQ_CLS = FAMILIES["seq_cls"]


def clue_classification_task(name: str, labels, read_texts, submission_file: str, **more) -> TaskSpec:
    """A CLUE classification task: CLUE json lines, accuracy, the hub's clue/<name>."""
    return TaskSpec(
        name=name,
        family=SEQ_CLS,
        labels=tuple(labels),
        metric="accuracy",
        max_seq_length=more.pop("max_seq_length", 128),
        submission_file=submission_file,
        read_texts=read_texts,
        pairs=more.pop("pairs", False),
        hub=("clue", name),
        **more,
    )


SEQ_CLS_TASKS = {
    task.name: task
    for task in [
        clue_classification_task("afqmc", ("0", "1"), sentence_pair, "afqmc_predict.json", pairs=True),
        clue_classification_task("tnews", TNEWS_LABELS, single_sentence, "tnews11_predict.json"),
        clue_classification_task("iflytek", (str(i) for i in range(119)), single_sentence, "iflytek_predict.json"),
        clue_classification_task(
            "cmnli",
            ("contradiction", "entailment", "neutral"),
            sentence_pair,
            "cmnli_predict.json",
            pairs=True,
            skip_labels=("-",),
        ),
        clue_classification_task(
            "ocnli",
            ("entailment", "contradiction", "neutral"),
            sentence_pair,
            "ocnli_50k_predict.json",
            pairs=True,
            skip_labels=("-",),
        ),
        clue_classification_task("cluewsc2020", ("true", "false"), wsc_marked_text, "cluewsc11_predict.json"),
        clue_classification_task(
            "csl", ("0", "1"), csl_keywords_and_abstract, "csl_predict.json", pairs=True, max_seq_length=256
        ),
    ]
}


MSRA_NER = TaskSpec(
    name="msra_ner",
    family=FAMILIES["token_cls"],
    labels=("B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "O"),
    metric="f1",
    max_seq_length=128,
    submission_file="msra_ner_predict.json",
    hub=("msra_ner",),
    # MSRA_NER has no dev split: its test split is the evaluation set, as in every published number.
    hub_splits={"train": "train", "dev": "test", "test": "test"},
    file_format="MSRA_NER tsv (characters and tags joined by \\002, a tab between) or BIO columns (a 'char tag' "
    "line each, a blank line between sentences)",
)


CMRC2018 = TaskSpec(
    name="cmrc2018",
    family=FAMILIES["qa"],
    labels=(),
    metric="f1",
    max_seq_length=512,
    submission_file="cmrc2018_predict.json",
    hub=("cmrc2018",),
    hub_splits={"train": "train", "dev": "dev"},  # the CMRC2018 test answers are not public
    file_format="SQuAD-style json, the CMRC2018 release format",
)


C3 = TaskSpec(
    name="c3",
    family=FAMILIES["multiple_choice"],
    labels=(),
    metric="accuracy",
    max_seq_length=512,
    submission_file="c311_predict.json",
    read_file=read_c3_file,
    read_hub=c3_hub_rows,
    choice_inputs=c3_choice_inputs,
    max_choices=4,
    questions=True,
    hub=("c3",),
    file_format="the C3 release's json ([[document lines], [{question, choice, answer}], id]); a folder holding "
    "c3-d-<split>.json and c3-m-<split>.json reads both parts, as do two files separated by a comma",
)


CHID = TaskSpec(
    name="chid",
    family=FAMILIES["multiple_choice"],
    labels=(),
    metric="accuracy",
    max_seq_length=64,
    submission_file="chid11_predict.json",
    read_file=read_chid_file,
    read_hub=chid_hub_rows,
    choice_inputs=chid_choice_inputs,
    max_choices=10,
    assign_groups=True,
    hub=("fewclue", "chid"),  # the downloadable copy is FewCLUE's; CLUE's CHID files are read from --*_file
    hub_splits={"train": "train_few_all", "dev": "dev_few_all", "test": "test_public"},
    file_format="CHID json lines: CLUE's ({candidates, content: passages with #idiomNNNNNN# blanks}, answers in "
    "<name>_answer.json beside the file) or FewCLUE's ({id, candidates, content with one #idiom#, answer})",
)


ALL_TASKS = {**SEQ_CLS_TASKS, MSRA_NER.name: MSRA_NER, CMRC2018.name: CMRC2018, C3.name: C3, CHID.name: CHID}


CUSTOM_TASK = "custom"


CUSTOM_TASK_DEFAULTS = {"max_seq_length": 128, "metric_for_best_model": "accuracy"}


def custom_family() -> "Family":
    """The family whose scripts take --task_name custom (a user's own CLUE-style data)."""
    return next(family for family in FAMILIES.values() if family.custom_tasks)


def custom_task(label_list: Optional[Sequence[str]]) -> TaskSpec:
    if not label_list:
        raise UserError("--task_name custom needs --label_list (the label strings, in id order)")
    if len(set(label_list)) != len(label_list):
        raise UserError(f"--label_list has repeated labels: {list(label_list)}")
    return TaskSpec(
        name=CUSTOM_TASK,
        family=custom_family(),
        labels=tuple(label_list),
        metric="accuracy",
        max_seq_length=128,
        submission_file="custom_predict.json",
        read_texts=custom_text,
        pairs=None,
    )


def family_task_names(family: "Family") -> List[str]:
    """The registry's tasks of one family, in registry order (and custom where the family takes it)."""
    names = [name for name, task in ALL_TASKS.items() if task.family is family]
    return names + ([CUSTOM_TASK] if family.custom_tasks else [])


def get_task(name: str, family: "Family", label_list: Optional[Sequence[str]] = None) -> TaskSpec:
    """The registry entry for --task_name, or a clear error naming the tasks this script handles."""
    if name == CUSTOM_TASK and family.custom_tasks:
        return custom_task(label_list)
    tasks = {n: t for n, t in ALL_TASKS.items() if t.family is family}
    if name not in tasks:
        other = ALL_TASKS.get(name)
        hint = f" ({name} is a {other.family.title} task)" if other else ""
        choices = sorted(tasks) + ([CUSTOM_TASK] if family.custom_tasks else [])
        raise UserError(f"unknown --task_name {name!r}{hint}; this script handles: {', '.join(choices)}")
    return tasks[name]


def get_task_any_family(name: str, label_list: Optional[Sequence[str]] = None) -> TaskSpec:
    """Any registered task; a custom task takes its labels from label_list (an exported model's task.json)."""
    if name == CUSTOM_TASK:
        return custom_task(label_list)
    if name not in ALL_TASKS:
        raise UserError(f"unknown --task_name {name!r}; choose from: {', '.join(sorted(ALL_TASKS) + [CUSTOM_TASK])}")
    return ALL_TASKS[name]


def load_examples(
    task: TaskSpec, split: str, path: Optional[str], max_samples: Optional[int] = None, option: Optional[str] = None
) -> list:
    """Examples of one split from a local file in the task's original format (used as it is) or, without
    one, the hub copy; the first max_samples of them when given."""
    read_file, read_hub = task.read_file or task.family.read_file, task.read_hub or task.family.read_hub
    rows = read_file(path, option or SPLIT_OPTIONS[split]) if path else read_hub(task, split)
    family = task.family
    examples = family.to_examples(task, rows, split)
    if max_samples is not None and max_samples > 0:
        examples = examples[:max_samples]
    logger.info("%s %s: %d examples from %s", task.name, split, len(examples), path or "/".join(task.hub or ()))
    return examples


def encode_examples(
    task: TaskSpec,
    split: str,
    examples,
    tokenizer,
    max_seq_length: int,
    truncate: bool,
    window_args=None,
    with_labels: bool = True,
):
    """Model features of any task's examples: classification and NER features with truncation reported, or
    QA windows (labelled when with_labels)."""
    return task.family.encode(task, split, examples, tokenizer, max_seq_length, truncate, window_args, with_labels)


def load_encoded_split(task: TaskSpec, split: str, data_args, tokenizer, window_args=None):
    """(examples, encoded) of one split; QA windows are labelled except in the test split."""
    examples = load_examples(task, split, data_args.split_file(split), data_args.split_max_samples(split))
    encoded = encode_examples(
        task,
        split,
        examples,
        tokenizer,
        data_args.max_seq_length,
        data_args.truncate_long_texts,
        window_args,
        with_labels=split != "test",
    )
    return examples, encoded


def family_collator(task: TaskSpec, tokenizer):
    return task.family.collator(task, tokenizer)
