"""The temporal manipulator: a cell population at an unmeasured time, from the time points measured.

Cells are compared in one representation learned from the training cells:
log expression (library-size normalised counts, or ``log1p`` of FPKM / TPM
for data that have no counts, or the values as given when they are already
logarithmic), the ``n_top_genes`` most variable genes, and the first
principal components. Every model predicts a population (cells in that
space) at a query time; :meth:`TemporalModel.predict_mean` maps its mean
back to genes.

- ``nearest-time``: the cells of the nearest measured time (identity).
- ``linear-time``: the cells of the nearest measured time, shifted so their
  mean follows the straight line between the two bracketing time points
  (beyond the last, the line through the last two).
- ``ot-interpolation``: displacement interpolation along the exact optimal
  transport coupling (POT's ``emd``, squared Euclidean cost) between the two
  bracketing time points; beyond the last, each coupled pair's displacement
  is continued (the standard validation of optimal-transport trajectories).
- ``aivc-time`` (:class:`TemporalManipulator`): the three above, entropic OT
  (Sinkhorn) interpolation, and a drift learned from the coupled pairs
  (k-nearest-neighbour regression of each cell's velocity, integrated from
  the last time point) and a mean that relaxes exponentially towards a
  plateau (one time constant for all components, least squares) for
  forecasting; it picks one per use on its own time points: interpolation by
  leaving each inner training time point out, forecasting by predicting each
  training time point from the earlier ones (every origin with two or more
  time points before it; energy distance relative to ``nearest-time`` there,
  averaged); a time point held out this way is left out of the representation
  too. With too few time points to validate (fewer than three), it keeps
  ``ot-interpolation`` between measured times (the community's standard) and
  ``nearest-time`` beyond them, and says so in ``selection_``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument
from aivc.instruments._scores import condition_scores

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "TEMPORAL_MODELS",
    "TemporalManipulator",
    "TemporalModel",
    "add_fates",
    "check_time_course",
    "energy_distance",
    "fate_probabilities",
    "w2_distance",
]

logger = logging.getLogger(__name__)

EXPRESSIONS = ("counts", "log", "fpkm")
MIN_CELLS = 5


def check_time_course(adata: AnnData, time_key: str) -> np.ndarray:
    """The numeric time of every cell; a clear error for the cases users hit.

    Strings such as ``"24h"`` or ``"D10.5"`` are converted when every value
    holds one number (the conversion is logged); a time column that cannot be
    read as numbers, a single time point, and a time point with fewer than
    ``MIN_CELLS`` cells are refused.
    """
    if time_key not in adata.obs:
        msg = f"No time column {time_key!r} in obs; it has {sorted(map(str, adata.obs.columns))[:20]}. Declare it with --time-key."
        raise DataValidationError(msg)
    raw = adata.obs[time_key]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        text = raw.astype(str)
        parsed = pd.to_numeric(text.str.extract(r"([-+]?\d*\.?\d+)", expand=False), errors="coerce")
        if parsed.isna().any():
            bad = sorted(set(text[parsed.isna()]))[:5]
            msg = f"Time column {time_key!r} has values that hold no number: {bad}. Give times as numbers (e.g. hours)."
            raise DataValidationError(msg)
        logger.warning(
            "Time column %r holds text; read as the numbers in it (%s)",
            time_key,
            ", ".join(f"{a!r} -> {b:g}" for a, b in dict(zip(text, parsed, strict=True)).items()),
        )
        values = parsed.to_numpy(dtype=np.float64)
    times, counts = np.unique(values, return_counts=True)
    if len(times) < 2:
        msg = (
            f"A time course needs at least two time points; {time_key!r} has only {times.tolist()}."
        )
        raise DataValidationError(msg)
    few = times[counts < MIN_CELLS]
    if len(few):
        msg = f"Time point(s) {few.tolist()} have fewer than {MIN_CELLS} cells; drop or merge them."
        raise DataValidationError(msg)
    return values


def _log_expression(X: Any, expression: str) -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if expression == "counts":
        lib = X.sum(1, keepdims=True)
        return np.log1p(X / np.maximum(lib, 1e-12) * 1e4)
    if expression == "fpkm":
        return np.log1p(X)
    return X


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two point clouds: 2 E|X - Y| - E|X - X'| - E|Y - Y'|."""
    from scipy.spatial.distance import cdist

    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def w2_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Wasserstein-2 distance between two point clouds (exact OT, uniform weights)."""
    import ot

    cost = ot.dist(x, y, metric="sqeuclidean")
    return float(np.sqrt(max(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), cost), 0.0)))


def _coupling(x: np.ndarray, y: np.ndarray, *, entropic: bool = False) -> np.ndarray:
    import ot

    cost = ot.dist(x, y, metric="sqeuclidean")
    a, b = ot.unif(len(x)), ot.unif(len(y))
    if entropic:
        reg = 0.05 * float(np.median(cost)) or 1e-3
        scale = float(cost.max()) or 1.0
        # log-domain iterations stay stable at small regularisation; an unconverged plan is still a plan
        return ot.sinkhorn(
            a, b, cost / scale, reg / scale, method="sinkhorn_log", numItermax=5000, warn=False
        )
    return ot.emd(a, b, cost)


def _sample_pairs(
    plan: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` coupled pairs drawn in proportion to their mass by systematic sampling.

    One random offset and evenly spaced draws: every pair gets its share of
    the draws up to one, so the sample's mean follows the coupling's far more
    closely than independent draws would.
    """
    flat = plan.ravel()
    nz = np.flatnonzero(flat > 0)
    cum = np.cumsum(flat[nz] / flat[nz].sum())
    draws = (rng.uniform() + np.arange(n)) / n
    picked = nz[np.minimum(np.searchsorted(cum, draws), len(nz) - 1)]
    return np.unravel_index(picked, plan.shape)


