"""Cell-type annotation that contains its baselines and picks among them on the reference.

:class:`CellAnnotator` transfers cell-type labels from a labelled reference to
a query (another donor, technology, condition or species). It does not trust
one method: it holds the classifiers a practitioner would use (logistic
regression on log-normalised genes at three strengths of regularisation, kNN
and logistic regression on principal components, kNN after Harmony, with the
query scaled by the reference or every batch scaled by itself, and logistic regression refit with
its own confident answers on the query) and chooses one by predicting held-out
reference batches, never the query's labels.

How it works
------------
1. **Genes.** The reference's most variable genes (Seurat dispersion on
   log-expression, ``n_top_genes``) among those detected in at least 3 cells,
   optionally restricted to ``genes`` (the genes a query measures).
2. **Held-out batches.** The reference is split into folds of whole batches
   (``batch_key``; up to 5 folds); without a batch column, or with one batch,
   into 5 label-stratified folds. Every candidate is fit on the other folds
   and predicts each held-out fold; its score is the mean over folds of
   ``(accuracy + macro-F1) / 2``.
3. **Choice.** The best-scoring candidate is picked unless an earlier one in
   :data:`CANDIDATES` (simpler, or the usual default) is within one standard
   error of the paired per-fold difference. Then the answer may be an
   ensemble: the mean probability of the top :data:`ENSEMBLE_SIZES`
   candidates by held-out score, scored on the same held-out folds; the size
   with the best held-out score is kept (on a tie the larger one, 1 being the
   picked candidate alone). Held-out batches of one reference rank single
   classifiers poorly for a query that differs more (another species or
   condition); averaging a few good ones is the robust answer.
   ``selection_`` records both tables.
4. **Calibration.** One temperature for the answer (candidate or ensemble)
   minimises the negative log-likelihood of its held-out predictions;
   probabilities are ``softmax(log p / T)``.
5. **Unknown.** Three signals say a cell is unlike the reference: a low
   calibrated top probability, a large mean distance to its ``n_neighbors``
   nearest reference cells in the reference's principal components, and a
   large distance to the nearest reference cells of its predicted type. Each
   is turned into an empirical p-value against held-out reference cells, and
   the unknown score is one of :data:`UNKNOWN_RULES` (one signal, or the mean
   of two), chosen by simulating unknown types on the reference: in every
   held-out fold each type is removed from the training cells in turn, and
   the rule that best separates its held-out cells (mean AUROC) wins. Cells
   above the ``1 - false_alarm`` quantile of the held-out scores of reference
   cells are answered ``unknown_label``; a type whose own held-out cells
   score higher (a rare type, far from most reference cells) gets its own,
   higher threshold, so it is not flagged wholesale (:func:`_class_thresholds`).

The chosen candidates are refit on the whole reference. The query is read
without retraining, except by a self-training candidate, which refits once
on the reference plus the query's confident answers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pandas as pd

from aivc.cells._calibration import expected_calibration_error, fit_temperature, softmax
from aivc.data._expression import INPUT_MODES, log_expression
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CANDIDATES",
    "ENSEMBLE_SIZES",
    "UNKNOWN_RULES",
    "AnnotatorCandidate",
    "CellAnnotator",
    "reference_panel",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatorCandidate:
    """One classifier the annotator may choose.

    Attributes
    ----------
    name
        Its name in ``selection_`` and results.
    features
        ``"genes"`` (the scaled gene panel), ``"pca"`` (its principal components
        fit on the reference) or ``"harmony"`` (those components of reference
        and query together, corrected by Harmony with the reference's batches
        and the query's as covariate; the query is read together with the
        reference, without its labels).
    classifier
        ``"logistic"`` (multinomial, L2 with strength ``1 / c``) or ``"knn"``
        (distance-weighted, ``n_neighbors``).
    c
        Inverse regularisation strength of ``"logistic"``.
    scaling
        ``"reference"``: every cell is centred and scaled by the reference's
        gene means and sds; ``"batch"``: every batch (of the reference, and of
        the query) by its own.
    self_training
        ``"logistic"`` only: after a first answer, refit on the reference plus
        the query cells answered with probability at least
        :data:`SELF_TRAINING_CONFIDENCE` (their answers as labels), and answer
        again, so the classifier adapts to the query's shift. The query is
        then read by a classifier partly fit on it (as scANVI does).
    """

    name: str
    features: str
    classifier: str
    c: float = 1.0
    scaling: str = "reference"
    self_training: bool = False


#: The candidates, in order of preference on ties (the usual default first).
CANDIDATES: tuple[AnnotatorCandidate, ...] = (
    AnnotatorCandidate("logistic", "genes", "logistic", 1.0),
    AnnotatorCandidate("logistic-c0.1", "genes", "logistic", 0.1),
    AnnotatorCandidate("logistic-c0.01", "genes", "logistic", 0.01),
    AnnotatorCandidate("pca-knn", "pca", "knn"),
    AnnotatorCandidate("harmony-knn", "harmony", "knn"),
    AnnotatorCandidate("pca-logistic", "pca", "logistic", 1.0),
    AnnotatorCandidate("logistic/batch", "genes", "logistic", 1.0, "batch"),
    AnnotatorCandidate("logistic-c0.1/batch", "genes", "logistic", 0.1, "batch"),
    AnnotatorCandidate("pca-knn/batch", "pca", "knn", 1.0, "batch"),
    AnnotatorCandidate("logistic+self-training", "genes", "logistic", 1.0, self_training=True),
    AnnotatorCandidate("logistic-c0.1+self-training", "genes", "logistic", 0.1, self_training=True),
)
#: Ensemble sizes the annotator compares on held-out folds (the top candidates by held-out
#: score; 1 is the picked candidate alone, ``None`` all candidates).
ENSEMBLE_SIZES: tuple[int | None, ...] = (1, 3, 5, None)
#: Query cells answered at least this confidently become labels of a self-training refit.
SELF_TRAINING_CONFIDENCE = 0.9
_BY_NAME = {c.name: c for c in CANDIDATES}
_EPS = 1e-6


def reference_panel(x_log: np.ndarray, genes: Sequence[str], *, n_top_genes: int) -> pd.Index:
    """The ``n_top_genes`` most variable genes of log-expression ``x_log`` (cells x ``genes``).

    Genes detected in fewer than 3 cells are left out; variability is
    scanpy's Seurat dispersion on log-expression.
    """
    import anndata as ad
    import scanpy as sc

    names = pd.Index([str(g) for g in genes])
    detected = (x_log > 0).sum(axis=0) >= 3
    if detected.sum() < 2:
        msg = f"Only {int(detected.sum())} genes are detected in at least 3 reference cells."
        raise DataValidationError(msg)
    names = names[detected]
    n = min(n_top_genes, len(names))
    if n == len(names):
        return names
    tmp = ad.AnnData(X=np.asarray(x_log[:, detected], dtype=np.float32))
    tmp.var_names = names
    stats = sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat", inplace=False)
    return names[stats["highly_variable"].to_numpy(dtype=bool)]


# ----------------------------------------------------------------------------- pieces
def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    return mean, sd


def _scale(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return np.clip((x - mean) / sd, -10.0, 10.0)


def _scale_by_batch(x: np.ndarray, batches: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for b in np.unique(batches):
        rows = batches == b
        out[rows] = _scale(x[rows], *_stats(x[rows]))
    return out


@dataclass
class _Fitted:
    """A candidate fitted on some cells: everything needed to score new ones."""

    candidate: AnnotatorCandidate
    classes: list[str]
    mean: np.ndarray
    sd: np.ndarray
    components: np.ndarray  # pcs x genes (reference-scaled space)
    pc_mean: np.ndarray
    coef: np.ndarray  # classes x features (logistic)
    intercept: np.ndarray
    train_features: np.ndarray  # cells x features (knn)
    train_codes: np.ndarray
    train_batches: np.ndarray  # batch code of each training cell (harmony)
    n_neighbors: int
    seed: int

    def features(self, x: np.ndarray, batches: np.ndarray | None) -> np.ndarray:
        if self.candidate.scaling == "batch":
            s = _scale_by_batch(x, batches if batches is not None else np.zeros(len(x)))
        else:
            s = _scale(x, self.mean, self.sd)
        if self.candidate.features in ("pca", "harmony"):
            return (s - self.pc_mean) @ self.components.T
        return s

    def log_proba(self, x: np.ndarray, batches: np.ndarray | None) -> np.ndarray:
        f = self.features(x, batches)
        if self.candidate.features == "harmony":
            query_codes = (
                np.zeros(len(x), dtype=np.int64)
                if batches is None
                else np.unique(batches, return_inverse=True)[1]
            )
            z = _harmony(
                np.vstack([self.train_features, f]),
                np.concatenate([self.train_batches, self.train_batches.max() + 1 + query_codes]),
                self.seed,
            )
            n = len(self.train_features)
            proba = _knn_proba(z[:n], self.train_codes, z[n:], len(self.classes), self.n_neighbors)
            return np.log(proba + _EPS)
        if self.candidate.classifier == "logistic":
            logp = _log_softmax(f @ self.coef.T + self.intercept)
            if not self.candidate.self_training:
                return logp
            sure = np.exp(logp.max(axis=1)) >= SELF_TRAINING_CONFIDENCE
            if not sure.any():
                return logp
            coef, intercept = _logistic(
                np.vstack([self.train_features, f[sure]]),
                np.concatenate([self.train_codes, logp[sure].argmax(axis=1)]),
                len(self.classes),
                self.candidate.c,
            )
            return _log_softmax(f @ coef.T + intercept)
        return np.log(
            _knn_proba(
                self.train_features, self.train_codes, f, len(self.classes), self.n_neighbors
            )
            + _EPS
        )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _logistic(
    f: np.ndarray, codes: np.ndarray, n_classes: int, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial L2 logistic regression; classes absent from ``codes`` get a -30 intercept."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = np.unique(codes)
    coef = np.zeros((n_classes, f.shape[1]))
    intercept = np.full(n_classes, -30.0)
    if len(present) == 1:
        intercept[present[0]] = 0.0
        return coef, intercept
    clf = LogisticRegression(C=c, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(f, codes)
    rows = clf.classes_.astype(np.int64)
    if len(rows) == 2:  # binary: sklearn keeps one row
        coef[rows[1]], intercept[rows[1]] = clf.coef_[0], clf.intercept_[0]
        intercept[rows[0]] = 0.0
    else:
        coef[rows], intercept[rows] = clf.coef_, clf.intercept_
    return coef, intercept


def _harmony(pcs: np.ndarray, batch_codes: np.ndarray, seed: int) -> np.ndarray:
    """Harmony-corrected components (harmonypy, default settings)."""
    import harmonypy

    meta = pd.DataFrame({"batch": batch_codes.astype(str)})
    ho = harmonypy.run_harmony(pcs, meta, "batch", random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    return z if z.shape[0] == len(pcs) else z.T


def _knn_proba(
    train: np.ndarray, codes: np.ndarray, query: np.ndarray, n_classes: int, k: int
) -> np.ndarray:
    """Inverse-distance-weighted vote of the ``k`` nearest training cells."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(train))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(train).kneighbors(query)
    w = 1.0 / np.maximum(dist, 1e-8)
    proba = np.zeros((len(query), n_classes))
    np.add.at(proba, (np.repeat(np.arange(len(query)), k), codes[idx].ravel()), w.ravel())
    return proba / proba.sum(axis=1, keepdims=True)


