"""compress_*.py's dimensions that remove work: DynaBERT depth, distillation into a smaller student, vocabulary
pruning; each candidate's dimensions and peak memory in the report."""

import copy
import os
from collections import Counter

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import (
    AutoModelForSequenceClassification,
    ErnieConfig,
    ErnieForSequenceClassification,
    ErnieModel,
)

import compress_qa
import compress_seq_cls
import compress_token_cls
import compression
import dynabert
import model_folder
import model_io
import predictors
import runtime
import utils
import vocabulary
from conftest import QA_SMALL, clue_data_args, clue_file, error_lines, ner_file, qa_file, run_cli
from tiny_models import ERNIE_EXTRAS, TINY_ENCODER

FAST = ["--max_steps", "3", "--per_device_train_batch_size", "8", "--algo_list", "hist", "--batch_size_list", "4",
        "--importance_batches", "2", "--per_device_eval_batch_size", "8", "--measure_memory", "false",
        "--backends", "paddle", "onnxruntime", "--max_metric_drop", "100"]  # fmt: skip


def four_layer_model(labels=3):
    paddle.seed(1)
    config = ErnieConfig(**{**TINY_ENCODER, "num_hidden_layers": 4}, **ERNIE_EXTRAS, num_labels=labels)
    model = ErnieForSequenceClassification(config)
    model.eval()
    return model


def layer_weights(model):
    return [layer.linear1.weight.numpy() for layer in dynabert.encoder_layers(model)]


def tnews_features(tokenizer, split="train"):
    task = utils.SEQ_CLS_TASKS["tnews"]
    examples = utils.load_examples(task, split, clue_file("tnews", split))
    return list(utils.encode_text_examples(examples, tokenizer, task, 64).dataset)


def logits(model, features):
    result = predictors.run_predictor(predictors.DygraphPredictor(model), features, 8, per_token=False)
    return np.stack(result.outputs[0])


def read_report(output_dir):
    return model_folder.read_report(os.path.join(output_dir, model_folder.REPORT_FILE))


# ---- depth --------------------------------------------------------------------------------------------------------
def test_depth_keeps_dynabert_evenly_spaced_layers():
    assert dynabert.kept_layers(0.5, 12) == [0, 2, 4, 6, 8, 10]
    assert dynabert.kept_layers(0.75, 12) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert dynabert.kept_layers(2 / 3, 6) == [0, 1, 3, 4]
    assert dynabert.kept_layers(0.5, 4) == [0, 2]
    assert dynabert.kept_layers(0.25, 2) == [0]


def test_slicing_to_a_depth_keeps_those_layers_and_says_how_many():
    model = four_layer_model()
    before = layer_weights(model)
    sliced = dynabert.slice_to_depth(copy.deepcopy(model), 0.5)
    after = layer_weights(sliced)
    assert len(after) == 2
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[2])
    assert sliced.config.num_hidden_layers == 2


def test_a_dropped_depth_runs_fewer_layers_and_full_depth_gives_every_layer_back(tokenizer):
    model = four_layer_model()
    features = tnews_features(tokenizer)[:8]
    full = logits(model, features)
    sliced = dynabert.slice_to_depth(copy.deepcopy(model), 0.5)
    dropping = dynabert.LayerDropping(model)
    dropping.set_depth(0.5)
    half = logits(model, features)
    np.testing.assert_allclose(half, logits(sliced, features), atol=1e-6)
    assert np.abs(half - full).max() > 1e-6
    dropping.set_depth(1.0)
    np.testing.assert_allclose(logits(model, features), full, atol=1e-6)
    assert sum(".encoder.layers.3." in key for key in model.state_dict()) > 0


