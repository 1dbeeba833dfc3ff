#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
# torch is installed first and pinned to the CPU wheel (2.13.0): any other
# version or an open range pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# PYTHONWARNINGS reaches pip's isolated build: setuptools' notice about editable
# installs (folders named like the package) is about layouts we do not have.
PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".[dev]"
echo "fedward environment ready: $(.venv/bin/python -c 'import torch, opacus; print("torch", torch.__version__, "opacus", opacus.__version__)')"
