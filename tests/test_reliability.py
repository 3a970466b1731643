"""Reliability: one bad input fails alone, and a broken model folder is one line. A text that is not Unicode (a lone
surrogate: JSON's "\\ud800", or bytes the command line could not decode) is one error naming it, before any tokenizer
sees it: in data files, in infer.py's raw input, and in a serve.py request, where it fails alone and the requests
batched with it are answered. A server whose model failed to load refuses every request at once and stops on SIGTERM.
Damaged program or parameter files are one line naming the folder."""

import concurrent.futures
import os
import re

import pytest
from test_serve import SENTENCES, Server, request

import infer
import runtime
import serving
import utils
from conftest import clue_file, error_lines, run_cli


def test_a_raw_text_with_a_lone_surrogate_is_one_error_line(tnews_run, capsys):
    export = os.path.join(tnews_run, "export")
    status, stderr = run_cli(infer.main, ["--model_path", export, "--text", "abc\udcff"], capsys)
    assert status == 2
    assert error_lines(stderr) == [
        "error: --text 1: text is not Unicode text: a lone surrogate ('\\udcff') at character 3"
    ]


def test_a_data_row_with_a_lone_surrogate_names_its_file_and_line(tnews_run, tmp_path, capsys):
    rows = open(clue_file("tnews", "dev"), encoding="utf-8").read().splitlines()[:3]
    rows[1] = rows[1].replace('"sentence": "', '"sentence": "\\ud800', 1)
    (tmp_path / "dev.json").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["--model_path", os.path.join(tnews_run, "export"), "--dev_file", str(tmp_path / "dev.json")]
    status, stderr = run_cli(infer.main, args, capsys)
    assert status == 2
    assert error_lines(stderr) == [f"error: {tmp_path / 'dev.json'}:2: field 'sentence' is not Unicode text (a lone "
                                   "surrogate at character 0)"]  # fmt: skip


def test_a_poisoned_request_fails_alone_among_concurrent_ones(tnews_run):
    server = Server(os.path.join(tnews_run, "export"), "--max_wait_ms", "300").wait_ready()
    bodies = [{"data": {"text": [text]}} for text in SENTENCES * 2]
    bodies.insert(3, {"data": {"text": ["\ud800"]}})
    try:
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda body: request(server, "POST", "/tnews", body), bodies))
    finally:
        server.stop()
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * 3 + [422] + [200] * (len(bodies) - 4)
    assert answers[3][1]["error"].startswith("request 0: text is not Unicode text: a lone surrogate")


def test_a_server_whose_model_failed_to_load_refuses_at_once_and_stops_on_sigterm(tnews_run, tmp_path):
    import shutil
    import time

    broken = tmp_path / "export"
    shutil.copytree(os.path.join(tnews_run, "export"), broken)
    (broken / "model.pdiparams").write_bytes(b"")  # the program reads, the parameters do not
    server = Server(str(broken))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if request(server, "GET", "/health")[0] == 500:
                break
        except OSError:
            time.sleep(0.2)
    started = time.perf_counter()
    status, answer, _ = request(server, "POST", "/tnews", {"data": {"text": ["上海"]}}, timeout=10)
    assert time.perf_counter() - started < 5
    assert status == 503
    assert answer["error"].startswith("the model could not be loaded")
    server.stop()  # SIGTERM, then at most 60 s
    assert server.process.returncode == 0


DEEP = b'{"data": ' + b"[" * 100000 + b"]" * 100000 + b"}"
HUGE_NUMBER = b'{"data": {"text": [' + b"9" * 5000 + b"]}}"


@pytest.mark.parametrize(
    "raw, message", [(DEEP, "the body nests too deeply"), (HUGE_NUMBER, "the body holds a number too large")]
)
def test_bodies_that_would_exhaust_the_parser_are_a_400(raw, message):
    with pytest.raises(serving.RequestError, match=message) as refused:
        serving.read_body(raw)
    assert refused.value.status == 400


def broken_copy(tnews_run, tmp_path, name, content):
    import shutil

    broken = tmp_path / "export"
    shutil.copytree(os.path.join(tnews_run, "export"), broken)
    (broken / name).write_bytes(content)
    return str(broken)


