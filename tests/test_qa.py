"""CMRC2018: reader, sliding windows, post-processing, the official metrics and run_qa.py end to end."""

import json
import os
import random
import re

import numpy as np
import pytest
from paddlenlp.transformers import AutoModelForQuestionAnswering

import model_io
import run_qa
import runtime
import utils
from conftest import QA_SMALL, dynamic_outputs, error_lines, padded_batch, qa_args, qa_file, run_cli, static_outputs

TASK = utils.CMRC2018


# ---- windows ---------------------------------------------------------------------------------------
def test_windows_cover_every_token_for_any_length_and_stride():
    rng = random.Random(0)
    for _ in range(2000):
        window = rng.randint(1, 60)
        stride, tokens = rng.randint(1, window), rng.randint(1, 400)
        starts = utils.window_starts(tokens, window, stride)
        covered = set()
        for start in starts:
            covered.update(range(start, min(start + window, tokens)))
        assert covered == set(range(tokens))
        assert starts == sorted(set(starts))
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def random_context(rng, vocabulary):
    words = [rng.choice(vocabulary) for _ in range(rng.randint(5, 300))]
    return "".join(w if len(w) == 1 else f" {w} " for w in words)


def test_training_windows_hold_every_answer_and_label_it_exactly(tokenizer):
    """Property: over random mixed Chinese/English contexts, answers and strides, some window labels the
    answer's tokens, those tokens slice back to text that contains the answer, and other windows point at [CLS]."""
    rng = random.Random(1)
    vocabulary = list("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会") + [
        "ERNIE",
        "force",
        "2012",
    ]
    for trial in range(150):
        context = random_context(rng, vocabulary)
        start = rng.randrange(len(context))
        end = min(len(context), start + rng.randint(1, 20))
        if not context[start:end].strip():
            continue
        text = context[start:end]
        example = utils.QAExample(f"q{trial}", "这是什么", context, [text], start, text, "random")
        max_seq_length = rng.choice([24, 32, 64])
        window = max_seq_length - len(tokenizer.tokenize("这是什么")) - 3
        stride = rng.randint(1, window)
        features = utils.prepare_qa_features([example], tokenizer, max_seq_length, stride, 64, with_labels=True)
        labelled = [i for i, f in enumerate(features.dataset) if f["start_positions"] > 0]
        span = utils.answer_token_span(
            tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"], start, end
        )
        if span[1] - span[0] + 1 > window:
            continue  # an answer longer than a window cannot be held whole
        assert labelled, (context, text, stride)
        for i in labelled:
            f, offsets = features.dataset[i], features.offsets[i]
            assert f["end_positions"] >= f["start_positions"]
            sliced = context[offsets[f["start_positions"]][0] : offsets[f["end_positions"]][1]]
            assert text.strip() in sliced
            assert len(sliced) <= len(text) + 2 * max(map(len, vocabulary)) + 2
        for i, f in enumerate(features.dataset):
            if i not in labelled:
                assert f["start_positions"] == f["end_positions"] == 0


def test_a_doc_stride_longer_than_the_window_is_refused(tokenizer):
    example = utils.QAExample("q", "问题", "上下文" * 20, ["上下文"], 0, "上下文", "hand")
    with pytest.raises(
        runtime.UserError, match=r"--doc_stride 100 must be between 1 and the context window of 27 tokens"
    ):
        utils.prepare_qa_features([example], tokenizer, 32, 100, 64, with_labels=False)


# ---- post-processing -------------------------------------------------------------------------------
def hand_features(tokenizer, context, max_seq_length=32, stride=8):
    example = utils.QAExample("q", "谁", context, ["x"], None, None, "hand")
    return example, utils.prepare_qa_features([example], tokenizer, max_seq_length, stride, 64, with_labels=False)


def logits_pointing_at(features, feature_number, first_char, last_char, strength=10.0):
    """Start/end logits that favour, in one window, the tokens holding first_char and last_char."""
    rows = len(features.offsets)
    length = max(len(o) for o in features.offsets)
    start_logits, end_logits = np.zeros((rows, length)), np.zeros((rows, length))
    offsets = features.offsets[feature_number]
    start = next(i for i, o in enumerate(offsets) if o and o[0] <= first_char < o[1])
    end = next(i for i, o in enumerate(offsets) if o and o[0] <= last_char < o[1])
    start_logits[feature_number, start] = strength
    end_logits[feature_number, end] = strength
    return start_logits, end_logits


