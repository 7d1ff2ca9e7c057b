"""How realistic is the simulator? Compare simulated with real perturbation data.

Two real datasets from the local data directory (``AIVC_DATA_DIR``) are
compared with simulations of the same design size:

* ``papalexi2021``: THP-1 CRISPR knockouts (25 targets, ~20k cells, 299 random genes);
  simulated as knockouts of 25 genes in one cell type, 3 batches, on 300 random
  genes of a 2,000-gene virtual cell.
* ``norman2019_subset``: K562 CRISPRa (18 singles, 15 doubles, 100 cells each, 500
  genes); simulated as activations with the same numbers, on 500 random genes.

Statistics: slope of log variance against log mean of control cells,
fraction of overdispersed genes, median dispersion, zero fraction, library-size
CV, the spread of gene means, and the number of differentially expressed
genes per perturbation (Welch t-test on log-normalised values,
Benjamini-Hochberg FDR 0.05). Finally, the non-additivity of the simulated
doubles of the default design is measured on the true means.

Run: ``python benchmarks/sim_realism.py --out benchmarks/results/simulator-realism`` (about a
minute; simulated columns over seeds 0-2 of worlds with 20 % of the genes in modules).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

import aivc.data
from aivc.data import log_normalize
from aivc.sim import (
    CONTROL,
    MeasurementModel,
    VirtualCellSimulator,
    default_design,
    simulated_knowledge,
)


# ----------------------------------------------------------------------------- output
def markdown(table: pd.DataFrame, *, digits: int = 3) -> str:
    """A DataFrame as a markdown table (index as the first column)."""

    def fmt(v: object) -> str:
        if isinstance(v, float | np.floating):
            return f"{v:.{digits}g}"
        return str(v)

    header = ["", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx), *map(fmt, row.tolist())]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- statistics
def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values along the last axis."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.minimum(ranked, 1.0), axis=-1)
    return out


def _group_moments(
    x: sp.csr_matrix, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ind = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes))
    )
    n = np.asarray(ind.sum(axis=1)).ravel()
    s1 = np.asarray((ind @ x).todense())
    s2 = np.asarray((ind @ x.multiply(x)).todense())
    mean = s1 / n[:, None]
    var = (s2 - n[:, None] * mean**2) / np.maximum(n[:, None] - 1, 1)
    return n, mean, np.maximum(var, 0.0)


def n_de_genes(
    counts: sp.csr_matrix, labels: np.ndarray, *, control: str = CONTROL, fdr: float = 0.05
) -> pd.Series:
    """DE genes per perturbation: Welch t-test on log-normalised values vs controls, BH-corrected."""
    x, _ = log_normalize(counts)
    x = sp.csr_matrix(x, dtype=np.float64)
    groups, codes = np.unique(labels, return_inverse=True)
    n, mean, var = _group_moments(x, codes, len(groups))
    c = int(np.flatnonzero(groups == control)[0])
    se2 = var / n[:, None] + var[c] / n[c]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - mean[c]) / np.sqrt(se2)
        df = se2**2 / (
            (var / n[:, None]) ** 2 / np.maximum(n[:, None] - 1, 1)
            + (var[c] / n[c]) ** 2 / max(n[c] - 1, 1)
        )
    p = 2 * stats.t.sf(np.abs(t), df)
    p[~np.isfinite(p)] = 1.0
    q = _bh(p)
    keep = groups != control
    return pd.Series((q[keep] < fdr).sum(axis=1), index=groups[keep])


def summarize(
    counts: sp.csr_matrix, labels: np.ndarray, *, control: str = CONTROL
) -> dict[str, float]:
    """Noise and effect statistics of a count matrix."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    ctrl = counts[labels == control]
    m = np.asarray(ctrl.mean(axis=0)).ravel()
    v = np.asarray(ctrl.multiply(ctrl).mean(axis=0)).ravel() - m**2
    v *= ctrl.shape[0] / max(ctrl.shape[0] - 1, 1)
    ok = m > 0
    slope = np.polyfit(np.log10(m[ok]), np.log10(np.maximum(v[ok], 1e-12)), 1)[0]
    mid = m > 0.1
    phi = (v[mid] - m[mid]) / m[mid] ** 2
    lib = np.asarray(counts.sum(axis=1)).ravel()
    de = n_de_genes(counts, labels, control=control)
    return {
        "cells": counts.shape[0],
        "genes": counts.shape[1],
        "median library size": float(np.median(lib)),
        "library-size CV": float(lib.std() / lib.mean()),
        "zero fraction": 1.0 - counts.nnz / np.prod(counts.shape),
        "median log10 gene mean (controls)": float(np.median(np.log10(m[ok]))),
        "sd log10 gene mean (controls)": float(np.std(np.log10(m[ok]))),
        "slope log var ~ log mean": float(slope),
        "overdispersed genes (var > 1.2 mean, mean > 0.1)": float(np.mean(v[mid] > 1.2 * m[mid])),
        "median dispersion (mean > 0.1)": float(np.median(phi)),
        "DE genes / perturbation (median)": float(np.median(de)),
        "DE genes / perturbation (mean)": float(np.mean(de)),
        "DE genes / perturbation (% of genes)": float(100 * np.mean(de) / counts.shape[1]),
        "perturbations with >= 1 DE gene": float(np.mean(de > 0)),
    }


