#!/usr/bin/env bash
# Run the study: bash examples/ecg-wearable/run.sh [simulate options]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../.venv/bin/fedward" simulate "$here/study.yaml" "$@"
