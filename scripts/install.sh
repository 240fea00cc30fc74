#!/usr/bin/env bash
# Create .venv inside the repo and install ami-edge with the export and dev extras. Idempotent: a second run only
# checks what is installed. torch is pinned to the CPU wheel this machine type provides locally; an unpinned torch
# would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[export,dev]" "torch==2.13.0"
