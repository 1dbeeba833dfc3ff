#!/usr/bin/env bash
# Set up and run a simulated clinical sensor study on the embedded default
# (in-process, no broker): FTTE on 100 simulated wearable/phone/gateway
# patients' ECG+PPG+motion data, 90% stragglers. Extra arguments go to
# `fedward simulate` (e.g. --scenario full --strategy fedavg).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedward simulate "$@"
