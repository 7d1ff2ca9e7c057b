"""A small simulated compound plate with real structures, for the chemical tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from aivc.data import ProfileSchema

# two structural families (phenols/benzoic acids; purines) and a steroid
STRUCTURES = {
    "aspirin": ("CC(=O)Oc1ccccc1C(=O)O", "cox inhibitor"),
    "salicylic acid": ("OC(=O)c1ccccc1O", "cox inhibitor"),
    "methyl salicylate": ("COC(=O)c1ccccc1O", "cox inhibitor"),
    "caffeine": ("Cn1cnc2c1c(=O)n(C)c(=O)n2C", "pde inhibitor"),
    "theophylline": ("Cn1c(=O)c2[nH]cnc2n(C)c1=O", "pde inhibitor"),
    "theobromine": ("Cn1cnc2c1c(=O)[nH]c(=O)n2C", "pde inhibitor"),
    "testosterone": ("CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O", "androgen receptor agonist"),
    "unnamed": (None, None),
}
DOSES = (0.04, 0.12, 0.37, 1.1, 3.3, 10.0)
SCHEMA = ProfileSchema(smiles_keys=("smiles",), moa_key="moa")


def plate(seed: int = 0, n_features: int = 40) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    family = {"cox inhibitor": 0, "pde inhibitor": 1, "androgen receptor agonist": 2, None: 3}
    directions = rng.normal(0, 1, (4, n_features))
    rows, X = [], []
    for p in ("P1", "P2"):
        for _ in range(8):
            rows.append(
                {"compound_name": "DMSO", "dose_um": 0.0, "plate": p, "smiles": None, "moa": None}
            )
            X.append(rng.normal(0, 0.3, n_features))
        for name, (smi, moa) in STRUCTURES.items():
            ec50 = 10 ** rng.uniform(-1, 0.5)
            for d in DOSES:
                h = 1 / (1 + (ec50 / d) ** 1.5)
                rows.append(
                    {"compound_name": name, "dose_um": d, "plate": p, "smiles": smi, "moa": moa}
                )
                X.append(3 * h * directions[family[moa]] + rng.normal(0, 0.3, n_features))
    obs = pd.DataFrame(rows)
    obs.index = [f"w{i}" for i in range(len(obs))]
    return ad.AnnData(
        np.vstack(X), obs=obs, var=pd.DataFrame(index=[f"f{j}" for j in range(n_features)])
    )