def test_dynabert_depth_exports_the_kept_layers_of_the_trained_state(tokenizer):
    """Four layers, depth 1/2: the pruned model holds the snapshot's layers 0 and 2 (marked by their norms), whatever
    depth the selection ran at before the snapshot."""
    task = utils.SEQ_CLS_TASKS["tnews"]
    model = four_layer_model(labels=15)
    for index, layer in enumerate(dynabert.encoder_layers(model)):
        layer.norm1.weight.set_value(np.full([32], index + 1.0, dtype="float32"))
    examples = utils.load_examples(task, "train", clue_file("tnews", "train"))
    encode = lambda rows, labels: utils.encode_examples(task, "train", rows, tokenizer, 64, True, with_labels=labels)  # noqa: E731
    settings = dynabert.DistillationSettings(0.0, 1.0, 2, 8, 8, 1, 50, 0)  # learning rate 0: weights unchanged
    pruned = dynabert.dynabert_pruning(
        model, tokenizer, task, [(1.0, 0.5), (1.0, 1.0)], encode(examples[:40], True), examples[40:],
        encode(examples[40:], False), None, settings,
    )  # fmt: skip
    half = [float(layer.norm1.weight.numpy()[0]) for layer in dynabert.encoder_layers(pruned[(1.0, 0.5)])]
    full = [float(layer.norm1.weight.numpy()[0]) for layer in dynabert.encoder_layers(pruned[(1.0, 1.0)])]
    assert half == [1.0, 3.0]
    assert full == [1.0, 2.0, 3.0, 4.0]


def test_every_width_and_depth_but_the_parent_is_a_shape_and_folders_name_both():
    args = compression.CompressArguments(width_mult_list=["3/4", "1"], depth_mult_list=["1", "1/2"])
    assert compression.pruned_shapes(args) == [(0.75, 1.0), (0.75, 0.5), (1.0, 0.5)]
    assert compression.shape_folder(0.75, 1.0) == "width_mult_0.75"
    assert compression.shape_folder(0.75, 0.5) == "width_mult_0.75_depth_mult_0.5"
    assert compression.shape_folder(1.0, 0.5) == "width_mult_1_depth_mult_0.5"
    with pytest.raises(runtime.UserError, match="no smaller model"):
        compression.pruned_shapes(compression.CompressArguments(width_mult_list=["1"], depth_mult_list=["1"]))
    with pytest.raises(runtime.UserError, match="--depth_mult_list"):
        compression.pruned_shapes(compression.CompressArguments(depth_mult_list=["3/2"]))


@pytest.fixture(scope="module")
def depth_compressed(tnews_run, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("depth") / "out")
    compress_seq_cls.main(
        clue_data_args("tnews")
        + ["--model_name_or_path", tnews_run, "--output_dir", output_dir, "--strategy", "dynabert+ptq"]
        + ["--width_mult_list", "3/4", "1", "--depth_mult_list", "1", "1/2", "--max_eval_samples", "16"]
        + FAST
    )
    return output_dir


def test_depth_candidates_are_exported_with_their_layers_and_quantized(depth_compressed, tnews_run):
    report = read_report(depth_compressed)
    pruned = {c.relative_path: c for c in report.candidates if c.kind == "pruned float"}
    assert sorted(pruned) == ["width_mult_0.75", "width_mult_0.75_depth_mult_0.5", "width_mult_1_depth_mult_0.5"]
    assert (pruned["width_mult_1_depth_mult_0.5"].width, pruned["width_mult_1_depth_mult_0.5"].depth) == (1.0, 0.5)
    one_layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 4 * 32  # q, k, v, out; linear1, 2; 2 norms
    assert report.parent.parameters - pruned["width_mult_1_depth_mult_0.5"].parameters == one_layer
    program = paddle.jit.load(os.path.join(depth_compressed, "width_mult_1_depth_mult_0.5", "model"))
    assert Counter(tuple(p.shape) for p in program.parameters())[(32, 64)] == 1  # one feed-forward layer left
    int8 = [c for c in report.candidates if c.relative_path == "width_mult_0.75_depth_mult_0.5/hist4_1"]
    assert [(c.precision, c.width, c.depth) for c in int8] == [("int8", 0.75, 0.5)]
    assert os.path.isdir(os.path.join(depth_compressed, "width_mult_1_depth_mult_0.5", "onnxruntime_int8"))


