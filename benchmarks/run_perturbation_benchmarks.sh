#!/usr/bin/env bash
# Run the perturbation benchmark tasks; print each command's wall time and peak memory.
# Usage: AIVC_DATA_DIR=... bash benchmarks/run_perturbation_benchmarks.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results}"
mkdir -p "$OUT"
for task in unseen-single combinations unseen-cell-type simulator; do
    .venv/bin/python benchmarks/timed.py "$task" -- \
        .venv/bin/aivc benchmark "$task" --out "$OUT/$task" -v warning 2> "$OUT/$task.log" | tail -1
done
