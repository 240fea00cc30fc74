#!/usr/bin/env bash
# README command 1: install everything into .venv, then run the main job on its built-in defaults:
# `ami-edge serve` with the shipped default model on source `auto` (a camera if one opens, else the synthetic world).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ami-edge info default
.venv/bin/ami-edge serve --max-frames 150
