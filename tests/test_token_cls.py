"""MSRA_NER: readers, label alignment, entity metrics and run_token_cls.py end to end, on real sentences."""

import json
import os
import re

import numpy as np
import pytest
from paddlenlp.transformers import AutoModelForTokenClassification

import model_io
import run_token_cls
import utils
from conftest import dynamic_outputs, error_lines, ner_file, padded_batch, run_cli, static_outputs

TASK = utils.MSRA_NER


def test_tsv_and_bio_column_files_give_the_same_sentences():
    tsv = utils.load_examples(TASK, "dev", ner_file("dev.tsv"))
    bio = utils.load_examples(TASK, "dev", ner_file("dev.bio"))
    assert [(e.words, e.tags) for e in tsv] == [(e.words, e.tags) for e in bio]
    assert len(tsv) == 20
    assert bio[1].where.startswith(ner_file("dev.bio") + ":")
    assert tsv[1].where == ner_file("dev.tsv") + ":2"


def test_hub_reader_and_local_reader_give_the_same_sentences():
    from paddlenlp.datasets import load_dataset

    hub = load_dataset("msra_ner", data_files=ner_file("dev.tsv"), splits="test")
    from_hub = utils.rows_to_token_examples(
        TASK, ((w, r["tokens"], r["labels"]) for w, r in utils.hub_rows(hub, "msra_ner")), "dev"
    )
    local = utils.load_examples(TASK, "dev", ner_file("dev.tsv"))
    assert [(e.words, e.tags) for e in from_hub] == [(e.words, e.tags) for e in local]


def test_labels_sit_on_each_characters_token_and_special_tokens_are_ignored(tokenizer):
    examples = utils.load_examples(TASK, "train", ner_file("train.tsv"))
    encoded = utils.encode_token_examples(examples, tokenizer, TASK, 128)
    for example, feature in zip(examples, encoded.dataset):
        labels = feature["labels"]
        assert labels[0] == labels[-1] == utils.IGNORE_INDEX  # [CLS] and [SEP] are never an entity
        assert [TASK.labels[i] for i in labels[1:-1]] == example.tags  # one character, one token
    assert any(tag != "O" for e in examples for tag in e.tags)


def test_word_pieces_after_the_first_and_dropped_characters_keep_alignment(tokenizer):
    example = utils.TokenExample(0, ["江", "ωforce", " ", "京"], ["B-PER", "I-PER", "O", "B-LOC"], "hand:1")
    feature = utils.encode_token_examples([example], tokenizer, TASK, 32).dataset[0]
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "江", "ω", "##force", "[UNK]", "京", "[SEP]"]
    assert [TASK.labels[i] if i != utils.IGNORE_INDEX else None for i in feature["labels"]] == [
        None,
        "B-PER",
        "I-PER",
        None,
        "O",
        "B-LOC",
        None,
    ]


def test_truncated_sentences_are_counted_and_scored_on_what_the_model_saw(tokenizer):
    examples = utils.load_examples(TASK, "train", ner_file("train.tsv"))
    encoded = utils.encode_token_examples(examples, tokenizer, TASK, 16)
    longer = [e for e in examples if len(e.words) > 14]
    assert encoded.truncated == len(longer) > 0
    for example, feature, positions in zip(examples, encoded.dataset, encoded.word_positions):
        assert len(feature["input_ids"]) <= 16
        assert len(positions) == min(len(example.words), 14)
        assert sum(label != utils.IGNORE_INDEX for label in feature["labels"]) == len(positions)


def test_entities_carry_text_type_and_character_offsets():
    words = list("江泽民访问洛杉矶")
    tags = ["B-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC"]
    assert utils.entities_from_tags(words, tags) == [
        {"text": "江泽民", "type": "PER", "start": 0, "end": 3},
        {"text": "洛杉矶", "type": "LOC", "start": 5, "end": 8},
    ]
    assert utils.entities_from_tags(["中国", "银行", "好"], ["B-ORG", "I-ORG", "O"]) == [
        {"text": "中国银行", "type": "ORG", "start": 0, "end": 4}
    ]


