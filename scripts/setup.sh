#!/usr/bin/env bash
# README command 1: install everything into .venv, then run the main job on its built-in defaults:
# export the built-in tiny JEPA model to a verified ONNX bundle (build/tiny.amiedge).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ami-edge export --out build/tiny.amiedge
.venv/bin/ami-edge info build/tiny.amiedge
