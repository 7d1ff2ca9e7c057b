"""Shrinkage towards no change of the predicted changes of unmeasured targets.

Where a target's neighbours mix strong and null responses the regression
cannot tell which it is, and a timid prediction costs less. Kinds (the
``null_shrinkage`` parameter of ``aivc-perturb``):

- ``"prior"``: the prior mean is ``a`` times the mean training change, ``a``
  chosen with the ridge (:func:`choose_prior_scale`);
- post-hoc kinds on the regression's mean ``f`` with predictive sd ``s``:
  ``"condition"`` multiplies a condition's whole change by
  ``|f|^2 / (|f|^2 + c |s|^2)``; ``"dispersion"`` does the same with
  ``|s|^2`` replaced by how much the training changes the prediction draws on
  disagree with it (:func:`neighbour_dispersion`); ``"uncertainty"``
  multiplies gene by gene by ``f^2 / (f^2 + c s^2)``; ``"gene"`` uses one
  weight per gene, the regression of the observed on the held-out predicted
  changes.

Every strength is scored on the leave-one-target-out predictions of the
training singles by the worse of two ratios (mean absolute error over all
genes, error on the top 20 changed genes) to the better of the no-change and
mean-change baselines on the same held-out targets; no shrinkage is one of
the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from aivc.data import DataValidationError
from aivc.instruments import _manipulator_module as mm
from aivc.instruments._perturb._state import FittedState

__all__ = [
    "NULL_SHRINKAGE",
    "NullShrinkage",
    "ShrinkageState",
    "choose_prior_scale",
    "condition_weight",
    "neighbour_dispersion",
]

NULL_SHRINKAGE = ("prior", "none", "condition", "dispersion", "uncertainty", "gene")
NULL_GRID = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0)
PRIOR_SCALE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PRIOR_RIDGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def condition_weight(f: np.ndarray, s2: np.ndarray, c: float) -> np.ndarray:
    """Per-condition weight ``|f|^2 / (|f|^2 + c |s|^2)`` of predicted changes (column vector)."""
    ff = (f**2).sum(axis=1, keepdims=True)
    return ff / (ff + c * s2.sum(axis=1, keepdims=True) + 1e-300)


def neighbour_dispersion(weights: np.ndarray, y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """How much the training changes ``y`` that a prediction ``f`` draws on disagree with it.

    ``weights`` (predictions x training rows) are the regression's smoother
    weights; their absolute values, normalised per prediction, weight the
    squared distances ``|y_j - f_i|^2``.
    """
    a = np.abs(weights)
    a = a / np.maximum(a.sum(axis=1, keepdims=True), 1e-300)
    d2 = (f**2).sum(axis=1)[:, None] - 2.0 * f @ y.T + (y**2).sum(axis=1)[None, :]
    return (a * np.maximum(d2, 0.0)).sum(axis=1)


def leave_group_out_means(y: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Each group's rows get the mean of the rows outside the group (from one total, O(rows x genes))."""
    total = y.sum(axis=0)
    out = np.empty_like(y)
    for idx in members:
        out[idx] = (total - y[idx].sum(axis=0)) / max(len(y) - len(idx), 1)
    return out


def choose_prior_scale(
    k: np.ndarray,
    y: np.ndarray,
    yt: np.ndarray,
    groups: np.ndarray,
    *,
    kernel_scale: float,
    ridge: float,
    fixed_ridge: float | None,
) -> tuple[float, float, dict[str, Any]]:
    """Choose the prior-mean scale and the ridge by leave-one-target-out error (kind ``"prior"``).

    The prior mean is ``a`` times the mean training change, ``a`` in
    ``PRIOR_SCALE_GRID``, jointly with the ridge: a target unlike the
    training targets then gets ``a`` times the mean change, one like them
    their changes. Each pair is scored on the held-out predictions of the
    training singles (the prior mean recomputed without the held-out target).

    Parameters
    ----------
    k
        Kernel between the training rows.
    y, yt
        Training changes, and the same with the context mean reversion added.
    groups
        Held-out group of each row.
    kernel_scale
        Mean diagonal of ``k`` (the ridge is relative to it).
    ridge
        The ridge chosen so far (a candidate, and kept on ties).
    fixed_ridge
        The user's fixed ridge, or ``None`` to choose among ``PRIOR_RIDGE_GRID``.

    Returns
    -------
    The chosen scale, the chosen ridge and the scores of every candidate.
    """
    selection: dict[str, Any] = {}
    n = len(y)
    members = [np.flatnonzero(groups == gid) for gid in np.unique(groups)]
    shift = yt - y
    m = yt.mean(axis=0)
    prior_loo, mean_loo = leave_group_out_means(yt, members), leave_group_out_means(y, members)

    top = mm.top_gene_index(y)

    def score(pred: np.ndarray) -> tuple[float, float]:
        return float(np.abs(pred - y).mean()), float(mm.top_gene_error(pred - y, y, top=top).mean())

    zero, mean = score(np.zeros_like(y)), score(mean_loo)
    ref = (max(min(zero[0], mean[0]), 1e-12), max(min(zero[1], mean[1]), 1e-12))
    selection["prior-scale|baselines (mae, top20)"] = {"zero": zero, "train-mean": mean}

    def objective(values: tuple[float, float]) -> float:
        return max(values[0] / ref[0], values[1] / ref[1])

    lams = [float(fixed_ridge)] if fixed_ridge is not None else sorted({*PRIOR_RIDGE_GRID, ridge})
    ones = np.ones((n, 1))
    best = (np.inf, 1.0, float(ridge))
    # held-out residuals are linear in the targets: those of yt - a m are those of yt minus a
    # times those of the constant column times m, so one pass serves every scale a
    outs = mm.grouped_loo(k, np.hstack([yt, ones]), groups, [lam * kernel_scale for lam in lams])
    for a in PRIOR_SCALE_GRID:
        for lam, (res_all, _) in zip(lams, outs, strict=True):
            r1 = res_all[:, -1:]
            res = res_all[:, :-1] - a * r1 * m
            # the held-out prior moves the prediction by (1 - the kernel weights' sum),
            # which is the held-out residual of the constant column
            f = yt - res + r1 * (a * prior_loo - a * m) - shift
            values = score(f)
            obj = objective(values)
            selection[f"prior-scale|scale={a}|ridge={lam}"] = {
                "mae": values[0],
                "top20": values[1],
                "objective": obj,
            }
            if obj < best[0] - 1e-12:
                best = (obj, a, lam)
    return best[1], best[2], selection


