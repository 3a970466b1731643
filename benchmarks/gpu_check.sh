#!/usr/bin/env bash
# The whole GPU matrix in one command on a machine with paddlepaddle-gpu (see benchmarks/gpu_check.py): it first says
# in one line what is missing (CUDA GPU, TensorRT library, the tensorrt Python package), then measures every row in
# processes of its own; exits non-zero when any row failed. Never run where this suite is developed (no GPU there).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
exec "$python" -m benchmarks.gpu_check "$@"
