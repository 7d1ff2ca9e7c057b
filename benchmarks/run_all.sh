#!/usr/bin/env bash
# Run every benchmark of benchmarks/runs.toml, then rebuild BENCHMARKS.md from the results.
#
# Usage: AIVC_DATA_DIR=... bash benchmarks/run_all.sh [RESULTS_ROOT]
#
# Each command runs once and writes RESULTS_ROOT/<folder>/ (results.json, results.md, stdout.log,
# stderr.log); the generalization suite is one command that fills RESULTS_ROOT/suite/<task>/<dataset>/
# for several runs of the manifest and writes RESULTS_ROOT/suite/suite.json. The wall time and peak
# memory of each whole command (benchmarks/timed.py) are appended to RESULTS_ROOT/timings.txt under
# its folder, where a later line replaces an earlier one on the page.
# PYTHON and AIVC override the interpreter and the aivc command (default: the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${1:-results}"
PYTHON="${PYTHON:-.venv/bin/python}"
AIVC="${AIVC:-.venv/bin/aivc}"
mkdir -p "$ROOT"
mapfile -t RUNS < <("$PYTHON" benchmarks/make_page.py "$ROOT" --print-commands)
for line in "${RUNS[@]}"; do
    name="${line%%$'\t'*}"  # the folder the command writes
    read -r -a args <<< "${line#*$'\t'}"
    mkdir -p "$ROOT/$name"
    echo "== $name: aivc benchmark ${args[*]}" >&2
    # timed.py prints its line last on stdout and returns the command's exit code
    "$PYTHON" benchmarks/timed.py "$name" -- "$AIVC" benchmark "${args[@]}" --out "$ROOT/$name" \
        -v warning < /dev/null > "$ROOT/$name/stdout.log" 2> "$ROOT/$name/stderr.log" || true
    tail -n 1 "$ROOT/$name/stdout.log" | tee -a "$ROOT/timings.txt" >&2
done
"$PYTHON" benchmarks/make_page.py "$ROOT" --timings "$ROOT/timings.txt" --out BENCHMARKS.md
