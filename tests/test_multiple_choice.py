"""The multiple-choice family (C3, CHID): reading both tasks' files as published, padded choices masked, CHID's
passage-level assignment, a tiny model that fits ~200 real C3 questions, export parity on every backend, infer.py
and serve.py equal to the fine-tuning script, compression, the CLUE submission files, and bad input."""

import json
import os

import numpy as np
import paddle
import pytest
from test_serve import Server, request

import compress_multiple_choice
import infer
import model_folder
import model_io
import predictors
import runtime
import utils
from conftest import C3_TRAIN_FILES, choice_file, error_lines, run_cli

C3, CHID = utils.C3, utils.CHID


@pytest.fixture(scope="module")
def deployed_tokenizer():
    return model_io.WordPieceTokenizer(choice_file("ernie-3.0-vocab.txt"))


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# ---- reading --------------------------------------------------------------------------------------------------------
def test_a_c3_folder_reads_the_d_and_m_parts_of_the_split():
    examples = utils.load_examples(C3, "train", choice_file("c3"))
    assert len(examples) == 201  # 100 questions of c3-d-train's first documents, 101 of c3-m-train's
    assert examples[0].where.startswith(choice_file("c3", "c3-d-train.json"))
    assert examples[-1].where.startswith(choice_file("c3", "c3-m-train.json"))


def test_c3_files_separated_by_a_comma_read_as_the_folder_does():
    by_folder = utils.load_examples(C3, "train", choice_file("c3"))
    by_list = utils.load_examples(C3, "train", C3_TRAIN_FILES)
    assert [(e.id, e.label) for e in by_folder] == [(e.id, e.label) for e in by_list]


def test_a_c3_question_keeps_its_document_choices_and_answer():
    first = utils.load_examples(C3, "dev", choice_file("c3", "c3-d-dev.json"))[0]
    assert (
        first.context
        == "男：听说你们公司要派你去南方工作?\n女：是呀，虽说那边环境好，待遇也不错，可我还是觉得在家里最好。"
    )
    assert first.question == "他们在谈论什么?"
    assert first.choices == ["旅行", "坏境", "工作", "家庭"]
    assert first.label == 2
    assert first.id == "47-275-0"  # the document's id and the question's number


def test_c3_test_questions_keep_their_own_ids():
    examples = utils.load_examples(C3, "test", choice_file("c3", "test.json"))
    assert [e.id for e in examples] == list(range(7))
    assert all(e.label is None for e in examples)


def test_fewclue_chid_rows_are_one_blank_each():
    examples = utils.load_examples(CHID, "train", choice_file("chid", "train_few.json"))
    assert len(examples) == 64
    assert examples[0].question == "#idiom#"
    assert len(examples[0].choices) == 7
    assert examples[0].choices[examples[0].label] == "谨小慎微"


def test_clue_chid_reads_every_blank_with_its_answer_from_the_answer_file():
    examples = utils.load_examples(CHID, "dev", choice_file("chid", "clue_dev.json"))
    answers = read_json(choice_file("chid", "clue_dev_answer.json"))
    assert [e.id for e in examples] == list(answers)
    assert [e.label for e in examples] == list(answers.values())
    assert all(len(e.choices) == 10 for e in examples)


def test_the_blanks_of_one_clue_chid_line_share_one_group():
    examples = utils.load_examples(CHID, "dev", choice_file("chid", "clue_dev.json"))
    groups = [e.group for e in examples]
    assert len(set(groups)) == 4  # four lines of three blanks each
    assert all(groups.count(group) == 3 for group in groups)


def write_c3(path, questions, document_id="x-1"):
    path.write_text(json.dumps([[["男：你好。", "女：你好。"], questions, document_id]], ensure_ascii=False))
    return str(path)


def test_odd_c3_rows_are_left_out_and_counted(tmp_path, caplog):
    questions = [
        {"question": "谁?", "choice": ["男的", "女的"], "answer": "男的"},
        {"question": "哪儿?", "choice": [], "answer": "家"},
        {"question": "什么?", "choice": ["书", "笔"], "answer": "纸"},
    ]
    examples = utils.load_examples(C3, "train", write_c3(tmp_path / "c3.json", questions))
    assert [e.question for e in examples] == ["谁?"]
    assert "left out 2 rows (1 with an answer that is not among its choices, 1 with no choices)" in caplog.text


