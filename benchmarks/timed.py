"""Run a command and print its wall time and peak resident memory (of the command and its children).

Usage: python benchmarks/timed.py LABEL -- COMMAND [ARGS...]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time


def main() -> int:
    label, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        sys.stderr.write(__doc__ or "")
        return 2
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stdout.write(f"{label}: exit {rc}, {wall:.1f} s wall, {peak_kb / 1024:.0f} MB peak RSS\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
