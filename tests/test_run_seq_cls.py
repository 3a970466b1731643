"""run_seq_cls.py end to end, in this process, on tiny random-weight models and real CLUE rows."""

import json
import os

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import AutoModelForSequenceClassification

import model_folder
import model_io
import run_seq_cls
import trainer_suite
import utils
from conftest import clue_data_args, clue_file, dynamic_outputs, error_lines, padded_batch, run_cli, static_outputs

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1"]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_json_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_training_overfits_a_small_slice(tiny_ernie, tmp_path):
    """Trained and evaluated on the same 24 real TNEWS rows, a tiny model must learn them."""
    train = clue_file("tnews", "train")
    argv = [
        "--task_name",
        "tnews",
        "--model_name_or_path",
        tiny_ernie,
        "--train_file",
        train,
        "--dev_file",
        train,
        "--max_train_samples",
        "24",
        "--max_eval_samples",
        "24",
        "--num_train_epochs",
        "60",
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
    run_seq_cls.main(argv)
    results = read_json(tmp_path / "eval_results.json")
    assert results["accuracy"] >= 0.8, results  # chance is 1/15
    assert results["eval_loss"] < 1.0 < np.log(15)


def test_outputs_of_a_full_run(tnews_run):
    files = set(os.listdir(tnews_run))
    assert {
        "config.json",
        "model_state.pdparams",
        "vocab.txt",
        "train_results.json",
        "eval_results.json",
        "tnews11_predict.json",
        "export",
    } <= files
    assert len([name for name in files if name.startswith("checkpoint-")]) <= 2  # save_total_limit 1, plus the best
    assert not [name for name in files if name.startswith(".tmp-")]

    results = read_json(os.path.join(tnews_run, "eval_results.json"))
    assert 0.0 <= results["accuracy"] <= 1.0
    assert results["eval_samples"] == 32
    assert results["eval_truncated"] == 0

    predictions = read_json_lines(os.path.join(tnews_run, "tnews11_predict.json"))
    assert [row["id"] for row in predictions] == list(range(1000, 1016))  # each example's own id, in input order
    assert all(row["label"] in utils.SEQ_CLS_TASKS["tnews"].labels for row in predictions)

    config = read_json(os.path.join(tnews_run, "config.json"))
    assert config["finetuning_task"] == "tnews"
    assert len(config["id2label"]) == 15

    export_dir = os.path.join(tnews_run, "export")
    assert {"model.pdiparams", "vocab.txt", "task.json"} <= set(os.listdir(export_dir))
    assert read_json(os.path.join(export_dir, "task.json"))["label_list"] == list(utils.SEQ_CLS_TASKS["tnews"].labels)


def test_predictions_follow_the_saved_models_argmax(tnews_run):
    model = AutoModelForSequenceClassification.from_pretrained(tnews_run)
    model.eval()
    tokenizer = model_io.load_tokenizer(tnews_run)
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = utils.load_examples(task, "test", clue_file("tnews", "test"))
    with paddle.no_grad():
        labels = [
            task.labels[int(model(**{k: paddle.to_tensor([v]) for k, v in feature.items()}).argmax(-1))]
            for feature in utils.encode_text_examples(examples, tokenizer, task, 128).dataset
        ]
    assert labels == [row["label"] for row in read_json_lines(os.path.join(tnews_run, "tnews11_predict.json"))]


def test_exported_static_model_gives_the_dynamic_models_logits(tnews_run):
    model = AutoModelForSequenceClassification.from_pretrained(tnews_run)
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = utils.load_examples(task, "dev", clue_file("tnews", "dev"))[:8]
    batch = padded_batch(
        list(utils.encode_text_examples(examples, model_io.load_tokenizer(tnews_run), task, 128).dataset)
    )
    dynamic, static = dynamic_outputs(model, batch), static_outputs(os.path.join(tnews_run, "export"), batch)
    assert static.shape == dynamic.shape == (8, 15)
    np.testing.assert_allclose(static, dynamic, atol=1e-4)


def test_export_leaves_dropout_out_of_the_program_but_not_out_of_the_trained_model(tnews_run):
    program, _ = model_folder.static_model_files(os.path.join(tnews_run, "export"))
    with open(program, "rb") as handle:
        assert b"dropout" not in handle.read()
    model = AutoModelForSequenceClassification.from_pretrained(tnews_run)
    exported = model_io.static_copy(model)
    rates = [layer.p for layer in model.sublayers() if isinstance(layer, paddle.nn.Dropout)]
    assert max(rates) > 0
    assert [layer.p for layer in exported.sublayers() if isinstance(layer, paddle.nn.Dropout)] == [0.0] * len(rates)


def test_evaluating_the_saved_model_reproduces_its_eval_results(tnews_run, tmp_path):
    argv = [
        "--task_name",
        "tnews",
        "--model_name_or_path",
        tnews_run,
        "--dev_file",
        clue_file("tnews", "dev"),
        "--output_dir",
        str(tmp_path),
        "--do_eval",
    ]
    run_seq_cls.main(argv)
    again = read_json(tmp_path / "eval_results.json")
    first = read_json(os.path.join(tnews_run, "eval_results.json"))
    assert again["accuracy"] == first["accuracy"]
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], abs=1e-6)