# ---- students -----------------------------------------------------------------------------------------------------
def test_hidden_states_map_uniformly_and_a_copy_of_the_teacher_has_no_hidden_loss(tokenizer):
    assert dynabert.uniform_layer_map(2, 4) == [1, 3]
    assert dynabert.uniform_layer_map(3, 12) == [3, 7, 11]
    assert dynabert.uniform_layer_map(4, 4) == [0, 1, 2, 3]
    teacher = four_layer_model()
    batch = utils.family_collator(utils.SEQ_CLS_TASKS["tnews"], tokenizer)(tnews_features(tokenizer)[:4])
    real = (batch["input_ids"] != tokenizer.pad_token_id).astype("float32")
    student = copy.deepcopy(teacher)
    same = dynabert.HiddenStateDistillation(student, teacher, 1.0)
    assert same.projection is None
    dynabert.model_outputs(teacher, batch)
    teacher_states = same.teacher_outputs.take()
    dynabert.model_outputs(student, batch)
    assert float(same(teacher_states, real)) == pytest.approx(0.0, abs=1e-10)
    same.remove()
    narrow = dynabert.slice_to_width(dynabert.slice_to_depth(copy.deepcopy(teacher), 0.5), 0.5)
    different = dynabert.HiddenStateDistillation(narrow, teacher, 1.0)
    assert different.layer_map == [1, 3]
    dynabert.model_outputs(teacher, batch)
    teacher_states = different.teacher_outputs.take()
    dynabert.model_outputs(narrow, batch)
    assert float(different(teacher_states, real)) > 0
    different.remove()
    paddle.seed(2)
    smaller = ErnieForSequenceClassification(
        ErnieConfig(**{**TINY_ENCODER, "hidden_size": 16, "num_hidden_layers": 1}, **ERNIE_EXTRAS, num_labels=3)
    )
    projected = dynabert.HiddenStateDistillation(smaller, teacher, 1.0)
    assert projected.projection.weight.shape == [16, 32]
    assert projected.layer_map == [3]
    projected.remove()


@pytest.fixture(scope="module")
def fitted_tnews(tiny_ernie, tmp_path_factory):
    """A teacher that has fitted the TNEWS training slice (evaluated on it: 29% on 48 rows, the most frequent label
    is 15%, chance 7%): what a student must learn from it is visible there."""
    import run_seq_cls

    output_dir = str(tmp_path_factory.mktemp("fitted-tnews"))
    run_seq_cls.main(
        ["--task_name", "tnews", "--train_file", clue_file("tnews", "train"), "--dev_file", clue_file("tnews", "train"),
         "--model_name_or_path", tiny_ernie, "--output_dir", output_dir, "--do_train", "--do_eval", "--do_export",
         "--num_train_epochs", "30", "--learning_rate", "3e-3", "--per_device_train_batch_size", "16"]
    )  # fmt: skip
    return output_dir


def on_training_rows(teacher, output_dir, *extra):
    return (
        ["--task_name", "tnews", "--train_file", clue_file("tnews", "train"), "--dev_file", clue_file("tnews", "train"),
         "--model_name_or_path", teacher, "--output_dir", output_dir, "--learning_rate", "2e-3"]
        + FAST + ["--max_steps", "60"] + list(extra)
    )  # fmt: skip


MOST_FREQUENT_LABEL_POINTS = 100 * 7 / 48  # label 109 in the TNEWS training slice


