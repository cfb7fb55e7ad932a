#!/usr/bin/env bash
# Create .venv and install the product into it; `--dev` adds the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, at the builds the project is tested with (pip takes local wheels where a machine has them).
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
requirements=requirements.txt
[[ "${1:-}" == "--dev" ]] && requirements=requirements-dev.txt
.venv/bin/python -m pip install --quiet -r "$requirements"
