#!/usr/bin/env bash
# Create the Flower side's virtual environment (default /tmp/flwr-venv; never .venv).
set -euo pipefail
venv="${1:-/tmp/flwr-venv}"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/python" -c "import flwr, torch; print('flwr', flwr.__version__, 'torch', torch.__version__)"
