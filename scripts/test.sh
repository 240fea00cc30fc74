#!/usr/bin/env bash
# README command 2: run the test suite (installs into .venv first if needed, so it works on a fresh clone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