def test_postprocessing_slices_the_best_span_from_the_original_context(tokenizer):
    context = "早在1992年，ERNIE模型由百度发布。" * 3
    example, features = hand_features(tokenizer, context)
    assert len(features.offsets) > 1  # several windows
    last = len(features.offsets) - 1
    first_char = context.rindex("ERNIE")
    start_logits, end_logits = logits_pointing_at(features, last, first_char, first_char + len("ERNIE模型") - 1)
    predictions, nbest = utils.postprocess_qa_predictions([example], features, start_logits, end_logits, 5, 30)
    assert predictions == {"q": "ERNIE模型"}
    assert nbest["q"][0]["text"] == "ERNIE模型"
    assert sum(c["probability"] for c in nbest["q"]) <= 1 + 1e-6
    assert [c["score"] for c in nbest["q"]] == sorted((c["score"] for c in nbest["q"]), reverse=True)
    assert len(nbest["q"]) == 5


def test_the_same_answer_text_from_several_spans_is_one_nbest_entry_with_the_summed_probability():
    candidates = [{"text": "a", "score": 1.0}, {"text": "b", "score": 1.0}, {"text": "a", "score": 0.0}]
    merged = utils.merged_by_text(candidates)
    e = np.e
    assert [c["text"] for c in merged] == ["a", "b"]
    assert merged[0]["probability"] == pytest.approx((e + 1) / (2 * e + 1))
    assert merged[1]["probability"] == pytest.approx(e / (2 * e + 1))
    assert merged[0]["score"] == 1.0  # the best span's scores


def test_overlapping_windows_give_each_answer_text_once(tokenizer):
    context = "早在1992年，ERNIE模型由百度发布。" * 3
    example, features = hand_features(tokenizer, context)
    first_char = context.index("ERNIE", 9)  # the second occurrence
    windows = [n for n, offsets in enumerate(features.offsets) if any(o and o[0] == first_char for o in offsets)]
    assert len(windows) >= 2  # the span lies in two overlapping windows
    start_logits, end_logits = np.zeros((len(features.offsets), 32)), np.zeros((len(features.offsets), 32))
    for window in windows:
        s, e = logits_pointing_at(features, window, first_char, first_char + len("ERNIE模型") - 1)
        start_logits, end_logits = start_logits + s[:, :32], end_logits + e[:, :32]
    _, nbest = utils.postprocess_qa_predictions([example], features, start_logits, end_logits, 1000, 30)
    texts = [c["text"] for c in nbest["q"]]
    assert texts[0] == "ERNIE模型"
    assert len(texts) == len(set(texts))
    assert sum(c["probability"] for c in nbest["q"]) == pytest.approx(1.0)


def test_postprocessing_skips_reversed_too_long_and_non_context_spans(tokenizer):
    context = "百度在北京发布了文心大模型"
    example, features = hand_features(tokenizer, context, max_seq_length=64)
    start_logits, end_logits = logits_pointing_at(
        features, 0, context.index("文"), context.index("北")
    )  # end before start
    _, second_end = logits_pointing_at(features, 0, context.index("文"), context.index("型"), strength=5.0)
    end_logits = end_logits + second_end
    start_logits[0, 0] = end_logits[0, 0] = 100.0  # [CLS] (the question side) is never an answer
    predictions, _ = utils.postprocess_qa_predictions([example], features, start_logits, end_logits, 3, 30)
    assert predictions["q"] == "文心大模型"  # the reversed 文..北 pair and [CLS] are skipped
    start_logits, end_logits = logits_pointing_at(features, 0, context.index("百"), context.index("型"))
    long, _ = utils.postprocess_qa_predictions([example], features, start_logits, end_logits, 20, 30)
    short, _ = utils.postprocess_qa_predictions([example], features, start_logits, end_logits, 20, 4)
    assert long["q"] == context
    assert len(short["q"]) <= 4


