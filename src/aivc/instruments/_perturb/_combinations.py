"""Combinations: the sum of the singles plus learned interactions, and singles inferred from combinations.

A combination's change is the sum of its targets' single changes (measured in
the same context where available, inferred from combinations or predicted
otherwise) plus an interaction term ``theta_g1 * sum + theta_g2 * sum of
pairwise products`` per gene ``g``, shrunk towards coefficients pooled over
genes, learned from the measured combinations whose singles were all measured
and kept only if it lowers their leave-one-out error (three or more targets
use all pairs).

A target never measured alone but inside measured combinations gets its
single change inferred from them (jointly, shrunk towards the regression's
prediction with a weight chosen by recovering the measured singles from the
combinations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aivc.instruments import _manipulator_module as mm
from aivc.instruments._perturb._kernel import log_dose
from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from aivc.instruments._base import PerturbationSummary
    from aivc.instruments._perturb._measured import MeasuredSingles

__all__ = [
    "InferredSingles",
    "InferredState",
    "InteractionState",
    "Interactions",
    "additive_parts",
    "fit_interactions",
]

SINGLES_LAMBDA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)

#: Prediction of singles that were neither measured nor inferred:
#: ``(targets, log10-doses, control states) -> (changes, per-gene variances)``.
SinglePredictor = Callable[[list[str], np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- interactions
def fit_interactions(
    add: np.ndarray,
    prod: np.ndarray,
    y: np.ndarray,
    selection: dict[str, Any],
    *,
    enabled: bool = True,
) -> np.ndarray:
    """Per-gene interaction coefficients (genes x 2), zeros when they do not help.

    The residual of each combination over the sum of its singles is
    regressed, gene by gene, on ``[sum, sum of pairwise products]``; each
    gene's coefficients are shrunk towards the pooled ones with a strength
    chosen by leave-one-combination-out error, and the additive model (zero
    coefficients) is kept unless the interaction lowers that error. Fewer
    than five combinations (or not ``enabled``) keep the additive model.
    Scores are written into ``selection``.
    """
    n, g = y.shape
    zero = np.zeros((g, 2))
    if not enabled or n < 5:
        return zero
    r = y - add
    x = np.stack([add, prod], axis=-1)  # n x genes x 2
    xtx_i = np.einsum("ngk,ngl->ngkl", x, x)  # per row and gene
    xty_i = np.einsum("ngk,ng->ngk", x, r)
    xtx_g, xty_g = xtx_i.sum(0), xty_i.sum(0)  # genes x 2 x 2, genes x 2
    scale = float(np.mean(np.trace(xtx_g, axis1=1, axis2=2))) / 2 + 1e-12
    eye = np.eye(2)

    def solve(xtx: np.ndarray, xty: np.ndarray, kappa: float | None) -> np.ndarray:
        pooled = np.linalg.solve(xtx.sum(0) + 1e-3 * scale * g * eye, xty.sum(0))
        if kappa is None:
            return np.tile(pooled, (xtx.shape[0], 1))
        a = xtx + kappa * scale * eye
        b = xty + kappa * scale * pooled
        return np.linalg.solve(a, b[..., None])[..., 0]

    e0 = float(mm.top_gene_error(r, y).mean())
    selection["combinations|additive"] = e0
    best: tuple[float, float | str | None] = (e0, "additive")
    for kappa in (None, 10.0, 3.0, 1.0, 0.3):
        loo = np.empty_like(r)
        for i in range(n):
            th = solve(xtx_g - xtx_i[i], xty_g - xty_i[i], kappa)
            loo[i] = r[i] - np.einsum("gk,gk->g", x[i], th)
        e = float(mm.top_gene_error(loo, y).mean())
        selection[f"combinations|interaction|shrinkage={kappa}"] = e
        if e < best[0] - 1e-12:
            best = (e, kappa)
    if best[1] == "additive":
        return zero
    return solve(xtx_g, xty_g, best[1])  # type: ignore[arg-type]


@dataclass
class InteractionState(FittedState):
    """Fitted state of the combination interactions.

    Attributes
    ----------
    theta
        Genes x 2 coefficients on the sum of the singles and the sum of their
        pairwise products (zeros when not kept).
    interaction_var
        Per-gene variance of the combinations' residuals.
    selection
        Leave-one-combination-out error of the additive model and of each
        shrinkage strength.
    """

    stage: ClassVar[str] = "interactions"

    theta: np.ndarray
    interaction_var: np.ndarray
    selection: dict[str, Any]


class Interactions:
    """The interaction term of combinations on top of the sum of their singles."""

    State = InteractionState

    def __init__(self, state: InteractionState) -> None:
        self.state = state

    @classmethod
    def none(cls, n_genes: int) -> Interactions:
        """The additive model, with no residual variance (no combination was measured)."""
        return cls(
            InteractionState(
                theta=np.zeros((n_genes, 2)), interaction_var=np.zeros(n_genes), selection={}
            )
        )

    @classmethod
    def fit(
        cls,
        add: np.ndarray,
        prod: np.ndarray,
        var_add: np.ndarray,
        y: np.ndarray,
        identifiable: np.ndarray,
        *,
        enabled: bool = True,
    ) -> tuple[Interactions, np.ndarray, np.ndarray]:
        """Fit the interaction on the measured combinations.

        Parameters
        ----------
        add, prod, var_add
            Sum of the singles, sum of their pairwise products and the sum's
            variance, per combination (:func:`additive_parts`).
        y
            Measured changes of the combinations.
        identifiable
            Combinations whose singles were all measured in the same context
            and dose: the interaction is learned on them only.
        enabled
            Learn an interaction at all.

        Returns
        -------
        The fitted component, the combinations' residuals and their raw
        predictive sd.
        """
        selection: dict[str, Any] = {}
        theta = fit_interactions(
            add[identifiable], prod[identifiable], y[identifiable], selection, enabled=enabled
        )
        residuals = y - add - theta[:, 0] * add - theta[:, 1] * prod
        interaction_var = np.mean(residuals**2, axis=0)
        state = InteractionState(theta=theta, interaction_var=interaction_var, selection=selection)
        return cls(state), residuals, np.sqrt(var_add + interaction_var[None, :])

    def combine(self, add: np.ndarray, prod: np.ndarray) -> np.ndarray:
        """Predicted changes of combinations from their additive parts."""
        theta = self.state.theta
        return add + theta[:, 0] * add + theta[:, 1] * prod

    def variance(self, var_add: np.ndarray) -> np.ndarray:
        """Predictive variance of combinations from the variance of their sum."""
        return var_add * (1 + self.state.theta[:, 0]) ** 2 + self.state.interaction_var[None, :]


# ----------------------------------------------------------------------------- inferred singles
@dataclass
class InferredState(FittedState):
    """Singles inferred from the measured combinations.

    Attributes
    ----------
    keys
        ``[target, context, log10-dose]`` of each inferred single.
    delta
        Their inferred changes, singles x genes.
    var
        Per-gene variance of an inferred single (the mean squared error of
        measured singles recovered the same way).
    selection
        Top-gene error of the regression alone and of each prior weight.
    """

    stage: ClassVar[str] = "inferred"

    keys: list[list[Any]]
    delta: np.ndarray
    var: np.ndarray
    selection: dict[str, Any]


class InferredSingles:
    """Look-up of the singles inferred from combinations."""

    State = InferredState

    def __init__(self, state: InferredState) -> None:
        self.state = state
        self._rows = {(t, c, round(float(ld), 9)): j for j, (t, c, ld) in enumerate(state.keys)}

    @classmethod
    def none(cls, n_genes: int) -> InferredSingles:
        """No inferred single."""
        return cls(
            InferredState(
                keys=[], delta=np.zeros((0, n_genes)), var=np.zeros(n_genes), selection={}
            )
        )

    def lookup(self, target: str, context: str | None, dose: float) -> int | None:
        """Row of ``delta`` of a target inferred in this context and dose, or ``None``."""
        return self._rows.get((target, context, round(log_dose(dose), 9)))

    @classmethod
    def fit(
        cls,
        summary: PerturbationSummary,
        doses: Sequence[float],
        loo_single: np.ndarray | None,
        measured: MeasuredSingles,
        predict: SinglePredictor,
        *,
        enabled: bool = True,
    ) -> InferredSingles:
        """Infer the singles that were never measured alone from the measured combinations.

        A target measured only inside combinations (``A+C`` with ``C``
        measured alone) has an estimate ``delta(A+C) - delta(C)``; all such
        targets are solved jointly with
        :func:`~aivc.instruments._manipulator_module.combination_singles`,
        shrunk towards their predicted change with a weight chosen on the
        training data: every measured single that also occurs in a combination
        is in turn treated as unmeasured (with its held-out prediction
        ``loo_single`` as prior) and the weight with the lowest top-gene error
        of the recovered single is kept, or none when the prediction alone is
        better. The per-gene mean squared error of those recovered singles is
        the variance of an inferred single.

        Parameters
        ----------
        summary
            The training pseudobulk.
        doses
            Dose of each condition of ``summary``.
        loo_single
            Held-out predictions of the measured singles (rows of ``measured``),
            or ``None`` when the regression was not fitted on them.
        measured
            The measured singles.
        predict
            Prediction of a target asked for alone (the prior of an inferred single).
        enabled
            Infer singles at all.
        """
        g = len(summary.genes)
        out = cls.none(g)
        schema = summary.schema
        combo = [i for i, p in enumerate(summary.perturbations) if schema.order(p) >= 2]
        if not enabled or not combo or loo_single is None:
            return out
        keys = [
            [
                (t, summary.contexts[i], float(doses[i]))
                for t in schema.targets(summary.perturbations[i])
            ]
            for i in combo
        ]
        # row of each measured (target, context, dose) in the measured singles
        rows_of = {k: j for ks in keys for k in ks if (j := measured.single(*k)) is not None}
        unknown = sorted({k for ks in keys for k in ks if k not in rows_of}, key=str)
        if not unknown:
            return out
        held = sorted(rows_of, key=str)
        if len(held) < 5:
            return out
        base = np.stack([summary.control_mean[u[1]] for u in unknown])
        # the same prediction as for a target asked for alone, own gene included, as the
        # held-out singles' priors (loo_single) have it
        prior = predict([u[0] for u in unknown], np.array([log_dose(u[2]) for u in unknown]), base)[
            0
        ]
        y = summary.delta[combo]
        measured_delta = measured.state.delta

        def system(
            hidden: tuple[str, str | None, float] | None,
        ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
            unk = [*unknown, hidden] if hidden is not None else unknown
            pos = {u: j for j, u in enumerate(unk)}
            rows, sel = [], []
            for r, ks in enumerate(keys):
                idx = [pos[k] for k in ks if k in pos]
                if idx:
                    rows.append(idx)
                    sel.append(r)
            res = y[sel].copy()
            for a, r in enumerate(sel):
                for k in keys[r]:
                    if k not in pos:
                        res[a] -= measured_delta[rows_of[k]]
            pri = prior if hidden is None else np.vstack([prior, loo_single[rows_of[hidden]]])
            return rows, res, pri

        # choose the prior weight by recovering the measured singles from the combinations
        errors = {lam: np.zeros(g) for lam in SINGLES_LAMBDA_GRID}
        top: dict[float, list[float]] = {lam: [] for lam in SINGLES_LAMBDA_GRID}
        gp_err = []
        for h in held:
            truth = measured_delta[rows_of[h]][None, :]
            gp = loo_single[rows_of[h]][None, :]
            gp_err.append(float(mm.top_gene_error(gp - truth, truth)[0]))
            rows, res, pri = system(h)
            for lam in SINGLES_LAMBDA_GRID:
                est = mm.combination_singles(rows, res, pri, lam)[-1][None, :]
                top[lam].append(float(mm.top_gene_error(est - truth, truth)[0]))
                errors[lam] += (est[0] - truth[0]) ** 2
        selection = out.state.selection
        best: tuple[float, float | None] = (float(np.mean(gp_err)), None)
        selection["combination-singles|gp"] = best[0]
        for lam in SINGLES_LAMBDA_GRID:
            e = float(np.mean(top[lam]))
            selection[f"combination-singles|lambda={lam}"] = e
            if e < best[0] - 1e-12:
                best = (e, lam)
        if best[1] is None:
            return out
        return cls(
            InferredState(
                keys=[[t, c, log_dose(d)] for t, c, d in unknown],
                delta=mm.combination_singles(*system(None), best[1]),
                var=errors[best[1]] / len(held),
                selection=selection,
            )
        )


# ----------------------------------------------------------------------------- additive parts
def additive_parts(
    targets: Sequence[Sequence[str]],
    contexts: Sequence[str | None],
    doses: Sequence[float],
    control_mean: np.ndarray,
    *,
    measured: MeasuredSingles,
    inferred: InferredSingles,
    predict: SinglePredictor,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of single changes, sum of their pairwise products and the sum's variance, per condition.

    Parameters
    ----------
    targets
        The targets of each condition.
    contexts, doses
        Context and dose of each condition.
    control_mean
        Control mean log-expression of each condition's context, conditions x genes.
    measured, inferred
        Measured singles (variance ``noise``) and singles inferred from
        combinations, used first.
    predict
        Prediction of the other singles.
    noise
        Per-gene noise variance of a measured single.
    """
    g = control_mean.shape[1]
    n = len(targets)
    units: list[tuple[int, str]] = []
    parts: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    gp_t, gp_ld, gp_z, gp_key = [], [], [], []
    for i, ts in enumerate(targets):
        for t in ts:
            units.append((i, t))
            profile = measured.profile(t, contexts[i], doses[i])
            j = inferred.lookup(t, contexts[i], doses[i])
            if profile is not None:
                parts[(i, t)] = (profile, noise)
            elif j is not None:
                parts[(i, t)] = (inferred.state.delta[j], inferred.state.var)
            else:
                gp_t.append(t)
                gp_ld.append(log_dose(doses[i]))
                gp_z.append(control_mean[i])
                gp_key.append((i, t))
    if gp_t:
        mean, var = predict(gp_t, np.asarray(gp_ld), np.stack(gp_z))
        for key, m_, v_ in zip(gp_key, mean, var, strict=True):
            parts[key] = (m_, v_)
    add = np.zeros((n, g))
    var_add = np.zeros((n, g))
    prod = np.zeros((n, g))
    by_cond: dict[int, list[np.ndarray]] = {}
    for i, t in units:
        m_, v_ = parts[(i, t)]
        add[i] += m_
        var_add[i] += v_
        by_cond.setdefault(i, []).append(m_)
    for i, vals in by_cond.items():
        for a in range(len(vals)):
            for b in range(a + 1, len(vals)):
                prod[i] += vals[a] * vals[b]
    return add, prod, var_add