def test_entity_metrics_need_exact_span_and_type():
    gold = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "O", "O"]]
    predicted = [
        ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"],  # PER cut short: wrong; LOC right
        ["B-LOC", "I-LOC", "O", "B-PER"],  # ORG typed as LOC: wrong; a spurious PER
    ]
    metrics = utils.entity_metrics(gold, predicted)
    assert metrics["precision"] == pytest.approx(1 / 4)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    assert utils.entity_metrics(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_metrics_from_logits_score_only_labelled_positions():
    labels = np.array([[-100, 0, 1, 6, -100, -100]])  # [CLS] B-PER I-PER O [SEP] pad
    logits = np.full((1, 6, 7), -5.0)
    for position, tag_id in enumerate([0, 0, 1, 6, 0, 0]):  # [CLS], [SEP] and padding predicted B-PER: ignored
        logits[0, position, tag_id] = 5.0
    assert utils.entity_metrics(*utils.scored_tags(logits, labels, TASK.labels))["f1"] == 1.0


def test_training_overfits_a_small_slice(tiny_ernie, tmp_path):
    train = ner_file("train.tsv")
    run_token_cls.main(
        [
            "--task_name",
            "msra_ner",
            "--model_name_or_path",
            tiny_ernie,
            "--train_file",
            train,
            "--dev_file",
            train,
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "16",
            "--num_train_epochs",
            "40",
            "--learning_rate",
            "5e-3",
            "--per_device_train_batch_size",
            "8",
            "--warmup_ratio",
            "0",
            "--dropout",
            "0",
            "--evaluation_strategy",
            "no",
            "--save_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--output_dir",
            str(tmp_path),
            "--do_train",
            "--do_eval",
        ]
    )
    with open(tmp_path / "eval_results.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert results["f1"] >= 0.85, results


def test_outputs_and_prediction_file(ner_run):
    with open(os.path.join(ner_run, "eval_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert {"precision", "recall", "f1"} <= set(results)
    assert results["eval_samples"] == 20
    assert results["eval_truncated"] == 0
    with open(os.path.join(ner_run, "msra_ner_predict.json"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    sentences = utils.load_examples(TASK, "test", ner_file("test.tsv"))
    assert [row["id"] for row in rows] == list(range(12))
    assert [row["text"] for row in rows] == [s.text for s in sentences]
    for row in rows:
        for entity in row["entities"]:
            assert row["text"][entity["start"] : entity["end"]] == entity["text"]
            assert entity["type"] in {
                "PER",
                "ORG",
                "LOC",
            }


def test_predicted_entities_follow_the_saved_models_argmax(ner_run):
    model = AutoModelForTokenClassification.from_pretrained(ner_run)
    sentences = utils.load_examples(TASK, "test", ner_file("test.tsv"))
    encoded = utils.encode_token_examples(sentences, model_io.load_tokenizer(ner_run), TASK, 128)
    logits = dynamic_outputs(model, padded_batch(list(encoded.dataset)))
    tags = utils.predicted_word_tags(logits, encoded, sentences, TASK.labels)
    with open(os.path.join(ner_run, "msra_ner_predict.json"), encoding="utf-8") as handle:
        written = [json.loads(line)["entities"] for line in handle]
    assert written == [utils.entities_from_tags(s.words, t) for s, t in zip(sentences, tags)]


def test_exported_static_model_gives_the_dynamic_models_logits(ner_run):
    model = AutoModelForTokenClassification.from_pretrained(ner_run)
    sentences = utils.load_examples(TASK, "dev", ner_file("dev.tsv"))[:8]
    batch = padded_batch(
        list(utils.encode_token_examples(sentences, model_io.load_tokenizer(ner_run), TASK, 128).dataset)
    )
    dynamic, static = dynamic_outputs(model, batch), static_outputs(os.path.join(ner_run, "export"), batch)
    assert static.shape == dynamic.shape
    assert static.shape[-1] == 7
    np.testing.assert_allclose(static, dynamic, atol=1e-4)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


NER_BAD_INPUT = {
    "tag count differs in tsv": (
        ["江\002泽\002民\tB-PER\002I-PER\002I-PER", "我\002们\tO"],
        r"bad:2: 1 tags for 2 characters",
    ),
    "tag count differs in columns": (
        ["江 B-PER", "泽 I-PER", "", "我 O", "们", "好 O"],
        r"bad:4: some characters of this sentence have a tag",
    ),
    "unknown tag": (["江\002泽\tB-PER\002I-PERSON"], r"bad:1: unknown tag 'I-PERSON'"),
    "empty sentence": (["江\002泽\tB-PER\002I-PER", "\tO"], r"bad:2: empty sentence"),
    "extra field": (["江\002泽\tB-PER\002I-PER\textra"], r"bad:1: expected characters and tags separated by one tab"),
    "missing file": (None, r"--train_file: file not found: .*missing"),
    "non utf-8 file": ("江 B-PER\n".encode("gbk"), r"bad: not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(NER_BAD_INPUT))
def test_bad_ner_files_get_one_error_line_naming_file_and_line(case, tiny_ernie, tmp_path, capsys):
    content, message = NER_BAD_INPUT[case]
    if content is None:
        bad = str(tmp_path / "missing")
    elif isinstance(content, bytes):
        (tmp_path / "bad").write_bytes(content)
        bad = str(tmp_path / "bad")
    else:
        bad = write_lines(tmp_path / "bad", content)
    argv = [
        "--task_name",
        "msra_ner",
        "--model_name_or_path",
        tiny_ernie,
        "--train_file",
        bad,
        "--dev_file",
        ner_file("dev.tsv"),
        "--output_dir",
        str(tmp_path / "out"),
        "--do_train",
        "--max_steps",
        "1",
    ]
    status, stderr = run_cli(run_token_cls.main, argv, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "Traceback" not in stderr
    assert re.search(message, error_lines(stderr)[0]), error_lines(stderr)[0]
    assert not (tmp_path / "out").exists()


def test_a_classification_task_is_refused_by_the_ner_script(tiny_ernie, tmp_path, capsys):
    status, stderr = run_cli(
        run_token_cls.main,
        ["--task_name", "tnews", "--model_name_or_path", tiny_ernie, "--output_dir", str(tmp_path), "--do_train"],
        capsys,
    )
    assert status == 2
    assert (
        "unknown --task_name 'tnews' (tnews is a sequence classification task); this script handles: msra_ner" in stderr
    )
