"""A synthetic time course whose mean drifts linearly, for the temporal tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

DRIFT = np.linspace(-1.0, 1.0, 20)


def drifting(times=(0.0, 1.0, 2.0, 3.0, 4.0), n=120, seed=0) -> ad.AnnData:
    """Log expression of 20 genes whose mean moves by DRIFT per unit of time (a pure translation)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (n, 20))
    X = np.vstack([base + 5.0 + t * DRIFT for t in times])
    obs = pd.DataFrame(
        {"time": np.repeat(times, n)}, index=[f"c{i}" for i in range(n * len(times))]
    )
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(20)]))