def partner_correlation(
    counts: sp.csr_matrix,
    labels: np.ndarray,
    partners: set[frozenset[str]],
    *,
    control: str = CONTROL,
    min_de: int = 1,
) -> dict[str, float]:
    """Do interaction partners' perturbations look alike?

    Each single perturbation's profile is its mean log-normalised expression
    minus the controls' (the targets' own genes left out). Among the
    perturbations with at least ``min_de`` DE genes (the ones with a
    detectable effect), the Pearson correlation of every pair's profiles is
    split by whether the pair is in ``partners`` (e.g. STRING edges).
    """
    x, _ = log_normalize(counts)
    x = sp.csr_matrix(x, dtype=np.float64)
    groups, codes = np.unique(labels, return_inverse=True)
    _, mean, _ = _group_moments(x, codes, len(groups))
    c = int(np.flatnonzero(groups == control)[0])
    de = n_de_genes(counts, labels, control=control)
    singles = [g for g in groups if g != control and "+" not in g and de.get(g, 0) >= min_de]
    pos = {g: i for i, g in enumerate(groups)}
    profiles = mean[[pos[g] for g in singles]] - mean[c]
    corr = np.corrcoef(profiles) if len(singles) > 1 else np.zeros((len(singles), len(singles)))
    within, between = [], []
    for i, a in enumerate(singles):
        for j in range(i + 1, len(singles)):
            (within if frozenset((a, singles[j])) in partners else between).append(corr[i, j])
    return {
        "perturbations with an effect (>= 1 DE gene)": len(singles),
        "partner pairs among them": len(within),
        "phenotype correlation, partners (mean)": float(np.mean(within))
        if within
        else float("nan"),
        "phenotype correlation, other pairs (mean)": float(np.mean(between))
        if between
        else float("nan"),
    }


def string_partners(genes: set[str], data_dir: str | None = None) -> set[frozenset[str]]:
    """STRING pairs (combined score >= 700) among ``genes``."""
    from aivc.genes._knowledge import knowledge_path

    path = knowledge_path("string_v12_human_notextmining_700_top3.tsv.gz", data_dir)
    edges = pd.read_csv(path, sep="\t", usecols=["symbol_a", "symbol_b"], dtype=str)
    edges = edges[edges["symbol_a"].isin(genes) & edges["symbol_b"].isin(genes)]
    return {
        frozenset(p) for p in zip(edges["symbol_a"], edges["symbol_b"], strict=True) if p[0] != p[1]
    }


# ----------------------------------------------------------------------------- data
def real(name: str) -> tuple[sp.csr_matrix, np.ndarray]:
    adata = aivc.data.load(name)
    schema = aivc.data.schema_of(adata)
    counts = sp.csr_matrix(aivc.data.get_counts(adata, schema))
    labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    labels = np.where(labels == schema.control_label, CONTROL, labels)
    return counts, labels