def model_weights(directory):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(directory, "model_state.pdparams")).items()}


def test_resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tiny_ernie, tmp_path):
    common = clue_data_args("tnews") + [
        "--model_name_or_path",
        tiny_ernie,
        "--do_train",
        "--per_device_train_batch_size",
        "8",
        "--dropout",
        "0",
        "--evaluation_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_total_limit",
        "3",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "constant",
        "--warmup_ratio",
        "0",
    ]
    run_seq_cls.main(common + ["--max_steps", "6", "--output_dir", str(tmp_path / "straight")])
    interrupted = str(tmp_path / "interrupted")
    run_seq_cls.main(common + ["--max_steps", "4", "--output_dir", interrupted])
    run_seq_cls.main(common + ["--max_steps", "6", "--output_dir", interrupted, "--resume_from_checkpoint", "true"])

    assert read_json(os.path.join(interrupted, "train_results.json"))["global_step"] == 6
    straight, resumed = model_weights(tmp_path / "straight"), model_weights(interrupted)
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], atol=1e-6, err_msg=name)


def test_an_existing_output_dir_with_results_is_not_overwritten(tnews_run, tiny_ernie, capsys):
    before = {name: os.path.getmtime(os.path.join(tnews_run, name)) for name in os.listdir(tnews_run)}
    status, stderr = run_cli(
        run_seq_cls.main,
        clue_data_args("tnews") + ["--model_name_or_path", tiny_ernie, "--output_dir", tnews_run, "--do_train"] + FAST,
        capsys,
    )
    assert status == 2
    assert "already holds results of an earlier run" in error_lines(stderr)[0]
    status, stderr = run_cli(
        run_seq_cls.main,
        clue_data_args("tnews") + ["--model_name_or_path", tnews_run, "--output_dir", tnews_run, "--do_eval"],
        capsys,
    )
    assert status == 2
    assert "eval_results.json" in error_lines(stderr)[0]
    status, stderr = run_cli(
        run_seq_cls.main,
        clue_data_args("tnews") + ["--model_name_or_path", tnews_run, "--output_dir", tnews_run, "--do_export"],
        capsys,
    )
    assert status == 2
    assert "export" in error_lines(stderr)[0]
    assert before == {name: os.path.getmtime(os.path.join(tnews_run, name)) for name in os.listdir(tnews_run)}


def test_a_new_output_file_may_join_earlier_results(tnews_run, tmp_path):
    """Prediction into a directory that holds only a model and another run's eval results is allowed."""
    output_dir = tmp_path / "model"
    __import__("shutil").copytree(
        tnews_run, output_dir, ignore=lambda d, names: [n for n in names if n.endswith("_predict.json")]
    )
    run_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            str(output_dir),
            "--output_dir",
            str(output_dir),
            "--test_file",
            clue_file("tnews", "test"),
            "--do_predict",
        ]
    )
    assert len(read_json_lines(output_dir / "tnews11_predict.json")) == 16


def test_early_stopping_ends_training_when_the_dev_metric_stops_improving(tiny_ernie, tmp_path):
    """With a zero learning rate accuracy never improves: patience 1 stops after the second evaluation."""
    run_seq_cls.main(
        clue_data_args("tnews")
        + [
            "--model_name_or_path",
            tiny_ernie,
            "--output_dir",
            str(tmp_path),
            "--do_train",
            "--num_train_epochs",
            "20",
            "--per_device_train_batch_size",
            "16",
            "--learning_rate",
            "0",
            "--early_stopping_patience",
            "1",
        ]
    )
    assert read_json(tmp_path / "train_results.json")["global_step"] == 2 * 3  # two epochs of 48 rows / 16


@pytest.mark.parametrize("task", ["afqmc", "cmnli", "ocnli", "cluewsc2020", "csl"])
def test_every_clue_task_trains_evaluates_and_predicts_on_real_rows(task, tiny_ernie, tmp_path):
    run_seq_cls.main(
        clue_data_args(task)
        + [
            "--model_name_or_path",
            tiny_ernie,
            "--output_dir",
            str(tmp_path),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_seq_length",
            "96",
        ]
        + FAST
    )
    spec = utils.SEQ_CLS_TASKS[task]
    predictions = read_json_lines(tmp_path / spec.submission_file)
    test_rows = read_json_lines(clue_file(task, "test"))
    assert [p["id"] for p in predictions] == [row["id"] for row in test_rows]
    assert {p["label"] for p in predictions} <= set(spec.labels)
    assert read_json(tmp_path / "eval_results.json")["eval_samples"] == len(
        utils.load_examples(spec, "dev", clue_file(task, "dev"))
    )


