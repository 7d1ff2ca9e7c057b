"""Knowledge-kernel regression: a Gaussian process over the targets' embeddings.

The training single perturbations' changes are regressed on a kernel between
conditions, ``K = (K_target + beta) * K_context`` (:mod:`._context`), with
the mean training change as prior mean. ``K_target`` averages the cosine
kernels of the targets' embeddings from the chosen sources
(:mod:`._embeddings`) plus an identity term for the same target (times a
log-dose kernel). The sources and the ridge penalty are chosen by
closed-form leave-one-target-out error on the training conditions; the prior
mean alone (the train-mean prediction) is one of the candidates, so the model
shrinks to it where embeddings carry no information.

The predictive variance of a change is the GP posterior variance (plus
noise) times a per-gene scale estimated from the leave-one-target-out
residuals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from aivc.instruments import _manipulator_module as mm
from aivc.instruments._perturb._context import CONTEXT_BIAS
from aivc.instruments._perturb._embeddings import KNOWLEDGE_SOURCES, EmbeddingTables
from aivc.instruments._perturb._shrinkage import choose_prior_scale
from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from aivc.data import PerturbationSchema
    from aivc.instruments._base import PerturbationSummary
    from aivc.instruments._perturb._context import ContextTransfer

__all__ = ["KernelHeldOut", "KernelRegression", "KernelState", "TrainingRows", "log_dose"]

RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_CHUNK = 2048  # prediction rows per kernel block


def log_dose(d: float) -> float:
    """``log10`` of a dose; 0 for no dose."""
    return float(np.log10(d)) if d > 0 else 0.0


class TrainingRows(NamedTuple):
    """The conditions the regression is fitted on: the measured singles (or, when no target
    was measured alone, every condition, each combination as one target)."""

    index: list[int]  # rows of the summary
    targets: list[str]
    log_doses: np.ndarray
    contexts: list[str | None]
    states: np.ndarray  # control mean of each row's context
    y: np.ndarray  # measured changes, rows x genes

    @classmethod
    def from_summary(
        cls, summary: PerturbationSummary, doses: Sequence[float], orders: Sequence[int]
    ) -> TrainingRows:
        index = [i for i, o in enumerate(orders) if o == 1]
        if not index:  # only combinations measured: their sum of targets is used
            index = list(range(len(orders)))
        contexts = [summary.contexts[i] for i in index]
        return cls(
            index=index,
            targets=[summary.perturbations[i] for i in index],
            log_doses=np.array([log_dose(doses[i]) for i in index]),
            contexts=contexts,
            states=np.stack([summary.control_mean[c] for c in contexts]),
            y=summary.delta[index],
        )


class KernelHeldOut(NamedTuple):
    """Leave-one-target-out quantities of the final fit, for the stages fitted after it."""

    kernel: np.ndarray  # kernel between the training rows
    residuals: np.ndarray  # held-out residuals, rows x genes
    variance: np.ndarray  # held-out variance factor per row
    groups: np.ndarray  # held-out group (target) of each row
    ridge: float  # absolute ridge penalty
    n_targets: int


@dataclass
class KernelState(FittedState):
    """Fitted state of the knowledge-kernel regression.

    Attributes
    ----------
    sources
        Embedding sources used (empty: the prior mean alone won).
    tables, table_targets
        The used sources' embedding tables (float32) and the target of each row.
    identity
        Whether the target kernel adds an identity term (same target across
        contexts and doses).
    row_targets, row_contexts, row_log_doses, row_states
        Target, context, log10-dose and control state of each training row.
    ridge
        Ridge penalty, relative to ``kernel_scale``.
    kernel_scale
        Mean diagonal of the training kernel.
    prior_scale
        Factor of the mean training change in the prior mean.
    prior_mean
        The prior mean change.
    alpha, inverse
        Dual coefficients and ``(K + lambda I)^-1`` of the fit.
    gene_weight
        Per-gene blend weight of the deviation from the prior mean (ones
        unless the gene shrinkage is on).
    gene_sigma2
        Per-gene scale of the predictive variance.
    selection
        Leave-one-target-out error of every candidate source group and ridge
        (and prior scale).
    """

    stage: ClassVar[str] = "kernel"

    sources: list[str]
    tables: dict[str, np.ndarray]
    table_targets: dict[str, list[str]]
    identity: bool
    row_targets: list[str]
    row_contexts: list[str | None]
    row_log_doses: np.ndarray
    row_states: np.ndarray
    ridge: float
    kernel_scale: float
    prior_scale: float
    prior_mean: np.ndarray
    alpha: np.ndarray
    inverse: np.ndarray
    gene_weight: np.ndarray
    gene_sigma2: np.ndarray
    selection: dict[str, Any]

    def validate(self) -> None:
        from aivc.data import DataValidationError

        used = set(self.sources)
        if set(self.tables) != used or set(self.table_targets) != used:
            msg = (
                f"The model directory is corrupted: its kernel uses the sources {self.sources} but "
                f"stores the tables {list(self.tables)}."
            )
            raise DataValidationError(msg)


def target_kernel(
    tables: EmbeddingTables,
    sources: Sequence[str],
    identity: bool,
    ta: Sequence[str],
    la: np.ndarray,
    tb: Sequence[str],
    lb: np.ndarray,
) -> np.ndarray:
    """Target kernel: mean of the sources' cosine kernels plus the identity (x dose kernel)."""
    dose = mm.dose_kernel(la, lb)
    k = np.zeros((len(ta), len(tb)))
    for s in sources:
        ks = mm.linear_kernel(tables.embed(s, ta), tables.embed(s, tb))
        k += ks * dose if s == "features" else ks
    if sources:
        k /= len(sources)
    if not identity:
        return k
    same = np.asarray(ta, dtype=object)[:, None] == np.asarray(tb, dtype=object)[None, :]
    return k + same * dose