@pytest.mark.parametrize(
    "name, content, backend",
    [
        ("model.pdiparams", b"", "paddle"),
        ("model.pdiparams", b"\x00" * 64, "paddle"),
        ("model.json", b"{garbage", "paddle"),
        ("model.json", b"{garbage", "onnxruntime"),
    ],
)
def test_a_damaged_model_folder_is_one_error_line(tnews_run, tmp_path, capsys, name, content, backend):
    folder = broken_copy(tnews_run, tmp_path, name, content)
    status, stderr = run_cli(infer.main, ["--model_path", folder, "--backend", backend, "--text", "上海"], capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert error_lines(stderr)[0].startswith(f"error: {folder}: ")
    assert "export it again" in error_lines(stderr)[0]


def test_a_task_file_with_another_label_list_says_so(tnews_run, tmp_path, capsys):
    import json

    folder = broken_copy(
        tnews_run, tmp_path, "model.pdiparams", open(os.path.join(tnews_run, "export", "model.pdiparams"), "rb").read()
    )
    task_file = json.loads(open(os.path.join(folder, "task.json"), encoding="utf-8").read())
    task_file["label_list"] = task_file["label_list"][::-1]
    with open(os.path.join(folder, "task.json"), "w", encoding="utf-8") as out:
        json.dump(task_file, out)
    status, stderr = run_cli(infer.main, ["--model_path", folder, "--text", "上海"], capsys)
    assert status == 2
    assert error_lines(stderr) == [
        f"error: {folder}: the label_list of its task.json is not task tnews's labels; export the model again"
    ]


def test_an_output_file_under_a_file_is_one_error_line_naming_it(tnews_run, tmp_path, capsys):
    (tmp_path / "plain").write_text("not a folder", encoding="utf-8")
    output = tmp_path / "plain" / "report.json"
    args = ["--model_path", os.path.join(tnews_run, "export"), "--text", "上海", "--output_file", str(output)]
    status, stderr = run_cli(infer.main, args, capsys)
    assert status == 2
    assert len(error_lines(stderr)) == 1
    assert error_lines(stderr)[0].startswith(f"error: {tmp_path / 'plain'}")


def test_operating_system_errors_on_files_are_one_line_with_advice(capsys):
    import errno

    import runtime

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.json")

    with pytest.raises(SystemExit) as stop:
        runtime.run_cli(full_disk)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: /data/out.json: No space left on device (the disk is full: free some space or choose another place)\n"
    )


def raw_exchange(server, head: bytes, body: bytes, wait: float = 15.0) -> str:
    """Send a request's head and (part of) its body over a socket; return the status line of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as connection:
        connection.sendall(head + body)
        return connection.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_a_body_over_the_limit_is_413_before_it_is_read_and_a_slow_one_408(tnews_run):
    import time

    server = Server(os.path.join(tnews_run, "export"), "--body_timeout_s", "1").wait_ready()
    try:
        head = (
            b"POST /tnews HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        )
        started = time.perf_counter()
        too_large = raw_exchange(server, head % 50_000_000, b'{"data": ')  # 50 MB announced, 9 bytes sent
        refused_after = time.perf_counter() - started
        started = time.perf_counter()
        too_slow = raw_exchange(server, head % 1000, b'{"data": ')  # 1,000 bytes announced, 9 sent, then nothing
        timed_out_after = time.perf_counter() - started
    finally:
        server.stop()
    assert too_large.startswith("HTTP/1.1 413")
    assert refused_after < 5
    assert too_slow.startswith("HTTP/1.1 408")
    assert 0.9 < timed_out_after < 10


def trickled_head(connection, head: bytes, pause: float) -> None:
    """Send a request head a few bytes at a time (uvicorn's keep-alive timer starts again with every byte), until
    it is sent or the server closes the connection."""
    import time

    for start in range(0, len(head), 8):
        try:
            connection.sendall(head[start : start + 8])
        except (BrokenPipeError, ConnectionResetError):
            return
        time.sleep(pause)


def answer_status(connection) -> str:
    """The status line of the next answer on this connection ('' when it was closed without one)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length.group(1)):
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.decode("latin-1").split("\r\n", 1)[0]


