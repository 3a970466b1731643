"""Larger than one machine: streamed prediction over files in bounded memory, shards that cover a file once, an
interrupted stream resumed, and fine-tuning launched as two "machines" on the loopback address."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest

import infer
import runtime
import utils
from conftest import clue_data_args, clue_file, error_lines, free_port, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tnews_lines(count):
    """count real TNEWS sentences (repeated as needed), with a blank line every 50 lines."""
    sentences = [json.loads(line)["sentence"] for line in open(clue_file("tnews", "train"), encoding="utf-8")]
    lines = []
    for i in range(count):
        lines.append("" if i % 50 == 49 else sentences[i % len(sentences)])
    return lines


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def read_rows(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def model(tnews_run):
    return os.path.join(tnews_run, "export")


def stream(model, input_file, output_file, *extra):
    return infer.main(
        [
            "--model_path",
            model,
            "--input_file",
            input_file,
            "--output_file",
            str(output_file),
            "--num_threads",
            "1",
            *extra,
        ]
    )


def test_a_streamed_file_gives_each_line_its_own_prediction_in_order(model, tmp_path):
    lines = tnews_lines(120)
    report = stream(model, write_lines(tmp_path / "in.txt", lines), tmp_path / "out.jsonl", "--stream_window", "16")
    rows = read_rows(tmp_path / "out.jsonl")
    kept = [i for i, line in enumerate(lines) if line.strip()]
    assert [row["line"] for row in rows] == kept
    assert report["predicted_lines"] == len(kept) == 118
    assert [row["text"] for row in rows] == [lines[i] for i in kept]
    texts = [lines[i] for i in kept[:5]]
    direct = infer.main(["--model_path", model, "--num_threads", "1", *sum((["--text", t] for t in texts), [])])[
        "predictions"
    ]
    assert [(r["label"], round(r["probability"], 5)) for r in rows[:5]] == [
        (r["label"], round(r["probability"], 5)) for r in direct
    ]


def test_shards_cover_the_file_once_and_concatenate_to_one_runs_output(model, tmp_path):
    input_file = write_lines(tmp_path / "in.txt", tnews_lines(100))
    stream(model, input_file, tmp_path / "whole.jsonl")
    shards = []
    for index in range(3):
        stream(model, input_file, tmp_path / f"shard{index}.jsonl", "--num_shards", "3", "--shard_index", str(index))
        shard = read_rows(tmp_path / f"shard{index}.jsonl")
        assert all(row["line"] % 3 == index for row in shard)
        shards += shard
    assert sorted(shards, key=lambda row: row["line"]) == read_rows(tmp_path / "whole.jsonl")


def test_an_interrupted_stream_resumes_without_duplicating_or_losing_a_line(model, tmp_path):
    lines = tnews_lines(3000)
    input_file = write_lines(tmp_path / "in.txt", lines)
    output_file = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "infer.py"),
            "--model_path",
            model,
            "--input_file",
            input_file,
            "--output_file",
            str(output_file),
            "--stream_window",
            "32",
            "--num_threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and (not output_file.exists() or output_file.stat().st_size < 20000):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(output_file, "ab") as handle:
        handle.write(b'{"line": 99999, "text": "half writ')  # as if killed inside a write
    done = len(read_rows_complete(output_file))
    assert 0 < done < 2940, done
    stream(model, input_file, output_file, "--resume", "--stream_window", "32")
    rows = read_rows(output_file)
    assert [row["line"] for row in rows] == [i for i, line in enumerate(lines) if line.strip()]


def read_rows_complete(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.endswith("\n")]


def peak_memory_of_a_stream(model, input_file, output_file):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "infer.py"),
            "--model_path",
            model,
            "--input_file",
            input_file,
            "--output_file",
            str(output_file),
            "--num_threads",
            "1",
            "--stream_window",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return float(re.search(r"peak memory (\d+) MB", result.stderr).group(1))


def test_memory_does_not_grow_with_the_file(model, tmp_path):
    small = peak_memory_of_a_stream(
        model, write_lines(tmp_path / "small.txt", tnews_lines(500)), tmp_path / "small.jsonl"
    )
    large = peak_memory_of_a_stream(
        model, write_lines(tmp_path / "large.txt", tnews_lines(10000)), tmp_path / "large.jsonl"
    )
    assert len(read_rows(tmp_path / "large.jsonl")) == 9800
    assert large < small * 1.1 + 30, (small, large)  # 20x the lines, about the same peak


def test_a_line_or_text_is_one_text_or_a_pair_as_the_task_takes():
    """A tab separates text and pair on pair tasks' input lines only; on single-text tasks (and in --text) it is
    text. A pair task's line without its pair, or with an empty one, is one error."""
    tnews, afqmc = utils.SEQ_CLS_TASKS["tnews"], utils.SEQ_CLS_TASKS["afqmc"]
    (single,) = infer.line_examples(tnews, "上海\t天气", 0, "f:1")
    assert (single.text_a, single.text_b) == ("上海\t天气", None)
    (pair,) = infer.line_examples(afqmc, "花呗怎么还款\t花呗如何还钱", 0, "f:1")
    assert (pair.text_a, pair.text_b) == ("花呗怎么还款", "花呗如何还钱")
    with pytest.raises(runtime.UserError, match=r"f:1: task afqmc compares two texts: give text<TAB>pair"):
        infer.line_examples(afqmc, "花呗怎么还款", 0, "f:1")
    with pytest.raises(runtime.UserError, match=r"f:1: empty text"):
        infer.line_examples(afqmc, "花呗怎么还款\t ", 0, "f:1")
    given = types.SimpleNamespace(input_file=None, text=["上海\t天气"], text_pair=None, question=None)
    assert infer.raw_examples(tnews, given)[0].text_a == "上海\t天气"
    with pytest.raises(runtime.UserError, match=r"task afqmc compares two texts: give one --text_pair per --text"):
        infer.raw_examples(afqmc, given)


