"""Reading, preprocessing, metrics and argument defaults of the classification tasks, on real CLUE rows."""

import json

import numpy as np
import pytest
from paddlenlp.trainer import TrainingArguments

import arguments
import runtime
import utils
from conftest import clue_file


def read_rows(task, split):
    return [json.loads(line) for line in open(clue_file(task, split), encoding="utf-8")]


def test_registry_has_the_seven_clue_tasks_with_clue11_submission_names():
    assert {name: task.submission_file for name, task in utils.SEQ_CLS_TASKS.items()} == {
        "afqmc": "afqmc_predict.json",
        "tnews": "tnews11_predict.json",
        "iflytek": "iflytek_predict.json",
        "cmnli": "cmnli_predict.json",
        "ocnli": "ocnli_50k_predict.json",
        "cluewsc2020": "cluewsc11_predict.json",
        "csl": "csl_predict.json",
    }
    assert len(utils.SEQ_CLS_TASKS["iflytek"].labels) == 119
    assert utils.SEQ_CLS_TASKS["csl"].max_seq_length == 256


def test_wsc_markers_wrap_the_noun_and_the_pronoun_on_real_rows():
    task = utils.SEQ_CLS_TASKS["cluewsc2020"]
    rows = read_rows("cluewsc2020", "dev")
    for row in rows:
        marked, second = task.read_texts(row)
        target = row["target"]
        assert second is None
        assert f"_{target['span1_text']}_" in marked
        assert f"[{target['span2_text']}]" in marked
        assert marked.replace("_", "").replace("[", "").replace("]", "") == row["text"].replace("_", "").replace(
            "[", ""
        ).replace("]", "")
    first = rows[0]  # span1 舌头 at 6, span2 它 at 40
    marked, _ = task.read_texts(first)
    assert marked[6:10] == "_舌头_"
    assert marked[42:45] == "[它]"


def test_wsc_markers_when_the_pronoun_comes_first():
    assert utils.mark_wsc_spans("它是猫的玩具", 2, "猫", 0, "它") == "[它]是_猫_的玩具"


def test_wsc_span_that_does_not_match_the_text_is_an_error_naming_the_line():
    row = read_rows("cluewsc2020", "dev")[0]
    row["target"]["span1_index"] += 1
    with pytest.raises(runtime.UserError, match=r"dev\.json:1: target\.span1_text '舌头' does not match"):
        utils.rows_to_examples(utils.SEQ_CLS_TASKS["cluewsc2020"], [("dev.json:1", row)], "dev")


def test_csl_pairs_its_keywords_with_the_abstract():
    row = read_rows("csl", "dev")[0]
    text_a, text_b = utils.SEQ_CLS_TASKS["csl"].read_texts(row)
    assert text_a == " ".join(row["keyword"])
    assert text_b == row["abst"]


def test_label_ids_follow_each_tasks_own_label_order(tokenizer):
    """OCNLI and CMNLI share a schema but not a label order: the same row gets different ids."""
    rows = [(f"dev.json:{i + 1}", row) for i, row in enumerate(read_rows("ocnli", "dev"))]
    for name in ("ocnli", "cmnli"):
        task = utils.SEQ_CLS_TASKS[name]
        examples = utils.rows_to_examples(task, rows, "dev")
        encoded = utils.encode_text_examples(examples, tokenizer, task, 128)
        assert [task.labels[f["labels"]] for f in encoded.dataset] == [e.label for e in examples]
    assert utils.SEQ_CLS_TASKS["ocnli"].labels.index("neutral") == 2
    assert utils.SEQ_CLS_TASKS["cmnli"].labels.index("entailment") == 1


def test_rows_labelled_dash_are_left_out():
    examples = utils.load_examples(utils.SEQ_CLS_TASKS["ocnli"], "dev", clue_file("ocnli", "dev"))
    assert len(examples) == 29
    assert all(e.label != "-" for e in examples)


def test_prediction_ids_are_each_rows_own_id_else_its_position():
    afqmc_test = utils.load_examples(utils.SEQ_CLS_TASKS["afqmc"], "test", clue_file("afqmc", "test"))
    assert [e.id for e in afqmc_test] == [row["id"] for row in read_rows("afqmc", "test")]
    tnews_test = utils.load_examples(utils.SEQ_CLS_TASKS["tnews"], "test", clue_file("tnews", "test"))
    assert [e.id for e in tnews_test] == list(range(1000, 1016))
    tnews_dev = utils.load_examples(utils.SEQ_CLS_TASKS["tnews"], "dev", clue_file("tnews", "dev"))
    assert [e.id for e in tnews_dev] == list(range(32))  # no id field: position in the file