def _fit_candidate(
    cand: AnnotatorCandidate,
    x: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    batches: np.ndarray | None,
    *,
    n_pcs: int,
    n_neighbors: int,
    seed: int,
) -> _Fitted:
    from sklearn.decomposition import PCA

    mean, sd = _stats(x)
    empty = np.zeros((0, 0))
    fitted = _Fitted(
        cand, classes, mean, sd, empty, np.zeros(0), empty, np.zeros(0), empty,
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), n_neighbors, seed,
    )  # fmt: skip
    if cand.scaling == "batch":
        s = _scale_by_batch(x, batches if batches is not None else np.zeros(len(x)))
    else:
        s = _scale(x, mean, sd)
    if cand.features in ("pca", "harmony"):
        n = max(1, min(n_pcs, s.shape[0] - 1, s.shape[1] - 1))
        pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(s)
        fitted.components, fitted.pc_mean = pca.components_, pca.mean_
        f = pca.transform(s)
    else:
        f = s
    if cand.classifier == "logistic":
        fitted.coef, fitted.intercept = _logistic(f, codes, len(classes), cand.c)
        if cand.self_training:
            fitted.train_features, fitted.train_codes = f.astype(np.float32), codes.astype(np.int64)
    else:
        fitted.train_features, fitted.train_codes = f.astype(np.float32), codes.astype(np.int64)
    if cand.features == "harmony":
        fitted.train_features = f.astype(np.float64)
        fitted.train_batches = (
            np.zeros(len(x), dtype=np.int64)
            if batches is None
            else np.unique(batches, return_inverse=True)[1].astype(np.int64)
        )
    return fitted


