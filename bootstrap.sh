#!/usr/bin/env bash
# Create the environment, install aivc with the CPU build of torch, and run the demo.
# Needs no data folder: the demo's dataset ships with aivc. AIVC_DATA_DIR, when set, is used.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all]"
.venv/bin/aivc demo --out aivc-demo