class KernelRegression:
    """The Gaussian process over target embeddings (see the module docstring)."""

    State = KernelState

    def __init__(self, state: KernelState) -> None:
        self.state = state
        self.tables = EmbeddingTables(state.tables, state.table_targets)

    # ------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        rows: TrainingRows,
        tables: EmbeddingTables,
        schema: PerturbationSchema,
        context: ContextTransfer,
        *,
        auto: bool = True,
        ridge: float | None = None,
        gene_shrinkage: bool = False,
        choose_prior: bool = False,
    ) -> tuple[KernelRegression, KernelHeldOut]:
        """Choose the sources and the ridge, then fit the regression on all training rows.

        Parameters
        ----------
        rows
            The training rows.
        tables
            Every available embedding table.
        schema
            The dataset schema (to split combination labels into targets).
        context
            The context transfer; its ``tau`` and ``rho`` are chosen here too
            (:meth:`ContextTransfer.choose`).
        auto
            Choose among source groups (knowledge, data, both); otherwise all
            available sources form the one candidate.
        ridge
            Fixed ridge penalty, or ``None`` to choose it from a grid.
        gene_shrinkage
            Blend the deviation from the prior mean gene by gene towards 0.
        choose_prior
            Choose the prior-mean scale with the ridge
            (:func:`._shrinkage.choose_prior_scale`).

        Returns
        -------
        The fitted regression and its held-out quantities.
        """
        targets, y, z_rows = rows.targets, rows.y, rows.states
        n_genes = y.shape[1]
        available = tables.sources
        # the identity term links the same target across contexts and doses; with one row per
        # target it would only act as extra noise on the training rows
        identity = len(set(targets)) < len(targets) or not available
        selection: dict[str, Any] = {}

        def row_kernel(sources: Sequence[str], tau: float) -> np.ndarray:
            k = target_kernel(
                tables, sources, identity, targets, rows.log_doses, targets, rows.log_doses
            )
            return context.combine(k, z_rows, z_rows, tau)

        group_ids = pd.factorize(pd.Series(targets))[0]
        n_targets = len(set(targets))
        tau0 = context.state.tau
        # candidate source groups (few, so that choosing among ~20 training targets stays honest):
        # the fused knowledge sources, the fused data sources, and both; a source must embed at
        # least half of the training targets to be a candidate
        train_targets = {u for r in targets for u in schema.targets(r)}
        covered = {
            s
            for s in available
            if sum(tables.has(s, u) for u in train_targets) >= 0.5 * len(train_targets)
        }
        know = tuple(s for s in available if s in KNOWLEDGE_SOURCES and s in covered)
        data = tuple(s for s in available if s not in KNOWLEDGE_SOURCES and s in covered)
        candidates = [c for c in (know, data) if c]
        if know and data:
            candidates.append(know + data)
        if not auto:
            candidates = [tuple(available)] if available else []
        lams = [float(ridge)] if ridge is not None else list(RIDGE_GRID)

        best: tuple[float, tuple[str, ...], float] = (np.inf, (), lams[-1])
        if n_targets >= 3:
            yc = y - y.mean(axis=0)
            top = mm.top_gene_index(y)
            base_err = float(mm.top_gene_error(-yc * 1.0, y, top=top).mean())
            selection["prior-mean"] = base_err
            best = (base_err, (), lams[-1])
            for cand in candidates:
                k = row_kernel(cand, tau0)
                scale = float(np.mean(np.diag(k)))
                loo = mm.grouped_loo_top(k, yc, group_ids, [r * scale for r in lams], top)
                for lam, res_top in zip(lams, loo, strict=True):
                    err = float((res_top**2).mean(axis=1).mean())
                    selection[f"{'+'.join(cand)}|ridge={lam}"] = err
                    if err < best[0] - 1e-12:
                        best = (err, cand, lam)
        else:
            best = (
                np.inf,
                tuple(available),
                lams[min(2, len(lams) - 1)] if len(lams) > 1 else lams[0],
            )
        sources = list(best[1])
        ridge_ = float(best[2])
        ridge_ = context.choose(
            lambda tau: row_kernel(sources, tau),
            targets,
            rows.contexts,
            z_rows,
            y,
            [ridge_] if n_targets >= 3 or ridge is not None else lams,
            ridge_,
        )

        # final fit on all training rows
        k = row_kernel(sources, context.state.tau)
        diag_mean = float(np.mean(np.diag(k)))
        kernel_scale = diag_mean if diag_mean > 1e-12 else 1.0
        yt = y + context.shift(z_rows)
        prior_scale = 1.0
        if choose_prior and n_targets >= 3:
            prior_scale, ridge_, chosen = choose_prior_scale(
                k, y, yt, group_ids, kernel_scale=kernel_scale, ridge=ridge_, fixed_ridge=ridge
            )
            selection.update(chosen)
        prior_mean = prior_scale * yt.mean(axis=0)
        yc = yt - prior_mean
        lam_abs = ridge_ * kernel_scale
        fit = mm.fit_kernel_ridge(k, yc, lam_abs)
        alpha, inverse = fit.alpha, fit.inverse
        groups = group_ids if n_targets >= 3 else np.arange(len(targets))
        res, var = mm.grouped_loo(k, yc, groups, [lam_abs])[0]
        if not (sources or n_targets < 3):
            # prior mean alone: held-out residuals of the (scaled) mean
            res = yc + prior_scale * (yt - yt.mean(axis=0)) / max(len(yc) - 1, 1)
        gene_weight = np.ones(n_genes)
        if gene_shrinkage and sources and n_targets >= 3:
            # per-gene empirical-Bayes blend of the GP deviation and the prior mean: the weight is
            # the regression of the measured on the held-out predicted deviation, shrunk towards 1
            f = yc - res
            sff, sfy = (f**2).sum(axis=0), (f * yc).sum(axis=0)
            m = float(sff.mean()) + 1e-12
            gene_weight = np.clip((sfy + m) / (sff + m), 0.0, 1.0)
            alpha = alpha * gene_weight
            res = yc - f * gene_weight
        gene_sigma2 = np.maximum(np.mean(res**2 / np.maximum(var, 1e-12)[:, None], axis=0), 1e-12)
        used = tables.subset(sources)
        state = KernelState(
            sources=sources,
            tables=used.values,
            table_targets=used.targets,
            identity=identity,
            row_targets=list(targets),
            row_contexts=list(rows.contexts),
            row_log_doses=rows.log_doses,
            row_states=z_rows,
            ridge=ridge_,
            kernel_scale=kernel_scale,
            prior_scale=prior_scale,
            prior_mean=prior_mean,
            alpha=alpha,
            inverse=inverse,
            gene_weight=gene_weight,
            gene_sigma2=gene_sigma2,
            selection=selection,
        )
        held = KernelHeldOut(
            kernel=k, residuals=res, variance=var, groups=groups, ridge=lam_abs, n_targets=n_targets
        )
        return cls(state), held

    # ------------------------------------------------------------------------- prediction
    def kernel(
        self,
        context: ContextTransfer,
        ta: Sequence[str],
        la: np.ndarray,
        za: np.ndarray,
        tau: float | None = None,
    ) -> np.ndarray:
        """Kernel between conditions (targets, log10-doses, control states) and the training rows."""
        st = self.state
        k = target_kernel(
            self.tables, st.sources, st.identity, ta, la, st.row_targets, st.row_log_doses
        )
        return context.combine(k, za, st.row_states, context.state.tau if tau is None else tau)

    def target_diagonal(self, targets: Sequence[str]) -> np.ndarray:
        """``k(t, t)`` of the target kernel, without building the full matrix."""
        st = self.state
        d = np.zeros(len(targets))
        for s in st.sources:
            d += np.array([self.tables.has(s, t) for t in targets], dtype=np.float64)
        if st.sources:
            d /= len(st.sources)
        return d + 1.0 if st.identity else d

    def embedded(self, targets: Sequence[str]) -> np.ndarray:
        """Whether each target has an embedding in any used source."""
        return np.array([any(self.tables.has(s, t) for s in self.state.sources) for t in targets])

    def predict(
        self,
        targets: list[str],
        log_doses: np.ndarray,
        states: np.ndarray,
        context: ContextTransfer,
        *,
        weights: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """Posterior mean (change) and variance factor of single targets in given control states.

        With ``weights``, also the smoother weights ``k (K + lam I)^-1`` of the
        training rows in each mean (targets x training rows).
        """
        st = self.state
        if not targets:
            g = len(st.prior_mean)
            empty = (np.zeros((0, g)), np.zeros(0))
            return (*empty, np.zeros((0, len(st.row_targets)))) if weights else empty
        out_mean, out_var, out_weights = [], [], []
        scaled = context.state.scale
        for start in range(0, len(targets), _CHUNK):
            sl = slice(start, start + _CHUNK)
            t, ld, z = targets[sl], log_doses[sl], states[sl]
            k = self.kernel(context, t, ld, z)
            # a target without embeddings keeps the prior variance of an embedded one
            kss = self.target_diagonal(t)
            kss = np.maximum(kss, st.kernel_scale - (CONTEXT_BIAS if scaled else 0.0))
            if scaled is not None:
                kss = kss + CONTEXT_BIAS
            mean = st.prior_mean + k @ st.alpha - context.shift(z)
            v = kss - np.einsum("ij,jk,ik->i", k, st.inverse, k) + st.ridge * st.kernel_scale
            v = np.maximum(v, 1e-12)
            out_mean.append(mean)
            out_var.append(v)
            if weights:
                out_weights.append(k @ st.inverse)
        if weights:
            return np.vstack(out_mean), np.concatenate(out_var), np.vstack(out_weights)
        return np.vstack(out_mean), np.concatenate(out_var)
