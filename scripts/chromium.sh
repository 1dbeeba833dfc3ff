#!/usr/bin/env bash
# Headless Chromium for the study report test (tests/simulation/test_study_report_renders.py):
# installs Debian's chromium only when /usr/bin/chromium is absent (idempotent).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing: apt-get install chromium (as root)" >&2
  exit 0
fi
echo "installing chromium (Debian package) for the report test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