@dataclass
class ShrinkageState(FittedState):
    """Fitted state of the post-hoc shrinkage towards no change.

    Attributes
    ----------
    kind
        The chosen kind (``"none"``, ``"condition"``, ``"dispersion"``,
        ``"uncertainty"`` or ``"gene"``).
    strength
        Its strength ``c`` (0 for ``"none"``).
    null_weight
        Per-gene weight of predicted changes (ones unless ``kind == "gene"``).
    row_changes
        The training changes the smoother weights refer to, for
        ``"dispersion"`` when the regression's rows are not the measured
        singles (no target was measured alone); otherwise empty (0 rows), and
        the measured singles serve.
    selection
        Score of every candidate.
    """

    stage: ClassVar[str] = "shrinkage"

    kind: str
    strength: float
    null_weight: np.ndarray
    row_changes: np.ndarray
    selection: dict[str, Any]

    def validate(self) -> None:
        if self.kind not in NULL_SHRINKAGE:
            msg = (
                "The model directory is corrupted: its shrinkage towards no change "
                f"({self.kind!r}) is not one of {list(NULL_SHRINKAGE)}."
            )
            raise DataValidationError(msg)


class NullShrinkage:
    """The post-hoc shrinkage of unmeasured targets' changes towards zero."""

    State = ShrinkageState

    def __init__(self, state: ShrinkageState) -> None:
        self.state = state

    @classmethod
    def none(cls, n_genes: int) -> NullShrinkage:
        """No shrinkage."""
        return cls(
            ShrinkageState(
                kind="none",
                strength=0.0,
                null_weight=np.ones(n_genes),
                row_changes=np.zeros((0, n_genes)),
                selection={},
            )
        )

    @classmethod
    def fit(
        cls,
        requested: str,
        y: np.ndarray,
        res: np.ndarray,
        var: np.ndarray,
        k: np.ndarray,
        groups: np.ndarray,
        lam_abs: float,
        *,
        inverse: np.ndarray,
        gene_sigma2: np.ndarray,
        embedded: bool,
        keep_rows: bool,
    ) -> tuple[NullShrinkage, np.ndarray]:
        """Choose the strength of the ``requested`` kind (or none) on the held-out training singles.

        Parameters
        ----------
        requested
            The ``null_shrinkage`` parameter.
        y
            Training changes, rows x genes.
        res, var
            Held-out residuals and variance factors of the regression.
        k, groups, lam_abs
            Training kernel, held-out groups and absolute ridge of the regression.
        inverse
            ``(K + lam I)^-1`` of the fit (for the held-out smoother weights).
        gene_sigma2
            Per-gene scale of the predictive variance.
        embedded
            Whether the regression uses any embedding source (without one, its
            held-out predictions already carry the held-out prior mean).
        keep_rows
            Store ``y`` as the training changes of ``"dispersion"`` (when the
            rows are not the measured singles).

        Returns
        -------
        The fitted component and the held-out residuals of the chosen predictions.
        """
        n, n_genes = y.shape
        out = cls.none(n_genes)
        selection = out.state.selection
        members = [np.flatnonzero(groups == gid) for gid in np.unique(groups)]
        if requested in {"none", "prior"} or len(members) < 3:
            return out, res
        # held-out predictions, with the prior mean recomputed without the held-out target:
        # the prior's change moves the prediction by (1 - the kernel weights' sum), which is
        # the held-out residual of a constant
        f = y - res
        ones = mm.grouped_loo(k, np.ones((n, 1)), groups, [lam_abs])[0][0][:, 0]
        prior = leave_group_out_means(y, members)
        if embedded:
            f += ones[:, None] * (prior - y.mean(axis=0))
        s2 = np.maximum(var, 1e-12)[:, None] * gene_sigma2[None, :]

        top = mm.top_gene_index(y)

        def score(pred: np.ndarray) -> tuple[float, float]:
            return (
                float(np.abs(pred - y).mean()),
                float(mm.top_gene_error(pred - y, y, top=top).mean()),
            )

        zero, mean = score(np.zeros_like(y)), score(prior)
        ref = (max(min(zero[0], mean[0]), 1e-12), max(min(zero[1], mean[1]), 1e-12))
        selection["null-shrinkage|baselines (mae, top20)"] = {"zero": zero, "train-mean": mean}

        def objective(pred: np.ndarray, key: str) -> float:
            mae, top = score(pred)
            obj = max(mae / ref[0], top / ref[1])
            selection[f"null-shrinkage|{key}"] = {"mae": mae, "top20": top, "objective": obj}
            return obj

        best: tuple[float, str, float] = (objective(f, "none"), "none", 0.0)
        best_pred = f
        kinds = (requested,)
        sff, sfy = (f**2).sum(axis=0), (f * y).sum(axis=0)
        if requested == "dispersion":
            # held-out smoother weights: holding out group G leaves -inv(A_GG) A_G,rest with
            # A = (K + lam I)^-1 (the fitted inverse), the weights of the training changes
            # (the squared distances of every held-out prediction to every training change come
            # from one product; neighbour_dispersion's arithmetic, without copying y per group)
            dispersion = np.zeros(n)
            gram = f @ y.T
            ff, yy = (f**2).sum(axis=1), (y**2).sum(axis=1)
            for idx in members:
                rest = np.setdiff1d(np.arange(n), idx)
                w = np.abs(np.linalg.solve(inverse[np.ix_(idx, idx)], inverse[np.ix_(idx, rest)]))
                w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
                d2 = ff[idx, None] - 2.0 * gram[np.ix_(idx, rest)] + yy[None, rest]
                dispersion[idx] = (w * np.maximum(d2, 0.0)).sum(axis=1)
        for kind in kinds:
            for c in NULL_GRID:
                if kind == "gene":
                    pred = np.empty_like(f)
                    for idx in members:
                        a = sff - (f[idx] ** 2).sum(axis=0)
                        b = sfy - (f[idx] * y[idx]).sum(axis=0)
                        w = np.clip(b / (a + c * float(a.mean()) + 1e-12), 0.0, 1.0)
                        pred[idx] = f[idx] * w
                elif kind == "condition":
                    pred = f * condition_weight(f, s2, c)
                elif kind == "dispersion":
                    ff = (f**2).sum(axis=1, keepdims=True)
                    pred = f * ff / (ff + c * dispersion[:, None] + 1e-300)
                else:
                    pred = f * f**2 / (f**2 + c * s2)
                obj = objective(pred, f"{kind}={c}")
                if obj < best[0] - 1e-12:
                    best, best_pred = (obj, kind, c), pred
        _, kind, strength = best
        if kind == "none":
            return out, res
        st = out.state
        st.kind, st.strength = kind, strength
        if kind == "dispersion" and keep_rows:
            st.row_changes = y
        if kind == "gene":
            st.null_weight = np.clip(sfy / (sff + strength * float(sff.mean()) + 1e-12), 0.0, 1.0)
        return out, y - best_pred

    def apply(
        self,
        mean: np.ndarray,
        v: np.ndarray,
        *,
        gene_sigma2: np.ndarray,
        weights: np.ndarray | None = None,
        row_changes: np.ndarray | None = None,
        embedded: np.ndarray | None = None,
    ) -> np.ndarray:
        """Shrink predicted changes towards zero (a new array, or ``mean`` itself for ``"none"``).

        Parameters
        ----------
        mean, v
            The regression's predicted changes and variance factors.
        gene_sigma2
            Per-gene scale of the predictive variance.
        weights, row_changes
            Smoother weights of the predictions and the training changes they
            refer to (``"dispersion"`` only).
        embedded
            Whether each target has an embedding (``None``: the regression uses
            no source); targets without one keep the prior mean, since the
            strength was chosen on embedded targets.
        """
        st = self.state
        if st.kind == "none":
            return mean
        if st.kind == "gene":
            out = mean * st.null_weight[None, :]
        elif st.kind == "condition":
            out = mean * condition_weight(mean, v[:, None] * gene_sigma2[None, :], st.strength)
        elif st.kind == "dispersion":
            d = neighbour_dispersion(weights, row_changes, mean)
            ff = (mean**2).sum(axis=1, keepdims=True)
            out = mean * ff / (ff + st.strength * d[:, None] + 1e-300)
        else:
            s2 = v[:, None] * gene_sigma2[None, :]
            out = mean * mean**2 / (mean**2 + st.strength * s2 + 1e-300)
        if embedded is not None:
            out[~embedded] = mean[~embedded]
        return out
