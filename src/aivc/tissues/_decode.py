"""Decoders that read a cell's neighbourhood: cell type, spatial domain, unmeasured genes.

Each decoder contains the simple answers a practitioner would try first and
chooses among them on training data only:

- :class:`NicheCellTyper` predicts cell types from a candidate set of
  feature sets (own expression; own plus the neighbours' mean; own plus the
  niche embedding; own plus the composition of the neighbours' predicted
  types) and keeps the one with the best spatially blocked cross-validated
  macro-F1 on the training cells (the simplest one within a standard error
  of the best: :func:`choose_simplest`). With ``unknown=True`` a cell whose top
  probability falls below what the held-out training cells reached in 99%
  of cases is answered ``"unknown"``.
- :func:`niche_domains` clusters cells into spatial domains from their niche
  embedding averaged over their neighbourhood.
- :class:`GeneImputer` predicts genes a panel lacks: from a single-cell
  reference (cells mapped through principal components of the shared genes
  to their nearest reference cells, or to the reference's cell types;
  optionally averaged over spatial neighbours) or, without one, from the
  other genes of the panel (ridge regression on own and neighbour
  expression); the variant is chosen by held-out genes or cells of the
  training data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import f1_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from aivc.tissues._spatial import neighbour_mean

__all__ = [
    "CELLTYPE_CANDIDATES",
    "GeneImputer",
    "NicheCellTyper",
    "choose_simplest",
    "niche_domains",
    "per_gene_pearson",
]

logger = logging.getLogger(__name__)

#: Feature sets :class:`NicheCellTyper` chooses among, simplest first (ties go to the simpler).
CELLTYPE_CANDIDATES = ("expression-only", "neighbour-mean", "niche", "neighbour-types")
UNKNOWN = "unknown"


def choose_simplest(names: Sequence[str], fold_scores: dict[str, list[float]]) -> str:
    """The simplest candidate (first in ``names``) not clearly worse than the best one.

    A candidate is kept when its mean shortfall from the best candidate over
    the same folds is within one standard error of that shortfall (the
    one-standard-error rule, paired by fold): a more complex candidate has to
    beat the simpler one by more than the noise between folds.
    """
    means = {c: float(np.mean(v)) if v else float("-inf") for c, v in fold_scores.items()}
    best = max(names, key=lambda c: (means[c], -list(names).index(c)))
    for c in names:
        a, b = np.asarray(fold_scores[best]), np.asarray(fold_scores[c])
        if len(a) != len(b) or len(a) == 0:
            continue
        gap = a - b
        se = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else 0.0
        if gap.mean() <= se:
            return c
    return best


def _classifier(seed: int) -> Any:
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )


class NicheCellTyper:
    """Cell types from a cell's own expression and, where it helps, its neighbourhood.

    Parameters
    ----------
    candidates
        Feature sets to choose among (see :data:`CELLTYPE_CANDIDATES`).
    n_folds
        Most blocks held out in turn when choosing (spatial blocks of the training cells).
    unknown
        Answer ``"unknown"`` below the 1% quantile of held-out top probabilities.
    max_cv_cells
        Training cells (a seeded sample) the choice is cross-validated on; the
        chosen feature set is then fitted on all of them. With one feature set
        and ``unknown=False`` there is nothing to choose and nothing is
        cross-validated (``scores_`` is then empty).
    seed
        Seed of the classifiers.
    """

    def __init__(
        self,
        *,
        candidates: Sequence[str] = CELLTYPE_CANDIDATES,
        n_folds: int = 4,
        unknown: bool = False,
        max_cv_cells: int = 20_000,
        seed: int = 0,
    ) -> None:
        bad = [c for c in candidates if c not in CELLTYPE_CANDIDATES]
        if bad or not candidates:
            msg = f"Unknown feature sets {bad}; choose from {CELLTYPE_CANDIDATES}."
            raise ValueError(msg)
        self.candidates = tuple(candidates)
        self.n_folds = n_folds
        self.unknown = unknown
        self.max_cv_cells = max_cv_cells
        self.seed = seed

    @staticmethod
    def _features(
        name: str,
        own: np.ndarray,
        graph: sp.spmatrix,
        niche: np.ndarray | None,
        neighbour_types: np.ndarray | None,
    ) -> np.ndarray:
        if name == "expression-only":
            return own
        if name == "neighbour-mean":
            return np.hstack([own, neighbour_mean(graph, own)])
        if name == "niche":
            if niche is None:
                msg = "The 'niche' feature set needs a niche embedding."
                raise ValueError(msg)
            return np.hstack([own, niche])
        return np.hstack([own, neighbour_types])  # type: ignore[list-item]

    def _neighbour_types(
        self,
        own: np.ndarray,
        labels: np.ndarray,
        fit_rows: np.ndarray,
        graph: sp.spmatrix,
        blocks: np.ndarray,
    ) -> np.ndarray:
        """Each cell's neighbours' mean expression-only type probabilities (out-of-fold on ``fit_rows``)."""
        classes = np.unique(labels[fit_rows])
        proba = np.zeros((len(own), len(classes)), dtype=np.float32)
        rest = np.ones(len(own), dtype=bool)
        rest[fit_rows] = False
        fit_blocks = blocks[fit_rows]
        for b in np.unique(fit_blocks):
            tr, te = fit_rows[fit_blocks != b], fit_rows[fit_blocks == b]
            if len(np.unique(labels[tr])) < 2:
                continue
            clf = _classifier(self.seed).fit(own[tr], labels[tr])
            cols = np.searchsorted(classes, clf.classes_)
            proba[np.ix_(te, cols)] = clf.predict_proba(own[te])
        if rest.any():
            clf = _classifier(self.seed).fit(own[fit_rows], labels[fit_rows])
            cols = np.searchsorted(classes, clf.classes_)
            proba[np.ix_(np.flatnonzero(rest), cols)] = clf.predict_proba(own[rest])
        return neighbour_mean(graph, proba)

    def fit(
        self,
        own: np.ndarray,
        graph: sp.spmatrix,
        labels: Sequence[object] | np.ndarray,
        train: np.ndarray,
        blocks: np.ndarray,
        *,
        niche: np.ndarray | None = None,
    ) -> Self:
        """Choose the feature set by blocked cross-validation on the training cells, then fit it.

        Parameters
        ----------
        own
            Every cell's own expression features (cells x d; e.g. principal components).
        graph
            The spatial graph over the same cells.
        labels
            Cell types (read only at ``train``).
        train
            Boolean mask or indices of the training cells.
        blocks
            Spatial block of every cell (sections or tiles; :func:`~aivc.tissues.spatial_blocks`).
        niche
            Every cell's niche embedding (needed by the ``"niche"`` feature set).
        """
        labels = np.asarray(labels).astype(str)
        rows = np.flatnonzero(train) if np.asarray(train).dtype == bool else np.asarray(train)
        candidates = [c for c in self.candidates if c != "niche" or niche is not None]
        fit_blocks = blocks[rows]
        groups = np.unique(fit_blocks)
        if len(groups) > self.n_folds:
            rng = np.random.default_rng([self.seed, 51])
            fold_of = dict(zip(groups, rng.permutation(len(groups)) % self.n_folds, strict=True))
            fit_blocks = np.asarray([fold_of[b] for b in fit_blocks])
        cv_rows, cv_blocks = rows, fit_blocks
        if len(rows) > self.max_cv_cells:  # choosing needs a sample, not every cell
            pick = np.sort(
                np.random.default_rng([self.seed, 52]).choice(
                    len(rows), self.max_cv_cells, replace=False
                )
            )
            cv_rows, cv_blocks = rows[pick], fit_blocks[pick]
        folds: dict[str, list[float]] = {}
        held_top: dict[str, np.ndarray] = {}
        # one feature set and no unknown threshold: nothing to choose or calibrate on held-out
        # blocks, so the cross-validation is skipped (the fitted classifier is the same)
        for name in candidates if len(candidates) > 1 or self.unknown else ():
            f1s, tops = [], []
            for b in np.unique(cv_blocks):
                tr, te = cv_rows[cv_blocks != b], cv_rows[cv_blocks == b]
                if len(np.unique(labels[tr])) < 2:
                    continue
                nt = (
                    self._neighbour_types(own, labels, tr, graph, blocks)
                    if name == "neighbour-types"
                    else None
                )
                x = self._features(name, own, graph, niche, nt)
                clf = _classifier(self.seed).fit(x[tr], labels[tr])
                p = clf.predict_proba(x[te])
                f1s.append(f1_score(labels[te], clf.classes_[p.argmax(1)], average="macro"))
                tops.append(p.max(1))
            folds[name] = f1s
            held_top[name] = np.concatenate(tops) if tops else np.zeros(0)
        best = choose_simplest(candidates, folds) if folds else candidates[0]
        self.scores_ = {c: float(np.mean(v)) if v else float("-inf") for c, v in folds.items()}
        scores = self.scores_
        self.chosen_ = best
        top = held_top.get(best, np.zeros(0))
        self.threshold_ = float(np.quantile(top, 0.01)) if len(top) else 0.0
        self._own, self._graph, self._niche = own, graph, niche
        nt = (
            self._neighbour_types(own, labels, rows, graph, blocks)
            if best == "neighbour-types"
            else None
        )
        self._x = self._features(best, own, graph, niche, nt)
        self.model_ = _classifier(self.seed).fit(self._x[rows], labels[rows])
        self.classes_ = self.model_.classes_
        logger.info("Cell-type features chosen on training blocks: %s (%s).", best, scores)
        return self

    def predict_proba(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Type probabilities of the cells at ``rows`` (all cells by default; columns: ``classes_``)."""
        x = self._x if rows is None else self._x[rows]
        return self.model_.predict_proba(x)

    def predict(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Predicted types (``"unknown"`` below the threshold when ``unknown=True``)."""
        p = self.predict_proba(rows)
        out = self.classes_[p.argmax(1)].astype(object)
        if self.unknown:
            out[p.max(1) < self.threshold_] = UNKNOWN
        return out


def niche_domains(
    features: np.ndarray,
    graph: sp.spmatrix | None,
    n_domains: int,
    *,
    hops: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Spatial domains: k-means on ``features`` averaged over each cell and its ``hops``-step neighbourhood.

    With ``hops=0`` (or no graph) the features are clustered as they are.
    """
    x = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    if graph is not None and hops > 0:
        n = graph.shape[0]
        walk = sp.csr_matrix(graph, dtype=np.float32) + sp.identity(
            n, dtype=np.float32, format="csr"
        )
        degree = np.asarray(walk.sum(axis=1)).ravel()
        walk = sp.diags(1.0 / degree) @ walk
        for _ in range(hops):
            x = walk @ x
    return KMeans(n_clusters=n_domains, n_init=10, random_state=seed).fit_predict(x)


def per_gene_pearson(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Pearson correlation over cells of each gene (NaN for a gene constant in either)."""
    p = predicted - predicted.mean(0)
    o = observed - observed.mean(0)
    den = np.sqrt((p**2).sum(0) * (o**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (p * o).sum(0) / den, np.nan)


def _ridge(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    scaler = StandardScaler().fit(x_tr)
    model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(scaler.transform(x_tr), y_tr)
    return model.predict(scaler.transform(x_te))


#: Variants of :class:`GeneImputer` without a reference, simplest first.
PANEL_VARIANTS = ("expression-only", "neighbour-mean", "two-hop")
#: Variants with a reference: (neighbours in the reference, weight of the spatial neighbours' average).
REFERENCE_VARIANTS = {
    "map-k10": (10, 0.0),
    "map-k30": (30, 0.0),
    "map-k100": (100, 0.0),
    "map-k10-smooth": (10, 0.5),
    "map-k30-smooth": (30, 0.5),
    "map-k100-smooth": (100, 0.5),
}
#: Variants that need the reference's cell types: the query's type probabilities (a classifier
#: trained on the reference), optionally averaged over its spatial neighbours, times each type's
#: mean expression in the reference.
TYPE_VARIANTS = {"type-mean": 0.0, "type-mean-smooth": 0.5}


def _panel_features(name: str, x: np.ndarray, graph: sp.spmatrix) -> np.ndarray:
    if name == "expression-only":
        return x
    one = neighbour_mean(graph, x)
    if name == "neighbour-mean":
        return np.hstack([x, one])
    return np.hstack([x, one, neighbour_mean(graph, one)])


def _shared_space(
    spatial: np.ndarray,
    reference: np.ndarray,
    graph: sp.spmatrix | None,
    smooth: float,
    n_components: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and spatial cells on the reference's principal components of the shared genes.

    Genes are standardised on the reference; with ``smooth`` each spatial cell
    is first averaged with its spatial neighbours (weight ``smooth``).
    """
    from sklearn.decomposition import PCA

    scaler = StandardScaler().fit(reference)
    ref = scaler.transform(reference)
    q = scaler.transform(spatial)
    if smooth > 0 and graph is not None:
        q = (1 - smooth) * q + smooth * neighbour_mean(graph, q)
    n_comp = max(1, min(n_components, ref.shape[1] - 1, ref.shape[0] - 1))
    pca = PCA(n_components=n_comp, random_state=0).fit(ref)
    return pca.transform(ref), pca.transform(q)


def _reference_types(
    spatial: np.ndarray,
    reference: np.ndarray,
    reference_targets: np.ndarray,
    labels: np.ndarray,
    graph: sp.spmatrix | None,
    smooth: float,
) -> np.ndarray:
    """Targets of each spatial cell: its reference-type probabilities times the types' mean targets."""
    ref, q = _shared_space(spatial, reference, None, 0.0)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(ref, labels)
    proba = clf.predict_proba(q)
    if smooth > 0 and graph is not None:
        proba = (1 - smooth) * proba + smooth * neighbour_mean(graph, proba)
    means = np.stack([reference_targets[labels == c].mean(0) for c in clf.classes_])
    return proba @ means


def _reference_map(
    spatial: np.ndarray,
    reference: np.ndarray,
    reference_targets: np.ndarray,
    graph: sp.spmatrix | None,
    k: int,
    smooth: float,
) -> np.ndarray:
    """Targets of each spatial cell: the mean over its ``k`` nearest reference cells in a shared PCA."""
    ref, q = _shared_space(spatial, reference, graph, smooth)
    _, idx = NearestNeighbors(n_neighbors=min(k, len(ref))).fit(ref).kneighbors(q)
    return reference_targets[idx].mean(1)


class GeneImputer:
    """Expression of genes a spatial panel lacks, chosen among simple variants on training data only.

    Parameters
    ----------
    variants
        Variants to choose among (default: all for the mode used).
    n_folds
        Folds of the held-out genes (reference mode) or cell blocks (panel mode) used to choose.
    seed
        Seed of the fold assignment.
    """

    def __init__(
        self, *, variants: Sequence[str] | None = None, n_folds: int = 3, seed: int = 0
    ) -> None:
        self.variants = tuple(variants) if variants is not None else None
        self.n_folds = n_folds
        self.seed = seed

    def from_reference(
        self,
        spatial: np.ndarray,
        reference: np.ndarray,
        reference_targets: np.ndarray,
        graph: sp.spmatrix | None = None,
        reference_labels: Sequence[object] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Predict ``reference_targets``' genes for the spatial cells.

        ``spatial`` and ``reference`` hold log expression of the shared genes
        (same columns); the variant is chosen by predicting held-out shared
        genes from the others. With ``reference_labels`` (the reference's
        cell types) the type-probability variants join the candidates.
        """
        labels = None if reference_labels is None else np.asarray(reference_labels).astype(str)
        default = (*REFERENCE_VARIANTS, *(TYPE_VARIANTS if labels is not None else ()))
        names = self.variants or default
        if labels is None and any(n in TYPE_VARIANTS for n in names):
            msg = f"The variants {list(TYPE_VARIANTS)} need reference_labels (the reference's cell types)."
            raise ValueError(msg)

        def run(name: str, keep: np.ndarray | slice, targets: np.ndarray) -> np.ndarray:
            if name in TYPE_VARIANTS:
                return _reference_types(
                    spatial[:, keep],
                    reference[:, keep],
                    targets,
                    labels,
                    graph,
                    TYPE_VARIANTS[name],
                )
            k, smooth = REFERENCE_VARIANTS[name]
            return _reference_map(spatial[:, keep], reference[:, keep], targets, graph, k, smooth)

        g = spatial.shape[1]
        fold = np.random.default_rng([self.seed, 61]).permutation(g) % min(self.n_folds, g)
        folds: dict[str, list[float]] = {}
        for name in names:
            vals = []
            for f in np.unique(fold):
                keep, held = fold != f, fold == f
                if keep.sum() < 2:
                    continue
                pred = run(name, keep, reference[:, held])
                vals.append(np.nanmean(per_gene_pearson(pred, spatial[:, held])))
            folds[name] = vals
        best = choose_simplest(names, folds)
        self.scores_ = {c: float(np.mean(v)) if v else float("-inf") for c, v in folds.items()}
        self.chosen_ = best
        return run(best, slice(None), reference_targets)

    def within_panel(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        graph: sp.spmatrix,
        train: np.ndarray,
        blocks: np.ndarray,
    ) -> np.ndarray:
        """Predict ``targets`` (cells x genes, read at ``train`` only) for every cell from the panel ``x``.

        The variant is chosen by blocked cross-validation on the training cells.
        """
        names = self.variants or PANEL_VARIANTS
        rows = np.flatnonzero(train) if np.asarray(train).dtype == bool else np.asarray(train)
        fit_blocks = blocks[rows]
        groups = np.unique(fit_blocks)
        fold_of = dict(
            zip(groups, np.arange(len(groups)) % min(self.n_folds, len(groups)), strict=True)
        )
        folds = np.asarray([fold_of[b] for b in fit_blocks])
        features = {name: _panel_features(name, x, graph) for name in names}
        scores: dict[str, list[float]] = {}
        for name in names:
            vals = []
            for f in np.unique(folds):
                tr, te = rows[folds != f], rows[folds == f]
                if len(tr) < 10 or len(te) < 2:
                    continue
                pred = _ridge(features[name][tr], targets[tr], features[name][te])
                vals.append(np.nanmean(per_gene_pearson(pred, targets[te])))
            scores[name] = vals
        best = choose_simplest(names, scores)
        self.scores_ = {c: float(np.mean(v)) if v else float("-inf") for c, v in scores.items()}
        self.chosen_ = best
        return _ridge(features[best][rows], targets[rows], features[best])