def test_a_custom_task_from_local_files_and_label_list(tiny_ernie, tmp_path):
    rows = [
        {"sentence": row["sentence1"], "label": "same" if row["label"] == "1" else "different"}
        for row in read_json_lines(clue_file("afqmc", "dev"))
    ]
    data = tmp_path / "mine.json"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    output_dir = tmp_path / "out"
    run_seq_cls.main(
        [
            "--task_name",
            "custom",
            "--label_list",
            "different",
            "same",
            "--model_name_or_path",
            tiny_ernie,
            "--train_file",
            str(data),
            "--dev_file",
            str(data),
            "--test_file",
            str(data),
            "--output_dir",
            str(output_dir),
            "--do_train",
            "--do_eval",
            "--do_predict",
        ]
        + FAST
    )
    assert read_json(output_dir / "eval_results.json")["eval_samples"] == len(rows)
    assert {p["label"] for p in read_json_lines(output_dir / "custom_predict.json")} <= {"different", "same"}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_other_chinese_encoders_fine_tune_and_reload(kind, tiny_encoders, tmp_path):
    """BERT-Base-Chinese and RoBERTa-wwm-ext style models (RoBERTa saves RobertaChineseTokenizer)."""
    output_dir = str(tmp_path / kind)
    run_seq_cls.main(
        clue_data_args("tnews")
        + ["--model_name_or_path", tiny_encoders[kind], "--output_dir", output_dir, "--do_train", "--do_export"]
        + FAST
    )
    config = read_json(os.path.join(output_dir, "config.json"))
    assert config["architectures"][0].lower().startswith(kind)
    predict_dir = str(tmp_path / f"{kind}-predict")
    run_seq_cls.main(
        clue_data_args("tnews") + ["--model_name_or_path", output_dir, "--output_dir", predict_dir, "--do_predict"]
    )
    assert len(read_json_lines(os.path.join(predict_dir, "tnews11_predict.json"))) == 16


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def bad_input_cases(tmp_path, tnews_run):
    good = [json.dumps({"sentence": "江疏影甜甜圈自拍", "label": "102"}, ensure_ascii=False)]
    return {
        "missing file": (["--train_file", str(tmp_path / "nope.json")], r"--train_file: file not found: .*nope\.json"),
        "malformed json line": (
            ["--train_file", write_lines(tmp_path / "bad.json", good + ['{"sentence": "半截', *good])],
            r"bad\.json:2: not a valid JSON line",
        ),
        "unknown label": (
            ["--train_file", write_lines(tmp_path / "label.json", good + ['{"sentence": "体育新闻", "label": "999"}'])],
            r"label\.json:2: unknown label '999' for task tnews",
        ),
        "empty text": (
            ["--train_file", write_lines(tmp_path / "empty.json", good + ['{"sentence": "  ", "label": "102"}'])],
            r"empty\.json:2: field 'sentence' is empty",
        ),
        "missing field": (
            ["--train_file", write_lines(tmp_path / "field.json", ['{"text": "体育新闻", "label": "102"}'])],
            r"field\.json:1: missing field 'sentence'",
        ),
        "non utf-8 file": (
            ["--train_file", str((tmp_path / "gbk.json").write_bytes("体育".encode("gbk")) and tmp_path / "gbk.json")],
            r"gbk\.json: not UTF-8 text",
        ),
        "too long text, truncation off": (
            [
                "--train_file",
                write_lines(
                    tmp_path / "long.json", [json.dumps({"sentence": "长" * 500, "label": "102"}, ensure_ascii=False)]
                ),
                "--truncate_long_texts",
                "false",
                "--max_seq_length",
                "64",
            ],
            r"long\.json:1: text is 502 tokens, longer than --max_seq_length 64",
        ),
        "unknown task": (
            ["--task_name", "tnewz"],
            r"unknown --task_name 'tnewz'; this script handles: afqmc, cluewsc2020",
        ),
        "label count does not fit the task": (
            ["--task_name", "ocnli", "--model_name_or_path", tnews_run, "--train_file", clue_file("ocnli", "train")],
            r"fine-tuned for tnews with 15 labels, which does not fit task ocnli \(3 labels\)",
        ),
        "max_seq_length beyond the model": (
            ["--max_seq_length", "4096"],
            r"--max_seq_length 4096 exceeds the model's 2048 position",
        ),
        "gpu on a cpu build": (["--device", "gpu"], r"--device gpu needs paddlepaddle-gpu"),
        "nothing to do": (["--do_train", "false"], r"nothing to do"),
        "custom task without labels": (["--task_name", "custom"], r"--task_name custom needs --label_list"),
        "abbreviated option": (
            ["--do_pred"],
            r"unrecognized arguments: \['--do_pred'\] \(options are spelt out in full",
        ),
        "broken yaml config": (
            ["--config", write_lines(tmp_path / "broken.yml", ["common: [1, 2"])],
            r"--config .*broken\.yml: not valid YAML",
        ),
        "config tasks as a list": (
            ["--config", write_lines(tmp_path / "list.yml", ["tasks:", "  - tnews"])],
            r"--config .*list\.yml: 'tasks' must be a mapping of names to values, got list",
        ),
        "config task block not a mapping": (
            ["--config", write_lines(tmp_path / "block.yml", ["tasks:", "  tnews: 3"])],
            r"--config .*block\.yml: tasks\.tnews must be a mapping",
        ),
    }


