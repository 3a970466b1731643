"""Checkpoints are complete or never loaded: each checkpoint-<step> gets a marker, written last, that lists its files
and their sizes; --resume_from_checkpoint true takes the newest complete one and says which, a newer incomplete one
(an interrupted save: an empty optimizer.pdopt, no marker) is reported and skipped, and a named incomplete one is
one error line."""

import json
import os

import pytest

import run_seq_cls
import trainer_suite
from conftest import clue_data_args, error_lines, run_cli

SMALL_RUN = ["--per_device_train_batch_size", "8", "--max_train_samples", "32", "--evaluation_strategy", "no",
             "--load_best_model_at_end", "false", "--save_strategy", "steps", "--save_steps", "2",
             "--save_total_limit", "3", "--do_train"]  # fmt: skip


def train(tiny_ernie, output_dir, steps, *extra):
    args = clue_data_args("tnews") + ["--model_name_or_path", tiny_ernie, "--output_dir", str(output_dir)]
    return args + SMALL_RUN + ["--max_steps", str(steps), *extra]


@pytest.fixture(scope="module")
def four_steps(tiny_ernie, tmp_path_factory):
    """A run of 4 steps that saved checkpoint-2 and checkpoint-4."""
    output_dir = tmp_path_factory.mktemp("four-steps")
    run_seq_cls.main(train(tiny_ernie, output_dir, 4))
    return output_dir


def copied(four_steps, tmp_path):
    import shutil

    shutil.copytree(four_steps, tmp_path / "run")
    return tmp_path / "run"


def test_every_saved_checkpoint_is_marked_complete(four_steps):
    for step in (2, 4):
        assert trainer_suite.checkpoint_problem(str(four_steps / f"checkpoint-{step}")) is None
    listed = json.loads((four_steps / "checkpoint-4" / trainer_suite.CHECKPOINT_MARKER).read_text())["files"]
    assert listed["optimizer.pdopt"] == os.path.getsize(four_steps / "checkpoint-4" / "optimizer.pdopt")


def test_resume_skips_a_newer_checkpoint_with_an_empty_optimizer_file(four_steps, tiny_ernie, tmp_path, caplog):
    run = copied(four_steps, tmp_path)
    (run / "checkpoint-4" / "optimizer.pdopt").write_bytes(b"")  # what a kill or a full disk left
    run_seq_cls.main(train(tiny_ernie, run, 6, "--resume_from_checkpoint", "true"))
    assert f"{run / 'checkpoint-4'} is incomplete (optimizer.pdopt holds 0 bytes, not " in caplog.text
    assert f"resuming from {run / 'checkpoint-2'}, the newest complete checkpoint" in caplog.text
    assert json.loads((run / "train_results.json").read_text())["global_step"] == 6
    assert trainer_suite.checkpoint_problem(str(run / "checkpoint-4")) is None  # saved again, complete


def test_resume_refuses_when_no_checkpoint_is_complete(four_steps, tiny_ernie, tmp_path, capsys):
    run = copied(four_steps, tmp_path)
    for step in (2, 4):
        os.remove(run / f"checkpoint-{step}" / trainer_suite.CHECKPOINT_MARKER)
    status, stderr = run_cli(run_seq_cls.main, train(tiny_ernie, run, 6, "--resume_from_checkpoint", "true"), capsys)
    assert status == 2
    assert error_lines(stderr) == [
        f"error: --resume_from_checkpoint true: no complete checkpoint in {run} (checkpoint-4, checkpoint-2 "
        f"incomplete: no {trainer_suite.CHECKPOINT_MARKER}: its saving was interrupted); train again without "
        "--resume_from_checkpoint"
    ]


def test_a_named_incomplete_checkpoint_is_one_error_line(four_steps, tiny_ernie, tmp_path, capsys):
    run = copied(four_steps, tmp_path)
    os.remove(run / "checkpoint-4" / "rng_state.pth")
    named = str(run / "checkpoint-4")
    status, stderr = run_cli(run_seq_cls.main, train(tiny_ernie, run, 6, "--resume_from_checkpoint", named), capsys)
    assert status == 2
    assert error_lines(stderr) == [
        f"error: --resume_from_checkpoint {named} is incomplete (rng_state.pth is missing): resume from a complete "
        "checkpoint, or with 'true' for the newest complete one"
    ]
