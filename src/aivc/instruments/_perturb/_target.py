"""The change a perturbation makes on its own target gene.

A knockout lowers its own target gene (CRISPRa raises it), usually more than
any other gene, which a kernel regression gene by gene cannot learn. A target
never measured that is a gene of the panel gets, on its own gene, the median
change that the training singles made on theirs, in one of two forms (the one
with the lower leave-one-target-out error on the training singles):

- ``"shift"``: the median change of the mean log-expression, clipped so the
  predicted mean stays non-negative;
- ``"fraction"``: the median share of the expression left,
  ``expm1(level + change) / expm1(level)``, applied to the target's control
  level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aivc.data import DataValidationError
from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from aivc.instruments._base import PerturbationSummary

__all__ = ["TargetEffect", "TargetEffectState", "fraction_change"]

FORMS = ("shift", "fraction")


def fraction_change(fraction: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Change of a mean log-expression ``level`` when a ``fraction`` of the expression is left."""
    level = np.maximum(level, 0.0)
    return np.log1p(np.maximum(fraction, 0.0) * np.expm1(level)) - level


@dataclass
class TargetEffectState(FittedState):
    """Fitted state of the own-gene model.

    Attributes
    ----------
    change
        Median own-gene change of the training singles on the log scale
        (``None``: the own-gene model is off).
    fraction
        Median share of the expression left (1 when not estimated).
    form
        The form kept, ``"shift"`` or ``"fraction"``.
    sd
        Root mean square of the kept form's held-out errors (the predictive sd
        of an own-gene change; 0 when off).
    selection
        Held-out root mean square error of each form.
    """

    stage: ClassVar[str] = "target"

    change: float | None
    fraction: float
    form: str
    sd: float
    selection: dict[str, Any]

    def validate(self) -> None:
        if self.form not in FORMS or not (np.isfinite(self.fraction) and self.fraction >= 0):
            msg = (
                "The model directory is corrupted: its own-gene model must have form 'shift' or "
                "'fraction' and a finite, non-negative share of expression left. Got "
                f"{self.form!r} and {self.fraction!r}."
            )
            raise DataValidationError(msg)


class TargetEffect:
    """The own-gene change of unmeasured targets that are genes of the panel."""

    State = TargetEffectState

    def __init__(self, state: TargetEffectState) -> None:
        self.state = state

    @classmethod
    def off(cls) -> TargetEffect:
        """No own-gene model: every gene keeps the regression's prediction."""
        return cls(TargetEffectState(change=None, fraction=1.0, form="shift", sd=0.0, selection={}))

    @classmethod
    def fit(
        cls, summary: PerturbationSummary, single_rows: Sequence[int], *, enabled: bool = True
    ) -> tuple[TargetEffect, list[tuple[int, int, float]]]:
        """Fit both forms on the training singles and keep the one with the lower held-out error.

        Ties keep the shift. Needs at least three training targets that are
        genes of the panel; otherwise (or when not ``enabled``) the model is off.

        Parameters
        ----------
        summary
            The training pseudobulk.
        single_rows
            Rows of ``summary`` used as training singles.
        enabled
            Whether to fit the own-gene model at all.

        Returns
        -------
        The fitted component and ``(row, gene, held-out error)`` for every
        single (row index into ``single_rows``) whose target is a gene of the
        panel (empty when off).
        """
        if not enabled:
            return cls.off(), []
        gene_pos = {str(g): j for j, g in enumerate(summary.genes)}
        targets = [summary.perturbations[i] for i in single_rows]
        own = [(r, gene_pos[t]) for r, t in enumerate(targets) if t in gene_pos]
        if len({targets[r] for r, _ in own}) < 3:
            return cls.off(), []
        levels = np.array(
            [summary.control_mean[summary.contexts[single_rows[r]]][j] for r, j in own]
        )
        change = np.array([summary.delta[single_rows[r], j] for r, j in own])
        names = np.array([targets[r] for r, _ in own], dtype=object)
        expressed = levels > 1e-6
        fraction = np.where(
            expressed,
            np.expm1(np.maximum(levels + change, 0.0)) / np.expm1(np.maximum(levels, 1e-6)),
            1.0,
        )
        errors = {}
        loo_shift = np.array([np.median(change[names != n]) for n in names])
        errors["shift"] = change - np.maximum(loo_shift, -levels)
        kept_fraction = 1.0
        if expressed.sum() >= 3 and len(set(names[expressed])) >= 3:
            loo_frac = np.array([np.median(fraction[(names != n) & expressed]) for n in names])
            errors["fraction"] = change - fraction_change(loo_frac, levels)
            kept_fraction = float(np.median(fraction[expressed]))
        rms = {form: float(np.sqrt(np.mean(e**2))) for form, e in errors.items()}
        form = min(rms, key=lambda f: (rms[f], f != "shift"))
        state = TargetEffectState(
            change=float(np.median(change)),
            fraction=kept_fraction,
            form=form,
            sd=rms[form],
            selection={"target-effect|held-out rms": dict(rms)},
        )
        chosen = errors[form]
        return cls(state), [(r, j, float(e)) for (r, j), e in zip(own, chosen, strict=True)]

    def own_gene(
        self, targets: Sequence[str], gene_pos: dict[str, int], measured: set[str]
    ) -> list[tuple[int, int]]:
        """``(row, gene)`` of the targets that are genes of the panel and were never measured.

        A target in ``measured`` (measured in any context or dose) is left to
        the regression, which carries its measurements over to new contexts
        and doses.
        """
        if self.state.change is None:
            return []
        return [
            (i, gene_pos[t]) for i, t in enumerate(targets) if t in gene_pos and t not in measured
        ]

    def apply(
        self,
        targets: Sequence[str],
        mean: np.ndarray,
        var: np.ndarray,
        base: np.ndarray,
        gene_pos: dict[str, int],
        measured: set[str],
    ) -> None:
        """Set the own-gene change and variance of unmeasured single targets, in place.

        ``base`` holds each row's control mean log-expression.
        """
        st = self.state
        for i, j in self.own_gene(targets, gene_pos, measured):
            level = float(base[i, j])
            if st.form == "fraction":
                mean[i, j] = float(fraction_change(np.float64(st.fraction), level))
            else:
                mean[i, j] = max(st.change, -level)
            var[i, j] = st.sd**2

    def correct_held_out(
        self, residuals: np.ndarray, scales: np.ndarray, own: list[tuple[int, int, float]]
    ) -> None:
        """Put the own-gene model's held-out errors and sd into the singles' held-out residuals, in place."""
        if not own:
            return
        rows, cols, loo_err = (np.array(v) for v in zip(*own, strict=True))
        residuals[rows, cols] = loo_err
        scales[rows, cols] = max(self.state.sd, 1e-6)
