"""The tissue manipulator: how a cell changes when its neighbourhood changes.

:class:`TissueManipulator` learns, for each cell type, how a cell's log
expression follows the mean log expression of its spatial neighbours (ridge
regression, one per type, on the principal axes of the standardised
neighbour means; the
neighbourhood size is chosen by blocked cross-validation on the training
cells). A change of neighbourhood (a gene knocked out in some cells, cells
removed) changes the neighbour means; the predicted change of each cell is
its type's coefficients times that change. :meth:`TissueManipulator.explain`
splits the prediction over the neighbours' genes and over the neighbour
cells, and :meth:`TissueManipulator.edge_scores` scores every
neighbour → cell edge by how much the sender's expression moves the
receiver's prediction; these are the signalling edges the model believes in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import RidgeCV

from aivc.tissues._spatial import neighbour_mean, spatial_graph

__all__ = ["NEIGHBOURHOOD_SIZES", "TissueManipulator"]

logger = logging.getLogger(__name__)

#: Neighbourhood sizes (k nearest cells) the manipulator chooses among.
NEIGHBOURHOOD_SIZES = (5, 10, 20, 30)
ALPHAS = np.logspace(-1, 5, 13)


class TissueManipulator:
    """Per-type ridge regression of a cell's expression on its neighbours' mean expression.

    Parameters
    ----------
    sizes
        Neighbourhood sizes to choose among (k nearest cells within a section).
    n_axes
        Principal axes of the neighbour means the regressions read.
    n_folds
        Folds of cells used to choose the size.
    min_cells
        Cell types with fewer training cells are predicted not to change.
    seed
        Seed of the folds.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[int] = NEIGHBOURHOOD_SIZES,
        n_axes: int = 50,
        n_folds: int = 3,
        min_cells: int = 30,
        seed: int = 0,
    ) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        self.n_axes = n_axes
        self.n_folds = n_folds
        self.min_cells = min_cells
        self.seed = seed

    def get_params(self) -> dict[str, object]:
        """The constructor's parameters."""
        return {
            "sizes": self.sizes,
            "n_axes": self.n_axes,
            "n_folds": self.n_folds,
            "min_cells": self.min_cells,
            "seed": self.seed,
        }

    def _graph(self, coordinates: np.ndarray, sections: np.ndarray, k: int) -> sp.csr_matrix:
        return spatial_graph(coordinates, sections, method="knn", n_neighbors=k)

    def fit(
        self,
        x: np.ndarray,
        coordinates: np.ndarray,
        sections: Sequence[object] | np.ndarray,
        cell_types: Sequence[object] | np.ndarray,
    ) -> Self:
        """Learn the per-type regressions.

        Parameters
        ----------
        x
            Cells x genes log expression.
        coordinates, sections
            Positions and sections of the cells (graphs never cross sections).
        cell_types
            Each cell's type.
        """
        x = np.asarray(x, dtype=np.float64)
        types = np.asarray(cell_types).astype(str)
        sections = np.asarray(sections).astype(str)
        fold = np.random.default_rng([self.seed, 71]).permutation(len(x)) % self.n_folds
        scores: dict[int, float] = {}
        for k in self.sizes:
            nbr = neighbour_mean(self._graph(coordinates, sections, k), x)
            err = 0.0
            for f in range(self.n_folds):
                tr, te = fold != f, fold == f
                pred = self._fit_types(nbr[tr], x[tr], types[tr]).predict_from(nbr[te], types[te])
                err += float(((pred - x[te]) ** 2).sum())
            scores[k] = err / x.size
        best = min(self.sizes, key=lambda k: (scores[k], self.sizes.index(k)))
        self.scores_, self.n_neighbors_ = scores, best
        nbr = neighbour_mean(self._graph(coordinates, sections, best), x)
        fitted = self._fit_types(nbr, x, types)
        self.coef_, self.intercept_, self.feature_mean_, self.feature_scale_ = (
            fitted.coef_,
            fitted.intercept_,
            fitted.feature_mean_,
            fitted.feature_scale_,
        )
        self.types_ = fitted.types_
        self.fallback_ = fitted.fallback_
        logger.info("Tissue manipulator: %d nearest neighbours (errors %s).", best, scores)
        return self

    def _fit_types(self, nbr: np.ndarray, x: np.ndarray, types: np.ndarray) -> TissueManipulator:
        out = TissueManipulator(**self.get_params())  # type: ignore[arg-type]
        out.feature_mean_ = nbr.mean(0)
        out.feature_scale_ = np.where(nbr.std(0) > 1e-9, nbr.std(0), 1.0)
        z = (nbr - out.feature_mean_) / out.feature_scale_
        # the neighbourhood's principal axes: fewer, less noisy inputs; the map stays linear in z
        zc = z - z.mean(0)
        evals, evecs = np.linalg.eigh(zc.T @ zc)
        axes = evecs[:, np.argsort(-evals)[: min(self.n_axes, len(evals))]].T
        scores = z @ axes.T
        out.coef_, out.intercept_ = {}, {}
        out.fallback_ = x.mean(0)
        for t in np.unique(types):
            rows = types == t
            if rows.sum() < self.min_cells:
                continue
            model = RidgeCV(alphas=ALPHAS).fit(scores[rows], x[rows])
            out.coef_[t] = model.coef_ @ axes  # genes out x genes in (standardised)
            out.intercept_[t] = model.intercept_
        out.types_ = sorted(out.coef_)
        return out

    def _per_type(self, z: np.ndarray, cell_types: np.ndarray, *, intercept: bool) -> np.ndarray:
        """Each cell's type's linear map of ``z`` (cells of types without a model: zero change,
        or the overall mean with ``intercept``)."""
        out = (
            np.tile(self.fallback_, (len(z), 1))
            if intercept
            else np.zeros((len(z), len(self.fallback_)))
        )
        for t in self.types_:
            rows = cell_types == t
            if rows.any():
                out[rows] = z[rows] @ self.coef_[t].T + (self.intercept_[t] if intercept else 0.0)
        return out

    def predict_from(self, neighbour_means: np.ndarray, cell_types: np.ndarray) -> np.ndarray:
        """Expression predicted from given neighbour means (cells x genes)."""
        z = (neighbour_means - self.feature_mean_) / self.feature_scale_
        return self._per_type(z, cell_types, intercept=True)

    def _delta_z(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return (after - before) / self.feature_scale_

    def predict_change(
        self,
        x_before: np.ndarray,
        coordinates: np.ndarray,
        sections: Sequence[object] | np.ndarray,
        cell_types: Sequence[object] | np.ndarray,
        *,
        x_after: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted change of each kept cell's expression when its neighbourhood changes.

        Parameters
        ----------
        x_before
            Cells x genes log expression of the tissue as measured.
        coordinates, sections, cell_types
            Of the same cells.
        x_after
            The neighbours' expression after the change (e.g. a gene knocked
            out: its column set to zero in the cells that lose it); default
            unchanged.
        keep
            Boolean mask of the cells that stay (``False``: removed); default all.

        Returns
        -------
        Kept cells x genes predicted change of log expression (the change
        that reaches a cell through its neighbours only).
        """
        sections = np.asarray(sections).astype(str)
        types = np.asarray(cell_types).astype(str)
        keep = np.ones(len(x_before), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
        x_after = x_before if x_after is None else x_after
        k = self.n_neighbors_
        before = neighbour_mean(self._graph(coordinates, sections, k), x_before)[keep]
        g_after = self._graph(coordinates[keep], sections[keep], k)
        after = neighbour_mean(g_after, x_after[keep])
        return self._per_type(self._delta_z(before, after), types[keep], intercept=False)

    def explain(
        self,
        x_before: np.ndarray,
        x_after: np.ndarray,
        coordinates: np.ndarray,
        sections: Sequence[object] | np.ndarray,
        cell_types: Sequence[object] | np.ndarray,
        genes: Sequence[str],
        cells: Sequence[int],
        *,
        top: int = 5,
    ) -> pd.DataFrame:
        """Which neighbour genes carry the predicted change of each of ``cells`` (largest first).

        Returns a frame with ``cell``, ``neighbour_gene``, ``contribution``
        (the norm over output genes of that input gene's share of the change).
        """
        sections = np.asarray(sections).astype(str)
        types = np.asarray(cell_types).astype(str)
        g = self._graph(coordinates, sections, self.n_neighbors_)
        dz = self._delta_z(neighbour_mean(g, x_before), neighbour_mean(g, x_after))
        rows = []
        for i in cells:
            t = types[i]
            if t not in self.coef_:
                continue
            share = np.linalg.norm(self.coef_[t] * dz[i][None, :], axis=0)
            for j in np.argsort(-share)[:top]:
                if share[j] > 0:
                    rows.append(
                        {
                            "cell": int(i),
                            "neighbour_gene": str(genes[j]),
                            "contribution": float(share[j]),
                        }
                    )
        return pd.DataFrame(rows, columns=["cell", "neighbour_gene", "contribution"])

    def edge_scores(
        self,
        x: np.ndarray,
        coordinates: np.ndarray,
        sections: Sequence[object] | np.ndarray,
        cell_types: Sequence[object] | np.ndarray,
        graph: sp.spmatrix | None = None,
    ) -> pd.DataFrame:
        """Score every neighbour → cell edge by the sender's pull on the receiver's prediction.

        The score of sender ``j`` for receiver ``i`` is the norm of
        ``coef[type_i] @ (x_j - mean) / scale`` divided by ``i``'s number of
        neighbours: how far ``j``'s expression moves ``i``'s predicted
        expression. ``graph`` (default: the model's own) says which pairs are scored.

        Returns
        -------
        Frame with ``sender``, ``receiver`` (row positions) and ``score``.
        """
        sections = np.asarray(sections).astype(str)
        types = np.asarray(cell_types).astype(str)
        g = sp.csr_matrix(
            graph if graph is not None else self._graph(coordinates, sections, self.n_neighbors_)
        )
        z = (np.asarray(x, dtype=np.float64) - self.feature_mean_) / self.feature_scale_
        coo = g.tocoo()
        receiver, sender = coo.row, coo.col
        degree = np.asarray(g.sum(axis=1)).ravel()
        score = np.zeros(len(receiver))
        for t in self.types_:
            sel = np.flatnonzero(types[receiver] == t)
            if len(sel):
                pull = z[sender[sel]] @ self.coef_[t].T
                score[sel] = np.linalg.norm(pull, axis=1) / degree[receiver[sel]]
        return pd.DataFrame({"sender": sender, "receiver": receiver, "score": score})