def simulated_like(
    labels: np.ndarray,
    real_counts: sp.csr_matrix,
    *,
    modality: str,
    n_batches: int,
    seed: int,
    n_genes: int = 2000,
    module_fraction: float = 0.0,
    knowledge: str = "good",
) -> tuple[sp.csr_matrix, np.ndarray, set[frozenset[str]]]:
    """Simulate the design of a real dataset on a random gene panel of the same size.

    Same labels and cell numbers; targets are ~60% regulators, chosen with
    probability proportional to their out-degree as a focused screen picks
    known regulators, and ~40% other genes (whole modules, when the world
    has them: a focused screen targets a pathway's known parts).
    Sequencing depth is set so that the median library size of the panel
    matches the real data; every other parameter is the default. Also
    returns the pairs of targets the world's simulated STRING (of quality
    ``knowledge``) links.
    """
    n_measured = real_counts.shape[1]
    rng = np.random.default_rng(seed)
    panel = np.sort(rng.choice(n_genes, n_measured, replace=False))
    # sequencing depth such that the panel's median library matches the real one
    probe = VirtualCellSimulator(
        n_genes=n_genes, seed=seed, module_fraction=module_fraction
    ).build()
    control_mean = probe.true_means([CONTROL]).to_numpy()[0]
    share = control_mean[panel].sum() / control_mean.sum()
    depth = float(np.median(np.asarray(real_counts.sum(axis=1)).ravel())) / share
    sim = VirtualCellSimulator(
        n_genes=n_genes,
        seed=seed,
        module_fraction=module_fraction,
        measurement=MeasurementModel(library_size=depth),
    ).build()
    real_targets = sorted({t for lbl in set(labels) - {CONTROL} for t in lbl.split("+")})
    net = sim.network_
    n_reg = round(0.6 * len(real_targets))
    others = _other_targets(sim, len(real_targets) - n_reg, rng)
    regs = np.setdiff1d(net.regulators, others)
    weight = net.out_degree()[regs].astype(np.float64)
    picks = np.concatenate(
        [rng.choice(regs, n_reg, replace=False, p=weight / weight.sum()), others]
    )
    mapping = {
        t: str(net.gene_names[g]) for t, g in zip(real_targets, rng.permutation(picks), strict=True)
    }
    sim_labels = np.asarray(
        [
            CONTROL if lbl == CONTROL else "+".join(mapping[t] for t in lbl.split("+"))
            for lbl in labels
        ]
    )
    design = (
        pd.Series(sim_labels).value_counts().rename_axis("perturbation").reset_index(name="n_cells")
    )
    design["modality"] = modality
    adata, _ = sim.simulate(design, n_batches=n_batches, seed=seed)
    string = simulated_knowledge(sim.network_, sim.modules_, knowledge, seed=seed)[
        "string_v12_human_notextmining_700_top3.tsv.gz"
    ]
    targets = set(mapping.values())
    partners = {
        frozenset(p)
        for p in zip(string["symbol_a"], string["symbol_b"], strict=True)
        if p[0] in targets and p[1] in targets
    }
    labels_out = adata.obs["perturbation"].astype(str).to_numpy()
    return sp.csr_matrix(adata.X[:, panel]), labels_out, partners