class TemporalModel(Instrument):
    """Base of the temporal models: representation, training populations, prediction API.

    Parameters
    ----------
    n_top_genes
        Most variable genes kept for the representation.
    n_components
        Principal components of the representation (fewer when the data are small).
    seed
        Seed of the sampled cells.
    """

    def __init__(self, *, n_top_genes: int = 2000, n_components: int = 30, seed: int = 0) -> None:
        self.n_top_genes = n_top_genes
        self.n_components = n_components
        self.seed = seed

    def fit(
        self, adata: AnnData, *, time_key: str, expression: str = "counts", layer: str | None = None
    ) -> Self:
        """Learn the representation and the populations of every time point of ``adata``."""
        if expression not in EXPRESSIONS:
            msg = f"expression must be one of {list(EXPRESSIONS)}; got {expression!r}."
            raise ValueError(msg)
        t = check_time_course(adata, time_key)
        X = adata.layers[layer] if layer is not None else adata.X
        logx = _log_expression(X, expression)
        var = logx.var(0)
        keep = np.sort(np.argsort(-var)[: min(self.n_top_genes, logx.shape[1])])
        sub = logx[:, keep]
        self.genes_ = [str(g) for g in adata.var_names[keep]]
        self.gene_index_ = keep
        self.center_ = sub.mean(0)
        k = int(min(self.n_components, sub.shape[0] - 1, sub.shape[1]))
        _, _, vt = np.linalg.svd(sub - self.center_, full_matrices=False)
        self.components_ = vt[:k]
        self.expression_ = expression
        self.layer_ = layer
        self.times_ = np.unique(t)
        Z = (sub - self.center_) @ self.components_.T
        self.populations_ = {float(v): Z[t == v] for v in self.times_}
        self._fit_model()
        self.fitted_ = True
        return self

    def _fit_model(self) -> None:
        """Model-specific fitting once the populations are in place."""

    def transform(self, adata: AnnData) -> np.ndarray:
        """Cells of ``adata`` (same genes as the training data) in the representation."""
        self._check_fitted()
        X = adata.layers[self.layer_] if self.layer_ is not None else adata.X
        logx = _log_expression(X, self.expression_)[:, self.gene_index_]
        return (logx - self.center_) @ self.components_.T

    def predict_cells(self, time: float, *, n_cells: int | None = None) -> np.ndarray:
        """Predicted cells (representation coordinates) at ``time``.

        ``n_cells`` (default: the mean size of the measured populations) is
        exact: models that move a measured population resample its cells.
        """
        self._check_fitted()
        if not np.isfinite(time):
            msg = f"The time must be a finite number; got {time!r}."
            raise ValueError(msg)
        if time < self.times_[0]:
            msg = f"Time {time:g} is before the first measured time {self.times_[0]:g}; aivc forecasts forwards only."
            raise ValueError(msg)
        rng = np.random.default_rng([self.seed, round(time * 1000) % (2**31)])
        n = n_cells or int(np.mean([len(p) for p in self.populations_.values()]))
        cells = self._predict(float(time), n, rng)
        if (
            n_cells is not None and len(cells) != n_cells
        ):  # models that move measured cells: resample them
            cells = cells[rng.choice(len(cells), size=n_cells, replace=n_cells > len(cells))]
        return cells

    def predict_mean(self, time: float) -> pd.Series:
        """Predicted mean log expression of the representation's genes at ``time``."""
        z = self.predict_cells(time).mean(0)
        return pd.Series(self.center_ + z @ self.components_, index=self.genes_)

    predict = predict_cells

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    # the pieces every model uses ------------------------------------------------------
    def _bracket(self, time: float) -> tuple[float, float]:
        ts = self.times_
        if time >= ts[-1]:
            return float(ts[-2]), float(ts[-1])
        j = int(np.searchsorted(ts, time, side="right"))
        return float(ts[j - 1]), float(ts[j])

    def _nearest(self, time: float) -> np.ndarray:
        ts = self.times_
        return self.populations_[float(ts[int(np.argmin(np.abs(ts - time)))])]

    def _linear(self, time: float) -> np.ndarray:
        t0, t1 = self._bracket(time)
        m0, m1 = self.populations_[t0].mean(0), self.populations_[t1].mean(0)
        target = m0 + (time - t0) / (t1 - t0) * (m1 - m0)
        cells = self._nearest(time)
        return cells - cells.mean(0) + target

    def _ot(
        self, time: float, n: int, rng: np.random.Generator, *, entropic: bool = False
    ) -> np.ndarray:
        t0, t1 = self._bracket(time)
        x, y = self.populations_[t0], self.populations_[t1]
        plan = _coupling(x, y, entropic=entropic)
        i, j = _sample_pairs(plan, n, rng)
        s = (time - t0) / (t1 - t0)
        return (1 - s) * x[i] + s * y[j]

    def _relaxation(self, time: float) -> np.ndarray:
        """The nearest population shifted to a mean that relaxes exponentially towards a plateau.

        Every component's mean follows ``a + b exp(-t / tau)`` with one ``tau``
        for all (least squares; ``tau`` on a grid from a tenth to ten times the
        measured span); with fewer than three time points it is the linear path.
        """
        ts = self.times_
        if len(ts) < 3:
            return self._linear(time)
        means = np.stack([self.populations_[float(t)].mean(0) for t in ts])
        span = float(ts[-1] - ts[0]) or 1.0
        best = (np.inf, None)
        for tau in span * np.geomspace(0.1, 10.0, 25):
            design = np.column_stack([np.ones(len(ts)), np.exp(-(ts - ts[0]) / tau)])
            coef, *_ = np.linalg.lstsq(design, means, rcond=None)
            sse = float(((design @ coef - means) ** 2).sum())
            if sse < best[0]:
                best = (sse, (tau, coef))
        tau, coef = best[1]
        target = np.array([1.0, np.exp(-(time - ts[0]) / tau)]) @ coef
        cells = self._nearest(time)
        return cells - cells.mean(0) + target

    def _drift(self, time: float, n: int, rng: np.random.Generator, k: int = 10) -> np.ndarray:
        """Push the last population forward along a velocity field regressed on the coupled pairs."""
        t0, t1 = float(self.times_[-2]), float(self.times_[-1])
        x, y = self.populations_[t0], self.populations_[t1]
        plan = _coupling(x, y)
        i, j = np.nonzero(plan > 1e-12 * plan.max())
        starts, velocity = x[i], (y[j] - x[i]) / (t1 - t0)
        cells = y[rng.choice(len(y), size=n)] if n != len(y) else y
        steps = max(1, int(np.ceil((time - t1) / (t1 - t0) * 4)))
        dt = (time - t1) / steps
        for _ in range(steps):
            d = ((cells[:, None, :] - starts[None, :, :]) ** 2).sum(-1)
            nn = np.argsort(d, axis=1)[:, : min(k, len(starts))]
            cells = cells + dt * velocity[nn].mean(1)
        return cells

    def _candidate(self, name: str, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """The cells of candidate ``name`` at ``time`` (the candidates of :class:`TemporalManipulator`)."""
        if name == "nearest-time":
            return self._nearest(time)
        if name == "linear-time":
            return self._linear(time)
        if name == "ot-interpolation":
            return self._ot(time, n, rng)
        if name == "ot-sinkhorn":
            return self._ot(time, n, rng, entropic=True)
        if name == "relaxation":
            return self._relaxation(time)
        if time <= self.times_[-1]:  # the drift forecasts; inside the measured times, OT
            return self._ot(time, n, rng)
        return self._drift(time, n, rng)

    def _score(self, name: str, time: float, measured: np.ndarray) -> float:
        pred = self._candidate(name, time, len(measured), np.random.default_rng(self.seed))
        return energy_distance(pred, measured)

    # persistence --------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "center": self.center_,
            "components": self.components_,
            "gene_index": self.gene_index_,
        }
        for i, t in enumerate(self.times_):
            arrays[f"population_{i}"] = self.populations_[float(t)]
        meta = {
            "genes": self.genes_,
            "times": [float(t) for t in self.times_],
            "expression": self.expression_,
            "layer": self.layer_,
            "model": self._model_meta(),
        }
        return arrays, meta

    def _model_meta(self) -> dict[str, Any]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.center_ = arrays["center"]
        self.components_ = arrays["components"]
        self.gene_index_ = arrays["gene_index"]
        self.genes_ = list(meta["genes"])
        self.times_ = np.asarray(meta["times"], dtype=np.float64)
        self.populations_ = {float(t): arrays[f"population_{i}"] for i, t in enumerate(self.times_)}
        self.expression_ = meta["expression"]
        self.layer_ = meta["layer"]
        self._set_model_meta(meta.get("model", {}))

    def _set_model_meta(self, meta: dict[str, Any]) -> None:
        """Restore what :meth:`_model_meta` wrote."""


