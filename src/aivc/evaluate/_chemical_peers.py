"""Published perturbation models (biolord, CellFlow) on a compound screen, as models of the chemical benchmark.

Each peer runs in its own virtual environment (:mod:`aivc.evaluate._peer_envs`)
through the shipped script ``aivc/evaluate/peers/chemical_peer.py``; this
module writes its inputs and reads its outputs, so the chemical runner
scores a peer like :class:`~aivc.instruments.ChemicalModel` on the same
splits and metrics.

What a peer sees is what aivc's models see: one profile per training
condition (its mean change from vehicle, :class:`~aivc.data.ResponseTable`)
and the vehicle wells around their plate's mean as the starting
population. A compound is given by its Morgan fingerprint bits (radius 2,
2,048 bits, the fingerprint aivc's own models start from) and its dose; a
measured compound without a structure gets a one-hot column of its own, so
it can be learned but not generalised from. Every distinct structure is
passed under a neutral key (``s0``, ``s1``, ...), so the same compound asked
for by name or by SMILES is the same input.

The predicted change of a condition is the mean of the profiles the peer
generates for it (the vehicle wells average to zero on every plate).
Peers are trained inside each prediction call and are not saved.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from aivc.chem import featurize
from aivc.data._validate import DataValidationError
from aivc.instruments._chemical import ChemicalModel

from ._peer_envs import check_peer_settings, run_peer

__all__ = ["CHEMICAL_PEERS", "BiolordChemical", "CellFlowChemical", "ChemicalPeer"]

logger = logging.getLogger(__name__)

#: Fingerprint the peers are given.
PEER_FINGERPRINT = "morgan2"


class ChemicalPeer(ChemicalModel):
    """A published model trained from scratch on the training conditions (see the module docstring).

    Parameters
    ----------
    steps
        Training length in the peer's own unit (epochs for biolord, optimiser
        steps for CellFlow); ``None``: the peer's CPU default.
    n_cells
        Profiles the peer generates per condition (their mean is its prediction).
    timeout_s
        Seconds after which one peer run is stopped (an error then).
    seed
        Seed of the peer's training and sampling.
    """

    #: The peer's registry name in :mod:`aivc.evaluate._peer_envs` (set by subclasses).
    peer: ClassVar[str] = ""

    def __init__(
        self,
        steps: int | None = None,
        n_cells: int = 100,
        timeout_s: float = 3600.0,
        seed: int = 0,
    ) -> None:
        self.steps = steps
        self.n_cells = n_cells
        self.timeout_s = timeout_s
        self.seed = seed

    def _fit_model(self) -> None:
        check_peer_settings(self.steps, self.n_cells)
        if self.table_.vehicle is None or len(self.table_.vehicle) == 0:
            msg = f"The peer {self.peer!r} starts from the vehicle wells; this response table has none."
            raise DataValidationError(msg)
        self.peer_info_: dict[str, Any] = {}

    def _keys(
        self, structures: list[str | None], names: list[str]
    ) -> tuple[list[str], pd.DataFrame]:
        """A neutral key per compound and the feature table of every key."""
        key_of: dict[str, str] = {}
        keys = []
        for s, n in zip(structures, names, strict=True):
            ident = f"smiles:{s}" if s is not None else f"name:{n}"
            keys.append(key_of.setdefault(ident, f"s{len(key_of)}"))
        idents = list(key_of)
        smiles = [i.removeprefix("smiles:") for i in idents if i.startswith("smiles:")]
        name_only = [i for i in idents if i.startswith("name:")]
        bits = dict(zip(smiles, featurize(smiles, PEER_FINGERPRINT), strict=True)) if smiles else {}
        width = next(iter(bits.values())).shape[0] if bits else 0
        rows = []
        for ident in idents:
            row = np.zeros(width + len(name_only), dtype=np.float32)
            if ident.startswith("smiles:"):
                row[:width] = bits[ident.removeprefix("smiles:")]
            else:
                row[width + name_only.index(ident)] = 1.0
            rows.append(row)
        columns = [f"{PEER_FINGERPRINT}_{i}" for i in range(width)] + [
            f"name_{i}" for i in range(len(name_only))
        ]
        table = pd.DataFrame(np.vstack(rows), index=[key_of[i] for i in idents], columns=columns)
        return keys, table

    def _predict(
        self, compounds: list[str], ld: np.ndarray, seen: list[bool], smiles: list[str | None]
    ) -> np.ndarray:
        t = self.table_
        train_names = [str(c) for c in t.compounds]
        train_smiles = [self.library_.structures.get(c) for c in train_names]
        keys, features = self._keys([*train_smiles, *smiles], [*train_names, *compounds])
        train_keys, query_keys = keys[: len(train_names)], keys[len(train_names) :]
        control = "vehicle"
        X = np.vstack([t.delta, t.vehicle]).astype(np.float32)
        obs = pd.DataFrame(
            {
                "compound": [*train_keys, *[control] * len(t.vehicle)],
                "dose": np.concatenate([t.doses, np.zeros(len(t.vehicle))]),
            },
            index=[f"p{i}" for i in range(len(X))],
        )
        train = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(self.features_)))
        query = pd.DataFrame(
            {"compound": query_keys, "dose": 10.0**ld, "n_cells": int(self.n_cells)}
        )
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="aivc-chemical-peer-") as tmp:
            folder = Path(tmp)
            train.write_h5ad(folder / "train.h5ad")
            features.to_csv(folder / "features.csv")
            query.to_csv(folder / "query.csv", index=False)
            args = [
                "--peer", self.peer,
                "--train", str(folder / "train.h5ad"),
                "--features", str(folder / "features.csv"),
                "--query", str(folder / "query.csv"),
                "--control-label", control,
                "--seed", str(int(self.seed)),
                "--out", str(folder),
            ]  # fmt: skip
            if self.steps is not None:
                args += ["--steps", str(int(self.steps))]
            run_peer(self.peer, "chemical_peer", args, timeout=self.timeout_s)
            cells = np.load(folder / "cells.npy", allow_pickle=False)
            info = json.loads((folder / "info.json").read_text())
        expected = (int(query["n_cells"].sum()), len(self.features_))
        if cells.shape != expected or not np.isfinite(cells).all():
            msg = (
                f"The peer {self.peer!r} returned profiles of shape {cells.shape} (finite: "
                f"{bool(np.isfinite(cells).all())}); expected {expected}, all finite."
            )
            raise RuntimeError(msg)
        logger.info("%s: %d conditions in %.1f s", self.peer, len(query), time.perf_counter() - t0)
        self.peer_info_ = info
        return cells.astype(np.float64).reshape(len(query), int(self.n_cells), -1).mean(axis=1)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        msg = (
            f"The peer {self.peer!r} is run and scored by the benchmark, not saved by aivc; "
            f"use its own package to keep a trained model."
        )
        raise NotImplementedError(msg)


class BiolordChemical(ChemicalPeer):
    """biolord with the fingerprint times the dose term as its one ordered attribute."""

    name = "biolord"
    peer = "biolord"


class CellFlowChemical(ChemicalPeer):
    """CellFlow: flow matching from the vehicle wells, the fingerprint as the compound's embedding."""

    name = "cellflow"
    peer = "cellflow"


#: The peers of the chemical benchmark by name.
CHEMICAL_PEERS: dict[str, type[ChemicalPeer]] = {
    cls.name: cls for cls in (BiolordChemical, CellFlowChemical)
}
