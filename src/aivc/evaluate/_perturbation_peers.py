"""Published perturbation models (State, biolord, CellFlow) as instruments of the benchmark runner.

Each peer runs in its own virtual environment (:mod:`aivc.evaluate._peer_envs`)
through the shipped script ``aivc/evaluate/peers/perturbation_peer.py``; this
module only speaks the file protocol, so the runner treats a peer like any
other :class:`~aivc.instruments.PerturbationModel`: ``fit`` on the training
cells of a split, ``predict_delta`` and ``predict`` for the held-out
conditions, on the same splits and metrics as aivc's own models.

The protocol, one run per batch of requested conditions:

* ``train.h5ad``: the training cells, log-normalised expression in ``X``,
  ``obs["perturbation"]`` (the control label for control cells) and
  ``obs["context"]`` (``"all"`` when the data have no contexts);
* ``control.h5ad``: control cells of the requested contexts (same layout),
  the starting population of each prediction;
* ``query.csv``: one row per requested condition: ``perturbation``,
  ``context``, ``n_cells``;
* out: ``cells.npy`` (float32, the predicted cells of every condition stacked
  in query order, log-normalised) and ``info.json`` (the peer's version, its
  configuration and its training time).

The peer is trained inside the first prediction call (its training data are
only then complete with the controls of the test contexts) and its cells are
kept, so ``predict`` after ``predict_delta`` for the same conditions does not
train again. Peers are not saved: they are run, scored and discarded by the
benchmark; a user who wants one of them uses the peer's own package.
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
import scipy.sparse as sp
from anndata import AnnData

from aivc.data import DataValidationError, PerturbationSchema
from aivc.instruments._base import PerturbationModel, PerturbationSummary
from aivc.instruments._registry import register_instrument

from ._peer_envs import check_peer_settings, run_peer

__all__ = ["BiolordPeer", "CellFlowPeer", "PeerPerturbationModel", "StatePeer"]

logger = logging.getLogger(__name__)

#: Context name written for data without contexts.
NO_CONTEXT = "all"
#: Generated cells are clipped to [0, LOG1P_MAX], the bound of aivc's own generated cells
#: (:func:`aivc.instruments.shift_cells`): log-normalised expression above it (e^14 counts per
#: 10,000) is not physical, and cell-eval refuses log1p values above 15.
LOG1P_MAX = 14.0


class PeerPerturbationModel(PerturbationModel):
    """A published perturbation model run in its own environment (see the module docstring).

    Parameters
    ----------
    steps
        Training length in the peer's own unit (optimiser steps for State and
        CellFlow, epochs for biolord); ``None``: the peer's CPU default.
    n_cells
        Cells the peer generates per condition (the mean of these is its
        predicted mean).
    max_train_cells
        Training cells are subsampled to this many (stratified by condition,
        seeded), so a peer's CPU run stays within minutes.
    timeout_s
        Seconds after which one peer run is stopped (an error then).
    seed
        Seed of the subsampling and of the peer's own training.
    """

    #: The peer's registry name in :mod:`aivc.evaluate._peer_envs` (set by subclasses).
    peer: ClassVar[str] = ""
    #: The peer predicts only perturbations present in its training data (one-hot encodings).
    seen_perturbations_only: ClassVar[bool] = True
    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "context"})

    def __init__(
        self,
        steps: int | None = None,
        n_cells: int = 300,
        max_train_cells: int = 30_000,
        timeout_s: float = 3600.0,
        seed: int = 0,
    ) -> None:
        self.steps = steps
        self.n_cells = n_cells
        self.max_train_cells = max_train_cells
        self.timeout_s = timeout_s
        self.seed = seed

    def _check_params(self) -> None:
        check_peer_settings(self.steps, self.n_cells)
        if int(self.max_train_cells) < 100:
            msg = f"max_train_cells must be at least 100. Got {self.max_train_cells}."
            raise ValueError(msg)

    # fitting -------------------------------------------------------------------------------
    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_params()
        schema = summary.schema
        if schema.dose_key is not None:
            doses = pd.to_numeric(adata.obs[schema.dose_key], errors="coerce").fillna(0)
            if (doses > 0).any():
                msg = (
                    f"The peer {self.peer!r} is run here with categorical perturbations only; "
                    "data with doses are not supported."
                )
                raise DataValidationError(msg)
        self._train = _protocol_cells(adata, schema, list(self.genes_))
        self._cells: dict[tuple[str, str | None], np.ndarray] = {}
        self.peer_info_: dict[str, Any] = {}

    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        self._generate(perturbations, contexts, getattr(self, "_query_control", None))
        means = np.stack(
            [self._cells[(p, c)].mean(axis=0) for p, c in zip(perturbations, contexts, strict=True)]
        )
        return means - control_mean

    def predict_delta(
        self,
        perturbations: Any,
        *,
        contexts: Any = None,
        doses: Any = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """As :meth:`PerturbationModel.predict_delta`: the mean of the peer's generated cells minus the control mean."""
        self._query_control = control
        try:
            return super().predict_delta(
                perturbations, contexts=contexts, doses=doses, control=control
            )
        finally:
            self._query_control = None

    def _cell_changes(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        doses: Any,
        control: AnnData,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        delta = self.predict_delta(perturbations, contexts=contexts, doses=doses, control=control)
        return delta, [self._cells[(p, c)] for p, c in zip(perturbations, contexts, strict=True)]

    def _move_cells(
        self,
        cells: np.ndarray,
        target: np.ndarray,
        rng: np.random.Generator,
        reference: Any,
        extra: Any = None,
    ) -> np.ndarray:
        """The peer's own generated cells (sampled to the number asked), not shifted controls."""
        generated = np.asarray(extra)
        take = rng.choice(len(generated), len(cells), replace=len(generated) < len(cells))
        return generated[take]

    # running the peer ------------------------------------------------------------------------
    def _generate(
        self, perturbations: list[str], contexts: list[str | None], control: AnnData | None
    ) -> None:
        """Run the peer for the requested conditions not generated yet."""
        wanted = [
            key
            for key in dict.fromkeys(zip(perturbations, contexts, strict=True))
            if key not in self._cells
        ]
        if not wanted:
            return
        seen = set(self._train.obs["perturbation"])
        unseen = sorted({p for p, _ in wanted if p not in seen})
        if self.seen_perturbations_only and unseen:
            msg = (
                f"The peer {self.peer!r} encodes perturbations one-hot, so it predicts only "
                f"perturbations measured in its training data; not {unseen[:5]}."
            )
            raise DataValidationError(msg)
        schema = self.schema_
        ctrl = self._train[self._train.obs["perturbation"] == schema.control_label].copy()
        if control is not None:
            extra = _protocol_cells(control, schema, list(self.genes_))
            # only contexts the training cells lack: their controls are there already
            extra = extra[
                (extra.obs["perturbation"] == schema.control_label)
                & ~extra.obs["context"].isin(set(ctrl.obs["context"]))
            ]
            if extra.n_obs:
                ctrl = ad.concat([ctrl, extra.copy()], index_unique="-")
        query = pd.DataFrame(
            {
                "perturbation": [p for p, _ in wanted],
                "context": [NO_CONTEXT if c is None else c for _, c in wanted],
                "n_cells": int(self.n_cells),
            }
        )
        missing = sorted(set(query["context"]) - set(ctrl.obs["context"]))
        if missing:
            msg = f"No control cells for context(s) {missing}; pass control= with them."
            raise DataValidationError(msg)
        train = _subsample(self._train, int(self.max_train_cells), self.seed)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="aivc-peer-") as tmp:
            folder = Path(tmp)
            train.write_h5ad(folder / "train.h5ad")
            ctrl.write_h5ad(folder / "control.h5ad")
            query.to_csv(folder / "query.csv", index=False)
            args = [
                "--peer", self.peer,
                "--train", str(folder / "train.h5ad"),
                "--control", str(folder / "control.h5ad"),
                "--query", str(folder / "query.csv"),
                "--control-label", schema.control_label,
                "--seed", str(int(self.seed)),
                "--out", str(folder),
            ]  # fmt: skip
            if self.steps is not None:
                args += ["--steps", str(int(self.steps))]
            run_peer(self.peer, "perturbation_peer", args, timeout=self.timeout_s)
            cells = np.load(folder / "cells.npy", allow_pickle=False)
            info = json.loads((folder / "info.json").read_text())
        expected = (int(query["n_cells"].sum()), len(self.genes_))
        if cells.shape != expected or not np.isfinite(cells).all():
            msg = (
                f"The peer {self.peer!r} returned cells of shape {cells.shape} (finite: "
                f"{bool(np.isfinite(cells).all())}); expected {expected}, all finite."
            )
            raise RuntimeError(msg)
        logger.info(
            "%s: %d conditions generated in %.1f s",
            self.peer,
            len(wanted),
            time.perf_counter() - t0,
        )
        info["clipped_values"] = self.peer_info_.get("clipped_values", 0)
        self.peer_info_ = info
        start = 0
        clipped = int(((cells < 0) | (cells > LOG1P_MAX)).sum())
        if clipped:
            logger.info(
                "%s: %d generated values outside [0, %g] were clipped",
                self.peer,
                clipped,
                LOG1P_MAX,
            )
        self.peer_info_["clipped_values"] = self.peer_info_.get("clipped_values", 0) + clipped
        cells = np.clip(cells, 0.0, LOG1P_MAX)
        for (p, c), n in zip(wanted, query["n_cells"], strict=True):
            self._cells[(p, c)] = cells[start : start + n].astype(np.float64)
            start += n

    # persistence -----------------------------------------------------------------------------
    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        msg = (
            f"The peer {self.peer!r} is run and scored by the benchmark, not saved by aivc; "
            f"use its own package to keep a trained model."
        )
        raise NotImplementedError(msg)

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        raise NotImplementedError(self._model_state.__doc__)