@pytest.fixture(scope="module")
def tiny_token_classifier(tiny_ernie, tmp_path_factory):
    from paddlenlp.transformers import AutoModelForTokenClassification

    directory = str(tmp_path_factory.mktemp("token-cls"))
    AutoModelForTokenClassification.from_pretrained(tiny_ernie, num_labels=7).save_pretrained(directory)
    model_io.load_tokenizer(tiny_ernie).save_pretrained(directory)
    return directory


def test_a_model_of_another_kind_is_refused(tiny_token_classifier, tmp_path, capsys):
    status, stderr = run_cli(
        run_seq_cls.main,
        clue_data_args("tnews")
        + ["--model_name_or_path", tiny_token_classifier, "--output_dir", str(tmp_path / "out"), "--do_train"],
        capsys,
    )
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "is a fine-tuned token classification model, but task tnews needs a sequence classification model" in stderr
    assert "use run_token_cls.py" in stderr
    assert not (tmp_path / "out").exists()


def test_help_shows_the_per_task_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        run_seq_cls.main(["--task_name", "csl", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "csl: max_seq_length=256, num_train_epochs=5, learning_rate=2e-05" in out
    assert "The initial learning rate for AdamW. (default: 2e-05)" in " ".join(out.split())


CASES = [
    "missing file",
    "malformed json line",
    "unknown label",
    "empty text",
    "missing field",
    "non utf-8 file",
    "too long text, truncation off",
    "unknown task",
    "label count does not fit the task",
    "max_seq_length beyond the model",
    "gpu on a cpu build",
    "nothing to do",
    "custom task without labels",
    "abbreviated option",
    "broken yaml config",
    "config tasks as a list",
    "config task block not a mapping",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_clear_error_line_and_writes_nothing(case, tnews_run, tiny_ernie, tmp_path, capsys):
    extra, message = bad_input_cases(tmp_path, tnews_run)[case]
    output_dir = tmp_path / "out"
    argv = (
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            tiny_ernie,
            "--train_file",
            clue_file("tnews", "train"),
            "--dev_file",
            clue_file("tnews", "dev"),
            "--output_dir",
            str(output_dir),
            "--do_train",
        ]
        + FAST
        + extra
    )
    status, stderr = run_cli(run_seq_cls.main, argv, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert "Traceback" not in stderr
    assert __import__("re").search(message, error_lines(stderr)[0]), error_lines(stderr)[0]
    assert not output_dir.exists() or not trainer_suite.earlier_results(str(output_dir))


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    task = utils.SEQ_CLS_TASKS["tnews"]
    lengths = [len(e.text_a) + 2 for e in utils.load_examples(task, "train", clue_file("tnews", "train"))]
    batches = trainer_suite.length_grouped_batches(lengths, 8, seed=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    random_order = np.random.default_rng(0).permutation(len(lengths))
    random_padded = sum(8 * max(lengths[i] for i in random_order[j : j + 8]) for j in range(0, len(lengths), 8))
    assert padded < random_padded
    assert trainer_suite.length_grouped_batches(lengths, 8, seed=1) != batches  # reshuffled each epoch


def test_training_with_length_grouped_batches(tiny_ernie, tmp_path):
    run_seq_cls.main(
        clue_data_args("tnews")
        + [
            "--model_name_or_path",
            tiny_ernie,
            "--output_dir",
            str(tmp_path),
            "--do_train",
            "--group_by_length",
            "true",
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "8",
        ]
    )
    assert read_json(tmp_path / "train_results.json")["global_step"] == 12
