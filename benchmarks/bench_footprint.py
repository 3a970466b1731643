"""The footprint of the deployed compressed best (#24): process start to first prediction, peak resident memory and
the install's size on disk, with the full install (requirements.txt) and the deploy-only one (requirements-deploy.txt).

    python -m benchmarks.bench_footprint                                # about 10 min on 2 cores
    python -m benchmarks.bench_footprint --deploy_venv /tmp/deploy-venv  # made there first when it is missing

The ERNIE 3.0-Medium shape (random weights) cut to width 3/4 and served in int8 by ONNX Runtime (dynamic
quantization) and OpenVINO (NNCF): the kinds of the Medium shape's compressed best (benchmarks/results/deploy.json),
each in a folder like the candidate compress_*.py leaves (its task.json says how to serve it). For each install and
folder, every process of its own, 2 threads, with bytecode caches as a user's install has them:
- infer.py --text (one sentence): from the process's start to its exit after printing the prediction (the median of
  --runs after one run that fills the page cache and OpenVINO's compiled-model cache, recorded as first_run_s);
- serve.py: from the process's start to the first answered POST /tnews (polled every 10 ms);
- infer.py --perf on the real TNEWS dev sentences (batch 32): peak resident memory (VmHWM) and seq/s end to end;
- serve.py's peak resident memory after answering the same sentences, 32 a request.
Results, with the machine and both installs' sizes and packages: benchmarks/results/footprint.json
(`python -m benchmarks.tables benchmarks/results/footprint.json` prints its table).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import model_folder
import runtime
import utils
from benchmarks.bench_deploy import int8_folders, served_bytes
from benchmarks.bench_infer import ROOT, SEQ_LEN, TNEWS_FULL, TNEWS_SLICE, VOCAB_FILE, build_model

TNEWS = utils.SEQ_CLS_TASKS["tnews"]
TARGETS = {"start_to_first_prediction_s": 1.0, "peak_rss_mb": 450.0}
FULL_INSTALL_ONLY = ("paddle", "paddlenlp", "paddleslim", "paddle2onnx")
SENTENCE = "以色列大规模空袭开始"
REQUIREMENTS = {"full": "requirements.txt", "deploy-only": "requirements-deploy.txt"}


def user_environment() -> dict:
    """The environment of a user's process: Python keeps its bytecode caches (a session that sets
    PYTHONDONTWRITEBYTECODE would compile every module again at every start, and pip installs without them)."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def deploy_python(venv: str) -> str:
    """The deploy-only install's interpreter: venv's, made first with `python3 -m venv` and `pip install -r
    requirements-deploy.txt` when it is missing, its packages' bytecode compiled as pip does by default; checked to
    hold none of the full install's packages."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(python):
        subprocess.run([sys._base_executable, "-m", "venv", venv], check=True)
        requirements = os.path.join(ROOT, REQUIREMENTS["deploy-only"])
        subprocess.run([python, "-m", "pip", "install", "-q", "-r", requirements], check=True, env=user_environment())
    subprocess.run([python, "-m", "compileall", "-q", site_packages(python)], check=True, env=user_environment())
    probe = f"import importlib.util as u; print([n for n in {FULL_INSTALL_ONLY!r} if u.find_spec(n)])"
    found = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout)
    if found:
        raise runtime.UserError(f"{venv} is no deploy-only install: it holds {', '.join(found)}")
    return python


def site_packages(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def installed_packages(python: str) -> list:
    done = subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True)
    return sorted(f"{p['name']}=={p['version']}" for p in json.loads(done.stdout))


def disk_usage_mb(path: str) -> float:
    """What path takes on disk (du's count: allocated blocks, links not followed)."""
    blocks = 0
    for folder, names, files in os.walk(path):
        for name in names + files:
            blocks += os.lstat(os.path.join(folder, name)).st_blocks
    return blocks * 512 / 2**20


def largest_packages(python: str, count: int = 5) -> dict:
    """The count largest entries of the install's site-packages, in MB."""
    site = site_packages(python)
    sizes = {name: disk_usage_mb(os.path.join(site, name)) for name in os.listdir(site)}
    return {name: round(size, 1) for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:count]}


