"""Wall time and peak memory of every gene representation source from an empty cache.

Each source is computed for all its genes (~20k human genes) with a fresh
temporary cache directory, so nothing is reused; then the fused embedding of
all knowledge sources is built from the now-warm cache. The co-expression
source is measured on the Baron 2016 human pancreas data (2,142 cells x
20,125 genes, log-normalised here). Torch and BLAS use ``aivc.settings.n_jobs``
threads (set ``AIVC_N_JOBS``). CPU seconds (all threads of the process) are
reported next to wall time, because wall time on a shared machine depends on
the other load.

Usage: AIVC_DATA_DIR=... python benchmarks/gene_embedding_speed.py [OUT.json] [--cache-dir=EMPTY_DIR]

``--cache-dir`` keeps the computed sources in that (new or empty) directory instead of a
temporary one, so they can be reused as a warm cache afterwards.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from aivc import settings
from aivc.evaluate._memory import ResourceMeter


def _baron_lognorm():
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(settings.data_dir / "pancreas_baron_human_mouse" / "baron_human.h5ad")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def main() -> int:
    from aivc.genes import (
        coexpression_embedding,
        fused_embedding,
        go_embedding,
        network_embedding,
        text_embedding,
    )

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0]) if args else None
    keep = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--cache-dir=")), None)
    if keep is not None and Path(keep).exists() and any(Path(keep).iterdir()):
        sys.stderr.write(f"--cache-dir {keep!r} is not empty; the benchmark needs a cold cache\n")
        return 2
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        settings.cache_dir = Path(keep) if keep is not None else Path(tmp)
        adata = _baron_lognorm()
        jobs = [
            ("go", go_embedding),
            ("string", lambda: network_embedding("string")),
            ("huri", lambda: network_embedding("huri")),
            ("text", lambda: text_embedding(n_components=64)),
            ("coexpression (Baron human)", lambda: coexpression_embedding(adata, n_components=64)),
            (
                "fused go+string+huri+text (warm cache)",
                lambda: fused_embedding(("go", "string", "huri", "text"))[0],
            ),
        ]
        for name, job in jobs:
            cpu0 = time.process_time()
            with ResourceMeter() as meter:
                table = job()
            cpu = time.process_time() - cpu0
            rows.append(
                {
                    "source": name,
                    "genes": int(table.shape[0]),
                    "dims": int(table.shape[1]),
                    "wall_s": round(meter.wall_seconds, 1),
                    "cpu_s": round(cpu, 1),
                    "peak_mb": round(meter.peak_mb, 0),
                    "peak_increase_mb": round(meter.peak_increase_mb, 0),
                }
            )
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
            sys.stdout.flush()
    total = round(time.perf_counter() - t_all, 1)
    sys.stdout.write(
        "\n| source | genes | dims | wall s | CPU s | peak RSS MB | peak increase MB |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        sys.stdout.write(
            f"| {r['source']} | {r['genes']} | {r['dims']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_mb']:.0f} | "
            f"{r['peak_increase_mb']:.0f} |\n"
        )
    sys.stdout.write(f"\nTotal wall time (including loading the Baron data): {total} s\n")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "total_wall_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
