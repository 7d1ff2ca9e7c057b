"""Cell-type decoder: calibrated cell-type probabilities with an "unknown" answer.

The decoder reads a cell representation (cells x d, from ``obsm``) and answers a
cell-type label with a calibrated probability. It is trained on a reference
(representation + labels) and applied to query cells without retraining.

How it works
------------
1. The reference is split, stratified by label and seeded, into a fitting part
   and a calibration part (``calibration_fraction`` of every label with at least
   ``5`` cells).
2. A classifier (multinomial logistic regression, or a one-hidden-layer MLP) is
   fit on the standardised representation of the fitting part.
3. Temperature scaling: one temperature ``T`` is chosen to minimise the negative
   log-likelihood of the calibration part; probabilities are
   ``softmax(logits / T)``. The expected calibration error (15 bins, top label)
   of the calibration part before and after scaling is kept in
   ``calibration_``.
4. Novelty: the novelty score of a cell is its mean distance (cosine by
   default, or Euclidean) to its ``n_neighbors`` nearest cells of the fitting
   part. The threshold for cells predicted as label ``c`` is the
   ``novelty_quantile`` quantile of the scores of held-out calibration cells of
   label ``c`` (reference cells the neighbour index has not seen); labels with
   fewer than 10 held-out cells use the quantile over all held-out cells.
5. The "unknown" rule (``unknown_rule``):

   - ``"novelty"``: unknown when the novelty score is above the threshold;
   - ``"confidence"``: unknown when the calibrated top probability is below
     ``min_confidence``;
   - ``"either"`` (default): unknown when either holds;
   - ``"both"``: unknown only when both hold.

   Unknown cells get the label ``unknown_label`` (``"unknown"`` by default).
   With ``adapt_to_query=True`` the novelty thresholds are multiplied by the
   query's median novelty relative to held-out reference cells of the same
   predicted label (when above 1), for queries shifted as a whole (another
   donor, technology or species).

The classifier stays the one fit on the fitting part (it is not refit on the
whole reference), so the temperature matches it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd

from aivc.cells._calibration import expected_calibration_error, fit_temperature, softmax
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CellTypeDecoder", "calibration_split"]

logger = logging.getLogger(__name__)

_CLASSIFIERS = ("logistic", "mlp")
_RULES = ("novelty", "confidence", "either", "both")
_MIN_CELLS_FOR_CALIBRATION = 5
_MIN_CELLS_PER_THRESHOLD = 10
_MIN_CELLS_FOR_SHIFT = 50


def calibration_split(
    labels: np.ndarray, *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of cell indices into (fitting, calibration) parts.

    Every label with at least 5 cells gives ``round(fraction * n)`` (at least
    one) of its cells to the calibration part; rarer labels stay in the fitting
    part so the classifier still sees them.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit_idx, cal_idx = [], []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(idx.size)]
        n_cal = 0
        if idx.size >= _MIN_CELLS_FOR_CALIBRATION and fraction > 0:
            n_cal = min(idx.size - 1, max(1, round(fraction * idx.size)))
        cal_idx.append(idx[:n_cal])
        fit_idx.append(idx[n_cal:])
    return np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(cal_idx))


# The registry imports this module through its entry point in the "aivc.instruments" group
# (pyproject.toml); aivc.instruments never imports aivc.cells itself.
@register_instrument(
    "cell-type",
    kind="decoder",
    description=(
        "Cell-type decoder on a cell representation: calibrated probabilities (temperature "
        "scaling on held-out reference cells) and an 'unknown' answer for cells unlike the reference."
    ),
)
class CellTypeDecoder(Instrument):
    """Calibrated cell-type classifier with an "unknown" answer.

    Parameters
    ----------
    use_rep
        ``obsm`` key of the representation (cells x d). ``None`` reads ``X``.
    label_key
        ``obs`` column with the reference cell-type labels.
    classifier
        ``"logistic"`` (multinomial logistic regression, L2) or ``"mlp"``
        (one hidden layer of ``hidden_size`` ReLU units).
    hidden_size
        Hidden units of the MLP.
    regularization
        L2 strength: ``1/C`` of the logistic regression, ``alpha`` of the MLP.
    class_weight
        ``"balanced"`` weighs labels inversely to their frequency (logistic
        regression only); ``None`` weighs all cells equally.
    calibration_fraction
        Share of each reference label held out for temperature scaling and the
        novelty threshold.
    n_neighbors
        Reference neighbours averaged in the novelty score.
    novelty_metric
        Distance of the novelty score: ``"cosine"`` (1 - cosine similarity of
        the representations) or ``"euclidean"``.
    novelty_quantile
        Quantile of held-out reference novelty scores used as the threshold
        (per predicted label when that label has at least 10 held-out cells).
    adapt_to_query
        Correct the novelty thresholds for a shift that affects the whole
        query (another donor, technology or species): when the cells passed
        to one prediction call (at least 50) have a median novelty above that
        of held-out reference cells of the same predicted label, every
        threshold is raised by that ratio. This assumes most query cells are
        of reference types; their answers then depend on the other cells
        predicted with them.
    min_confidence
        Calibrated top probability below which a cell counts as unsure.
    unknown_rule
        How novelty and confidence combine into "unknown" (see the module docs):
        ``"novelty"``, ``"confidence"``, ``"either"`` or ``"both"``.
    unknown_label
        The label answered for unknown cells.
    max_iter
        Iterations of the optimiser.
    seed
        Seed of the calibration split and of the MLP's initialisation.

    Attributes
    ----------
    classes_
        Reference labels (columns of :meth:`predict_proba`).
    temperature_
        Fitted temperature.
    novelty_threshold_
        Per label (``classes_`` order): novelty score above which a cell
        predicted as that label is novel.
    calibration_
        ``ece_before``, ``ece_after``, ``nll_before``, ``nll_after`` and
        ``n_cells`` of the calibration part.
    n_features_in_
        Width of the representation.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"cell-type", "calibrated", "unknown"})

    def __init__(
        self,
        *,
        use_rep: str | None = "X_aivc",
        label_key: str = "cell_type",
        classifier: Literal["logistic", "mlp"] = "logistic",
        hidden_size: int = 64,
        regularization: float = 1.0,
        class_weight: Literal["balanced"] | None = "balanced",
        calibration_fraction: float = 0.2,
        n_neighbors: int = 10,
        novelty_metric: Literal["cosine", "euclidean"] = "cosine",
        novelty_quantile: float = 0.99,
        adapt_to_query: bool = False,
        min_confidence: float = 0.5,
        unknown_rule: Literal["novelty", "confidence", "either", "both"] = "either",
        unknown_label: str = "unknown",
        max_iter: int = 500,
        seed: int = 0,
    ) -> None:
        self.use_rep = use_rep
        self.label_key = label_key
        self.classifier = classifier
        self.hidden_size = hidden_size
        self.regularization = regularization
        self.class_weight = class_weight
        self.calibration_fraction = calibration_fraction
        self.n_neighbors = n_neighbors
        self.novelty_metric = novelty_metric
        self.novelty_quantile = novelty_quantile
        self.adapt_to_query = adapt_to_query
        self.min_confidence = min_confidence
        self.unknown_rule = unknown_rule
        self.unknown_label = unknown_label
        self.max_iter = max_iter
        self.seed = seed

    # validation -------------------------------------------------------------------------
    def _check_params(self) -> None:
        def bad(name: str, expected: str) -> None:
            msg = f"The {name!r} parameter of CellTypeDecoder must be {expected}. Got {getattr(self, name)!r} instead."
            raise ValueError(msg)

        if self.classifier not in _CLASSIFIERS:
            bad("classifier", f"one of {list(_CLASSIFIERS)}")
        if self.unknown_rule not in _RULES:
            bad("unknown_rule", f"one of {list(_RULES)}")
        if self.novelty_metric not in ("cosine", "euclidean"):
            bad("novelty_metric", "'cosine' or 'euclidean'")
        if self.class_weight not in ("balanced", None):
            bad("class_weight", "'balanced' or None")
        if not 0.0 <= float(self.calibration_fraction) < 1.0:
            bad("calibration_fraction", "a float in [0, 1)")
        if not 0.0 < float(self.novelty_quantile) <= 1.0:
            bad("novelty_quantile", "a float in (0, 1]")
        if not isinstance(self.adapt_to_query, bool):
            bad("adapt_to_query", "True or False")
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            bad("min_confidence", "a float in [0, 1]")
        if not isinstance(self.n_neighbors, int) or self.n_neighbors < 1:
            bad("n_neighbors", "a positive integer")
        if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            bad("hidden_size", "a positive integer")
        if not float(self.regularization) > 0:
            bad("regularization", "a positive float")
        if not isinstance(self.unknown_label, str) or not self.unknown_label:
            bad("unknown_label", "a non-empty string")

    def _embedding(self, data: AnnData | np.ndarray, *, fitted: bool) -> np.ndarray:
        """The representation as a float64 array, validated."""
        if isinstance(data, np.ndarray):
            z = data
            where = "the array"
        else:
            if not hasattr(data, "obsm"):
                msg = f"Expected an AnnData or a numpy array of cells x d. Got {type(data).__name__} instead."
                raise TypeError(msg)
            if self.use_rep is None:
                z = data.X
                where = "X"
            else:
                if self.use_rep not in data.obsm:
                    msg = (
                        f"obsm[{self.use_rep!r}] is missing (available: {sorted(data.obsm)}); compute the "
                        "representation first, e.g. with CellEncoder.transform or sc.pp.pca, or set use_rep."
                    )
                    raise DataValidationError(msg)
                z = data.obsm[self.use_rep]
                where = f"obsm[{self.use_rep!r}]"
            if hasattr(z, "toarray"):
                z = z.toarray()
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2:
            msg = f"The representation in {where} must be 2-d (cells x d). Got shape {z.shape} instead."
            raise DataValidationError(msg)
        if not np.isfinite(z).all():
            bad_rows = int((~np.isfinite(z)).any(axis=1).sum())
            msg = f"The representation in {where} has NaN or infinite values in {bad_rows} cells; remove or impute them first."
            raise DataValidationError(msg)
        if fitted and z.shape[1] != self.n_features_in_:
            msg = (
                f"The representation in {where} has {z.shape[1]} dimensions; the decoder was fit on "
                f"{self.n_features_in_}. Use the same representation (and encoder) as the reference."
            )
            raise DataValidationError(msg)
        return z

    def _labels(self, adata: AnnData | np.ndarray, labels: Any) -> np.ndarray:
        if labels is None:
            if isinstance(adata, np.ndarray) or not hasattr(adata, "obs"):
                msg = "Pass labels=... when fitting on a plain array."
                raise DataValidationError(msg)
            if self.label_key not in adata.obs:
                msg = (
                    f"obs[{self.label_key!r}] with the reference cell-type labels is missing "
                    f"(obs columns: {list(adata.obs.columns)}); set label_key."
                )
                raise DataValidationError(msg)
            labels = adata.obs[self.label_key]
        ser = pd.Series(np.asarray(labels, dtype=object))
        missing = ser.isna() | (ser.astype(str).str.strip() == "")
        if missing.any():
            msg = (
                f"{int(missing.sum())} reference cells have no cell-type label; drop them or fill "
                f"obs[{self.label_key!r}] before fitting."
            )
            raise DataValidationError(msg)
        return ser.astype(str).to_numpy()

    # fitting ----------------------------------------------------------------------------
    def fit(self, adata: AnnData | np.ndarray, *, labels: Any = None) -> Self:
        """Fit on a labelled reference.

        Parameters
        ----------
        adata
            Reference cells with the representation in ``obsm[use_rep]`` and labels
            in ``obs[label_key]`` (or a cells x d array with ``labels``).
        labels
            Labels overriding ``obs[label_key]``.
        """
        from sklearn.neighbors import NearestNeighbors

        self._check_params()
        z = self._embedding(adata, fitted=False)
        y_str = self._labels(adata, labels)
        if len(y_str) != z.shape[0]:
            msg = f"Got {z.shape[0]} cells but {len(y_str)} labels."
            raise DataValidationError(msg)
        classes = np.array(sorted(set(y_str.tolist())), dtype=object)
        if classes.size < 2:
            msg = f"The reference needs at least 2 cell types; got {list(classes)}."
            raise DataValidationError(msg)
        if self.unknown_label in set(classes.tolist()):
            msg = f"unknown_label {self.unknown_label!r} is also a reference label; choose another unknown_label."
            raise DataValidationError(msg)
        y = np.searchsorted(classes.astype(str), y_str)
        fit_idx, cal_idx = calibration_split(
            y, fraction=float(self.calibration_fraction), seed=self.seed
        )
        mean = z[fit_idx].mean(axis=0)
        scale = z[fit_idx].std(axis=0)
        scale[scale < 1e-12] = 1.0
        zs = (z - mean) / scale
        self.classes_ = [str(c) for c in classes]
        self.n_features_in_ = int(z.shape[1])
        self.mean_, self.scale_ = mean, scale
        self.weights_ = self._fit_classifier(zs[fit_idx], y[fit_idx], classes.size)

        # temperature scaling on the held-out reference cells
        if cal_idx.size:
            logits = self._logits_std(zs[cal_idx])
            t = fit_temperature(logits, y[cal_idx])
            p0, p1 = softmax(logits), softmax(logits, t)
            rows = np.arange(cal_idx.size)
            self.calibration_ = {
                "n_cells": int(cal_idx.size),
                "ece_before": expected_calibration_error(p0, y[cal_idx]),
                "ece_after": expected_calibration_error(p1, y[cal_idx]),
                "nll_before": float(-np.log(np.clip(p0[rows, y[cal_idx]], 1e-300, None)).mean()),
                "nll_after": float(-np.log(np.clip(p1[rows, y[cal_idx]], 1e-300, None)).mean()),
                "accuracy": float((p1.argmax(axis=1) == y[cal_idx]).mean()),
            }
        else:
            t = 1.0
            self.calibration_ = {"n_cells": 0}
            logger.warning(
                "No reference cells could be held out for calibration; temperature stays 1."
            )
        self.temperature_ = float(t)

        # novelty: distance to the fitting part, thresholds from held-out reference cells
        self.reference_ = self._novelty_space(z[fit_idx])
        self._nn = None
        if cal_idx.size:
            ref_scores, ref_y = self._novelty(z[cal_idx]), y[cal_idx]
        else:  # leave-one-out on the fitting part
            k = min(self.n_neighbors, fit_idx.size - 1)
            d, _ = (
                NearestNeighbors(n_neighbors=max(1, k) + 1)
                .fit(self.reference_)
                .kneighbors(self.reference_)
            )
            ref_scores, ref_y = self._distance(d[:, 1:]).mean(axis=1), y[fit_idx]
        q = float(self.novelty_quantile)
        enough = [(ref_y == c).sum() >= _MIN_CELLS_PER_THRESHOLD for c in range(classes.size)]

        def per_label(level: float) -> np.ndarray:
            overall = float(np.quantile(ref_scores, level))
            return np.array(
                [
                    float(np.quantile(ref_scores[ref_y == c], level)) if ok else overall
                    for c, ok in enumerate(enough)
                ]
            )

        self.novelty_threshold_ = per_label(q)
        self.novelty_median_ = np.maximum(per_label(0.5), 1e-12)
        self.fitted_ = True
        return self

    def _fit_classifier(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> list[np.ndarray]:
        """Weights and biases of the layers, [W0, b0, W1, b1, ...] (x @ W + b)."""
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.classifier == "logistic":
                from sklearn.linear_model import LogisticRegression

                clf = LogisticRegression(
                    C=1.0 / float(self.regularization),
                    class_weight=self.class_weight,
                    max_iter=self.max_iter,
                )
                clf.fit(x, y)
                coef, icpt = clf.coef_, clf.intercept_
                if coef.shape[0] == 1:  # binary: sklearn keeps one row
                    coef = np.vstack([-coef / 2, coef / 2])
                    icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
                w, b = self._expand(coef.T, icpt, clf.classes_, n_classes)
                return [w, b]
            from sklearn.neural_network import MLPClassifier

            clf = MLPClassifier(
                hidden_layer_sizes=(self.hidden_size,),
                alpha=float(self.regularization) * 1e-3,
                max_iter=self.max_iter,
                random_state=self.seed,
                early_stopping=False,
            )
            clf.fit(x, y)
            w_out, b_out = clf.coefs_[-1], clf.intercepts_[-1]
            if w_out.shape[1] == 1:
                w_out = np.hstack([-w_out / 2, w_out / 2])
                b_out = np.array([-b_out[0] / 2, b_out[0] / 2])
            w_out, b_out = self._expand(w_out, b_out, clf.classes_, n_classes)
            return [clf.coefs_[0], clf.intercepts_[0], w_out, b_out]

    @staticmethod
    def _expand(
        w: np.ndarray, b: np.ndarray, present: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Put output columns of the classes seen in fitting into the full class order."""
        wf = np.zeros((w.shape[0], n_classes))
        bf = np.full(n_classes, -1e4)
        wf[:, present] = w
        bf[present] = b
        return wf, bf

    # prediction -------------------------------------------------------------------------
    def _logits_std(self, zs: np.ndarray) -> np.ndarray:
        h = zs
        layers = self.weights_
        for i in range(0, len(layers), 2):
            h = h @ layers[i] + layers[i + 1]
            if i + 2 < len(layers):
                h = np.maximum(h, 0.0)
        return h

    def _novelty_space(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.novelty_metric == "cosine":
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z.astype(np.float32)

    def _distance(self, d: np.ndarray) -> np.ndarray:
        """Euclidean distances of the novelty space in the chosen metric."""
        return d**2 / 2 if self.novelty_metric == "cosine" else d

    def _novelty(self, z: np.ndarray) -> np.ndarray:
        if getattr(self, "_nn", None) is None:
            from sklearn.neighbors import NearestNeighbors

            k = min(self.n_neighbors, self.reference_.shape[0])
            self._nn = NearestNeighbors(n_neighbors=k).fit(self.reference_)
        d, _ = self._nn.kneighbors(self._novelty_space(z))
        return self._distance(d.astype(np.float64)).mean(axis=1)

    def decision_function(self, adata: AnnData | np.ndarray) -> np.ndarray:
        """Uncalibrated logits, cells x classes."""
        self._check_fitted()
        z = self._embedding(adata, fitted=True)
        return self._logits_std((z - self.mean_) / self.scale_)

    def predict_proba(self, adata: AnnData | np.ndarray) -> np.ndarray:
        """Calibrated probabilities, cells x ``classes_``."""
        return softmax(self.decision_function(adata), self.temperature_)

    def novelty_score(self, adata: AnnData | np.ndarray) -> np.ndarray:
        """Mean distance to the ``n_neighbors`` nearest reference cells (higher = more novel)."""
        self._check_fitted()
        return self._novelty(self._embedding(adata, fitted=True))

    def predict_table(self, adata: AnnData | np.ndarray) -> pd.DataFrame:
        """Per-cell answer: ``label`` (or ``unknown_label``), ``best_label``, ``confidence``, ``novelty``, ``is_novel``, ``is_unknown``.

        ``table.attrs["novelty_shift"]`` holds the factor applied to the novelty
        thresholds (1 unless ``adapt_to_query`` found a shift).
        """
        self._check_fitted()
        z = self._embedding(adata, fitted=True)
        proba = softmax(self._logits_std((z - self.mean_) / self.scale_), self.temperature_)
        novelty = self._novelty(z)
        top = proba.argmax(axis=1)
        best = np.asarray(self.classes_, dtype=object)[top]
        conf = proba.max(axis=1)
        shift = 1.0
        if self.adapt_to_query and novelty.size >= _MIN_CELLS_FOR_SHIFT:
            shift = max(1.0, float(np.median(novelty / self.novelty_median_[top])))
        novel = novelty > self.novelty_threshold_[top] * shift
        unsure = conf < float(self.min_confidence)
        unknown = {
            "novelty": novel,
            "confidence": unsure,
            "either": novel | unsure,
            "both": novel & unsure,
        }[self.unknown_rule]
        index = adata.obs_names if hasattr(adata, "obs_names") else None
        table = pd.DataFrame(
            {
                "label": np.where(unknown, self.unknown_label, best),
                "best_label": best,
                "confidence": conf,
                "novelty": novelty,
                "is_novel": novel,
                "is_unknown": unknown,
            },
            index=index,
        )
        table.attrs["novelty_shift"] = shift
        return table

    def predict(self, adata: AnnData | np.ndarray) -> np.ndarray:
        """Cell-type label of each cell, ``unknown_label`` for unknown cells."""
        return self.predict_table(adata)["label"].to_numpy(dtype=object)

    def annotate(self, adata: AnnData, *, key_added: str = "aivc_cell_type") -> AnnData:
        """Write the answer into ``adata.obs``.

        Writes ``obs[key_added]`` (label or ``unknown_label``, categorical),
        ``obs[key_added + "_confidence"]`` (calibrated top probability) and
        ``obs[key_added + "_novelty"]`` (novelty score), and
        ``obsm[key_added + "_proba"]`` (cells x ``classes_``); returns ``adata``.
        """
        table = self.predict_table(adata)
        adata.obs[key_added] = pd.Categorical(table["label"].to_numpy())
        adata.obs[key_added + "_confidence"] = table["confidence"].to_numpy()
        adata.obs[key_added + "_novelty"] = table["novelty"].to_numpy()
        adata.obsm[key_added + "_proba"] = self.predict_proba(adata)
        adata.uns[key_added] = {
            "params": {k: v for k, v in self.get_params().items() if v is not None},
            "classes": list(self.classes_),
        }
        return adata

    def score(self, adata: AnnData | np.ndarray, *, labels: Any = None) -> dict[str, float]:
        """Accuracy (unknown counts as wrong), abstention rate and ECE on labelled cells."""
        y = self._labels(adata, labels)
        table = self.predict_table(adata)
        proba = self.predict_proba(adata)
        pos = {c: i for i, c in enumerate(self.classes_)}
        idx = np.array([pos.get(v, -1) for v in y])
        return {
            "accuracy": float((table["label"].to_numpy() == y).mean()),
            "abstention": float(table["is_unknown"].mean()),
            "ece": expected_calibration_error(proba, idx),
        }

    # persistence ------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"layer{i}": np.asarray(w, dtype=np.float64) for i, w in enumerate(self.weights_)}
        arrays.update(
            mean=np.asarray(self.mean_, dtype=np.float64),
            scale=np.asarray(self.scale_, dtype=np.float64),
            reference=np.asarray(self.reference_, dtype=np.float32),
            novelty_threshold=np.asarray(self.novelty_threshold_, dtype=np.float64),
            novelty_median=np.asarray(self.novelty_median_, dtype=np.float64),
        )
        meta = {
            "classes": list(self.classes_),
            "n_features_in": self.n_features_in_,
            "n_layers": len(self.weights_),
            "temperature": self.temperature_,
            "calibration": self.calibration_,
        }
        return arrays, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.classes_ = [str(c) for c in meta["classes"]]
        self.n_features_in_ = int(meta["n_features_in"])
        self.weights_ = [np.asarray(arrays[f"layer{i}"]) for i in range(int(meta["n_layers"]))]
        self.mean_ = np.asarray(arrays["mean"])
        self.scale_ = np.asarray(arrays["scale"])
        self.reference_ = np.asarray(arrays["reference"])
        self._nn = None
        self.temperature_ = float(meta["temperature"])
        self.novelty_threshold_ = np.asarray(arrays["novelty_threshold"])
        self.novelty_median_ = np.asarray(arrays["novelty_median"])
        self.calibration_ = dict(meta["calibration"])