def test_a_pretrained_student_learns_the_teacher_from_chance(fitted_tnews, tiny_ernie, tmp_path):
    report = compress_seq_cls.main(
        on_training_rows(
            fitted_tnews,
            str(tmp_path / "out"),
            "--strategy",
            "distill",
            "--student",
            tiny_ernie,
            "--max_steps",
            "150",
            "--learning_rate",
            "3e-3",
        )
    )
    student = report.candidate(os.path.join(str(tmp_path / "out"), "student"))
    assert student.student == tiny_ernie
    assert student.kind == "student float"
    assert student.metric_points > MOST_FREQUENT_LABEL_POINTS


@pytest.fixture(scope="module")
def student_compressed(fitted_tnews, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("student") / "out")
    compress_seq_cls.main(
        on_training_rows(fitted_tnews, output_dir, "--strategy", "distill+ptq", "--student_layers", "1",
                         "--student_width", "1/2", "--prune_vocabulary")
    )  # fmt: skip
    return output_dir


def test_a_student_cut_from_the_teacher_has_its_layers_and_width_and_beats_chance(student_compressed):
    report = read_report(student_compressed)
    student = report.candidate(os.path.join(student_compressed, "student"))
    assert student.student == "teacher's layers (1 of 2), width 0.5"
    assert student.metric_points > MOST_FREQUENT_LABEL_POINTS
    program = paddle.jit.load(os.path.join(student_compressed, "student", "model"))
    shapes = Counter(tuple(p.shape) for p in program.parameters())
    assert shapes[(32, 16)] == 3  # one layer's q, k, v: one head of 16 left of 2
    assert shapes[(16, 32)] == 2  # its out_proj, and the task-type embedding (16 x 32)
    assert shapes[(32, 32)] == 3  # its linear1 and linear2 (64 -> 32 neurons), and the pooler
    assert shapes[(32, 64)] == 0
    served = {c.relative_path: (c.backend, c.precision, c.student is not None) for c in report.candidates}
    assert served["student/hist4_1"] == ("paddle", "int8", True)
    assert served["student_vocab_pruned/hist4_1"] == ("paddle", "int8", True)
    assert served["student_vocab_pruned/onnxruntime_int8"] == ("onnxruntime", "int8", True)


def test_distillation_refuses_a_student_of_another_vocabulary_or_too_many_layers(fitted_tnews, tmp_path, capsys):
    other = str(tmp_path / "other-vocabulary")
    paddle.seed(0)
    ErnieModel(ErnieConfig(**{**TINY_ENCODER, "vocab_size": 30000}, **ERNIE_EXTRAS)).save_pretrained(other)
    model_io.load_tokenizer(fitted_tnews).save_pretrained(other)
    status, stderr = run_cli(
        compress_seq_cls.main, on_training_rows(fitted_tnews, str(tmp_path / "a"), "--strategy", "distill",
                                                "--student", other), capsys
    )  # fmt: skip
    assert status == 2
    assert "30000-token vocabulary, the teacher 40000" in error_lines(stderr)[0]
    status, stderr = run_cli(
        compress_seq_cls.main, on_training_rows(fitted_tnews, str(tmp_path / "b"), "--strategy", "distill",
                                                "--student_layers", "3"), capsys
    )  # fmt: skip
    assert status == 2
    assert "--student_layers must be between 1 and the teacher's 2 layers" in error_lines(stderr)[0]
    assert not os.path.exists(str(tmp_path / "b"))


# Paddle fp32 and int8 only: on a CPU with native bfloat16 each float model would also be served in bf16
ONE_BACKEND = FAST + ["--backends", "paddle", "--precisions", "fp32", "int8", "--max_steps", "2"]


def compressed(main, argv):
    """The report of a compression, also when no candidate was faster than the parent on this (shared) machine:
    these tests are about the candidates made, not the speed of tiny models."""
    try:
        return main(argv)
    except runtime.UserError as error:
        assert "and faster than it; nothing is chosen" in str(error)
        return read_report(argv[argv.index("--output_dir") + 1])


