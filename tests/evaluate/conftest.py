from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def technology_file(tmp_path):
    """An .h5ad of one tissue measured by three technologies ("chemistry" v1, v2, v3).

    Poisson counts; four cell types ("kind" t0..t3), each raising its own 15 genes;
    every technology scales the genes at random.
    """
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    n_genes, rows, types, techs = 150, [], [], []
    base = rng.gamma(2.0, 1.0, n_genes)
    for tech in ("v1", "v2", "v3"):
        effect = rng.lognormal(0.0, 0.4, n_genes)
        for t in range(4):
            mu = base.copy()
            mu[t * 15 : (t + 1) * 15] *= 5.0
            rows.append(rng.poisson(mu * effect, size=(50, n_genes)))
            types += [f"t{t}"] * 50
            techs += [tech] * 50
    x = np.vstack(rows).astype(np.float32)
    x[:, 0] += 20
    a = ad.AnnData(
        X=x,
        obs=pd.DataFrame(
            {"kind": types, "chemistry": techs}, index=[f"c{i}" for i in range(len(types))]
        ),
        var=pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)]),
    )
    path = tmp_path / "techs.h5ad"
    a.write_h5ad(path)
    return path