def test_hub_reader_and_local_reader_give_the_same_examples():
    """paddlenlp's clue builder reads a data file exactly as its hub copy; its label ids map back."""
    from paddlenlp.datasets import load_dataset

    task = utils.SEQ_CLS_TASKS["tnews"]
    hub = load_dataset("clue", "tnews", data_files=clue_file("tnews", "dev"), splits="dev")
    from_hub = utils.rows_to_examples(task, utils.hub_rows(hub, "clue/tnews dev"), "dev")
    local = utils.load_examples(task, "dev", clue_file("tnews", "dev"))
    assert [(e.text_a, e.label) for e in from_hub] == [(e.text_a, e.label) for e in local]


def test_single_and_pair_encoding_on_real_rows(tokenizer):
    task = utils.SEQ_CLS_TASKS["afqmc"]
    example = utils.load_examples(task, "dev", clue_file("afqmc", "dev"))[0]
    feature = utils.encode_text_examples([example], tokenizer, task, 128).dataset[0]
    sep = tokenizer.sep_token_id
    first_sep = feature["input_ids"].index(sep)
    assert feature["input_ids"][0] == tokenizer.cls_token_id
    assert feature["input_ids"][-1] == sep
    assert first_sep == len(example.text_a) + 1  # character-level Chinese
    assert set(feature["token_type_ids"][: first_sep + 1]) == {0}
    assert set(feature["token_type_ids"][first_sep + 1 :]) == {1}


def test_long_texts_are_truncated_and_counted(tokenizer):
    task = utils.SEQ_CLS_TASKS["csl"]
    examples = utils.load_examples(task, "dev", clue_file("csl", "dev"))
    encoded = utils.encode_text_examples(examples, tokenizer, task, 64)
    assert encoded.truncated == len(examples)  # every CSL abstract is longer than 64 tokens
    assert all(len(f["input_ids"]) == 64 for f in encoded.dataset)


def test_long_text_is_an_error_when_truncation_is_off(tokenizer):
    task = utils.SEQ_CLS_TASKS["csl"]
    examples = utils.load_examples(task, "dev", clue_file("csl", "dev"))
    with pytest.raises(
        runtime.UserError, match=r"csl/dev\.json:1: text is \d+ tokens, longer than --max_seq_length 64"
    ):
        utils.encode_text_examples(examples, tokenizer, task, 64, truncate=False)


def test_accuracy_is_the_fraction_of_argmax_hits():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert utils.accuracy(logits, np.array([1, 0, 0, 0])) == 0.75


def parse(argv):
    parsed, _ = arguments.parse_arguments(
        (arguments.ModelArguments, arguments.DataArguments, TrainingArguments),
        utils.FAMILIES["seq_cls"],
        "",
        arguments.user_argv(argv),
    )
    return parsed


def test_task_defaults_come_from_configs_and_the_command_line_wins(tmp_path):
    _, data, training = parse(["--task_name", "csl", "--do_train"])
    assert (data.max_seq_length, training.learning_rate, training.num_train_epochs) == (256, 2e-5, 5)
    assert training.output_dir == "output/csl"
    assert training.metric_for_best_model == "accuracy"
    _, data, training = parse(
        [
            "--task_name",
            "csl",
            "--learning_rate",
            "1e-4",
            "--max_seq_length",
            "128",
            "--output_dir",
            str(tmp_path),
            "--do_eval",
        ]
    )
    assert (data.max_seq_length, training.learning_rate, training.output_dir) == (128, 1e-4, str(tmp_path))


def test_a_json_or_yaml_arguments_file_is_read_like_the_command_line(tmp_path):
    json_file = tmp_path / "args.json"
    json_file.write_text(
        json.dumps({"task_name": "tnews", "learning_rate": 1e-4, "do_train": True, "label_list": None})
    )
    yaml_file = tmp_path / "args.yml"
    yaml_file.write_text("task_name: tnews\nnum_train_epochs: 7\ndo_eval: true\n")
    _, data, training = parse([str(json_file)])
    assert (data.task_name, training.learning_rate, training.do_train, training.num_train_epochs) == (
        "tnews",
        1e-4,
        True,
        3,
    )
    _, _, training = parse([str(yaml_file)])
    assert (training.num_train_epochs, training.do_eval, training.learning_rate) == (7, True, 3e-5)