def test_students_distill_for_tokens_spans_and_choices(ner_run, c3_run, qa_run, tmp_path):
    ner = compressed(
        compress_token_cls.main,
        ["--task_name", "msra_ner", "--model_name_or_path", ner_run, "--train_file", ner_file("train.tsv"),
         "--dev_file", ner_file("dev.tsv"), "--output_dir", str(tmp_path / "ner"), "--strategy", "distill",
         "--student_layers", "1", "--prune_vocabulary"] + ONE_BACKEND
    )  # fmt: skip
    assert {c.relative_path for c in ner.candidates} == {"student", "student_vocab_pruned"}
    import compress_multiple_choice
    from conftest import C3_TRAIN_FILES, choice_file

    c3 = compressed(
        compress_multiple_choice.main,
        ["--task_name", "c3", "--model_name_or_path", c3_run, "--train_file", choice_file("c3"),
         "--dev_file", C3_TRAIN_FILES, "--output_dir", str(tmp_path / "c3"), "--max_seq_length", "48",
         "--strategy", "distill", "--student_layers", "1", "--prune_vocabulary"] + ONE_BACKEND
    )  # fmt: skip
    assert [c.relative_path for c in c3.candidates] == ["student", "student_vocab_pruned"]
    assert c3.candidates[0].student == "teacher's layers (1 of 2), width 1"
    qa = compressed(
        compress_qa.main,
        ["--task_name", "cmrc2018", "--model_name_or_path", qa_run, "--train_file", qa_file("train.json"),
         "--dev_file", qa_file("dev.json"), "--output_dir", str(tmp_path / "qa"), *QA_SMALL, "--strategy", "distill",
         "--student_layers", "1", "--hidden_distillation_weight", "0.5"] + ONE_BACKEND
    )  # fmt: skip
    assert [c.relative_path for c in qa.candidates] == ["student"]


# ---- vocabulary ---------------------------------------------------------------------------------------------------
def test_the_kept_vocabulary_is_the_special_tokens_and_the_most_frequent_used_ones():
    counts = Counter({10: 5, 11: 1, 12: 5, 13: 3, 1: 9})
    kept = vocabulary.kept_vocabulary(counts, [0, 1, 2], unknown_id=3, full_size=20)
    assert kept.kept_ids.tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    capped = vocabulary.kept_vocabulary(counts, [0, 1, 2], unknown_id=3, full_size=20, max_size=6)
    assert capped.kept_ids.tolist() == [0, 1, 2, 3, 10, 12]  # 10 and 12 (5 each) before 13 (3) and 11 (1)
    table = capped.id_map()
    assert table[12] == 5
    assert table[13] == 3  # dropped: [UNK]'s row
    assert table[19] == 3
    with pytest.raises(runtime.UserError, match="--max_vocab_size 4 leaves no room"):
        vocabulary.kept_vocabulary(counts, [0, 1, 2], unknown_id=3, full_size=20, max_size=4)


@pytest.fixture(scope="module")
def tnews_rows(tokenizer):
    task = utils.SEQ_CLS_TASKS["tnews"]
    return {
        split: list(utils.encode_text_examples(utils.load_examples(task, split, clue_file("tnews", split)), tokenizer,
                                               task, 64).sequences)
        for split in ("train", "dev")
    }  # fmt: skip


def test_the_pruned_vocabulary_reads_every_row_as_before_or_as_unk(tnews_rows, tokenizer):
    kept = vocabulary.kept_vocabulary(
        vocabulary.used_token_counts(tnews_rows["train"]), tokenizer.all_special_ids, tokenizer.unk_token_id, 40000
    )
    table, unknown = kept.id_map(), tokenizer.unk_token_id
    dropped_seen = 0
    for split, rows in tnews_rows.items():
        for row in rows:
            ids = np.array(row["input_ids"])
            read_as = kept.kept_ids[table[ids]]
            if split == "train":
                np.testing.assert_array_equal(read_as, ids)
            np.testing.assert_array_equal(read_as, np.where(np.isin(ids, kept.kept_ids), ids, unknown))
            dropped_seen += int((~np.isin(ids, kept.kept_ids)).sum())
    assert dropped_seen > 0  # the dev rows do use tokens the training rows do not


