"""Plot the scaling curves of ``aivc benchmark scaling`` (time and peak memory against cells).

Usage: ``python benchmarks/plot_scaling.py benchmarks/results/scaling/results.json
--out docs/images/scaling.png``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/scaling.png"))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    r = json.loads(args.results.read_text())
    cells = np.asarray(r["cells"], dtype=float)
    seconds = np.asarray(r["seconds"], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.loglog(cells, seconds, "o-", label=f"measured (slope {r['slope']:.2f})")
    ref = seconds[0] * cells / cells[0]
    a.loglog(cells, ref, "--", color="grey", label="linear (slope 1)")
    a.set_xlabel("cells")
    a.set_ylabel("seconds (pseudobulk + fit + evaluate)")
    a.legend(fontsize=8)
    b.semilogx(cells, r["peak_memory_mb"], "o-")
    b.set_xlabel("cells")
    b.set_ylabel("peak memory (MB)")
    b.set_ylim(0, max(r["peak_memory_mb"]) * 1.3)
    fig.suptitle(f"Out-of-core pipeline, {r['genes']:,} genes, blocks of {r['chunk_size']:,} cells")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
