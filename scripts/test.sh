#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs ruff and the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh                       # everything (CPU only; see docs/testing.md)
#   bash scripts/test.sh tests/cluster -x      # a part
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Browser tests drive Debian's Chromium and ChromeDriver (a test tool's own browser download cannot work offline).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test: chromium and chromium-driver are missing; the browser tests will be skipped" \
      "(as root: apt-get install chromium chromium-driver)"
  fi
fi
# The suite's own Ray: loopback only, token auth off (every listener lives on 127.0.0.1 for the session only).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check platform jobs serve tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
