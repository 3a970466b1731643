"""One writer per output: fine-tuning's and compression's --output_dir and infer.py's --output_file are locked while
a run writes them (an flock the operating system releases when the process dies), so a second run refuses with one
line naming the first. Replacing an output is all or nothing: a failure while swapping leaves the old output whole.
Staging folders of dead runs (unlocked) are removed; those of live runs are kept."""

import os
import subprocess
import sys
import time

import pytest

import compress_seq_cls
import infer
import run_seq_cls
import runtime
from conftest import clue_data_args, error_lines, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_LOCK = "import runtime, sys, time\nwith runtime.output_lock(sys.argv[1], 'x'):\n    print('held', flush=True)\n"
HOLD_LOCK += "    time.sleep(60)\n"


@pytest.fixture()
def held_by_another_process(tmp_path):
    """(a path, the process holding its lock)"""
    path = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield path, holder
    holder.kill()
    holder.wait()


def refusal(path, option, pid):
    return f"error: {option} {path} is being written by another run (pid {pid} on "


def test_a_second_writer_refuses_naming_the_first_until_it_dies(held_by_another_process):
    path, holder = held_by_another_process
    with pytest.raises(runtime.UserError, match=rf"--output_dir {path} is being written by another run \(pid "):
        with runtime.output_lock(path, "--output_dir"):
            pass
    holder.kill()  # SIGKILL: no clean-up, the operating system releases the lock
    holder.wait()
    with runtime.output_lock(path, "--output_dir"):
        pass


def test_fine_tuning_into_a_folder_another_run_writes_refuses(held_by_another_process, tiny_ernie, capsys):
    path, holder = held_by_another_process
    argv = clue_data_args("tnews") + ["--model_name_or_path", tiny_ernie, "--output_dir", path, "--max_steps", "1"]
    status, stderr = run_cli(run_seq_cls.main, argv, capsys)
    assert status == 2
    assert error_lines(stderr)[0].startswith(refusal(path, "--output_dir", holder.pid))
    assert not os.path.exists(path)


def test_two_evaluations_into_one_output_file_refuse(held_by_another_process, tnews_run, capsys):
    path, holder = held_by_another_process
    argv = ["--model_path", os.path.join(tnews_run, "export"), "--max_eval_samples", "4", "--output_file", path]
    status, stderr = run_cli(infer.main, argv, capsys)
    assert status == 2
    assert error_lines(stderr)[0].startswith(refusal(path, "--output_file", holder.pid))


def test_a_compression_into_a_folder_another_run_writes_refuses(held_by_another_process, tnews_run, capsys):
    path, holder = held_by_another_process
    argv = clue_data_args("tnews") + ["--model_name_or_path", tnews_run, "--output_dir", path, "--strategy", "ptq",
                                      "--algo_list", "hist", "--batch_size_list", "4", "--backends", "paddle",
                                      "--max_eval_samples", "8"]  # fmt: skip
    status, stderr = run_cli(compress_seq_cls.main, argv, capsys)
    assert status == 2
    assert error_lines(stderr)[0].startswith(refusal(path, "--output_dir", holder.pid))
    assert not os.path.exists(path)
    assert [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".tmp-")] == []


# ---- replacing an output: all or nothing ---------------------------------------------------------------------------
def make_tree(root, files):
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, name)) or root, exist_ok=True)
        with open(os.path.join(root, name), "w", encoding="utf-8") as out:
            out.write(text)


def read_tree(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, encoding="utf-8").read()
    return found


OLD = {"compress_report.json": "old report", "hist4_1/model.pdiparams": "old", "parent/model.pdiparams": "old"}
NEW = {"compress_report.json": "new report", "hist4_1/model.pdiparams": "new", "mse4_1/model.pdiparams": "new",
       "parent/model.pdiparams": "new"}  # fmt: skip
RENAMES = 7  # into a shared folder: three old entries moved aside, four new ones moved in


def failing_rename(monkeypatch, fail_at):
    """os.rename that fails at its fail_at-th call, and an exchange the file system cannot do."""
    calls, rename = [], os.rename

    def rename_or_fail(source, target):
        calls.append(target)
        if len(calls) == fail_at:
            raise OSError(5, "Input/output error", target)
        rename(source, target)

    monkeypatch.setattr(runtime.os, "rename", rename_or_fail)
    monkeypatch.setattr(runtime, "exchange_paths", lambda first, second: False)
    return calls


def overwrite(path, files):
    with runtime.atomic_entries(str(path), overwrite=True) as staging:
        make_tree(staging, files)


@pytest.mark.parametrize("shared", [False, True], ids=["whole-folder", "shared-folder"])
def test_overwriting_replaces_every_entry(tmp_path, shared):
    output = tmp_path / "compress"
    make_tree(output, {**OLD, **({"notes.txt": "mine"} if shared else {})})
    overwrite(output, NEW)
    assert read_tree(output) == {**NEW, **({"notes.txt": "mine"} if shared else {})}
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


@pytest.mark.parametrize("fail_at", range(1, RENAMES + 1))
def test_a_failure_while_swapping_a_shared_folder_leaves_the_old_output_whole(tmp_path, monkeypatch, fail_at):
    output = tmp_path / "compress"
    make_tree(output, {**OLD, "notes.txt": "mine"})
    failing_rename(monkeypatch, fail_at)
    with pytest.raises(OSError, match="Input/output error"):
        overwrite(output, NEW)
    assert read_tree(output) == {**OLD, "notes.txt": "mine"}
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failure_while_swapping_a_whole_folder_leaves_the_old_output_whole(tmp_path, monkeypatch, fail_at):
    output = tmp_path / "compress"
    make_tree(output, OLD)
    failing_rename(monkeypatch, fail_at)
    with pytest.raises(OSError, match="Input/output error"):
        overwrite(output, NEW)
    assert read_tree(output) == OLD


def test_a_whole_folder_is_replaced_in_one_exchange(tmp_path, monkeypatch):
    output = tmp_path / "compress"
    make_tree(output, OLD)
    renamed = []
    monkeypatch.setattr(runtime.os, "rename", lambda *paths: renamed.append(paths))
    overwrite(output, NEW)
    assert (renamed, read_tree(output)) == ([], NEW)


# ---- staging folders of dead runs ----------------------------------------------------------------------------------
def backdated(path):
    os.makedirs(path)
    with open(os.path.join(path, "model.pdiparams"), "wb") as out:
        out.write(b"\0" * 1000)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


def test_staging_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead_beside = backdated(str(tmp_path / ".tmp-compress-abcd1234"))  # a killed run into a new folder
    dead_inside = backdated(str(tmp_path / "compress" / ".tmp-staging-abcd1234"))  # ... into an existing one
    with runtime.staging_folder(str(tmp_path), ".tmp-export-") as live:
        os.utime(live, (time.time() - 3600,) * 2)
        with runtime.output_lock(str(tmp_path / "compress"), "--output_dir"):
            pass
        assert os.path.isdir(live)
    assert not os.path.exists(dead_beside)
    assert not os.path.exists(dead_inside)


def test_a_folder_a_dead_run_moved_aside_is_put_back(tmp_path):
    aside = backdated(str(tmp_path / ".tmp-compress-abcd1234-old"))
    with runtime.output_lock(str(tmp_path / "compress"), "--output_dir"):
        pass
    assert not os.path.exists(aside)
    assert os.listdir(tmp_path / "compress") == ["model.pdiparams"]
