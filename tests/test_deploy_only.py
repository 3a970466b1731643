"""The deploy-only install (requirements-deploy.txt): infer.py and serve.py in processes where importing paddle,
paddlenlp, paddle2onnx or paddleslim fails serve the ONNX Runtime and OpenVINO candidates of a compression as the full
install does; a candidate folder (or the whole compression folder) copied elsewhere serves as measured; a Paddle-only
model, or one that needs a conversion, is one error line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import compress_seq_cls
import infer
import model_folder
from conftest import clue_data_args, clue_file, error_lines, free_port, ner_file, qa_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["以色列大规模空袭开始", "出栏一头猪亏损300元", "华为发布新款手机"]
BLOCKED = ("paddle", "paddlenlp", "paddle2onnx", "paddleslim")
# put on PYTHONPATH as sitecustomize.py: every import of the full install's packages fails, as without them
BLOCKER = f"""import sys


class FullInstallBlocked:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"No module named {{name!r}} (blocked by the deploy-only test)")
        return None


sys.meta_path.insert(0, FullInstallBlocked)
"""
CANDIDATES = ("onnxruntime_int8", "openvino_int8")


@pytest.fixture(scope="module")
def deploy_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy-only")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def compressed(tnews_run, tmp_path_factory):
    """A compression that keeps only the deploy-only backends' candidates (parent/, onnxruntime_int8/,
    openvino_int8/)."""
    output_dir = str(tmp_path_factory.mktemp("deploy-compress") / "out")
    compress_seq_cls.main(
        clue_data_args("tnews")
        + ["--model_name_or_path", tnews_run, "--output_dir", output_dir, "--strategy", "ptq"]
        + ["--backends", "onnxruntime", "openvino", "--precisions", "fp32", "int8", "--measure_memory", "false"]
        + ["--batch_size_list", "4", "--per_device_eval_batch_size", "8", "--max_metric_drop", "100"]
    )
    return output_dir


def run_infer(env, model_dir, *extra):
    """infer.py in a process of its own: (exit status, its predictions or None, stderr)."""
    command = [sys.executable, os.path.join(ROOT, "infer.py"), "--model_path", model_dir, "--num_threads", "1"]
    for sentence in SENTENCES:
        command += ["--text", sentence]
    done = subprocess.run(command + list(extra), env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines if done.returncode == 0 else None, done.stderr


def full_install_rows(model_dir):
    return infer.main(
        ["--model_path", model_dir, "--num_threads", "1", *[t for s in SENTENCES for t in ("--text", s)]]
    )["predictions"]


def assert_same_rows(rows, expected):
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    assert [row["probability"] for row in rows] == pytest.approx([row["probability"] for row in expected], abs=1e-6)


def test_the_blocker_makes_the_full_install_unimportable(deploy_env):
    for name in BLOCKED:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], env=deploy_env, capture_output=True, text=True)
        assert done.returncode == 1, name
        assert "blocked by the deploy-only test" in done.stderr


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_infer_serves_each_candidate_without_paddle_as_the_full_install(compressed, deploy_env, candidate):
    model_dir = os.path.join(compressed, candidate)
    status, rows, stderr = run_infer(deploy_env, model_dir)
    assert status == 0, stderr
    assert_same_rows(rows, full_install_rows(model_dir))


def test_infer_evaluates_a_candidate_without_paddle_with_its_reported_metric(compressed, deploy_env, tmp_path):
    report = model_folder.read_report(model_folder.report_path(compressed))
    best = report.candidate(report.best)
    output = str(tmp_path / "eval.json")
    command = [sys.executable, os.path.join(ROOT, "infer.py"), "--model_path", compressed, "--output_file", output]
    command += ["--dev_file", clue_file("tnews", "dev"), "--batch_size", "8"]
    done = subprocess.run(command, env=deploy_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = json.loads(open(output, encoding="utf-8").read())
    assert served["model_path"] == best.path
    assert served["metrics"]["accuracy"] == pytest.approx(best.metrics["accuracy"], abs=1e-6)


class DeployOnlyServer:
    """serve.py in a process of its own with the given environment."""

    def __init__(self, model_dir, env):
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, os.path.join(ROOT, "serve.py"), "--model_path", model_dir]
        command += ["--port", self.url.rsplit(":", 1)[1], "--num_threads", "1"]
        # one call for the request's texts, as infer.py runs them: ONNX Runtime's dynamic int8 quantizes activations
        # with ranges taken over each call, and length-sorted cuts follow call times measured at start
        command += ["--split_by_length", "false"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve.py exited: {self.process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("serve.py was not ready in time")

    def __exit__(self, *_):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def predict(self, texts):
        body = json.dumps({"data": {"text": texts}, "parameters": {}}).encode()
        request = urllib.request.Request(
            self.url + "/tnews", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["result"]


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_serve_answers_each_candidate_without_paddle_as_the_full_install(compressed, deploy_env, candidate):
    model_dir = os.path.join(compressed, candidate)
    with DeployOnlyServer(model_dir, deploy_env) as server:
        rows = server.predict(SENTENCES)
    assert_same_rows(rows, full_install_rows(model_dir))


def copied_without_times(source, target):
    """source copied as cp -r copies (new modification times), its Paddle parameters written last: every file made
    from them looks older, as after a copy in another order."""
    shutil.copytree(source, target, copy_function=shutil.copy)
    for folder, _, names in os.walk(target):
        for name in names:
            if name.endswith(".pdiparams"):
                os.utime(os.path.join(folder, name))
    return target


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_a_candidate_copied_elsewhere_serves_as_measured(compressed, deploy_env, tmp_path, candidate):
    expected = full_install_rows(os.path.join(compressed, candidate))
    copy = copied_without_times(os.path.join(compressed, candidate), str(tmp_path / "elsewhere" / candidate))
    status, rows, stderr = run_infer(deploy_env, copy)
    assert status == 0, stderr
    assert_same_rows(rows, expected)
    # ONNX Runtime's files look older than the parameters; OpenVINO int8 reads model.ov_int8.xml, made from no file
    assert ("cannot be made again here (paddle2onnx): served as it is" in stderr) == (candidate == "onnxruntime_int8")
    assert_same_rows(full_install_rows(copy), expected)


def test_a_compression_folder_copied_elsewhere_serves_its_own_best(compressed, deploy_env, tmp_path):
    report = model_folder.read_report(model_folder.report_path(compressed))
    copy = copied_without_times(compressed, str(tmp_path / "moved"))
    best = os.path.join(copy, report.candidate(report.best).relative_path)
    status, rows, stderr = run_infer(deploy_env, copy)
    assert status == 0, stderr
    assert f"serving the candidate its report chose, {best}" in stderr
    assert_same_rows(rows, full_install_rows(report.best))


def test_a_paddle_only_model_is_one_error_line_without_paddle(tnews_run, deploy_env):
    status, _, stderr = run_infer(deploy_env, os.path.join(tnews_run, "export"))
    assert status == 2
    (line,) = error_lines(stderr)
    assert "its Paddle program (model.json) on the paddle backend needs paddle, which this install lacks" in line
    assert "Traceback" not in stderr


def test_a_needed_conversion_is_one_error_line_without_paddle2onnx(tnews_run, deploy_env, tmp_path):
    export = shutil.copytree(
        os.path.join(tnews_run, "export"), str(tmp_path / "export"), ignore=shutil.ignore_patterns("*.onnx")
    )
    status, _, stderr = run_infer(deploy_env, export, "--backend", "onnxruntime")
    assert status == 2
    (line,) = error_lines(stderr)
    assert f"{export} holds no model.onnx: converting its Paddle program needs paddle2onnx" in line
    assert "run it once with the full install" in line


FAMILY_EVALUATIONS = {
    "msra_ner": ("ner_run", ["--dev_file", ner_file("dev.tsv")], ["precision", "recall", "f1"], ["--text", "北京"]),
    "cmrc2018": (
        "qa_run",
        ["--dev_file", qa_file("dev.json"), "--doc_stride", "64"],
        ["exact_match", "f1", "upstream_exact_match", "upstream_f1"],
        ["--text", "北京是首都", "--question", "首都是哪里"],
    ),
}


@pytest.mark.parametrize("task", sorted(FAMILY_EVALUATIONS))
def test_ner_and_qa_models_evaluate_without_paddle_as_their_fine_tuning_script(task, deploy_env, tmp_path, request):
    """seqeval's entity scores and the CMRC2018 scores (upstream PaddleNLP's too) need no paddlenlp."""
    fixture, extra, names, text = FAMILY_EVALUATIONS[task]
    run = request.getfixturevalue(fixture)
    export = shutil.copytree(os.path.join(run, "export"), str(tmp_path / "export"))
    infer.main(["--model_path", export, "--backend", "onnxruntime", *text])  # converts once, in the full install
    output = str(tmp_path / "eval.json")
    command = [sys.executable, os.path.join(ROOT, "infer.py"), "--model_path", export, "--backend", "onnxruntime"]
    command += ["--batch_size", "8", "--output_file", output, *extra]
    done = subprocess.run(command, env=deploy_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = json.loads(open(output, encoding="utf-8").read())["metrics"]
    trained = json.loads(open(os.path.join(run, "eval_results.json"), encoding="utf-8").read())
    for name in names:
        assert served[name] == pytest.approx(trained[name], abs=1e-6), name


def test_a_dev_split_by_name_is_one_error_line_without_paddlenlp(compressed, deploy_env):
    command = [sys.executable, os.path.join(ROOT, "infer.py"), "--model_path", compressed]
    done = subprocess.run(command, env=deploy_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert "downloading the tnews dev split by name needs paddlenlp (requirements.txt); pass --dev_file PATH" in line
    assert "Traceback" not in done.stderr


def pinned(path):
    """{package name: version} of a requirements file's name==version lines."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    return dict(line.lower().split("==") for line in lines if "==" in line)


def test_the_deploy_requirements_hold_no_paddle_and_pin_the_full_installs_versions():
    deploy, full = pinned("requirements-deploy.txt"), pinned("requirements.txt")
    assert not set(deploy) & {"paddlepaddle", "paddlepaddle-gpu", "paddlenlp", "paddleslim", "paddle2onnx"}
    assert {name: deploy[name] for name in set(deploy) & set(full)} == {
        name: full[name] for name in set(deploy) & set(full)
    }
    assert {"onnxruntime", "openvino", "tokenizers", "numpy", "fastapi", "uvicorn"} <= set(deploy)