def test_stream_refusals(model, tmp_path, capsys):
    input_file = write_lines(tmp_path / "in.txt", tnews_lines(10))
    status, stderr = run_cli(infer.main, ["--model_path", model, "--input_file", input_file, "--resume"], capsys)
    assert status == 2
    assert "--resume continues an --output_file" in error_lines(stderr)[0]
    status, stderr = run_cli(
        infer.main,
        ["--model_path", model, "--input_file", input_file, "--num_shards", "2", "--shard_index", "2"],
        capsys,
    )
    assert status == 2
    assert "--shard_index must be between 0 and --num_shards - 1 (1)" in error_lines(stderr)[0]
    (tmp_path / "other.jsonl").write_text('{"label": "x"}\n', encoding="utf-8")
    status, stderr = run_cli(
        infer.main,
        ["--model_path", model, "--input_file", input_file, "--output_file", str(tmp_path / "other.jsonl"), "--resume"],
        capsys,
    )
    assert status == 2
    assert "is not an output of infer.py --input_file" in error_lines(stderr)[0]
    blank = write_lines(tmp_path / "blank.txt", ["", " "])
    status, stderr = run_cli(
        infer.main,
        ["--model_path", model, "--input_file", blank, "--output_file", str(tmp_path / "none.jsonl")],
        capsys,
    )
    assert status == 2
    assert "holds no input" in error_lines(stderr)[0]
    assert not (tmp_path / "none.jsonl").exists()


def test_two_machines_on_the_loopback_address_train_once_and_predict_like_one_process(tiny_ernie, tmp_path):
    """paddle.distributed.launch --master 127.0.0.1:PORT --nnodes 2: one process per "machine", the same output
    folder (as on a shared file system): the outputs are written once, by the global first process, and the
    predictions equal a single process's with the saved model."""
    output_dir = tmp_path / "two-nodes"
    master = f"127.0.0.1:{free_port()}"
    script_args = [
        *clue_data_args("tnews"),
        "--model_name_or_path",
        tiny_ernie,
        "--output_dir",
        str(output_dir),
        "--device",
        "cpu",
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "8",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paddle.distributed.launch",
                "--master",
                master,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rank",
                str(rank),
                "--log_dir",
                str(tmp_path / f"log{rank}"),
                os.path.join(ROOT, "run_seq_cls.py"),
                *script_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    logs = {
        rank: "".join(
            open(os.path.join(tmp_path / f"log{rank}", name), encoding="utf-8", errors="replace").read()
            for name in os.listdir(tmp_path / f"log{rank}")
        )
        for rank in (0, 1)
    }
    assert "wrote 16 predictions" in logs[0]
    assert "wrote" not in logs[1]  # the submission file: once, by rank 0
    assert read_json(output_dir / "train_results.json")["global_step"] == 3
    two_nodes = [json.loads(line) for line in open(output_dir / "tnews11_predict.json", encoding="utf-8")]
    single = tmp_path / "single"
    import run_seq_cls

    run_seq_cls.main(
        [
            "--task_name",
            "tnews",
            "--model_name_or_path",
            str(output_dir),
            "--test_file",
            clue_file("tnews", "test"),
            "--output_dir",
            str(single),
            "--do_predict",
        ]
    )
    assert two_nodes == [json.loads(line) for line in open(single / "tnews11_predict.json", encoding="utf-8")]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
