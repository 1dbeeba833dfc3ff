#!/usr/bin/env bash
# Set up and run the whole test suite (real PostgreSQL and Mosquitto included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
