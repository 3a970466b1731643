#!/usr/bin/env bash
# The whole GPU matrix in one command on a machine with paddlepaddle-gpu (see benchmarks/gpu_check.py); exits
# non-zero on any metric mismatch against the CPU. Never run where this suite is developed (no GPU there).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -c "import paddle, sys; sys.exit(0 if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 'gpu_check: needs paddlepaddle-gpu and a visible GPU')"
exec "$python" -m benchmarks.gpu_check "$@"