def served_logits(folder, features, backend):
    options = predictors.PredictorOptions(backend=backend, max_seq_length=64, batch_size=8)
    result = predictors.run_predictor(predictors.create_predictor(folder, options), features, 8, per_token=False)
    return np.stack(result.outputs[0])


def test_a_pruned_vocabulary_model_serves_as_before_and_unk_for_dropped_tokens(tnews_run, tnews_rows, tokenizer,
                                                                              tmp_path):  # fmt: skip
    task = utils.SEQ_CLS_TASKS["tnews"]
    model = AutoModelForSequenceClassification.from_pretrained(tnews_run)
    model.eval()
    kept = vocabulary.kept_vocabulary(
        vocabulary.used_token_counts(tnews_rows["train"]), tokenizer.all_special_ids, tokenizer.unk_token_id, 40000
    )
    pruned = vocabulary.prune_vocabulary(copy.deepcopy(model), kept)
    info = model_io.task_file(task, 64)
    full_dir = model_io.export_static_model(model, tokenizer, str(tmp_path / "full"), info)
    pruned_dir = model_io.export_static_model(pruned, tokenizer, str(tmp_path / "pruned"), info)
    inputs = lambda rows: [{k: r[k] for k in ("input_ids", "token_type_ids")} for r in rows]  # noqa: E731
    train, dev = inputs(tnews_rows["train"]), inputs(tnews_rows["dev"])
    dev_as_unk = [
        dict(r, input_ids=[i if i in set(kept.kept_ids.tolist()) else tokenizer.unk_token_id for i in r["input_ids"]])
        for r in dev
    ]
    for backend in ("paddle", "onnxruntime"):
        np.testing.assert_allclose(
            served_logits(pruned_dir, train, backend), served_logits(full_dir, train, backend), atol=1e-5
        )
        np.testing.assert_allclose(
            served_logits(pruned_dir, dev, backend), served_logits(full_dir, dev_as_unk, backend), atol=1e-5
        )
    parameters = lambda folder: os.path.getsize(os.path.join(folder, "model.pdiparams"))  # noqa: E731
    assert parameters(pruned_dir) < 0.25 * parameters(full_dir)  # the tiny model's weights are mostly its embedding


def test_each_candidate_s_peak_memory_is_measured_as_served(tnews_run, tmp_path):
    report = compress_seq_cls.main(
        clue_data_args("tnews")
        + ["--model_name_or_path", tnews_run, "--output_dir", str(tmp_path / "out"), "--strategy", "ptq"]
        + FAST
        + ["--measure_memory", "true", "--backends", "onnxruntime", "--precisions", "int8", "--max_eval_samples", "8"]
    )
    assert [c.relative_path for c in report.candidates] == ["onnxruntime_int8"]
    for entry in (report.parent, *report.candidates):
        assert entry.peak_memory_bytes > entry.size_bytes  # infer.py's whole process, the model's files in it