def install_details(name: str, python: str) -> dict:
    prefix = os.path.dirname(os.path.dirname(python))
    return {
        "install": name,
        "requirements": REQUIREMENTS[name],
        "prefix": prefix,
        "size_mb": disk_usage_mb(prefix),
        "largest_packages_mb": largest_packages(python),
        "packages": installed_packages(python),
    }


def compressed_best_folders(name: str, workdir: str, examples) -> dict:
    """{row label: (folder, MB of the files its predictor loads)}: the shape name (Medium) at width 3/4, OpenVINO int8
    (NNCF, calibrated on 64 other real sentences) and ONNX Runtime int8, each with the files it serves already made
    (as compression leaves them)."""
    from paddlenlp.transformers import ErnieTokenizer

    import dynabert

    tokenizer = ErnieTokenizer(vocab_file=VOCAB_FILE)
    calibration = [
        {name: f[name] for name in model_folder.EXPORT_INPUT_NAMES}
        for f in utils.encode_text_examples(examples[-64:], tokenizer, TNEWS, SEQ_LEN).dataset
    ]
    pruned = dynabert.slice_to_width(build_model(name), 0.75)
    folders = int8_folders(pruned, workdir, f"{name} width 3/4", calibration)
    served = {}
    for label, folder in folders.items():
        serving = model_folder.read_task_file(folder).serving
        # makes model.onnx and model.int8.onnx, and fills OpenVINO's compiled-model cache
        served[label] = (folder, served_bytes(folder, serving.backend, serving.precision) / 2**20)
    return served


def infer_command(python: str, folder: str, threads: int, *flags: str) -> list:
    return [python, os.path.join(ROOT, "infer.py"), "--model_path", folder, "--num_threads", str(threads), *flags]


def run_checked(command: list, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=user_environment())
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return done


def infer_start_seconds(python: str, folder: str, threads: int) -> float:
    """infer.py --text SENTENCE: seconds from the process's start to its exit after printing the prediction."""
    started = time.perf_counter()
    done = run_checked(infer_command(python, folder, threads, "--text", SENTENCE))
    seconds = time.perf_counter() - started
    if not any(line.startswith("{") and json.loads(line)["text"] == SENTENCE for line in done.stdout.splitlines()):
        raise RuntimeError(f"infer.py printed no prediction: {done.stdout[-500:]}")
    return seconds