class NearestTime(TemporalModel):
    """The cells of the nearest measured time point."""

    name = "nearest-time"

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._nearest(time)


class LinearTime(TemporalModel):
    """The nearest time point's cells, shifted onto the straight line of the means."""

    name = "linear-time"

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._linear(time)


class OTInterpolation(TemporalModel):
    """Displacement interpolation (and continuation) along the exact OT coupling."""

    name = "ot-interpolation"

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._ot(time, n, rng)


#: Candidates of each use: the drift and the relaxing mean are forecasting models.
_CANDIDATES = {
    "interpolate": ("nearest-time", "linear-time", "ot-interpolation", "ot-sinkhorn"),
    "forecast": (
        "nearest-time",
        "linear-time",
        "ot-interpolation",
        "ot-sinkhorn",
        "ot-drift",
        "relaxation",
    ),
}


@register_instrument(
    "aivc-time",
    description="Temporal manipulator: a population at an unmeasured time (interpolation or forecast), "
    "OT and drift candidates chosen on the training time points.",
    kind="temporal",
)
class TemporalManipulator(TemporalModel):
    """aivc's temporal manipulator (see the module docstring).

    Its candidates are scored on nested splits of the training time points,
    each with its own representation: a time point held out inside the
    training data is left out of the principal components as well, as the
    test time point is. (Scoring it in components fitted with it favoured the
    candidates that keep a measured population's shape, ``linear-time``, over
    optimal transport, the reverse of what held-out time points show.)
    """

    def fit(
        self, adata: AnnData, *, time_key: str, expression: str = "counts", layer: str | None = None
    ) -> Self:
        """Score the candidates on nested splits of ``adata``'s time points, then fit on all of them."""
        t = check_time_course(adata, time_key)
        ts = np.unique(t)
        scores: dict[str, dict[str, list[float]]] = {"interpolate": {}, "forecast": {}}
        if len(ts) >= 3:
            # interpolation: each inner time point from all the others; forecasting: each time
            # point from the earlier ones (every origin with two or more before it)
            splits = [("interpolate", float(v), t != v) for v in ts[1:-1]]
            splits += [("forecast", float(v), t < v) for v in ts[2:]]
            for use, held, keep in splits:
                inner = TemporalModel(
                    n_top_genes=self.n_top_genes, n_components=self.n_components, seed=self.seed
                ).fit(adata[keep], time_key=time_key, expression=expression, layer=layer)
                measured = inner.transform(adata[t == held])
                values = {name: inner._score(name, held, measured) for name in _CANDIDATES[use]}
                if use == "forecast":  # horizons differ: relative to no change at each origin
                    ref = values["nearest-time"] or 1.0
                    values = {name: v / ref for name, v in values.items()}
                for name, v in values.items():
                    scores[use].setdefault(name, []).append(v)
        super().fit(adata, time_key=time_key, expression=expression, layer=layer)
        self.selection_ = {}
        for use, values in scores.items():
            s = {name: float(np.mean(v)) for name, v in values.items()}
            if s:
                chosen = min(s, key=lambda k: (s[k], _CANDIDATES[use].index(k)))
                self.selection_[use] = {
                    "chosen": chosen,
                    "energy_distance": s,
                    "rule": (
                        "held-out training time points, each left out of the representation too"
                        + (
                            "; forecasts scored relative to nearest-time at each origin, averaged"
                            if use == "forecast"
                            else ""
                        )
                    ),
                }
            else:
                # nothing to validate on: OT interpolation between measured times (the field's
                # standard), no change beyond the last one (the safe forecast)
                self.selection_[use] = {
                    "chosen": "ot-interpolation" if use == "interpolate" else "nearest-time",
                    "energy_distance": {},
                    "rule": "fewer than three training time points: a fixed default, not validated here",
                }
        return self

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        use = "forecast" if time > self.times_[-1] else "interpolate"
        return self._candidate(self.selection_[use]["chosen"], time, n, rng)

    def _model_meta(self) -> dict[str, Any]:
        return {"selection": self.selection_}

    def _set_model_meta(self, meta: dict[str, Any]) -> None:
        self.selection_ = meta["selection"]


