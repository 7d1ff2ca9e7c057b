"""Context transfer: how a perturbation's change carries over between cell contexts.

Contexts are compared by their control states (the control mean
log-expression). The kernel over conditions multiplies the target kernel
(plus a constant ``CONTEXT_BIAS``) by a kernel between control states whose
width is ``tau`` times the median squared distance between the training
contexts. The mean reversion ``rho`` lets the perturbed state partly keep the
level of the nearest contexts rather than their change: the regression is
fitted on ``y + rho (z - center)`` and predictions subtract ``rho (z -
center)``. ``tau`` and ``rho`` (and, with several candidates, the ridge) are
chosen by leave-one-context-out error on the training contexts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from aivc.instruments import _manipulator_module as mm
from aivc.instruments._perturb._state import FittedState

__all__ = ["CONTEXT_BIAS", "ContextState", "ContextTransfer"]

CONTEXT_BIAS = 0.2
TAU_START = 0.2  # the width used while the embedding sources are chosen
TAU_GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
RHO_GRID = (0.0, 0.1, 0.2, 0.35, 0.5)


@dataclass
class ContextState(FittedState):
    """Fitted state of the context transfer.

    Attributes
    ----------
    scale
        Median squared distance between the training contexts' control
        states (``None`` with fewer than two contexts: no context kernel).
    center
        Mean control state of the contexts (zeros without a context kernel).
    tau
        Width of the context kernel, relative to ``scale``.
    rho
        Mean reversion towards the level of the nearest contexts.
    selection
        Leave-one-context-out error of every candidate.
    """

    stage: ClassVar[str] = "context"

    scale: float | None
    center: np.ndarray
    tau: float
    rho: float
    selection: dict[str, Any]


class ContextTransfer:
    """The context kernel and mean reversion of ``aivc-perturb``."""

    State = ContextState

    def __init__(self, state: ContextState) -> None:
        self.state = state

    @classmethod
    def from_controls(
        cls, control_mean: dict[str | None, np.ndarray], n_genes: int
    ) -> ContextTransfer:
        """The contexts' geometry from their control means (``tau`` at its start value, no reversion)."""
        keys = [k for k in control_mean if k is not None]
        if len(keys) >= 2:
            states = np.stack([control_mean[k] for k in keys])
            d2 = ((states[:, None, :] - states[None, :, :]) ** 2).sum(-1)
            scale: float | None = float(np.median(d2[np.triu_indices(len(keys), 1)]))
            center = states.mean(axis=0)
        else:
            scale, center = None, np.zeros(n_genes)
        return cls(ContextState(scale=scale, center=center, tau=TAU_START, rho=0.0, selection={}))

    def combine(self, k: np.ndarray, za: np.ndarray, zb: np.ndarray, tau: float) -> np.ndarray:
        """The kernel over conditions from a target kernel ``k`` and the control states ``za``, ``zb``."""
        if self.state.scale is None:
            return k
        kc = mm.context_kernel(za, zb, scale=self.state.scale, tau=tau)
        return (k + CONTEXT_BIAS) * kc

    def shift(self, z: np.ndarray) -> np.ndarray:
        """The mean-reversion offset ``rho (z - center)`` of control states ``z``."""
        return self.state.rho * (z - self.state.center)

    def choose(
        self,
        row_kernel: Callable[[float], np.ndarray],
        targets: Sequence[str],
        contexts: Sequence[str | None],
        states: np.ndarray,
        y: np.ndarray,
        ridges: Sequence[float],
        ridge: float,
    ) -> float:
        """Choose ``tau`` and ``rho`` (and the ridge among ``ridges``) by leave-one-context-out error.

        Each training context is held out in turn and its conditions whose
        target was measured in another context are predicted from the rest.
        Nothing changes without a context kernel or when no target was
        measured in two contexts.

        Parameters
        ----------
        row_kernel
            Kernel between the training rows for a context width ``tau``.
        targets, contexts, states
            Target, context and control state of each training row.
        y
            Training changes, rows x genes.
        ridges
            Candidate ridge penalties (relative to the kernel's mean diagonal).
        ridge
            The ridge chosen so far (kept when nothing is scored).

        Returns
        -------
        The chosen ridge.
        """
        st = self.state
        if st.scale is None:
            return ridge
        per_target: dict[str, set] = {}
        for t, c in zip(targets, contexts, strict=True):
            per_target.setdefault(t, set()).add(c)
        if not any(len(v) >= 2 for v in per_target.values()):
            return ridge
        names = np.asarray(targets, dtype=object)
        z = states
        best = (np.inf, st.tau, 0.0, ridge)
        ctx_arr = np.asarray([str(c) for c in contexts])
        for tau in TAU_GRID:
            k_all = row_kernel(tau)
            errs = {(rho, lam): 0.0 for rho in RHO_GRID for lam in ridges}
            n_scored = 0
            for c in np.unique(ctx_arr):
                test = np.flatnonzero(ctx_arr == c)
                train = np.flatnonzero(ctx_arr != c)
                seen = set(names[train])
                test = np.asarray([i for i in test if names[i] in seen], dtype=int)
                if len(test) == 0 or len(train) < 2:
                    continue
                n_scored += len(test)
                ktr = k_all[np.ix_(train, train)]
                kte = k_all[np.ix_(test, train)]
                scale = float(np.mean(np.diag(ktr)))
                shift_tr = z[train] - st.center
                shift_te = z[test] - st.center
                for lam in ridges:
                    inv = np.linalg.inv(ktr + lam * scale * np.eye(len(train)))
                    w = kte @ inv
                    hy = w @ y[train]
                    hs = w @ shift_tr
                    rs = w.sum(axis=1, keepdims=True)
                    for rho in RHO_GRID:
                        yt = y[train] + rho * shift_tr
                        m = yt.mean(axis=0)
                        pred = m + (hy + rho * hs - rs * m) - rho * shift_te
                        errs[(rho, lam)] += float(mm.top_gene_error(pred - y[test], y[test]).sum())
            if n_scored == 0:
                return ridge
            for (rho, lam), e in errs.items():
                e /= n_scored
                st.selection[f"context|tau={tau}|rho={rho}|ridge={lam}"] = e
                if e < best[0] - 1e-12:
                    best = (e, tau, rho, lam)
        _, st.tau, st.rho, ridge = best
        return ridge
