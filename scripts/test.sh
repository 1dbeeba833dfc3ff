#!/usr/bin/env bash
# Set up and run the whole test suite (real PostgreSQL and Mosquitto included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/chromium.sh   # headless browser for the study report test (apt-get only if missing)
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# import-linter and mypy read files, not the import hook: give them the
# fedward namespace as one folder tree (scripts/static_tree.py says why).
STATIC="$(.venv/bin/python scripts/static_tree.py)"
(cd "$STATIC" && ../../.venv/bin/lint-imports --no-cache ../../pyproject.toml)
# mypy (pyproject [tool.mypy]; strict on floors 0 and 1). It reports linked
# paths, fedward/coordinator/...; sed maps them to the repository's folders
# ([tool.fedward.package-dir]). pipefail keeps mypy's exit status.
(cd "$STATIC" && ../../.venv/bin/mypy --config-file ../../pyproject.toml) \
  | sed -e "$(.venv/bin/python scripts/static_tree.py --sed)"
exec .venv/bin/python -m pytest -q "$@"
