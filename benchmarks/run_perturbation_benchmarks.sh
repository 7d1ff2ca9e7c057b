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
# speed of the aivc-perturb manipulator (fit on papalexi2021, 10,000 profiles with intervals)
.venv/bin/python benchmarks/timed.py manipulator-speed -- \
    .venv/bin/python benchmarks/manipulator_speed.py --out "$OUT/manipulator-speed.json" > "$OUT/manipulator-speed.log" 2>&1
tail -1 "$OUT/manipulator-speed.log"
