#!/usr/bin/env bash
# Prepare the data (once) and run the study: bash examples/gateway-vitals/run.sh [simulate options]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
py="$root/.venv/bin/python"
[ -f "$here/vitals.csv" ] || "$py" "$here/prepare.py"
exec "$root/.venv/bin/fedward" simulate "$here/study.yaml" "$@"
