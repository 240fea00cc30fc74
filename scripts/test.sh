#!/usr/bin/env bash
# README command 2: run the test suite (installs into .venv first if needed, so it works on a fresh clone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install-browser.sh  # headless Chromium + chromedriver for tests/test_dashboard.py (needs root)
export AMI_EDGE_REQUIRE_BROWSER=1  # installed, so the browser test must run: a missing browser fails, never skips
exec .venv/bin/python -m pytest "$@"