#: Every temporal model by name: the baselines and aivc-time.
TEMPORAL_MODELS: dict[str, type[TemporalModel]] = {
    cls.name: cls for cls in (NearestTime, LinearTime, OTInterpolation, TemporalManipulator)
}


# ----------------------------------------------------------------------------- perturbation x time
def _de20_scores(observed: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`~aivc.instruments._scores.condition_scores` under the perturbation tasks' names."""
    s = condition_scores(observed, predicted)
    return {
        "pearson_delta": s["pearson_delta"],
        "pearson_delta_de20": s["pearson_delta_top20"],
        "mse_de20": s["mse_top20"],
    }


_RIDGE_GRID = (0.01, 0.1, 1.0, 10.0)


def _kernel_ridge(
    features: np.ndarray, targets: np.ndarray, query: np.ndarray
) -> dict[float, np.ndarray]:
    """Linear-kernel ridge predictions for ``query``, one per penalty of :data:`_RIDGE_GRID`
    (a fraction of the kernel's mean diagonal)."""
    K = features @ features.T
    scale = float(np.trace(K)) / max(len(K), 1) or 1.0
    k_q = query @ features.T
    return {r: k_q @ np.linalg.solve(K + r * scale * np.eye(len(K)), targets) for r in _RIDGE_GRID}


@register_instrument(
    "aivc-time-effect",
    description="How a perturbation's effect unfolds: its change at later times from its early change.",
    kind="temporal",
)
class EffectCourse(Instrument):
    """How a perturbation's effect unfolds over time, learned from perturbations measured throughout.

    ``fit(early, late)`` takes, for the training perturbations, their change
    from the control at an early time (perturbations x genes) and at each later
    time; :meth:`predict_effect` gives a new perturbation's change at a later
    time from its early change alone. Candidates, chosen per time by
    leave-one-perturbation-out on the training perturbations (best mean rank of
    ``pearson_delta_de20`` and ``mse_de20``; ties to the simpler):

    - ``control-course``: no effect (the control's course).
    - ``effect-as-first-measured``: the early change persists unchanged.
    - ``scaled-persistence``: the early change times one factor per time (least squares).
    - ``kernel-ridge``: the late changes of the training perturbations, weighted by
      ridge regression on the similarity of early changes (linear kernel; penalty
      a fraction of the kernel's mean diagonal, chosen on a grid by the same
      leave-one-out).
    - ``persistence-drift``: the early change persists, plus the mean of how the
      training perturbations' changes moved on from the early time to this one
      (a drift they share, e.g. as the control's own course carries every
      perturbed population along).
    - ``persistence-drift-kernel``: the same, plus each perturbation's own
      departure from the shared drift, by kernel ridge on its centred early
      change (penalty grid as above).

    Intervals are split-conformal on the leave-one-out residuals of the chosen
    candidate, scaled per gene.
    """

    def __init__(self, *, level: float = 0.9) -> None:
        self.level = level

    @staticmethod
    def _candidates(
        early: np.ndarray, late: np.ndarray, query: np.ndarray
    ) -> dict[str, np.ndarray]:
        out = {
            "control-course": np.zeros((len(query), late.shape[1])),
            "effect-as-first-measured": query.copy(),
        }
        den = float((early * early).sum())
        alpha = float((early * late).sum()) / den if den > 0 else 0.0
        out["scaled-persistence"] = alpha * query
        for r, pred in _kernel_ridge(early, late, query).items():
            out[f"kernel-ridge-{r:g}"] = pred
        # the early change persists, plus how the training effects moved on together since
        drift = late - early
        shared = drift.mean(0)
        out["persistence-drift"] = query + shared
        centre = early.mean(0)
        for r, pred in _kernel_ridge(early - centre, drift - shared, query - centre).items():
            out[f"persistence-drift-kernel-{r:g}"] = query + shared + pred
        return out

    def fit(self, early: np.ndarray, late: dict[float, np.ndarray], genes: list[str]) -> Self:
        """Learn from the early (perturbations x genes) and late ``{time: perturbations x genes}`` changes."""
        from aivc.instruments._conformal import check_level

        check_level(self.level)
        early = np.asarray(early, dtype=np.float64)
        if len(early) < 3:
            msg = f"Learning how effects unfold needs three or more perturbations measured throughout; got {len(early)}."
            raise DataValidationError(msg)
        self.early_ = early
        self.late_ = {float(t): np.asarray(v, dtype=np.float64) for t, v in late.items()}
        self.genes_ = list(genes)
        self.selection_: dict[str, Any] = {}
        self.scale_: dict[float, np.ndarray] = {}
        self.calibration_: dict[float, np.ndarray] = {}
        n = len(early)
        for t, target in self.late_.items():
            preds: dict[str, np.ndarray] = {}
            for i in range(n):
                keep = np.arange(n) != i
                cand = self._candidates(early[keep], target[keep], early[[i]])
                for name, v in cand.items():
                    preds.setdefault(name, np.zeros_like(target))[i] = v[0]
            scores = {
                name: {k: float(v.mean()) for k, v in _de20_scores(target, p).items()}
                for name, p in preds.items()
            }
            names = list(scores)
            rank_p = (
                pd.Series([-scores[m]["pearson_delta_de20"] for m in names])
                .rank(method="min")
                .to_numpy()
            )
            rank_m = pd.Series([scores[m]["mse_de20"] for m in names]).rank(method="min").to_numpy()
            chosen = names[int(np.argmin(rank_p + rank_m))]
            resid = target - preds[chosen]
            scale = np.sqrt((resid**2).mean(0))
            scale = np.maximum(scale, 1e-6 * max(float(scale.max()), 1e-12))
            self.scale_[t] = scale
            self.calibration_[t] = (np.abs(resid) / scale).ravel()
            self.selection_[f"{t:g}"] = {"chosen": chosen, "scores": scores}
        self.fitted_ = True
        return self

    def _time(self, time: float) -> float:
        self._check_fitted()
        known = np.array(sorted(self.late_))
        match = known[np.isclose(known, time)]
        if not len(match):
            msg = f"This model learned the times {known.tolist()}; {time:g} is not one of them."
            raise ValueError(msg)
        return float(match[0])

    def predict_effect(self, early: np.ndarray, time: float) -> np.ndarray:
        """Predicted change (perturbations x genes) at ``time`` from the early changes ``early``."""
        t = self._time(time)
        chosen = self.selection_[f"{t:g}"]["chosen"]
        return self._candidates(self.early_, self.late_[t], np.atleast_2d(early))[chosen]

    def predict_interval(
        self, early: np.ndarray, time: float, *, level: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(delta, lower, upper)`` at ``level`` (default ``self.level``)."""
        from aivc.instruments._conformal import check_level, conformal_quantile

        level = self.level if level is None else level
        check_level(level)
        t = self._time(time)
        delta = self.predict_effect(early, t)
        half = conformal_quantile(self.calibration_[t], level) * self.scale_[t]
        return delta, delta - half, delta + half

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"early": self.early_}
        for i, t in enumerate(sorted(self.late_)):
            arrays[f"late_{i}"] = self.late_[t]
        return arrays, {"times": sorted(self.late_), "genes": self.genes_}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        late = {float(t): arrays[f"late_{i}"] for i, t in enumerate(meta["times"])}
        self.fit(arrays["early"], late, list(meta["genes"]))


# ----------------------------------------------------------------------------- fates
def fate_probabilities(
    early: np.ndarray, late: np.ndarray, late_labels: Sequence[str], *, entropic: bool = False
) -> pd.DataFrame:
    """For each early cell, the probability of each later state, from the optimal transport coupling.

    Each early cell's mass is sent to later cells by the coupling between the
    two populations (exact OT, or entropic with ``entropic=True``); its fate
    probabilities are the shares of that mass landing in cells of each label
    (CellRank-style absorption probabilities, one column per label).
    """
    labels = pd.Categorical(np.asarray(late_labels, dtype=str))
    if len(labels) != len(late):
        msg = f"Give one label per later cell: {len(labels)} labels for {len(late)} cells."
        raise ValueError(msg)
    plan = _coupling(np.asarray(early, float), np.asarray(late, float), entropic=entropic)
    onehot = np.zeros((len(late), len(labels.categories)))
    onehot[np.arange(len(late)), labels.codes] = 1.0
    mass = plan @ onehot
    probs = mass / np.maximum(mass.sum(1, keepdims=True), 1e-300)
    return pd.DataFrame(probs, columns=[str(c) for c in labels.categories])


def add_fates(
    model: TemporalModel,
    adata: AnnData,
    *,
    time_key: str,
    label_key: str,
    from_time: float,
    to_time: float,
    key_added: str = "aivc_fates",
    entropic: bool = True,
) -> pd.DataFrame:
    """Fate probabilities of the cells at ``from_time`` towards the labels of the cells at ``to_time``.

    The cells are placed in ``model``'s representation; the coupling between
    the two populations (entropic by default) gives each early cell its
    shares per label (:func:`fate_probabilities`). They are written into
    ``adata.obsm[key_added]`` (one column per label; NaN for cells of other
    times) and ``adata.uns[key_added]`` (labels and times), as CellRank
    writes absorption probabilities, and returned for the early cells.
    """
    times = check_time_course(adata, time_key)
    if label_key not in adata.obs:
        msg = f"No label column {label_key!r} in obs; the later cells' labels define the fates."
        raise DataValidationError(msg)
    early, late = np.isclose(times, from_time), np.isclose(times, to_time)
    if not early.any() or not late.any() or to_time <= from_time:
        msg = f"Fates need cells at {from_time:g} and at a later {to_time:g}; the times here are {sorted(set(times))}."
        raise DataValidationError(msg)
    z = model.transform(adata)
    labels = adata.obs[label_key].astype(str).to_numpy()[late]
    fates = fate_probabilities(z[early], z[late], labels, entropic=entropic)
    fates.index = adata.obs_names[early]
    full = np.full((adata.n_obs, fates.shape[1]), np.nan)
    full[early] = fates.to_numpy()
    adata.obsm[key_added] = pd.DataFrame(full, index=adata.obs_names, columns=fates.columns)
    adata.uns[key_added] = {
        "labels": list(fates.columns),
        "from_time": float(from_time),
        "to_time": float(to_time),
    }
    return fates
