"""Calibration: conformal intervals around the predicted changes.

The raw predictive sd of a change comes from the stages that made it (the
regression's variance times its per-gene scale, the own-gene model's sd, the
variance of inferred singles and of the combination residuals). Intervals
use a conformal quantile (:class:`aivc.instruments._conformal.ConformalCalibrator`)
of the held-out residuals of the training conditions divided by their raw
sd, pooled over genes, separately for singles (``"order1"``) and
combinations (``"order2"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aivc.instruments._conformal import ConformalCalibrator
from aivc.instruments._perturb._state import FittedState

__all__ = ["Calibration", "CalibrationState"]


@dataclass
class CalibrationState(FittedState):
    """Fitted state of the calibration.

    Attributes
    ----------
    calibrator
        Conformal calibrator of the held-out residuals over their raw sd.
    """

    stage: ClassVar[str] = "calibration"

    calibrator: ConformalCalibrator


def order_group(order: int) -> str:
    """Calibration group of a perturbation with ``order`` targets."""
    return f"order{min(order, 2)}"


class Calibration:
    """Conformal intervals from raw predictive sds."""

    State = CalibrationState

    def __init__(self, state: CalibrationState) -> None:
        self.state = state

    @classmethod
    def fit(
        cls, residuals: Sequence[np.ndarray], scales: Sequence[np.ndarray], groups: Sequence[str]
    ) -> Calibration:
        """Calibrate on held-out ``residuals`` and their raw ``scales`` (blocks of rows x genes).

        ``groups`` holds the calibration group of every row of the stacked blocks.
        """
        calibrator = ConformalCalibrator(pooling="genes", min_group_size=5).fit(
            np.vstack(residuals), np.vstack(scales), groups=list(groups)
        )
        return cls(CalibrationState(calibrator=calibrator))

    def interval(
        self, delta: np.ndarray, scale: np.ndarray, orders: Sequence[int], *, level: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` at ``level`` for changes of perturbations with ``orders`` targets."""
        groups = [order_group(o) for o in orders]
        return self.state.calibrator.interval(delta, scale, level=level, groups=groups)
