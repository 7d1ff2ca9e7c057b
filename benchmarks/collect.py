"""Print the benchmark tables of a results directory as Markdown (for BENCHMARKS.md).

Usage: python benchmarks/collect.py RESULTS_DIR [TIMINGS_FILE]

RESULTS_DIR holds one sub-folder per task written by ``aivc benchmark``;
TIMINGS_FILE holds the lines printed by ``benchmarks/timed.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aivc.evaluate import results_markdown

TASKS = ("unseen-single", "combinations", "unseen-cell-type", "simulator")


def main() -> int:
    root = Path(sys.argv[1])
    timings = {}
    if len(sys.argv) > 2:
        for line in Path(sys.argv[2]).read_text().splitlines():
            task, _, rest = line.partition(":")
            if "exit 0" in rest:
                timings[task.strip()] = rest.strip()
    for task in TASKS:
        path = root / task / "results.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        body = results_markdown(result).split("\n", 1)[1]
        sys.stdout.write(f"## `{task}` ({result['dataset']})\n\n")
        sys.stdout.write(f"Command: `aivc benchmark {task} --out results/{task}`")
        if task in timings:
            sys.stdout.write(f" — whole command: {timings[task]}")
        sys.stdout.write("\n" + body + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