def test_no_valid_span_gives_an_empty_answer(tokenizer):
    example, features = hand_features(tokenizer, "北京")
    features.offsets[0] = [None] * len(features.offsets[0])
    predictions, nbest = utils.postprocess_qa_predictions(
        [example], features, np.zeros((1, 8)), np.zeros((1, 8)), 5, 30
    )
    assert predictions == {"q": ""}
    assert nbest == {"q": []}


# ---- metrics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gold, prediction, exact, f1",
    [
        ("1990年", "1990年。", 1.0, 1.0),  # listed punctuation is ignored
        (
            "Hawkswell剧院",
            "hawkswell 剧院",
            0.0,
            1.0,
        ),  # case-folded; English runs are words, Chinese characters segments
        ("北京大学", "北京", 0.0, 2 / 3),  # longest common run 2: precision 1, recall 1/2
        ("北京大学", "大学北京", 0.0, 0.5),  # a common *run*, not a bag of characters
        ("ω-force", "force", 0.0, 0.0),  # '-' is dropped inside the run: one word 'ωforce'
        ("3.14米", "3.14", 0.0, 2 / 3),  # decimals stay one word
        ("光荣和ω-force", "光荣和ω－force", 1.0, 1.0),
    ],
)
def test_cmrc_official_exact_match_and_f1(gold, prediction, exact, f1):
    assert utils.cmrc_exact(gold, prediction) == exact
    assert utils.cmrc_f1(gold, prediction) == pytest.approx(f1)


def test_mixed_segmentation_of_chinese_and_english():
    assert utils.mixed_segmentation("ERNIE 3.0模型，Baidu's", remove_punctuation=False) == [
        "ernie",
        "3.0",
        "模",
        "型",
        "，",
        "baidu",
        "'s",
    ]
    assert utils.mixed_segmentation("ERNIE 3.0模型，Baidu's", remove_punctuation=True) == [
        "ernie",
        "3.0",
        "模",
        "型",
        "baidu",
        "'s",
    ]


# What the official script's nltk.word_tokenize makes of each non-Chinese run (Treebank rules, written out by hand).
@pytest.mark.parametrize(
    "text, segments",
    [
        ("iPhone4S", ["iphone4s"]),  # letters and digits stay one word
        ("H1N1病毒", ["h1n1", "病", "毒"]),
        ("MP3播放器", ["mp3", "播", "放", "器"]),
        ("U.S.军队", ["u.s", ".", "军", "队"]),  # the run's final period is split off
        ("don't", ["do", "n't"]),
        ("涨了3.5%", ["涨", "了", "3.5", "%"]),
        ("他说hello, world", ["他", "说", "hello", ",", "world"]),
    ],
)
def test_mixed_segmentation_splits_english_runs_as_the_official_nltk_tokenizer(text, segments):
    assert utils.mixed_segmentation(text, remove_punctuation=True) == segments


def test_letters_and_digits_are_one_word_in_f1_as_officially():
    assert utils.cmrc_f1("iPhone4S", "iPhone4") == 0.0  # a letter/digit split would give 0.8
    assert utils.cmrc_f1("H1N1流感", "H1N1") == pytest.approx(2 * (1 / 1) * (1 / 3) / (1 + 1 / 3))