def test_the_pruned_embedding_looks_up_as_paddle_s_own_padding_included():
    paddle.seed(3)
    embedding = paddle.nn.Embedding(10, 4, padding_idx=0)
    kept = vocabulary.kept_vocabulary(Counter({5: 2, 7: 1}), [0, 1], unknown_id=1, full_size=10)
    pruned = vocabulary.PrunedWordEmbedding(embedding, kept)
    looked_up = pruned(paddle.to_tensor([[0, 5, 7, 8]])).numpy()
    np.testing.assert_array_equal(looked_up, embedding(paddle.to_tensor([[0, 5, 7, 1]])).numpy())
    assert not looked_up[0, 0].any()  # the padding id reads zeros, as Paddle's lookup with padding_idx gives
    assert list(pruned.weight.shape) == [4, 4]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--strategy", "ptq", "--depth_mult_list", "1/2"], "--depth_mult_list needs --strategy dynabert+ptq or "),
        (
            ["--strategy", "dynabert", "--student_layers", "1"],
            "--student_layers needs --strategy distill or distill+ptq",
        ),
        (["--strategy", "ptq", "--max_vocab_size", "100"], "--max_vocab_size needs --prune_vocabulary"),
        (["--strategy", "distill", "--student", "x", "--student_layers", "1"], "--student names one"),
        (["--strategy", "dynabert", "--width_mult_list", "1"], "give no smaller model than the parent"),
        (["--strategy", "ptq", "--width_mult_list", "3/4"], "--width_mult_list needs --strategy dynabert+ptq or "),
    ],
)
def test_an_option_the_strategy_would_ignore_is_refused(options, message, tnews_run, tmp_path, capsys):
    argv = clue_data_args("tnews") + ["--model_name_or_path", tnews_run, "--output_dir", str(tmp_path / "out")]
    status, stderr = run_cli(compress_seq_cls.main, argv + options, capsys)
    assert status == 2
    assert message in error_lines(stderr)[0]
    assert not os.path.exists(str(tmp_path / "out"))


def test_the_exported_programs_hold_the_word_embedding_once_and_score_as_the_model(tnews_run, tnews_rows, tmp_path):
    import onnx

    task = utils.SEQ_CLS_TASKS["tnews"]
    model = AutoModelForSequenceClassification.from_pretrained(tnews_run)
    model.eval()
    folder = model_io.export_static_model(model, model_io.load_tokenizer(tnews_run), str(tmp_path / "export"),
                                          model_io.task_file(task, 64))  # fmt: skip
    rows = [{k: r[k] for k in ("input_ids", "token_type_ids")} for r in tnews_rows["dev"]]
    served = served_logits(folder, rows, "onnxruntime")  # converts model.onnx
    tables = [
        tensor for tensor in onnx.load(os.path.join(folder, "model.onnx")).graph.initializer
        if list(tensor.dims) == [40000, 32]
    ] + [
        node for node in onnx.load(os.path.join(folder, "model.onnx")).graph.node
        if node.op_type == "Constant" and list(node.attribute[0].t.dims) == [40000, 32]
    ]  # fmt: skip
    assert len(tables) == 1
    np.testing.assert_allclose(served, logits(model, rows), atol=1e-5)
    np.testing.assert_allclose(served_logits(folder, rows, "paddle"), served, atol=1e-5)


def test_a_candidate_s_memory_run_is_capped_and_a_failed_one_is_no_number(monkeypatch):
    import types

    calls = []

    def fake_perf(model_dir, options, timeout=None):
        calls.append((list(options), timeout))
        if model_dir == "broken":
            raise runtime.UserError("infer.py --perf on broken failed: boom")
        return {"perf": {"peak_rss_mb": 300.0}}

    monkeypatch.setattr(compression, "perf_in_own_process", fake_perf)
    run = types.SimpleNamespace(
        args=types.SimpleNamespace(num_threads=2, per_device_eval_batch_size=32),
        data_args=types.SimpleNamespace(max_eval_samples=None, dev_file="dev.json"),
    )
    assert compression.served_peak_memory("folder", run) == 300 * 2**20
    options, timeout = calls[0]
    assert options[options.index("--max_eval_samples") + 1] == "512"
    assert options[options.index("--dev_file") + 1] == "dev.json"
    assert timeout == compression.MEMORY_TIMEOUT_S
    run.data_args.max_eval_samples = 40
    compression.served_peak_memory("folder", run)
    assert calls[1][0][calls[1][0].index("--max_eval_samples") + 1] == "40"
    assert compression.served_peak_memory("broken", run) is None
