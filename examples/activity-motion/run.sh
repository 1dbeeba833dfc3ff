#!/usr/bin/env bash
# Prepare the data (once) and run the study: bash examples/activity-motion/run.sh [simulate options]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
py="$root/.venv/bin/python"
[ -f "$here/basicmotions.npz" ] || "$py" "$here/prepare.py"
exec "$root/.venv/bin/fedward" simulate "$here/study.yaml" "$@"
