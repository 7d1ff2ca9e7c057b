"""Labs that replay an experiment already done: they answer at once, and only what is asked.

A finished screen holds the answer to every question a campaign could ask;
replaying it round by round, revealing only the perturbations a strategy
chose, shows how quickly that strategy would have found what the screen
found, and lets a loop's settings be tried before an experiment is run.
Both labs plug into :func:`aivc.experiments.run_loop` like the
:class:`~aivc.experiments.SimulatorLab`:

- :class:`ReplayLab` holds the cells of a single-cell perturbation screen
  (e.g. Perturb-seq); each round returns the cells of the proposed
  perturbations and the screen's control cells.
- :class:`ScreenScoresLab` holds the gene-level scores of a pooled screen
  (e.g. MAGeCK log-fold changes); each round returns the scores of the
  proposed genes. Without cells there is no perturbation model to refit, so
  the loop runs with ``model=None`` and the strategy's ``features``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._labels import check_known
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["ReplayLab", "ScreenScoresLab"]


class ReplayLab:
    """The cells of a perturbation screen already run, revealed for the perturbations asked.

    Each round returns the cells of the proposed perturbations together with
    every control cell of the data (the controls are shared by all rounds),
    in the data's own cell order. Nothing else of the screen is revealed, so a
    campaign replayed on it learns only what it chose to measure.

    Parameters
    ----------
    adata
        The screen: raw counts in ``X`` (or the schema's counts layer), one
        observation per cell.
    schema
        How to read it; ``None`` reads the schema stored in
        ``adata.uns["aivc"]["schema"]`` (as :func:`aivc.data.load` writes it).
    name
        A label of the data, recorded with the project's settings.
    """

    waits = False

    def __init__(
        self,
        adata: AnnData,
        *,
        schema: PerturbationSchema | None = None,
        name: str | None = None,
    ) -> None:
        if schema is None:
            try:
                schema = PerturbationSchema.from_dict(dict(adata.uns["aivc"]["schema"]))
            except (KeyError, TypeError):
                msg = (
                    "The data carry no schema in uns['aivc']['schema']; pass schema= to ReplayLab "
                    "(which obs column holds the perturbations and what the control label is)."
                )
                raise DataValidationError(msg) from None
        key = schema.perturbation_key
        if key not in adata.obs.columns:
            msg = (
                f"The schema reads perturbations from obs[{key!r}], which the data lack; their obs "
                f"columns are {list(adata.obs.columns)}. Pass the schema that describes them."
            )
            raise DataValidationError(msg)
        self._adata = adata
        self._schema = schema
        self._labels = adata.obs[key].astype(str).to_numpy()
        if not (self._labels == schema.control_label).any():
            msg = (
                f"The data hold no control cells (label {schema.control_label!r} in obs[{key!r}]); "
                "each round is measured against them. Check the schema's control_label."
            )
            raise DataValidationError(msg)
        self.name = name

    @property
    def perturbations(self) -> list[str]:
        """Perturbations the screen measured (the control label excluded), sorted."""
        return sorted(set(self._labels) - {self._schema.control_label})

    @property
    def genes(self) -> list[str]:
        """Measured genes (``var_names``)."""
        return [str(g) for g in self._adata.var_names]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "replay",
            "name": self.name,
            "n_obs": int(self._adata.n_obs),
            "n_vars": int(self._adata.n_vars),
            "n_perturbations": len(self.perturbations),
        }

    def schema(self) -> PerturbationSchema:
        return self._schema

    def measure(self, perturbations: Sequence[str], *, round: int) -> AnnData:
        """The cells of ``perturbations`` and the control cells (``round`` does not change them)."""
        asked = [str(p) for p in perturbations]
        check_known(
            asked,
            set(self.perturbations),
            what="perturbation",
            known_as="perturbations of the replayed screen",
            advice="Only perturbations the screen measured can be asked for.",
        )
        keep = np.isin(self._labels, [self._schema.control_label, *asked])
        return self._adata[keep].copy()


class ScreenScoresLab:
    """Gene-level scores of a pooled screen already run, revealed for the genes asked.

    Each round returns the scores of the proposed genes (a :class:`pandas.Series`
    indexed by gene, in the order asked). :func:`~aivc.experiments.run_loop`
    records each score with its result (as a one-value profile) and by default
    feeds its absolute value back to the strategy, so hits in either direction
    are sought; pass ``effect=`` to seek one direction only. A table of scores
    holds no cells, so the loop refits no perturbation model: run it with
    ``model=None`` and give the strategy ``features``.

    Parameters
    ----------
    scores
        One finite score per gene, indexed by unique gene names.
    name
        A label of the screen, recorded with the project's settings.
    """

    waits = False

    def __init__(self, scores: pd.Series, *, name: str | None = None) -> None:
        if not isinstance(scores, pd.Series):
            msg = f"scores must be a pandas Series indexed by gene. Got {type(scores).__name__} instead."
            raise TypeError(msg)
        values = pd.to_numeric(scores, errors="coerce").astype(float)
        index = pd.Index([str(g) for g in scores.index])
        if len(values) == 0:
            msg = "The screen holds no scores; pass one score per gene."
            raise ValueError(msg)
        if not index.is_unique:
            dup = sorted(set(index[index.duplicated()]))
            msg = f"Genes {dup[:10]} have more than one score; give each gene one score."
            raise ValueError(msg)
        bad = index[~np.isfinite(values.to_numpy())]
        if len(bad):
            msg = (
                f"{len(bad)} scores are missing or not finite (genes {list(bad[:10])}); drop those "
                "genes or fill in their scores."
            )
            raise ValueError(msg)
        self._scores = pd.Series(values.to_numpy(), index=index, name=scores.name)
        self.name = name

    @property
    def perturbations(self) -> list[str]:
        """Genes of the screen, in the table's order."""
        return list(self._scores.index)

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self._scores.index).encode())
        digest.update(np.ascontiguousarray(self._scores.to_numpy(), dtype="<f8").tobytes())
        return {
            "kind": "screen-scores",
            "name": self.name,
            "n_genes": len(self._scores),
            "scores_sha256": digest.hexdigest(),
        }

    def schema(self) -> None:
        """Gene-level scores are not cells: there is no cell schema."""
        return None

    def measure(self, perturbations: Sequence[str], *, round: int) -> pd.Series:
        """The scores of ``perturbations``, in that order (``round`` does not change them)."""
        asked = [str(p) for p in perturbations]
        check_known(
            asked,
            set(self._scores.index),
            what="gene",
            known_as="genes of the screen",
            advice="Only genes the screen scored can be asked for.",
        )
        return self._scores.loc[asked].copy()