def _folds(
    codes: np.ndarray, batches: np.ndarray | None, n_folds: int, seed: int
) -> tuple[list[np.ndarray], str]:
    """Held-out index sets: whole batches when there are several, else stratified by label."""
    if batches is not None and len(np.unique(batches)) >= 2:
        from sklearn.model_selection import GroupKFold

        k = min(n_folds, len(np.unique(batches)))
        splits = GroupKFold(n_splits=k).split(codes, groups=batches)
        return [test for _, test in splits], "held-out batches"
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(codes)
    k = int(min(n_folds, max(2, counts[counts > 0].min())))
    # labels with fewer cells than folds go wherever the splitter puts them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(codes, codes)
        return [test for _, test in splits], "label-stratified folds (one batch)"


def _fold_score(truth: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    acc = float((truth == pred).mean())
    f1 = float(f1_score(truth, pred, labels=np.unique(truth), average="macro", zero_division=0))
    return 0.5 * (acc + f1)


def _mean_knn_distance(train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(train))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(train).kneighbors(query)
    return dist.mean(axis=1)


def _class_knn_distance(
    train: np.ndarray, train_codes: np.ndarray, query: np.ndarray, query_codes: np.ndarray, k: int
) -> np.ndarray:
    """Mean distance of each query cell to its ``k`` nearest training cells of its (predicted) class."""
    from sklearn.neighbors import NearestNeighbors

    out = np.full(len(query), np.inf)
    for c in np.unique(query_codes):
        pool = train[train_codes == c]
        rows = query_codes == c
        if len(pool) == 0:
            continue
        dist, _ = NearestNeighbors(n_neighbors=min(k, len(pool))).fit(pool).kneighbors(query[rows])
        out[rows] = dist.mean(axis=1)
    return out


#: Unknown scores the annotator chooses among: the components each one averages
#: (as empirical p-values against held-out reference cells).
UNKNOWN_RULES: dict[str, tuple[str, ...]] = {
    "confidence": ("confidence",),
    "distance": ("distance",),
    "class-distance": ("class-distance",),
    "confidence+distance": ("confidence", "distance"),
    "confidence+class-distance": ("confidence", "class-distance"),
}
#: A type is left out in the unknown-rule simulation when the training part has this many cells of it.
_MIN_LEFT_OUT = 10


def _rule_scores(components: dict[str, np.ndarray], known: np.ndarray) -> dict[str, np.ndarray]:
    """Every rule's score, each component as an empirical p-value against the ``known`` cells."""
    ps = {k: _empirical_p(np.sort(v[known]), v) for k, v in components.items()}
    return {r: np.mean([ps[c] for c in parts], axis=0) for r, parts in UNKNOWN_RULES.items()}


def _simulate_unknown(
    cand: AnnotatorCandidate,
    x: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    batches: np.ndarray | None,
    folds: list[np.ndarray],
    *,
    n_pcs: int,
    n_neighbors: int,
    seed: int,
) -> dict[str, Any]:
    """Which unknown score flags a type the training cells lack? Reference cells only.

    For every held-out fold and every type with at least :data:`_MIN_LEFT_OUT`
    training cells, the chosen candidate is fit on the fold's training cells
    without that type; each rule scores the held-out cells, and the area
    under the ROC curve of the removed type's cells against the others is
    kept. Returns the mean AUROC per rule and the number of cases.
    """
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    aurocs: dict[str, list[float]] = {r: [] for r in UNKNOWN_RULES}
    for test in folds:
        train = np.setdiff1d(np.arange(len(codes)), test)
        mean, sd = _stats(x[train])
        s_tr, s_te = _scale(x[train], mean, sd), _scale(x[test], mean, sd)
        n = max(1, min(n_pcs, s_tr.shape[0] - 1, s_tr.shape[1] - 1))
        pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(s_tr)
        f_tr, f_te = pca.transform(s_tr), pca.transform(s_te)
        c_tr, c_te = codes[train], codes[test]
        for t in np.unique(c_tr):
            new = c_te == t
            keep = c_tr != t
            if (
                (c_tr == t).sum() < _MIN_LEFT_OUT
                or not 0 < new.sum() < len(new)
                or len(np.unique(c_tr[keep])) < 2
            ):
                continue
            b_tr = None if batches is None else batches[train][keep]
            b_te = None if batches is None else batches[test]
            fitted = _fit_candidate(
                cand, x[train][keep], c_tr[keep], classes, b_tr,
                n_pcs=n_pcs, n_neighbors=n_neighbors, seed=seed,
            )  # fmt: skip
            logp = fitted.log_proba(x[test], b_te)
            comps = {
                "confidence": -logp.max(axis=1),
                "distance": _mean_knn_distance(f_tr[keep], f_te, n_neighbors),
                "class-distance": _class_knn_distance(
                    f_tr[keep], c_tr[keep], f_te, logp.argmax(axis=1), n_neighbors
                ),
            }
            for r, score in _rule_scores(comps, ~new).items():
                aurocs[r].append(float(roc_auc_score(new, score)))
    n_cases = len(aurocs["confidence"])
    return {
        "auroc": {r: float(np.mean(v)) if v else float("nan") for r, v in aurocs.items()},
        "n_cases": n_cases,
    }


def _mean_log_proba(logps: Sequence[np.ndarray]) -> np.ndarray:
    """Log of the mean probability of several classifiers (one: unchanged)."""
    if len(logps) == 1:
        return logps[0]
    stacked = np.stack(logps)
    top = stacked.max(axis=0)
    return top + np.log(np.exp(stacked - top).mean(axis=0))


def _choose_ensemble(
    cands: Sequence[AnnotatorCandidate],
    chosen: int,
    mean: np.ndarray,
    held_logp: dict[str, np.ndarray],
    codes: np.ndarray,
    folds: list[np.ndarray],
) -> tuple[list[AnnotatorCandidate], dict[str, Any]]:
    """The members of the answer: the picked candidate alone or the top-k by held-out score.

    Every size of :data:`ENSEMBLE_SIZES` is scored like a candidate (mean over
    the held-out folds of ``(accuracy + macro-F1) / 2``, from the members'
    held-out probabilities); the best size wins, the larger one on a tie.
    """
    ranked = [cands[i] for i in np.argsort(-mean, kind="stable")]
    table: dict[str, Any] = {}
    best_members: list[AnnotatorCandidate] = [cands[chosen]]
    best_score = -np.inf
    for size in ENSEMBLE_SIZES:
        k = len(cands) if size is None else size
        if k > len(cands) or (size is not None and size > 1 and k == len(cands)):
            continue
        members = [cands[chosen]] if k == 1 else ranked[:k]
        logp = _mean_log_proba([held_logp[m.name] for m in members])
        per_fold = [_fold_score(codes[t], logp[t].argmax(axis=1)) for t in folds]
        score = float(np.mean(per_fold))
        table[str(size or "all")] = {
            "members": [m.name for m in members], "score": score, "per_fold": per_fold,
        }  # fmt: skip
        if score >= best_score:
            best_members, best_score = members, score
    return best_members, table


def _class_thresholds(
    held_score: np.ndarray,
    predicted: np.ndarray,
    n_classes: int,
    false_alarm: float,
    overall: float,
) -> np.ndarray:
    """The unknown threshold of each predicted type: never below ``overall``.

    A type whose held-out cells score high (a rare or spread-out type, far
    from most reference cells) gets its own ``1 - false_alarm`` quantile, or
    its highest held-out score when it has fewer than ``1 / false_alarm``
    held-out cells, so it is not flagged wholesale; other types keep
    ``overall``.
    """
    out = np.full(n_classes, overall)
    if false_alarm <= 0:
        return out
    for c in range(n_classes):
        scores = held_score[predicted == c]
        if len(scores) == 0:
            continue
        own = (
            float(np.quantile(scores, 1.0 - false_alarm))
            if len(scores) * false_alarm >= 1
            else float(scores.max())
        )
        out[c] = max(overall, own)
    return out


def _empirical_p(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of ``reference`` scores below each value (0 = most typical, 1 = beyond all)."""
    ref = np.sort(reference)
    return np.searchsorted(ref, values, side="left") / max(len(ref), 1)


# ----------------------------------------------------------------------------- the annotator
# Registered through the "aivc.instruments" entry point group (pyproject.toml), like the decoder.
@register_instrument(
    "aivc-annotator",
    kind="decoder",
    description=(
        "Cell-type label transfer that holds logistic, PCA-kNN, Harmony-kNN and PCA-logistic classifiers and "
        "answers with the one or the top-k mean that predicts held-out reference batches best; calibrated "
        "probabilities and an unknown answer"
    ),
)
class CellAnnotator(Instrument):
    """Transfer cell-type labels from a reference to a query, with calibrated probabilities.

    Parameters
    ----------
    label_key
        ``obs`` column with the reference's cell types; required by :meth:`fit`
        (no default column is assumed).
    batch_key
        ``obs`` column with the batch (donor, technology); optional. Folds of
        whole batches make the choice mimic a new batch; a query with the
        same column is scaled per batch by the ``"batch"`` candidates.
    candidates
        Names from :data:`CANDIDATES` to choose among (default: all).
    n_top_genes, n_pcs, n_neighbors
        Gene panel size, principal components and neighbours.
    n_folds
        Most held-out folds.
    input
        ``"auto"``, ``"counts"`` or ``"log-normalized"`` (see :func:`aivc.data.log_expression`).
    library_size_key
        ``obs`` column with library sizes of log-normalised input (counts are then rebuilt).
    false_alarm
        Share of held-out reference cells of known types allowed to be answered unknown.
    unknown_label
        The answer for cells of no reference type.
    seed
        Seed of the folds and PCA.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"cell-type", "calibrated", "unknown"})

    def __init__(
        self,
        *,
        label_key: str | None = None,
        batch_key: str | None = None,
        candidates: tuple[str, ...] | None = None,
        n_top_genes: int = 2000,
        n_pcs: int = 50,
        n_neighbors: int = 15,
        n_folds: int = 5,
        input: str = "auto",
        library_size_key: str | None = None,
        false_alarm: float = 0.02,
        unknown_label: str = "unknown",
        seed: int = 0,
    ) -> None:
        self.label_key = label_key
        self.batch_key = batch_key
        self.candidates = None if candidates is None else tuple(candidates)
        self.n_top_genes = n_top_genes
        self.n_pcs = n_pcs
        self.n_neighbors = n_neighbors
        self.n_folds = n_folds
        self.input = input
        self.library_size_key = library_size_key
        self.false_alarm = false_alarm
        self.unknown_label = unknown_label
        self.seed = seed

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> list[AnnotatorCandidate]:
        names = (
            list(self.candidates) if self.candidates is not None else [c.name for c in CANDIDATES]
        )
        unknown = [n for n in names if n not in _BY_NAME]
        if unknown or not names:
            msg = f"Unknown annotator candidate(s) {unknown or names}; expected some of {list(_BY_NAME)}."
            raise ValueError(msg)
        import importlib.util

        needs_harmony = [n for n in names if _BY_NAME[n].features == "harmony"]
        if needs_harmony and importlib.util.find_spec("harmonypy") is None:
            if self.candidates is not None:
                msg = (
                    f"Candidate(s) {needs_harmony} need harmonypy; install it "
                    "(pip install 'aivc[cells]') or leave them out."
                )
                raise ImportError(msg)
            logger.warning("harmonypy is not installed: the annotator leaves out %s", needs_harmony)
            names = [n for n in names if n not in needs_harmony]
        if self.input not in INPUT_MODES:
            msg = f"input must be one of {list(INPUT_MODES)}; got {self.input!r}."
            raise ValueError(msg)
        if not 0.0 <= self.false_alarm < 1.0:
            msg = f"false_alarm must be in [0, 1); got {self.false_alarm!r}."
            raise ValueError(msg)
        return [_BY_NAME[n] for n in names]

    def _expression(
        self, adata: AnnData, genes: Sequence[str] | pd.Index, what: str
    ) -> tuple[np.ndarray, float, str]:
        """Log-expression over ``genes``, the share of them missing, and which input was read.

        Genes the data lacks are read as the reference's mean (0 after scaling).
        """
        names = pd.Index([str(g) for g in adata.var_names])
        present = pd.Index([str(g) for g in genes]).isin(names)
        if present.sum() == 0:
            msg = (
                f"The {what} measures none of the annotator's {len(genes)} genes (e.g. "
                f"{list(genes)[:3]}); check the gene symbols and species."
            )
            raise DataValidationError(msg)
        lib_key = self.library_size_key if self.library_size_key in adata.obs else None
        x_present, info = log_expression(
            adata,
            genes=[g for g, p in zip(genes, present, strict=True) if p],
            input=self.input,  # type: ignore[arg-type]
            library_size_key=lib_key,
        )
        if present.all():
            return x_present, 0.0, info.describe()
        x = np.tile(self.mean_, (adata.n_obs, 1)).astype(np.float64)
        x[:, present] = x_present
        return x, float(1.0 - present.mean()), info.describe()

    def _batches(self, adata: AnnData) -> np.ndarray | None:
        if self.batch_key is None or self.batch_key not in adata.obs:
            return None
        return adata.obs[self.batch_key].astype(str).to_numpy()

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        adata: AnnData,
        *,
        genes: Sequence[str] | None = None,
        species: str = "human",
    ) -> Self:
        """Choose and fit the classifier on the labelled reference ``adata``.

        Parameters
        ----------
        adata
            Reference cells: raw counts or log-normalised values in ``X``, the
            cell type in ``obs[label_key]``.
        genes
            Restrict the panel to these genes (e.g. those the query measures).
        species
            The reference's species (``"human"`` or ``"mouse"``); a query of the
            other species is mapped through one-to-one orthologs.
        """
        cands = self._check_params()
        if self.label_key is None:
            msg = (
                "Name the reference's cell-type column: CellAnnotator(label_key=<obs column>); "
                f"the reference has {list(adata.obs.columns)}."
            )
            raise ValueError(msg)
        if self.label_key not in adata.obs:
            msg = (
                f"The reference has no obs[{self.label_key!r}] with cell types (columns: "
                f"{list(adata.obs.columns)}); pass label_key=<the cell-type column>."
            )
            raise DataValidationError(msg)
        if self.batch_key is not None and self.batch_key not in adata.obs:
            msg = (
                f"The reference has no obs[{self.batch_key!r}] (columns: {list(adata.obs.columns)}); "
                "pass batch_key=None when it has no batch column."
            )
            raise DataValidationError(msg)
        labels = adata.obs[self.label_key]
        if labels.isna().any():
            msg = f"obs[{self.label_key!r}] has {int(labels.isna().sum())} missing cell types; drop those cells first."
            raise DataValidationError(msg)
        y = labels.astype(str).to_numpy()
        classes = sorted(set(y.tolist()))
        if len(classes) < 2:
            msg = f"The reference has {len(classes)} cell type; label transfer needs at least 2."
            raise DataValidationError(msg)
        codes = np.searchsorted(classes, y)
        all_genes = [str(g) for g in adata.var_names]
        if genes is not None:
            keep = set(map(str, genes))
            all_genes = [g for g in all_genes if g in keep]
        x_all, _, self.input_ = self._expression(adata, all_genes, "reference")
        panel = reference_panel(x_all, all_genes, n_top_genes=self.n_top_genes)
        pos = pd.Index(all_genes).get_indexer(panel)
        x = x_all[:, pos]
        del x_all
        batches = self._batches(adata)

        folds, fold_kind = _folds(codes, batches, self.n_folds, self.seed)
        scores = np.zeros((len(cands), len(folds)))
        held_logp: dict[str, np.ndarray] = {}
        for ci, cand in enumerate(cands):
            logp = np.zeros((len(y), len(classes)))
            for fi, test in enumerate(folds):
                train = np.setdiff1d(np.arange(len(y)), test)
                b_tr = None if batches is None else batches[train]
                b_te = None if batches is None else batches[test]
                f = _fit_candidate(
                    cand, x[train], codes[train], classes, b_tr,
                    n_pcs=self.n_pcs, n_neighbors=self.n_neighbors, seed=self.seed,
                )  # fmt: skip
                logp[test] = f.log_proba(x[test], b_te)
                scores[ci, fi] = _fold_score(codes[test], logp[test].argmax(axis=1))
            held_logp[cand.name] = logp
        mean = scores.mean(axis=1)
        best = int(np.argmax(mean))
        chosen = best
        for ci in range(best):
            diff = scores[best] - scores[ci]
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            if diff.mean() <= se:
                chosen = ci
                break
        cand = cands[chosen]
        members, ensembles = _choose_ensemble(cands, chosen, mean, held_logp, codes, folds)
        logp = _mean_log_proba([held_logp[m.name] for m in members])
        temperature = fit_temperature(logp, codes)
        proba = softmax(logp, temperature)

        # the final classifier, and the unknown score's held-out reference distribution
        self.genes_ = [str(g) for g in panel]
        self.classes_ = classes
        self.mean_, self.sd_ = _stats(x)
        self.species_ = species
        self.fitted_models_ = [
            _fit_candidate(
                m,
                x,
                codes,
                classes,
                batches,
                n_pcs=self.n_pcs,
                n_neighbors=self.n_neighbors,
                seed=self.seed,
            )
            for m in members
        ]
        self.temperature_ = temperature
        self._fit_novelty_space(x)
        self.ref_codes_ = codes.astype(np.int64)
        simulation = _simulate_unknown(
            cand, x, codes, classes, batches, folds,
            n_pcs=self.n_pcs, n_neighbors=self.n_neighbors, seed=self.seed,
        )  # fmt: skip
        finite = {r: a for r, a in simulation["auroc"].items() if np.isfinite(a)}
        # with no case to learn from, the plain confidence rule
        self.unknown_rule_ = max(finite, key=finite.__getitem__) if finite else "confidence"
        held = {"confidence": -proba.max(axis=1), "distance": np.zeros(len(y)),
                "class-distance": np.zeros(len(y))}  # fmt: skip
        predicted = proba.argmax(axis=1)
        for test in folds:
            train = np.setdiff1d(np.arange(len(y)), test)
            held["distance"][test] = _mean_knn_distance(
                self.ref_pcs_[train], self.ref_pcs_[test], self.n_neighbors
            )
            held["class-distance"][test] = _class_knn_distance(
                self.ref_pcs_[train],
                codes[train],
                self.ref_pcs_[test],
                predicted[test],
                self.n_neighbors,
            )
        self.held_components_ = {k: np.sort(v) for k, v in held.items()}
        held_score = self._unknown_score(held)
        self.unknown_threshold_ = (
            float(np.quantile(held_score, 1.0 - self.false_alarm))
            if self.false_alarm > 0
            else float("inf")
        )
        self.class_thresholds_ = _class_thresholds(
            held_score, predicted, len(classes), self.false_alarm, self.unknown_threshold_
        )
        self.selection_ = {
            "chosen": cand.name,
            "folds": fold_kind,
            "n_folds": len(folds),
            "score": "mean over held-out folds of (accuracy + macro-F1) / 2",
            "candidates": {
                c.name: {"score": float(mean[i]), "per_fold": scores[i].tolist()}
                for i, c in enumerate(cands)
            },
            "best_by_score": cands[best].name,
            "members": [m.name for m in members],
            "ensembles": ensembles,
            "temperature": temperature,
            "ece_held_out_before": expected_calibration_error(np.exp(logp), codes),
            "ece_held_out_after": expected_calibration_error(proba, codes),
            "input": self.input_,
            "n_genes": len(self.genes_),
            "unknown_rule": self.unknown_rule_,
            "unknown_rule_auroc": simulation["auroc"],
            "unknown_rule_cases": simulation["n_cases"],
        }
        logger.info(
            "annotator: chose %s (%s; held-out score %.3f, best %s %.3f); answers with %s",
            cand.name, fold_kind, mean[chosen], cands[best].name, mean[best],
            " + ".join(m.name for m in members),
        )  # fmt: skip
        self.fitted_ = True
        return self

    def _fit_novelty_space(self, x: np.ndarray) -> None:
        from sklearn.decomposition import PCA

        s = _scale(x, self.mean_, self.sd_)
        n = max(1, min(self.n_pcs, s.shape[0] - 1, s.shape[1] - 1))
        pca = PCA(n_components=n, svd_solver="randomized", random_state=self.seed).fit(s)
        self.novelty_components_ = np.ascontiguousarray(pca.components_)
        self.novelty_mean_ = np.ascontiguousarray(pca.mean_)
        self.ref_pcs_ = pca.transform(s).astype(np.float32)

    def _unknown_score(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """The chosen rule's score: the mean of its components' held-out p-values."""
        parts = UNKNOWN_RULES[self.unknown_rule_]
        return np.mean(
            [_empirical_p(self.held_components_[c], components[c]) for c in parts], axis=0
        )

    # ------------------------------------------------------------------ predict
    def _query_matrix(
        self, adata: AnnData, species: str | None
    ) -> tuple[np.ndarray, np.ndarray | None, float, str]:
        self._check_fitted()
        query = adata
        species = species or self.species_
        if species != self.species_:
            from aivc.genes import map_orthologs

            names = pd.Index([str(g) for g in adata.var_names])
            mapped = map_orthologs(
                list(names), from_species=species, to_species=self.species_, many="drop"
            )
            keep = np.flatnonzero(names.isin(list(mapped.mapping)) & ~names.duplicated())
            query = adata[:, keep].copy()
            query.var_names = pd.Index([mapped.mapping[g] for g in names[keep]])
        x, missing, kind = self._expression(query, self.genes_, "query")
        if missing > 0.5:
            logger.warning(
                "The query lacks %.0f%% of the annotator's genes; they are read as the reference mean.",
                100 * missing,
            )
        return x, self._batches(adata), missing, kind

    def predict_proba(self, adata: AnnData, *, species: str | None = None) -> np.ndarray:
        """Calibrated cells x ``classes_`` probabilities."""
        x, batches, _, _ = self._query_matrix(adata, species)
        return softmax(self._log_proba(x, batches), self.temperature_)

    def _log_proba(self, x: np.ndarray, batches: np.ndarray | None) -> np.ndarray:
        return _mean_log_proba([f.log_proba(x, batches) for f in self.fitted_models_])

    def predict_table(self, adata: AnnData, *, species: str | None = None) -> pd.DataFrame:
        """One row per cell: ``label`` (or ``unknown_label``), ``label_forced``, ``confidence``, ``unknown_score``.

        ``attrs`` carries ``input`` (which input was read), ``missing_genes``
        (share of the panel the query lacks) and the chosen candidate.
        """
        return self.answer(adata, species=species)[0]

    def answer(
        self, adata: AnnData, *, species: str | None = None
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """:meth:`predict_table` and :meth:`predict_proba` from one pass over the query.

        (Self-training and Harmony candidates refit on the query, so asking for both
        separately would do that work twice.)
        """
        x, batches, missing, kind = self._query_matrix(adata, species)
        proba = softmax(self._log_proba(x, batches), self.temperature_)
        pcs = (_scale(x, self.mean_, self.sd_) - self.novelty_mean_) @ self.novelty_components_.T
        parts = UNKNOWN_RULES[self.unknown_rule_]
        components = {"confidence": -proba.max(axis=1)}
        if "distance" in parts:
            components["distance"] = _mean_knn_distance(self.ref_pcs_, pcs, self.n_neighbors)
        if "class-distance" in parts:
            components["class-distance"] = _class_knn_distance(
                self.ref_pcs_, self.ref_codes_, pcs, proba.argmax(axis=1), self.n_neighbors
            )
        score = self._unknown_score(components)
        forced = np.asarray(self.classes_, dtype=object)[proba.argmax(axis=1)]
        unknown = score > self.class_thresholds_[proba.argmax(axis=1)]
        label = np.where(unknown, self.unknown_label, forced)
        table = pd.DataFrame(
            {
                "label": label,
                "label_forced": forced,
                "confidence": proba.max(axis=1),
                "unknown_score": score,
                "is_unknown": unknown,
            },
            index=pd.Index([str(i) for i in adata.obs_names]),
        )
        table.attrs.update(input=kind, missing_genes=missing, chosen=self.selection_["chosen"])
        return table, proba

    def predict(self, adata: AnnData, *, species: str | None = None) -> np.ndarray:
        """The answered label of every cell (``unknown_label`` for cells of no reference type)."""
        return self.predict_table(adata, species=species)["label"].to_numpy(dtype=object)

    def transform(self, adata: AnnData, *, species: str | None = None) -> np.ndarray:
        """The cells in the reference's principal components (the annotator's representation)."""
        x, _, _, _ = self._query_matrix(adata, species)
        return (_scale(x, self.mean_, self.sd_) - self.novelty_mean_) @ self.novelty_components_.T

    def annotate(
        self, adata: AnnData, *, key_added: str = "aivc_celltype", species: str | None = None
    ) -> AnnData:
        """Write ``obs[key_added]``, ``obs[key_added + '_confidence']``, ``obs[key_added + '_unknown_score']``,
        ``obsm[key_added + '_proba']`` and ``uns[key_added]`` (classes, chosen candidate, input)."""
        table, proba = self.answer(adata, species=species)
        adata.obs[key_added] = table["label"].to_numpy()
        adata.obs[key_added + "_confidence"] = table["confidence"].to_numpy()
        adata.obs[key_added + "_unknown_score"] = table["unknown_score"].to_numpy()
        adata.obsm[key_added + "_proba"] = proba
        adata.uns[key_added] = {
            "classes": list(self.classes_),
            "chosen": self.selection_["chosen"],
            "input": table.attrs["input"],
        }
        return adata

    # ------------------------------------------------------------------ persistence
    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "mean", "sd", "components", "pc_mean", "coef", "intercept", "train_features", "train_codes",
        "train_batches",
    )  # fmt: skip

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            f"model{i}_{k}": np.asarray(getattr(f, k))
            for i, f in enumerate(self.fitted_models_)
            for k in self._ARRAYS
        }
        arrays.update(
            mean=self.mean_, sd=self.sd_, novelty_components=self.novelty_components_,
            novelty_mean=self.novelty_mean_, ref_pcs=self.ref_pcs_, ref_codes=self.ref_codes_,
            class_thresholds=self.class_thresholds_,
            **{f"held_{k}": v for k, v in self.held_components_.items()},
        )  # fmt: skip
        meta = {
            "genes": self.genes_,
            "classes": self.classes_,
            "species": self.species_,
            "members": [asdict(f.candidate) for f in self.fitted_models_],
            "temperature": self.temperature_,
            "unknown_threshold": self.unknown_threshold_,
            "unknown_rule": self.unknown_rule_,
            "selection": self.selection_,
            "input": self.input_,
        }
        return arrays, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.genes_ = [str(g) for g in meta["genes"]]
        self.classes_ = [str(c) for c in meta["classes"]]
        self.species_ = str(meta["species"])
        self.temperature_ = float(meta["temperature"])
        self.unknown_threshold_ = float(meta["unknown_threshold"])
        self.selection_ = dict(meta["selection"])
        self.input_ = str(meta["input"])
        self.mean_, self.sd_ = np.asarray(arrays["mean"]), np.asarray(arrays["sd"])
        self.novelty_components_ = np.asarray(arrays["novelty_components"])
        self.novelty_mean_ = np.asarray(arrays["novelty_mean"])
        self.ref_pcs_ = np.asarray(arrays["ref_pcs"])
        self.ref_codes_ = np.asarray(arrays["ref_codes"])
        self.unknown_rule_ = str(meta["unknown_rule"])
        self.class_thresholds_ = (
            np.asarray(arrays["class_thresholds"])
            if "class_thresholds" in arrays
            else np.full(len(self.classes_), self.unknown_threshold_)
        )
        self.held_components_ = {
            k: np.asarray(arrays[f"held_{k}"]) for k in ("confidence", "distance", "class-distance")
        }
        # files written before ensembles hold one candidate under "model_"
        members = meta["members"] if "members" in meta else [meta["candidate"]]
        prefixes = [f"model{i}_" for i in range(len(members))] if "members" in meta else ["model_"]
        self.fitted_models_ = [
            _Fitted(
                candidate=AnnotatorCandidate(**member),
                classes=self.classes_,
                n_neighbors=self.n_neighbors,
                seed=self.seed,
                **{k: np.asarray(arrays[prefix + k]) for k in self._ARRAYS},
            )
            for prefix, member in zip(prefixes, members, strict=True)
        ]