def closed_by_server(connection) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:  # closed with bytes of ours unread
        return True


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_headers_trickled_past_the_deadline_are_408_and_the_connection_closed(tnews_run, http):
    import json
    import socket
    import time

    server = Server(os.path.join(tnews_run, "export"), "--header_timeout_s", "1", "--http", http).wait_ready()
    body = json.dumps({"data": {"text": ["上海"]}}).encode()
    head = (
        b"POST /tnews HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Padding: %s\r\nContent-Length: %d\r\n\r\n" % (b"x" * 40, len(body))
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as connection:
            started = time.perf_counter()
            trickled_head(connection, head[:-4], 0.15)  # 18 pieces over 2.7 s, never the blank line
            slow = answer_status(connection)
            slow_after = time.perf_counter() - started
            closed = closed_by_server(connection)
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as connection:
            trickled_head(connection, head, 0.02)  # within the deadline
            time.sleep(1.5)  # the headers are in: the body has its own limit (--body_timeout_s, 10 s)
            connection.sendall(body)
            in_time = answer_status(connection)
            answered = time.perf_counter()
            time.sleep(0.8)
            connection.sendall(head[:40])  # the next request on this connection: its deadline starts at the answer
            next_started = answer_status(connection)
            next_after = time.perf_counter() - answered  # about 1 s; 1.8 s if it started at its first bytes
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as connection:
            connection.sendall(head + body + head + body[:5])  # a second request pipelined, its body cut short
            first = answer_status(connection)
            time.sleep(1.5)  # the second's headers are in: no header deadline runs while its body comes
            connection.sendall(body[5:])
            pipelined = answer_status(connection)
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as connection:
            silent = answer_status(connection)  # a connection that sends nothing is closed, without a 408
    finally:
        server.stop()
    assert slow.startswith("HTTP/1.1 408")
    assert 0.9 < slow_after < 5
    assert closed
    assert in_time.startswith("HTTP/1.1 200")
    assert next_started.startswith("HTTP/1.1 408")
    assert 0.9 < next_after < 1.6
    assert (first, pipelined) == ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK")
    assert silent == ""


def with_task_file_of(tnews_run, tmp_path, task_name):
    """A copy of the TNEWS export (15 scores a text) whose task.json says it is another task's model."""
    import json
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(os.path.join(tnews_run, "export"), folder)
    task_file = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    task_file.update(task_name=task_name, label_list=list(utils.ALL_TASKS[task_name].labels))
    (folder / "task.json").write_text(json.dumps(task_file), encoding="utf-8")
    return str(folder)


def test_a_task_file_of_another_task_is_one_error_line(tnews_run, tmp_path, capsys):
    folder = with_task_file_of(tnews_run, tmp_path, "afqmc")
    argv = ["--model_path", folder, "--text", "上海", "--text_pair", "北京"]
    status, stderr = run_cli(infer.main, argv, capsys)
    assert status == 2
    assert error_lines(stderr) == [
        f"error: {folder}: the model gives 15 scores but its task.json's task afqmc has 2 labels (a task.json of "
        "another task?); export the model again"
    ]


class FifteenScores:
    """A predictor that gives TNEWS's 15 scores a text."""

    def run(self, batch):
        import numpy as np

        return [np.zeros((len(batch["input_ids"]), 15), dtype="float32")]


def test_a_server_whose_task_file_is_another_tasks_answers_503(tnews_run, tmp_path):
    folder = with_task_file_of(tnews_run, tmp_path, "afqmc")
    task, limits = utils.ALL_TASKS["afqmc"], serving.ServingLimits()
    batcher = serving.Batcher(FifteenScores, folder, task, None, 128, limits).start()
    examples = serving.request_examples(task, {"data": {"text": ["上海"], "text_pair": ["北京"]}}, limits)
    try:
        with pytest.raises(serving.Unavailable, match="the model gives 15 scores but its task.json's task afqmc"):
            batcher.submit(examples).result(timeout=60)
        with pytest.raises(serving.Unavailable):
            batcher.submit(examples)  # refused at once from now on
    finally:
        batcher.close()


# ---- reading the user's files: a BOM, folders and FIFOs, where invalid UTF-8 is, a line cap --------------------------
def test_a_utf8_bom_is_dropped_from_json_files_and_data_lines(tmp_path):
    (tmp_path / "args.json").write_bytes(runtime.UTF8_BOM + b'{"task_name": "tnews"}')
    (tmp_path / "rows.json").write_bytes(runtime.UTF8_BOM + b'{"sentence": "a"}\n{"sentence": "b"}\n')
    assert runtime.read_json_file(str(tmp_path / "args.json"), "--config") == {"task_name": "tnews"}
    rows = [row for _, row in utils.read_json_lines(str(tmp_path / "rows.json"), "--dev_file")]
    assert rows == [{"sentence": "a"}, {"sentence": "b"}]


def test_a_bom_is_not_part_of_the_first_streamed_text(tnews_run, tmp_path, capsys):
    import json

    (tmp_path / "in.txt").write_bytes(runtime.UTF8_BOM + "上海\n北京\n".encode())
    argv = ["--model_path", os.path.join(tnews_run, "export"), "--input_file", str(tmp_path / "in.txt")]
    argv += ["--output_file", str(tmp_path / "out.jsonl")]
    assert run_cli(infer.main, argv, capsys)[0] == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == ["上海", "北京"]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_a_fifo_given_as_a_file_says_what_it_is(tmp_path, kind):
    path = str(tmp_path / "given")
    os.mkdir(path) if kind == "folder" else os.mkfifo(path)
    expected = "is a folder: give a file" if kind == "folder" else "is not a regular file (a FIFO or a device)"
    with pytest.raises(runtime.UserError, match=rf"^--dev_file: {path} {re.escape(expected)}"):
        runtime.read_json_file(path, "--dev_file")


def test_invalid_utf8_names_its_line_and_its_byte_in_the_file(tmp_path):
    data = b'{"sentence": "a"}\n' * 1000 + b'{"sentence": "\xff"}\n'
    (tmp_path / "rows.json").write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(runtime.UserError) as refused:
        list(utils.read_json_lines(str(tmp_path / "rows.json"), "--dev_file"))
    assert str(refused.value) == (
        f"{tmp_path / 'rows.json'}: not UTF-8 text (line 1001: invalid start byte at byte {offset} of the file)"
    )


def test_a_control_character_in_a_json_line_reads_without_a_doubled_at(tmp_path):
    (tmp_path / "rows.json").write_bytes(b'{"sentence": "a\x00b"}\n')
    with pytest.raises(runtime.UserError) as refused:
        list(utils.read_json_lines(str(tmp_path / "rows.json"), "--dev_file"))
    assert str(refused.value) == (
        f"{tmp_path / 'rows.json'}:1: not a valid JSON line (Invalid control character at column 16)"
    )


def test_a_streamed_line_over_the_cap_is_one_error_line_naming_it(tnews_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("上海\n" + "长" * 100_000 + "\n", encoding="utf-8")  # 300,000 bytes
    argv = ["--model_path", os.path.join(tnews_run, "export"), "--input_file", str(tmp_path / "in.txt")]
    status, stderr = run_cli(infer.main, argv + ["--output_file", str(tmp_path / "out.jsonl")], capsys)
    assert status == 2
    assert error_lines(stderr) == [
        f"error: {tmp_path / 'in.txt'}:2: the line is longer than 262144 bytes (--max_line_bytes): split it or raise "
        "the limit"
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_cap_is_read(tmp_path, ending):
    (tmp_path / "in.txt").write_bytes(b"x" * 10 + ending + b"y")
    lines = [line for _, line, _ in runtime.file_lines(str(tmp_path / "in.txt"), "--input_file", 10)]
    assert lines == ["x" * 10, "y"]


# ---- a full disk, a read-only one, an unreadable file: one line naming the path, exit 2, nothing half-written -----
@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/disk (root only; else the test is skipped, saying why)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk):
    with open(disk / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def os_error_case(small_tmpfs, case):
    import subprocess

    if case == "full disk":
        fill(small_tmpfs)
        return "No space left on device (the disk is full: free some space or choose another place)"
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    return "Read-only file system (the file system is read-only: choose a writable place)"


@pytest.mark.parametrize("case", ["full disk", "read-only disk"])
def test_an_output_file_on_a_full_or_read_only_disk_is_one_line_and_nothing_is_left(
    tnews_run, small_tmpfs, capsys, case
):
    message = os_error_case(small_tmpfs, case)
    output = small_tmpfs / "report.json"
    args = ["--model_path", os.path.join(tnews_run, "export"), "--text", "上海", "--output_file", str(output)]
    status, stderr = run_cli(infer.main, args, capsys)
    assert status == 2
    assert error_lines(stderr) == [f"error: {output}: {message}"]
    assert [name for name in os.listdir(small_tmpfs) if name not in ("filler", ".report.json.lock")] == []


@pytest.mark.parametrize("case", ["full disk", "read-only disk"])
def test_a_stream_onto_a_full_or_read_only_disk_is_one_line(tnews_run, small_tmpfs, tmp_path, capsys, case):
    (tmp_path / "in.txt").write_text("上海\n" * 50, encoding="utf-8")
    message = os_error_case(small_tmpfs, case)
    output = small_tmpfs / "out.jsonl"
    args = ["--model_path", os.path.join(tnews_run, "export"), "--input_file", str(tmp_path / "in.txt")]
    status, stderr = run_cli(infer.main, args + ["--output_file", str(output)], capsys)
    assert status == 2
    assert error_lines(stderr) == [f"error: {output}: {message}"]


def test_a_fine_tuning_output_dir_on_a_read_only_disk_is_one_line(tiny_ernie, small_tmpfs, capsys):
    import run_seq_cls

    message = os_error_case(small_tmpfs, "read-only disk")
    output = small_tmpfs / "run"
    argv = ["--task_name", "tnews", "--model_name_or_path", tiny_ernie, "--output_dir", str(output)]
    status, stderr = run_cli(
        run_seq_cls.main, argv + ["--train_file", clue_file("tnews", "train"), "--do_train"], capsys
    )
    assert status == 2
    assert error_lines(stderr) == [f"error: {output}: {message}"]


def test_an_unreadable_input_file_is_one_line(tmp_path):
    """Root reads any file whatever its mode: where the test runs as root, the reader becomes nobody once it has
    imported the suite."""
    import subprocess
    import sys

    (tmp_path / "dev.json").write_text('{"sentence": "a"}\n', encoding="utf-8")
    os.chmod(tmp_path / "dev.json", 0)
    read = (
        "import os, sys, runtime, utils\n"
        "if os.geteuid() == 0:\n    os.setuid(65534)\n"
        "runtime.run_cli(lambda: list(utils.read_json_lines(sys.argv[1], '--dev_file')))"
    )
    finished = subprocess.run(
        [sys.executable, "-c", read, str(tmp_path / "dev.json")],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
    )
    assert (finished.returncode, finished.stderr) == (
        2,
        f"error: {tmp_path / 'dev.json'}: Permission denied (check its permissions)\n",
    )


def test_a_device_error_reading_the_dev_file_is_one_line_naming_it(tnews_run, monkeypatch, capsys):
    """EIO cannot be made on demand here: the read of the user's file fails with it as a failing disk would."""
    import builtins
    import errno

    path = clue_file("tnews", "dev")
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if os.fspath(file) == path:
            raise OSError(errno.EIO, "Input/output error", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    status, stderr = run_cli(
        infer.main, ["--model_path", os.path.join(tnews_run, "export"), "--dev_file", path], capsys
    )
    assert status == 2
    assert error_lines(stderr) == [f"error: {path}: Input/output error (the device failed to read or write it)"]


def test_paddle_s_errors_are_their_summary_without_the_build_machine_s_paths():
    error = RuntimeError(
        "\n\n--------------------------------------\nC++ Traceback (most recent call last):\n"
        "--------------------------------------\n0   paddle::AnalysisPredictor::Init()\n\n"
        "----------------------\nError Message Summary:\n----------------------\n"
        "NotFoundError: Cannot open file /m/model.pdiparams. [Hint: Expected fin.is_open() == true, but received "
        "0.] (at /paddle/paddle/fluid/inference/api/analysis_predictor.cc:1234)\n"
    )
    assert runtime.first_line(error) == "NotFoundError: Cannot open file /m/model.pdiparams."
    short = IndexError("(OutOfRange) label 9 is out of range (at /paddle/paddle/phi/kernels/funcs/cross_entropy.cc:63)")
    assert runtime.first_line(short) == "(OutOfRange) label 9 is out of range"
    assert runtime.first_line(ValueError("")) == "ValueError"