def test_repeated_choices_are_kept_once(tmp_path):
    questions = [{"question": "谁?", "choice": ["男的", "女的", "男的"], "answer": "女的"}]
    (example,) = utils.load_examples(C3, "train", write_c3(tmp_path / "c3.json", questions))
    assert example.choices == ["男的", "女的"]
    assert example.label == 1


def test_a_chid_blank_without_an_answer_is_left_out_of_the_dev_set(tmp_path):
    line = {"candidates": ["一心一意", "三心二意"], "content": ["他做事#idiom000001#，从不#idiom000002#。"]}
    (tmp_path / "dev.json").write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "dev_answer.json").write_text(json.dumps({"#idiom000001#": 0}), encoding="utf-8")
    examples = utils.load_examples(CHID, "dev", str(tmp_path / "dev.json"))
    assert [e.id for e in examples] == ["#idiom000001#"]


BAD_FILES = {
    "not a list of documents": ('{"a": 1}', r"expected a JSON list of \[document lines, questions, id\] entries"),
    "a document that is not a triple": ("[[1, 2]]", r"document 1: expected \[document lines, questions, id\]"),
    "a question without text": ('[[["x"], [{"choice": ["a"], "answer": "a"}], "d"]]', r"the question is missing"),
    "too many choices": (
        '[[["x"], [{"question": "q", "choice": ["a", "b", "c", "d", "e"], "answer": "a"}], "d"]]',
        r"5 choices; task c3 takes at most 4",
    ),
    "no usable question": ('[[["x"], [{"question": "q", "choice": [], "answer": "a"}], "d"]]', r"no usable questions"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_malformed_c3_file_is_one_error(tmp_path, case):
    text, message = BAD_FILES[case]
    (tmp_path / "c3.json").write_text(text, encoding="utf-8")
    with pytest.raises(runtime.UserError, match=message):
        utils.load_examples(C3, "train", str(tmp_path / "c3.json"))


# ---- encoding and masking -------------------------------------------------------------------------------------------
def test_every_choice_of_a_c3_question_sees_the_same_document(deployed_tokenizer):
    examples = utils.load_examples(C3, "train", choice_file("c3"))[:40]
    encoded = utils.encode_examples(C3, "train", examples, deployed_tokenizer, 48, True)
    for start, end in encoded.choice_ranges:
        documents = {tuple(s["input_ids"][: s["token_type_ids"].index(1)]) for s in encoded.sequences[start:end]}
        assert len(documents) == 1
    assert encoded.truncated > 0


def test_a_c3_question_and_its_choice_are_kept_whole(deployed_tokenizer):
    example = utils.load_examples(C3, "dev", choice_file("c3", "c3-d-dev.json"))[0]
    encoded = utils.encode_examples(C3, "dev", [example], deployed_tokenizer, 48, True)
    question = utils.token_ids(deployed_tokenizer, example.question)
    for sequence, choice in zip(encoded.sequences, example.choices):
        second = [i for i, t in zip(sequence["input_ids"], sequence["token_type_ids"]) if t == 1][:-1]
        assert second == question + utils.token_ids(deployed_tokenizer, choice)


def test_a_chid_window_marks_its_blank_and_hides_the_others(deployed_tokenizer):
    example = utils.load_examples(CHID, "dev", choice_file("chid", "clue_dev.json"))[0]
    mask, unknown = deployed_tokenizer.convert_tokens_to_ids(["[MASK]", "[UNK]"])
    pairs, _ = utils.chid_choice_inputs(example, deployed_tokenizer, 64)
    window = pairs[0][1]
    assert [window[i : i + 4] for i in range(len(window) - 3)].count([mask] * 4) == 1
    assert len(pairs) == 10
    assert [candidate for candidate, _ in pairs][3] == utils.token_ids(deployed_tokenizer, example.choices[3])


def test_padded_choices_are_masked_out_of_the_softmax(deployed_tokenizer):
    examples = utils.load_examples(C3, "train", choice_file("c3"))
    short = [e for e in examples if len(e.choices) < 4][:2] + [e for e in examples if len(e.choices) == 4][:1]
    encoded = utils.encode_examples(C3, "train", short, deployed_tokenizer, 48, True)
    batch = utils.family_collator(C3, deployed_tokenizer)(encoded.dataset)
    assert batch["input_ids"].shape[1] == 4
    expected = [[1.0] * len(e.choices) + [0.0] * (4 - len(e.choices)) for e in short]
    assert batch["choice_mask"].numpy().tolist() == expected
    logits = paddle.to_tensor([[0.0, 0.0, 50.0, 50.0]] * 3)  # a padded choice scoring highest
    masked = utils.masked_choice_logits(logits, batch["choice_mask"]).numpy()
    assert [int(row.argmax()) < len(e.choices) for row, e in zip(masked, short)] == [True, True, True]


def test_the_training_loss_ignores_padded_choices():
    class Scores(paddle.nn.Layer):
        def __init__(self, logits):
            super().__init__()
            self.logits = paddle.to_tensor(logits)

        def forward(self, input_ids, token_type_ids):
            return self.logits

    mask = paddle.to_tensor([[1.0, 1.0, 0.0, 0.0]])
    batch = {"input_ids": None, "token_type_ids": None, "choice_mask": mask, "labels": paddle.to_tensor([1])}
    padded_low, _ = utils.choice_training_loss(Scores([[1.0, 2.0, -5.0, -5.0]]), batch)
    padded_high, _ = utils.choice_training_loss(Scores([[1.0, 2.0, 30.0, 30.0]]), batch)
    two_choices = float(-np.log(np.exp(2.0) / (np.exp(1.0) + np.exp(2.0))))
    assert float(padded_low) == pytest.approx(two_choices, abs=1e-4)
    assert float(padded_high) == pytest.approx(two_choices, abs=1e-4)


# ---- CHID's passage-level assignment --------------------------------------------------------------------------------
def test_the_blanks_of_a_passage_never_share_a_candidate():
    # by hand: both blanks like candidate 0 best; blank 0 likes it most (-0.1), so blank 1 takes its next best, 2
    scores = [np.log([0.90, 0.05, 0.05]), np.log([0.60, 0.10, 0.30])]
    assert utils.assigned_choices(scores) == [0, 2]
    assert [int(np.argmax(row)) for row in scores] == [0, 0]  # what deciding each blank alone would do


def test_more_blanks_than_candidates_fall_back_to_each_blanks_best():
    # by hand: blank 0 takes candidate 0 (0.9), blank 2 the other (0.3 beats blank 1's 0.2); blank 1 its own best
    scores = [np.log([0.9, 0.1]), np.log([0.8, 0.2]), np.log([0.7, 0.3])]
    assert utils.assigned_choices(scores) == [0, 0, 1]


def chid_model_rows(chid_run, batch_size):
    export = os.path.join(chid_run, "export")
    examples = utils.load_examples(CHID, "dev", choice_file("chid", "clue_dev.json"))
    encoded = utils.encode_examples(CHID, "dev", examples, model_io.load_deployed_tokenizer(export), 64, True)
    options = predictors.PredictorOptions(num_threads=1, batch_size=batch_size, max_seq_length=64)
    result = predictors.run_predictor(
        predictors.create_predictor(export, options), encoded.sequences, batch_size, False
    )
    return examples, utils.prediction_rows(CHID, examples, encoded, result.outputs, None)


def test_a_passage_split_across_batches_is_decided_as_in_one_batch(chid_run):
    examples, one_batch = chid_model_rows(chid_run, 128)
    _, many_batches = chid_model_rows(chid_run, 7)  # 120 choice rows in batches of 7: lines split between them
    assert [row["index"] for row in many_batches] == [row["index"] for row in one_batch]
    for group in {e.group for e in examples}:
        chosen = [row["index"] for row, e in zip(one_batch, examples) if e.group == group]
        assert len(set(chosen)) == len(chosen)


# ---- fine-tuning, export, deployment --------------------------------------------------------------------------------
def test_a_tiny_model_fits_two_hundred_real_c3_questions(c3_run):
    results = read_json(os.path.join(c3_run, "eval_results.json"))
    assert results["eval_samples"] == 201
    assert results["accuracy"] >= 0.8, results  # chance is 0.27 (2 to 4 choices a question)


def test_the_c3_submission_file_is_keyed_by_the_questions_own_ids(c3_run):
    with open(os.path.join(c3_run, "c311_predict.json"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert [row["id"] for row in rows] == list(range(7))
    choices = [len(e.choices) for e in utils.load_examples(C3, "test", choice_file("c3", "test.json"))]
    assert all(0 <= row["label"] < count for row, count in zip(rows, choices))


def test_the_chid_submission_file_is_keyed_by_the_test_files_own_tags(chid_run):
    predictions = read_json(os.path.join(chid_run, "chid11_predict.json"))
    assert list(predictions) == list(read_json(choice_file("chid", "clue_train_answer.json")))
    assert all(0 <= index < 10 for index in predictions.values())


def test_the_deployed_model_predicts_the_fine_tuning_scripts_test_answers(c3_run):
    export = os.path.join(c3_run, "export")
    examples = utils.load_examples(C3, "test", choice_file("c3", "test.json"))
    encoded = utils.encode_examples(C3, "test", examples, model_io.load_deployed_tokenizer(export), 48, True)
    options = predictors.PredictorOptions(num_threads=1, batch_size=8, max_seq_length=48)
    result = predictors.run_predictor(predictors.create_predictor(export, options), encoded.sequences, 8, False)
    rows = utils.prediction_rows(C3, examples, encoded, result.outputs, None)
    with open(os.path.join(c3_run, "c311_predict.json"), encoding="utf-8") as handle:
        submitted = [json.loads(line)["label"] for line in handle]
    assert [row["index"] for row in rows] == submitted


def test_the_export_scores_one_choice_a_row(c3_run):
    task_file = model_folder.read_task_file(os.path.join(c3_run, "export"))
    assert utils.FAMILIES[task_file.family] is C3.family
    assert task_file.input_names == ("input_ids", "token_type_ids")


@pytest.mark.parametrize("backend", ["paddle", "onnxruntime", "openvino"])
def test_infer_gives_the_fine_tuning_scripts_dev_accuracy_on_every_backend(c3_run, backend):
    report = infer.main(
        ["--model_path", os.path.join(c3_run, "export"), "--dev_file", C3_TRAIN_FILES, "--backend", backend]
    )
    expected = read_json(os.path.join(c3_run, "eval_results.json"))["accuracy"]
    assert report["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-6)


C3_INPUT = {
    "context": "男：你今天去哪儿了？\n女：我去图书馆借书了。",
    "question": "女的去哪儿了？",
    "choices": ["商店", "图书馆", "学校"],
}


def infer_c3_row(c3_run, *extra):
    args = ["--model_path", os.path.join(c3_run, "export"), "--text", C3_INPUT["context"]]
    args += ["--question", C3_INPUT["question"], *sum((["--choice", c] for c in C3_INPUT["choices"]), []), *extra]
    return infer.main(args)["predictions"]


def test_infer_answers_a_raw_c3_question(c3_run):
    (row,) = infer_c3_row(c3_run)
    assert row["answer"] in C3_INPUT["choices"]
    assert row["answer"] == C3_INPUT["choices"][row["index"]]
    assert 1 / 3 <= row["probability"] <= 1.0


def test_infer_fills_every_blank_of_a_raw_chid_passage_with_distinct_candidates(chid_run):
    rows = infer.main(
        ["--model_path", os.path.join(chid_run, "export"), "--text", "他做事总是#idiom#，从不拖延，大家都#idiom#。",
         "--choice", "雷厉风行", "--choice", "赞不绝口", "--choice", "拖泥带水"]
    )["predictions"]  # fmt: skip
    assert [row["blank"] for row in rows] == ["#idiom1#", "#idiom2#"]
    assert rows[0]["index"] != rows[1]["index"]


def test_infer_streams_json_lines_of_questions(c3_run, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(C3_INPUT, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    infer.main(["--model_path", os.path.join(c3_run, "export"), "--input_file", str(tmp_path / "in.jsonl"),
                "--output_file", str(out)])  # fmt: skip
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["line"] == 0
    assert row["index"] == infer_c3_row(c3_run)[0]["index"]


BAD_INFER = {
    "a question without choices": (
        ["--question", "q"],
        "task c3 chooses among given answers: give one --choice per --text",
    ),
    "choices without the question": (
        ["--choice", "a", "--choice", "b"],
        "task c3 answers a question about each context: give one --question per --text",
    ),
    "an empty choice": (["--question", "q", "--choice", "a", "--choice", " "], "--choice: an input is empty"),
    "a pair for a question": (["--question", "q", "--choice", "a", "--text_pair", "b"], "--text_pair is not used"),
}


@pytest.mark.parametrize("case", sorted(BAD_INFER))
def test_bad_raw_input_is_one_error_line(c3_run, capsys, case):
    extra, message = BAD_INFER[case]
    status, stderr = run_cli(
        infer.main, ["--model_path", os.path.join(c3_run, "export"), "--text", "doc", *extra], capsys
    )
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert message in error_lines(stderr)[0]


@pytest.fixture(scope="module")
def c3_server(c3_run):
    server = Server(os.path.join(c3_run, "export")).wait_ready()
    try:
        yield server
    finally:
        server.stop()


def test_serve_answers_as_infer_does(c3_server, c3_run):
    body = {"data": {k: [v] for k, v in C3_INPUT.items()}, "parameters": {}}
    status, answer, _ = request(c3_server, "POST", "/c3", body)
    assert status == 200
    (expected,) = infer_c3_row(c3_run, "--num_threads", "1")
    assert answer["result"][0]["index"] == expected["index"]
    assert answer["result"][0]["probability"] == pytest.approx(expected["probability"], abs=1e-5)


def test_serve_fills_the_blanks_of_a_chid_passage_as_infer_does(chid_run):
    passage, candidates = "他做事总是#idiom#，从不拖延，大家都#idiom#。", ["雷厉风行", "赞不绝口", "拖泥带水"]
    server = Server(os.path.join(chid_run, "export")).wait_ready()
    try:
        status, answer, _ = request(server, "POST", "/chid", {"data": {"context": [passage], "choices": [candidates]}})
    finally:
        server.stop()
    assert status == 200
    args = ["--model_path", os.path.join(chid_run, "export"), "--text", passage, "--num_threads", "1"]
    expected = infer.main(args + sum((["--choice", c] for c in candidates), []))["predictions"]
    assert [row["index"] for row in answer["result"]] == [row["index"] for row in expected]
    assert len({row["index"] for row in answer["result"]}) == 2


@pytest.mark.parametrize(
    "data, message",
    [
        ({"context": ["d"], "question": ["q"]}, "task c3 chooses among given answers: give data.choices"),
        ({"context": ["d"], "question": ["q"], "choices": ["a", "b"]}, "data.choices must be a list of string lists"),
        ({"context": ["d"], "question": ["q"], "choices": [["a", ""]]}, "data.choices[0][1] is empty"),
        ({"context": ["d"], "question": ["q"], "choices": [list("abcde")]}, "5 choices; task c3 takes at most 4"),
        ({"context": ["d"], "question": ["q"], "choices": [["a"], ["b"]]}, "data.context has 1 texts but data.choices"),
        ({"text": ["d"]}, "task c3 takes documents with a question and its choices: data.text is not used"),
    ],
)
def test_bad_c3_requests_are_a_4xx_message(c3_server, data, message):
    status, answer, _ = request(c3_server, "POST", "/c3", {"data": data})
    assert 400 <= status < 500
    assert message in answer["error"], answer


# ---- compression ----------------------------------------------------------------------------------------------------
def test_compression_of_a_c3_reader_serves_its_best_as_measured(c3_run, tmp_path):
    output_dir = str(tmp_path / "compress")
    report = compress_multiple_choice.main(
        ["--task_name", "c3", "--model_name_or_path", c3_run, "--train_file", choice_file("c3"),
         "--dev_file", C3_TRAIN_FILES, "--output_dir", output_dir, "--max_seq_length", "48", "--max_steps", "3",
         "--per_device_train_batch_size", "8", "--algo_list", "hist", "--batch_size_list", "4",
         "--importance_batches", "2", "--per_device_eval_batch_size", "8", "--max_metric_drop", "100",
         "--backends", "paddle", "onnxruntime", "--measure_memory", "false"]
    )  # fmt: skip
    assert {c.kind for c in report.candidates} >= {"pruned float", "int8"}
    assert report.parent.metric_points == pytest.approx(
        100 * read_json(os.path.join(c3_run, "eval_results.json"))["accuracy"]
    )
    best = report.candidate(report.best)
    served = infer.main(["--model_path", best.path, "--dev_file", C3_TRAIN_FILES, "--batch_size", "8"])
    assert (served["backend"], served["precision"]) == (best.backend, best.precision)
    assert served["metrics"]["accuracy"] == pytest.approx(best.metrics["accuracy"], abs=1e-6)


# ---- odd rows, the indices as given, one request's failure --------------------------------------------------------
def test_an_input_line_with_no_choices_is_one_error():
    with pytest.raises(runtime.UserError, match=r"f:1: field 'choices' must be a non-empty list"):
        infer.line_examples(C3, json.dumps({"context": "d", "question": "q", "choices": []}), 0, "f:1")
    with pytest.raises(runtime.UserError, match=r"f:1: field 'context' must be a non-empty string"):
        infer.line_examples(C3, json.dumps({"context": None, "question": "q", "choices": ["a"]}), 0, "f:1")
    with pytest.raises(runtime.UserError, match=r"'question' is not used"):
        infer.line_examples(CHID, json.dumps({"context": "#idiom#", "question": "q", "choices": ["a"]}), 0, "f:1")


def test_a_chid_row_without_candidates_is_left_out(tmp_path):
    rows = [
        {"id": 1, "content": "他#idiom#。", "answer": 0},
        {"id": 2, "candidates": ["一心一意"], "content": "他#idiom#。", "answer": 0},
    ]
    (tmp_path / "few.json").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    assert [e.id for e in utils.load_examples(CHID, "train", str(tmp_path / "few.json"))] == [2]


def test_fewclue_rows_without_an_id_keep_distinct_ids(tmp_path):
    row = {"candidates": ["一心一意", "三心二意"], "content": "他做事#idiom#。", "answer": 0}
    (tmp_path / "few.json").write_text((json.dumps(row, ensure_ascii=False) + "\n") * 2, encoding="utf-8")
    examples = utils.load_examples(CHID, "train", str(tmp_path / "few.json"))
    assert len({e.id for e in examples}) == 2


def test_predicted_indices_count_the_choices_as_given(tmp_path, c3_run):
    """A repeated choice is kept once, but the index a row or a submission file reports is its place in the choices
    as given."""
    args = ["--model_path", os.path.join(c3_run, "export"), "--text", C3_INPUT["context"], "--question", "q"]
    rows = infer.main(args + sum((["--choice", c] for c in ["商店", "商店", "图书馆"]), []))["predictions"]
    given = ["商店", "商店", "图书馆"]
    assert given[rows[0]["index"]] == rows[0]["answer"]
    assert rows[0]["index"] in (0, 2)


def test_one_failing_request_does_not_fail_the_requests_batched_with_it(c3_run):
    """A question too long for the model's length (48 here) fails alone, refused as it is encoded in its own handler
    before any batch; the one sent with it is answered."""
    import concurrent.futures

    server = Server(os.path.join(c3_run, "export"), "--max_wait_ms", "800").wait_ready()
    good = {"data": {k: [v] for k, v in C3_INPUT.items()}}
    bad = {"data": {"context": ["文"], "question": ["问" * 80], "choices": [["甲" * 40, "乙"]]}}
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda body: request(server, "POST", "/c3", body), [good, bad]))
    finally:
        server.stop()
    assert answers[0][0] == 200
    assert answers[1][0] == 422
    assert "leaves no room for the document" in answers[1][1]["error"]
    assert "requests failed" not in server.process.stderr.read()  # no batch failed: the bad one never joined one


def test_a_request_larger_than_the_queue_is_413_not_503(c3_run):
    server = Server(os.path.join(c3_run, "export"), "--max_queue", "4").wait_ready()
    body = {"data": {"context": ["d", "d"], "question": ["q", "q"], "choices": [["a", "b", "c"], ["a", "b"]]}}
    try:
        status, answer, _ = request(server, "POST", "/c3", body)
    finally:
        server.stop()
    assert status == 413
    assert "the request makes 5 sequences; at most 4" in answer["error"]
