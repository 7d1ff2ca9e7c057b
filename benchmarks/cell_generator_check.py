"""Which cell generator reproduces measured perturbed cells better, given their true mean?

Usage: AIVC_DATA_DIR=... .venv/bin/python benchmarks/cell_generator_check.py [DATASET ...]

For up to 30 measured conditions of each dataset, control cells of the same
context are moved to the condition's measured mean (an oracle mean, so only the
generator differs) by scaling expression alone (``shift_cells``, every model's
default) or by also changing detection for genes whose change is significant
(``detection_shift_cells``, ``PerturbModel(cell_detection=True)``). Each result
is scored by the energy distance to the measured cells, relative to the
control cells' distance, in a 20-component PCA of measured and control cells.
Prints one line per dataset: conditions scored and the mean relative energy of
each generator (lower is closer to the measured cells).
"""

from __future__ import annotations

import sys

import numpy as np

DEFAULT = ("kang2018", "norman2019_subset", "papalexi2021")


def check(name: str, *, max_conditions: int = 30, n_cells: int = 200, seed: int = 0) -> dict:
    from sklearn.decomposition import PCA

    from aivc.data import load, prepare
    from aivc.data._registry import schema_of
    from aivc.evaluate._metrics import energy_distance
    from aivc.instruments import _manipulator_module as mm
    from aivc.instruments._base import shift_cells

    raw = load(name)
    adata, schema = prepare(raw, schema_of(raw))
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    ctx = (
        adata.obs[schema.context_key].astype(str).to_numpy()
        if schema.context_key
        else np.full(len(labels), "all")
    )
    rng = np.random.default_rng(seed)
    conds = sorted({(p, c) for p, c in zip(labels, ctx, strict=True) if p != schema.control_label})
    scores = {"shift": [], "detection": []}
    for p, c in conds[:max_conditions]:
        o_rows = np.flatnonzero((labels == p) & (ctx == c))
        c_rows = np.flatnonzero((labels == schema.control_label) & (ctx == c))
        if len(o_rows) < 20 or len(c_rows) < 20:
            continue
        observed = x[rng.choice(o_rows, min(n_cells, len(o_rows)), replace=False)]
        control = x[rng.choice(c_rows, min(n_cells, len(c_rows)), replace=False)]
        target, ctrl_mean = x[o_rows].mean(0), x[c_rows].mean(0)
        se = np.sqrt(x[o_rows].var(0) / len(o_rows) + x[c_rows].var(0) / len(c_rows))
        significant = np.abs(target - ctrl_mean) >= 1.96 * se
        moved = {
            "shift": shift_cells(control, target, np.random.default_rng(seed + 1)),
            "detection": mm.detection_shift_cells(
                control,
                target,
                np.random.default_rng(seed + 1),
                mm.detection_curve(x[c_rows]),
                genes=significant,
            ),
        }
        pca = PCA(20, random_state=0).fit(np.vstack([observed, control]))
        eo = pca.transform(observed)
        base = energy_distance(pca.transform(control), eo)
        for kind, cells in moved.items():
            scores[kind].append(energy_distance(pca.transform(cells), eo) / base)
    return {
        "dataset": name,
        "n_conditions": len(scores["shift"]),
        **{k: float(np.mean(v)) for k, v in scores.items()},
    }


def main() -> int:
    for name in sys.argv[1:] or DEFAULT:
        r = check(name)
        print(
            f"{r['dataset']}: {r['n_conditions']} conditions, relative energy "
            f"shift {r['shift']:.3f}, detection {r['detection']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