def post(url: str, texts: list, timeout: float = 60) -> list:
    body = json.dumps({"data": {"text": texts}, "parameters": {}}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["result"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mb_of(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0


def serve_footprint(python: str, folder: str, threads: int, texts: list) -> dict:
    """serve.py: seconds from the process's start to the first answered POST, then its peak resident memory after
    answering texts, 32 a request."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/tnews"
    command = [python, os.path.join(ROOT, "serve.py"), "--model_path", folder, "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command + ["--num_threads", str(threads)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=user_environment(),
    )
    try:
        first = None
        while first is None and time.perf_counter() - started < 300:
            if process.poll() is not None:
                raise RuntimeError(f"serve.py exited: {process.stderr.read().decode()[-2000:]}")
            try:
                post(url, [SENTENCE], timeout=10)
                first = time.perf_counter() - started
            except OSError:  # not listening yet (refused), or warming up (503)
                time.sleep(0.01)
        if first is None:
            raise RuntimeError("serve.py answered nothing in 300 s")
        for start in range(0, len(texts), 32):
            post(url, texts[start : start + 32])
        return {"start_to_first_answer_s": first, "peak_rss_mb": peak_rss_mb_of(process.pid), "requests": len(texts)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def perf_footprint(python: str, folder: str, threads: int, dev_file: str, sentences: int) -> dict:
    """infer.py --perf on the dev sentences: its peak resident memory, end-to-end seq/s and accuracy."""
    with tempfile.TemporaryDirectory() as scratch:
        output = os.path.join(scratch, "perf.json")
        flags = ["--dev_file", dev_file, "--max_eval_samples", str(sentences), "--perf", "--output_file", output]
        run_checked(infer_command(python, folder, threads, *flags))
        report = runtime.read_json_file(output, "infer.py --perf's report")
    perf = report["perf"]
    return {
        "backend": report["backend"],
        "precision": report["precision"],
        "perf_peak_rss_mb": perf["peak_rss_mb"],
        "perf_sequences_per_second": perf["end_to_end_sequences_per_second"],
        "perf_sentences": perf["sequences"],
        "accuracy": report["metrics"]["accuracy"],
    }


def footprint_row(label, install: str, python: str, folder: str, served_mb: float, args, dev_file, texts) -> dict:
    """One install serving one folder: its starts, peaks and speed, and whether it meets the targets; the machine's
    load average before and after (other jobs share its cores, and slow what is timed)."""
    load_before = os.getloadavg()[0]
    first = infer_start_seconds(python, folder, args.threads)
    starts = [infer_start_seconds(python, folder, args.threads) for _ in range(args.runs)]
    served = serve_footprint(python, folder, args.threads, texts)
    row = {
        "path": label,
        "install": install,
        "threads": args.threads,
        "served_mb": served_mb,
        "folder_mb": disk_usage_mb(folder),  # what copying the candidate folder carries
        "first_run_s": first,
        "start_to_first_prediction_s": statistics.median(starts),
        "start_runs_s": starts,
        **perf_footprint(python, folder, args.threads, dev_file, len(texts)),
        "serve_start_to_first_answer_s": served["start_to_first_answer_s"],
        "serve_peak_rss_mb": served["peak_rss_mb"],
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    row["meets_targets"] = (
        row["start_to_first_prediction_s"] <= TARGETS["start_to_first_prediction_s"]
        and max(row["perf_peak_rss_mb"], row["serve_peak_rss_mb"]) <= TARGETS["peak_rss_mb"]
    )
    print(
        f"{label}, {install}: start {row['start_to_first_prediction_s']:.2f} s (serve "
        f"{row['serve_start_to_first_answer_s']:.2f} s), peak {row['perf_peak_rss_mb']:.0f} MB (serve "
        f"{row['serve_peak_rss_mb']:.0f} MB), {row['perf_sequences_per_second']:.0f} seq/s",
        flush=True,
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--deploy_venv", default="/tmp/deploy-venv", help="the deploy-only install (made if missing)")
    parser.add_argument("--model", default="medium", help="ERNIE 3.0 shape (nano: a quick check of the script)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=3000, help="real TNEWS dev sentences")
    parser.add_argument("--runs", type=int, default=5, help="timed starts of infer.py per install and folder")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "footprint.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    installs = {"full": sys.executable, "deploy-only": deploy_python(args.deploy_venv)}
    dev_file = TNEWS_FULL if os.path.isfile(TNEWS_FULL) else TNEWS_SLICE
    examples = utils.load_examples(TNEWS, "dev", dev_file)
    texts = [example.text_a for example in examples[: args.sentences]]
    with tempfile.TemporaryDirectory() as workdir:
        folders = compressed_best_folders(args.model, workdir, examples)
        rows = [
            footprint_row(label, install, python, folder, served_mb, args, dev_file, texts)
            for label, (folder, served_mb) in folders.items()
            for install, python in installs.items()
        ]
    results = {
        "machine": runtime.machine_details(),
        "model": args.model,
        "shape": "width 3/4",
        "threads": args.threads,
        "sentences": len(texts),
        "targets": TARGETS,
        "installs": [install_details(name, python) for name, python in installs.items()],
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    runtime.write_json_atomic(args.output, results)
    print(f"wrote {args.output} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    runtime.run_cli(main)