def _other_targets(sim: VirtualCellSimulator, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` more targets: whole modules first, their output regulator and members
    (a focused screen targets a pathway's known parts), then other non-regulators."""
    net, mods = sim.network_, sim.modules_
    picked: list[int] = []
    for m in rng.permutation(mods.n_modules):
        picked += [int(g) for g in mods.module_genes(m)][: n - len(picked)]
        if len(picked) >= n:
            break
    rest = np.setdiff1d(np.arange(net.n_genes), np.r_[net.regulators, picked])
    return np.r_[
        np.asarray(picked, dtype=np.int64), rng.choice(rest, n - len(picked), replace=False)
    ]


# ----------------------------------------------------------------------------- additivity
def additivity(n_genes: int = 2000, n_cells: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """Deviation of the simulated doubles of the default design from additivity (true means).

    For a double ``A+B`` the deviation is ``e(A+B) - e(A) - e(B)`` with
    ``e(P) = log mean(P) - log mean(control)`` (natural log of the true
    population means, the perturbed genes themselves excluded), and, on the
    scale of measured data, the same with ``log1p`` of the expected counts at
    the median library size.
    """
    sim = VirtualCellSimulator(n_genes=n_genes, seed=seed).build()
    design = default_design(sim, n_cells=n_cells, seed=seed)
    rows = []
    for ct in sim.cell_types:
        labels = design.loc[
            (design["cell_type"] == ct) & (design["dose"] == 0), "perturbation"
        ].tolist()
        means = sim.true_means(labels, cell_type=ct)
        with np.errstate(divide="ignore"):
            log_means = np.log(means)  # -inf for knocked-out genes, which are excluded below
        for scale, logm in (
            ("log", log_means),
            ("log1p counts", np.log1p(means * sim.count_scale_)),
        ):
            eff = logm - logm.loc[CONTROL]
            for label in labels:
                if "+" not in label:
                    continue
                a, b = label.split("+")
                keep = ~means.columns.isin([a, b])
                add = (eff.loc[a] + eff.loc[b]).to_numpy()[keep]
                dev = eff.loc[label].to_numpy()[keep] - add
                rows.append(
                    {
                        "scale": scale,
                        "cell_type": ct,
                        "double": label,
                        "max_abs_dev": float(np.abs(dev).max()),
                        "rel_dev": float(np.linalg.norm(dev) / max(np.linalg.norm(add), 1e-12)),
                        "genes_dev_0.1": int((np.abs(dev) > 0.1).sum()),
                    }
                )
    return pd.DataFrame(rows)


def _over_seeds(runs: list[dict[str, float]]) -> dict[str, str]:
    """Mean of each statistic over the simulated seeds, with its range."""
    out = {}
    for key in runs[0]:
        v = np.asarray([r[key] for r in runs], dtype=float)
        ok = v[np.isfinite(v)]
        if ok.size == 0:
            out[key] = "nan"
        elif ok.size == 1 or np.ptp(ok) == 0:
            out[key] = f"{ok.mean():.3g}"
        else:
            out[key] = f"{ok.mean():.3g} [{ok.min():.3g}, {ok.max():.3g}]"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--module-fraction",
        type=float,
        default=0.2,
        help="Fraction of the simulated genes in functional modules (complexes, pathways).",
    )
    parser.add_argument("--out", default=None, help="Folder for results.md and results.json.")
    args = parser.parse_args()
    t0 = time.perf_counter()
    columns: dict[str, dict[str, object]] = {}

    def both(counts: sp.csr_matrix, labels: np.ndarray, partners: set) -> dict[str, float]:
        return {**summarize(counts, labels), **partner_correlation(counts, labels, partners)}

    mf = args.module_fraction
    raw: dict[str, list[dict[str, float]]] = {}
    for name, like, modality, n_batches in (
        ("papalexi2021", "papalexi-like", "knockout", 3),
        ("norman2019_subset", "norman-like", "activation", 2),
    ):
        counts, labels = real(name)
        targets = {t for lbl in set(labels) for t in lbl.split("+")}
        columns[f"{name} (real)"] = both(counts, labels, string_partners(targets))
        raw[like] = [
            both(
                *simulated_like(
                    labels,
                    counts,
                    modality=modality,
                    n_batches=n_batches,
                    seed=s,
                    module_fraction=mf,
                )
            )
            for s in args.seeds
        ]
        columns[f"{like} (sim, mean [range] over seeds)"] = _over_seeds(raw[like])
    table = pd.DataFrame(columns)
    text = [
        f"Simulated columns: seeds {args.seeds}, module fraction {mf}.",
        "",
        "## Simulated vs real data",
        "",
        markdown(table),
    ]

    add = additivity(seed=args.seeds[0])
    summary = {}
    for scale, d in add.groupby("scale", sort=False):
        summary[scale] = {
            "doubles (2 cell types)": len(d),
            "share with a gene deviating > 0.1": float((d["max_abs_dev"] > 0.1).mean()),
            "share with a gene deviating > 0.5": float((d["max_abs_dev"] > 0.5).mean()),
            "median max |deviation|": float(d["max_abs_dev"].median()),
            "90th percentile max |deviation|": float(d["max_abs_dev"].quantile(0.9)),
            "median relative deviation |dev| / |additive|": float(d["rel_dev"].median()),
            "median genes deviating > 0.1 per double": float(d["genes_dev_0.1"].median()),
        }
    text += [
        "",
        f"## Non-additivity of the simulated doubles (default design, true means, seed {args.seeds[0]})",
        "",
        markdown(pd.DataFrame(summary)),
    ]
    seconds = time.perf_counter() - t0
    print("\n".join(text))
    print(f"\n(total {seconds:.0f} s)")
    if args.out:
        import json
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text("\n".join(text) + "\n")
        payload = {
            "seeds": args.seeds,
            "module_fraction": mf,
            "real": {k: v for k, v in columns.items() if k.endswith("(real)")},
            "simulated_per_seed": raw,
            "total_seconds": seconds,
        }
        (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
