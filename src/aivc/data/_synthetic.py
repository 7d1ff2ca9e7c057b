"""Small synthetic perturbation datasets for tests and conformance checks.

This is a fast generator with a known additive-plus-interaction structure, not
the mechanistic simulator (:mod:`aivc.sim`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._schema import PerturbationSchema

__all__ = ["synthetic_perturbation_data"]


def synthetic_perturbation_data(
    *,
    n_genes: int = 100,
    n_singles: int = 12,
    n_doubles: int = 4,
    n_contexts: int = 1,
    cells_per_condition: int = 30,
    n_control_cells: int = 60,
    seed: int = 0,
) -> tuple[object, PerturbationSchema]:
    """A small perturbation dataset with raw counts.

    Targets are measured genes (``GENE000``...), each single perturbation
    moves a random sparse set of genes (the target itself down), doubles add
    their singles' effects plus a small interaction, and contexts scale the
    effects and shift the baseline.

    Returns
    -------
    The AnnData (counts in ``X``; ``obs['perturbation']``, ``obs['batch']``,
    ``obs['cell_type']`` when ``n_contexts > 1``) and its schema.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    genes = [f"GENE{i:03d}" for i in range(n_genes)]
    n_targets = min(n_singles, n_genes)
    targets = [genes[i] for i in rng.choice(n_genes, n_targets, replace=False)]
    base_log = rng.normal(0.5, 1.0, n_genes)
    effects = {}
    shared = rng.normal(0, 0.3, n_genes) * (rng.random(n_genes) < 0.2)
    for t in targets:
        e = rng.normal(0, 0.8, n_genes) * (rng.random(n_genes) < 0.1) + shared
        e[genes.index(t)] = -2.0
        effects[t] = e
    doubles = set()
    while len(doubles) < n_doubles and n_targets >= 2:
        a, b = sorted(rng.choice(targets, 2, replace=False))
        doubles.add((a, b))
    conditions = ["control", *targets, *[f"{a}+{b}" for a, b in sorted(doubles)]]
    contexts = [f"type{i}" for i in range(n_contexts)]
    ctx_shift = {c: rng.normal(0, 0.3, n_genes) for c in contexts}
    ctx_scale = {c: rng.uniform(0.6, 1.4) for c in contexts}
    blocks, obs = [], []
    for c in contexts:
        for cond in conditions:
            n = n_control_cells if cond == "control" else cells_per_condition
            mu = base_log + ctx_shift[c]
            if cond != "control":
                parts = cond.split("+")
                mu = mu + ctx_scale[c] * sum(effects[p] for p in parts)
                if len(parts) == 2:
                    mu = mu + 0.3 * effects[parts[0]] * effects[parts[1]]
            lib = rng.lognormal(0, 0.3, n)[:, None]
            lam = np.exp(mu)[None, :] * lib
            # gamma-Poisson counts (overdispersed)
            counts = rng.poisson(rng.gamma(5.0, lam / 5.0))
            blocks.append(sp.csr_matrix(counts.astype(np.float32)))
            obs += [(cond, c, f"b{rng.integers(2)}") for _ in range(n)]
    obs_df = pd.DataFrame(obs, columns=["perturbation", "cell_type", "batch"])
    obs_df.index = [f"cell{i}" for i in range(len(obs_df))]
    for col in obs_df:
        obs_df[col] = pd.Categorical(obs_df[col])
    adata = ad.AnnData(X=sp.vstack(blocks).tocsr(), obs=obs_df, var=pd.DataFrame(index=genes))
    schema = PerturbationSchema(
        perturbation_key="perturbation",
        control_label="control",
        batch_key="batch",
        context_key="cell_type" if n_contexts > 1 else None,
    )
    adata.uns["aivc"] = {"schema": schema.to_dict()}
    return adata, schema