def _protocol_cells(adata: AnnData, schema: PerturbationSchema, genes: list[str]) -> AnnData:
    """``adata`` in the protocol's layout: X (float32 CSR), ``perturbation`` and ``context``."""
    x = adata[:, genes].X
    x = sp.csr_matrix(x, dtype=np.float32)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(adata.n_obs)])
    obs["perturbation"] = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    obs["context"] = (
        adata.obs[schema.context_key].astype(str).to_numpy()
        if schema.context_key is not None
        else NO_CONTEXT
    )
    return AnnData(X=x, obs=obs, var=pd.DataFrame(index=list(map(str, genes))))


def _subsample(cells: AnnData, limit: int, seed: int) -> AnnData:
    """At most ``limit`` cells, each (perturbation, context) group kept in proportion (seeded)."""
    if cells.n_obs <= limit:
        return cells
    rng = np.random.default_rng(seed)
    groups = cells.obs.groupby(["perturbation", "context"], observed=True).indices
    keep = []
    for rows in groups.values():
        k = max(1, round(len(rows) * limit / cells.n_obs))
        keep.append(rng.choice(rows, min(k, len(rows)), replace=False))
    return cells[np.sort(np.concatenate(keep))].copy()


@register_instrument(
    "state",
    description="Arc's State transition model, trained from scratch in its own environment (peer)",
    kind="peer",
)
class StatePeer(PeerPerturbationModel):
    """Arc's State (``arc-state``), its transition model trained from scratch on CPU."""

    peer = "state"


@register_instrument(
    "biolord",
    description="biolord, trained from scratch in its own environment (peer)",
    kind="peer",
)
class BiolordPeer(PeerPerturbationModel):
    """biolord, with the perturbation and the context as categorical attributes."""

    peer = "biolord"


@register_instrument(
    "cellflow",
    description="CellFlow (cellflow-tools), trained from scratch in its own environment (peer)",
    kind="peer",
)
class CellFlowPeer(PeerPerturbationModel):
    """CellFlow: flow matching on principal components, one-hot conditions."""

    peer = "cellflow"