def test_qa_metrics_take_the_best_gold_answer_and_report_both_definitions():
    examples = [
        utils.QAExample("a", "", "", ["北京大学", "北大"], None, None, ""),
        utils.QAExample("b", "", "", ["北京大学"], None, None, ""),
    ]
    metrics = utils.qa_metrics(examples, {"a": "北大", "b": "大学北京"})
    assert metrics["exact_match"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(75.0)
    assert metrics["upstream_exact_match"] == pytest.approx(50.0)
    assert metrics["upstream_f1"] == pytest.approx(100.0)  # bag of characters


def answer_variants(gold: str, other: str, rng) -> list:
    """Predictions a model might give for a gold answer: itself, pieces, padding with punctuation, spaces and
    English articles, another question's answer, nothing."""
    cut = rng.randint(0, len(gold))
    return [
        gold, gold[:cut], gold[cut:], other, "", " ", f"《{gold}》。", f"The {gold}!", f"{gold} the", f"a {gold} b",
        gold.upper(), f"{gold[:cut]} {gold[cut:]}", f"{other}{gold}", "……", "——",
    ]  # fmt: skip


def test_upstream_scores_are_paddlenlp_s_squad_scores_on_real_answers():
    """Our own upstream_exact_match/upstream_f1 (the deploy-only install has no paddlenlp) give what paddlenlp
    3.0.0b4's get_raw_scores(is_whitespace_splited=False) gives, for real CMRC2018 dev answers and predictions made
    from them (and gold answers that normalize to nothing)."""
    from paddlenlp.metrics.squad import get_raw_scores

    rng = random.Random(0)
    examples = utils.load_examples(TASK, "dev", qa_file("dev.json"))
    golds = [e.answers for e in examples] + [["The iPhone 4S", "a"], ["《》", "。"], ["H1N1 流感"]]
    squad, predictions, ours = [], {}, []
    for number, answers in enumerate(golds):
        other = golds[(number + 1) % len(golds)][0]
        for variant, prediction in enumerate(answer_variants(answers[0], other, rng)):
            qid = f"{number}-{variant}"
            squad.append({"id": qid, "answers": {"text": answers}})
            predictions[qid] = prediction
            ours.append(utils.upstream_scores(answers, prediction))
    exact, f1 = get_raw_scores(squad, predictions, is_whitespace_splited=False)
    assert [score[0] for score in ours] == [float(exact[e["id"]]) for e in squad]
    assert [score[1] for score in ours] == pytest.approx([float(f1[e["id"]]) for e in squad])
    assert 0 < sum(score[1] for score in ours) < len(ours)  # the variants score neither all 0 nor all 1


def test_upstream_scores_count_only_questions_with_a_prediction():
    examples = [
        utils.QAExample("a", "", "", ["北京"], None, None, ""),
        utils.QAExample("b", "", "", ["上海"], None, None, ""),
    ]
    metrics = utils.qa_metrics(examples, {"a": "北京"})
    assert metrics["exact_match"] == pytest.approx(50.0)
    assert metrics["upstream_exact_match"] == pytest.approx(100.0)


# ---- reading ---------------------------------------------------------------------------------------
def test_reader_keeps_every_gold_answer_and_the_training_position():
    examples = utils.load_examples(TASK, "dev", qa_file("dev.json"))
    assert len(examples) == 12
    assert all(len(e.answers) == 3 for e in examples)
    for e in examples:
        assert e.context[e.answer_start : e.answer_start + len(e.answer_text)] == e.answer_text
    test = utils.load_examples(TASK, "test", qa_file("test.json"))
    assert len(test) == 9
    assert all(e.answers == [] for e in test)


def test_an_answer_start_off_by_a_few_characters_is_moved_to_its_text():
    """DEV_101_QUERY_3 of the real CMRC2018 dev set gives answer_start 175 for text found at 174."""
    examples = {e.id: e for e in utils.load_examples(TASK, "train", qa_file("shifted_answer.json"))}
    example = examples["DEV_101_QUERY_3"]
    assert example.answer_text == "灭司马家族"
    assert example.answer_start == 174
    assert example.context[174:179] == "灭司马家族"


def test_hub_reader_rows_match_the_local_reader():
    from paddlenlp.datasets import load_dataset

    hub = load_dataset("cmrc2018", data_files=qa_file("dev.json"), splits="dev")
    from_hub = utils.rows_to_qa_examples(TASK, utils.hub_rows(hub, "cmrc2018 dev"), "dev")
    local = utils.load_examples(TASK, "dev", qa_file("dev.json"))
    assert [(e.id, e.question, e.context, e.answers, e.answer_start) for e in from_hub] == [
        (e.id, e.question, e.context, e.answers, e.answer_start) for e in local
    ]


# ---- run_qa.py end to end --------------------------------------------------------------------------
def test_training_overfits_a_small_slice(tiny_ernie, tmp_path):
    train = qa_file("train.json")
    run_qa.main(
        [
            "--task_name",
            "cmrc2018",
            "--model_name_or_path",
            tiny_ernie,
            "--train_file",
            train,
            "--dev_file",
            train,
            "--max_train_samples",
            "8",
            "--max_eval_samples",
            "8",
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
            "--max_answer_length",
            "64",
            "--output_dir",
            str(tmp_path),
            "--do_train",
            "--do_eval",
            *QA_SMALL,
        ]
    )
    with open(tmp_path / "eval_results.json", encoding="utf-8") as handle:
        results = json.load(handle)
    assert results["exact_match"] >= 75.0, results
    assert results["f1"] >= 75.0, results


def test_outputs_and_prediction_files(qa_run):
    with open(os.path.join(qa_run, "eval_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert {"exact_match", "f1", "upstream_exact_match", "upstream_f1"} <= set(results)
    assert results["eval_samples"] == 12
    with open(os.path.join(qa_run, "cmrc2018_predict.json"), encoding="utf-8") as handle:
        answers = json.load(handle)
    with open(os.path.join(qa_run, "cmrc2018_nbest.json"), encoding="utf-8") as handle:
        nbest = json.load(handle)
    test = utils.load_examples(TASK, "test", qa_file("test.json"))
    assert list(answers) == [e.id for e in test] == list(nbest)
    for example in test:
        assert answers[example.id] in example.context
        assert nbest[example.id][0]["text"] == answers[example.id]


def test_exported_static_model_gives_the_dynamic_models_logits(qa_run):
    model = AutoModelForQuestionAnswering.from_pretrained(qa_run)
    examples = utils.load_examples(TASK, "dev", qa_file("dev.json"))[:3]
    features = utils.prepare_qa_features(examples, model_io.load_tokenizer(qa_run), 128, 64, 64, with_labels=False)
    batch = padded_batch(list(features.dataset))
    dynamic, static = dynamic_outputs(model, batch), static_outputs(os.path.join(qa_run, "export"), batch)
    assert len(static) == len(dynamic) == 2
    for s, d in zip(static, dynamic):
        np.testing.assert_allclose(s, d, atol=1e-4)


def test_evaluation_alone_reproduces_the_runs_metrics(qa_run, tmp_path):
    run_qa.main(
        [
            "--task_name",
            "cmrc2018",
            "--model_name_or_path",
            qa_run,
            "--dev_file",
            qa_file("dev.json"),
            "--output_dir",
            str(tmp_path),
            "--do_eval",
            *QA_SMALL,
        ]
    )
    with (
        open(tmp_path / "eval_results.json", encoding="utf-8") as a,
        open(os.path.join(qa_run, "eval_results.json"), encoding="utf-8") as b,
    ):
        again, first = json.load(a), json.load(b)
    assert again["exact_match"] == first["exact_match"]
    assert again["f1"] == pytest.approx(first["f1"])


def write_squad(path, context, question, answers):
    path.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "paragraphs": [
                            {"context": context, "qas": [{"id": "Q1", "question": question, "answers": answers}]}
                        ]
                    }
                ]
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return str(path)


QA_BAD_INPUT = {
    "answer_start far from the answer": (
        lambda p: write_squad(
            p, "百度在北京发布了文心大模型。" + "天气很好。" * 12, "谁发布的", [{"text": "百度", "answer_start": 40}]
        ),
        r"the cmrc2018 train data holds no questions to train on "
        r"\(1 with no answer found at its answer_start \(free-form\)\)",
    ),
    "only an empty question": (
        lambda p: write_squad(p, "百度在北京", " ", [{"text": "百度", "answer_start": 0}]),
        r"holds no questions to train on \(1 with empty question\)",
    ),
    "question not a string": (
        lambda p: write_squad(p, "百度在北京", 7, [{"text": "百度", "answer_start": 0}]),
        r"question Q1: the question is missing or not a string",
    ),
    "malformed json": (
        lambda p: (p.write_text('{"data": [\n{"paragraphs": ]}', encoding="utf-8"), str(p))[1],
        r":2: not valid JSON",
    ),
    "not squad": (lambda p: (p.write_text("[1, 2]", encoding="utf-8"), str(p))[1], r"expected a SQuAD-style object"),
    "missing file": (lambda p: str(p.parent / "missing.json"), r"--train_file: file not found: .*missing\.json"),
    "non utf-8 file": (
        lambda p: (p.write_bytes('{"data": "百度"}'.encode("gbk")), str(p))[1],
        r"bad\.json: not UTF-8 text",
    ),
}


@pytest.mark.parametrize("case", sorted(QA_BAD_INPUT))
def test_bad_qa_input_gets_one_error_line(case, tiny_ernie, tmp_path, capsys):
    make, message = QA_BAD_INPUT[case]
    bad = make(tmp_path / "bad.json")
    argv = [
        "--task_name",
        "cmrc2018",
        "--model_name_or_path",
        tiny_ernie,
        "--train_file",
        bad,
        "--dev_file",
        qa_file("dev.json"),
        "--output_dir",
        str(tmp_path / "out"),
        "--do_train",
        "--max_steps",
        "1",
        *QA_SMALL,
    ]
    status, stderr = run_cli(run_qa.main, argv, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "Traceback" not in stderr
    assert re.search(message, error_lines(stderr)[0]), error_lines(stderr)[0]
    assert not (tmp_path / "out").exists()


def squad_rows(*questions):
    """A SQuAD-style file's data: each question is (id, question, context, answers)."""
    return {
        "data": [
            {
                "paragraphs": [
                    {"context": context, "qas": [{"id": qid, "question": question, "answers": answers}]}
                    for qid, question, context, answers in questions
                ]
            }
        ]
    }


def test_odd_training_rows_are_left_out_and_counted_while_evaluation_scores_every_question(caplog):
    good = ("G", "谁发布的", "百度在北京发布了文心大模型。", [{"text": "百度", "answer_start": 0}])
    rows = list(
        utils.read_squad_rows(
            squad_rows(
                good,
                ("E", "", "百度在北京", [{"text": "百度", "answer_start": 0}]),
                ("N", "哪里", "百度在北京", []),
                ("F", "哪里", "百度在北京", [{"text": "北京市", "answer_start": -1}]),
            ),
            "train.json",
        )
    )
    with caplog.at_level("WARNING", logger="ernie_suite"):
        train = utils.rows_to_qa_examples(TASK, rows, "train")
    assert [e.id for e in train] == ["G"]
    assert (
        "left out 3 questions that cannot be trained on (1 with empty question, 1 with no answer, "
        "1 with no answer found at its answer_start (free-form))" in caplog.text
    )
    dev = utils.rows_to_qa_examples(TASK, rows, "dev")
    assert [e.id for e in dev] == ["G", "E", "N", "F"]
    scores = utils.qa_metrics(dev, {"G": "百度", "E": "百度", "N": "北京", "F": "北京市"})
    assert scores["exact_match"] == pytest.approx(75.0)  # N has no gold answer: 0, but it counts


def test_a_dev_question_with_an_empty_question_text_is_still_answered(tokenizer):
    example = utils.QAExample("E", "", "百度在北京发布了文心大模型。", ["百度"], None, None, "hand")
    features = utils.prepare_qa_features([example], tokenizer, 32, 8, 64, with_labels=False)
    assert len(features.dataset) >= 1
    assert any(o is not None for o in features.offsets[0])


def test_prediction_without_a_test_file_says_which_option_to_pass(qa_run, tmp_path, capsys):
    status, stderr = run_cli(
        run_qa.main,
        [
            "--task_name",
            "cmrc2018",
            "--model_name_or_path",
            qa_run,
            "--output_dir",
            str(tmp_path),
            "--do_predict",
            *QA_SMALL,
        ],
        capsys,
    )
    assert status == 2
    assert "task cmrc2018 has no downloadable test split; pass --test_file PATH" in error_lines(stderr)[0]


def test_a_classification_model_is_refused_by_the_qa_script(tiny_ernie, tmp_path, capsys):
    from paddlenlp.transformers import AutoModelForSequenceClassification

    classifier = str(tmp_path / "classifier")
    AutoModelForSequenceClassification.from_pretrained(tiny_ernie, num_labels=15).save_pretrained(classifier)
    model_io.load_tokenizer(tiny_ernie).save_pretrained(classifier)
    status, stderr = run_cli(
        run_qa.main, qa_args(classifier, tmp_path / "out", "--do_train", "--max_steps", "1"), capsys
    )
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "is a fine-tuned sequence classification model, but task cmrc2018 needs a question answering model" in stderr
