"""The measured single perturbations, used as they are by the other stages.

A single target measured in a context at a dose keeps its measured change
there (alone and inside combinations); a target measured at other doses of
the same context is interpolated linearly in log10-dose between the nearest
measured doses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aivc.instruments._perturb._kernel import log_dose
from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from aivc.instruments._base import PerturbationSummary

__all__ = ["MeasuredSingles", "MeasuredState"]


@dataclass
class MeasuredState(FittedState):
    """The measured singles.

    Attributes
    ----------
    keys
        ``[perturbation, context, dose]`` of each measured single.
    delta
        Their measured changes, singles x genes.
    """

    stage: ClassVar[str] = "measured"

    keys: list[list[Any]]
    delta: np.ndarray


class MeasuredSingles:
    """Look-up of measured single changes by target, context and dose."""

    State = MeasuredState

    def __init__(self, state: MeasuredState) -> None:
        self.state = state
        self._rows: dict[tuple[str, str | None], list[int]] = {}
        for i, (p, c, _) in enumerate(state.keys):
            self._rows.setdefault((p, c), []).append(i)

    @classmethod
    def fit(
        cls, summary: PerturbationSummary, doses: Sequence[float], orders: Sequence[int]
    ) -> MeasuredSingles:
        """The single perturbations (order 1) of the training summary."""
        keys = [
            [summary.perturbations[i], summary.contexts[i], float(doses[i])]
            for i, o in enumerate(orders)
            if o == 1
        ]
        delta = (
            summary.delta[[i for i, o in enumerate(orders) if o == 1]]
            if any(o == 1 for o in orders)
            else np.zeros((0, len(summary.genes)))
        )
        return cls(MeasuredState(keys=keys, delta=delta))

    def __len__(self) -> int:
        return len(self.state.keys)

    def single(self, target: str, context: str | None, dose: float) -> int | None:
        """Row of the single measured at exactly this target, context and dose, or ``None``."""
        rows = self._rows.get((target, context))
        if not rows:
            return None
        for i in rows:
            if abs(log_dose(self.state.keys[i][2]) - log_dose(dose)) < 1e-9:
                return i
        return None

    def dose_profile(self, target: str, context: str | None, dose: float) -> np.ndarray | None:
        """The change of a target measured at other doses of the same context, interpolated.

        Linear in log10-dose between the two measured doses around ``dose``;
        the nearest measured dose outside their range. ``None`` when the target
        was never measured with a dose in that context.
        """
        if dose <= 0:
            return None
        keys, delta = self.state.keys, self.state.delta
        rows = [i for i in self._rows.get((target, context), []) if keys[i][2] > 0]
        if not rows:
            return None
        ld = np.array([log_dose(keys[i][2]) for i in rows])
        order = np.argsort(ld)
        ld, rows = ld[order], [rows[i] for i in order]
        q = log_dose(dose)
        if q <= ld[0]:
            return delta[rows[0]]
        if q >= ld[-1]:
            return delta[rows[-1]]
        j = int(np.searchsorted(ld, q))
        w = (q - ld[j - 1]) / (ld[j] - ld[j - 1])
        return (1 - w) * delta[rows[j - 1]] + w * delta[rows[j]]

    def profile(self, target: str, context: str | None, dose: float) -> np.ndarray | None:
        """The measured change of a single target (exact, or interpolated over doses), or ``None``."""
        j = self.single(target, context, dose)
        if j is not None:
            return self.state.delta[j]
        return self.dose_profile(target, context, dose)
