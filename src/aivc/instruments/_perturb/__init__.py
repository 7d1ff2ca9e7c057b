"""The stages of ``aivc-perturb``, each a small component with its own declared fitted state.

=================  ==================================================================
module             stage
=================  ==================================================================
``_embeddings``    target embedding tables (knowledge and data sources)
``_kernel``        knowledge-kernel regression: the GP over target embeddings, its
                   source and ridge choice, the predictive variance
``_context``       context transfer: context kernel width and mean reversion
``_target``        the change of a target's own gene
``_shrinkage``     shrinkage of unmeasured targets' changes towards no change
``_measured``      the measured singles (with dose interpolation)
``_combinations``  combination interactions, and singles inferred from combinations
``_calibration``   conformal intervals around the raw predictive sd
``_cells``         predicted cells (detection shift)
``_blend``         the blend with the simple baselines, and its Mondrian intervals
``_state``         fitted-state declarations and the save/load derived from them
=================  ==================================================================

:class:`aivc.instruments.PerturbModel` composes them.
"""

from __future__ import annotations

from aivc.instruments._perturb._blend import Blend, BlendState
from aivc.instruments._perturb._calibration import Calibration, CalibrationState
from aivc.instruments._perturb._cells import CellGeneration, CellState
from aivc.instruments._perturb._combinations import (
    InferredSingles,
    InferredState,
    Interactions,
    InteractionState,
    additive_parts,
    fit_interactions,
)
from aivc.instruments._perturb._context import ContextState, ContextTransfer
from aivc.instruments._perturb._embeddings import EmbeddingTables
from aivc.instruments._perturb._kernel import KernelRegression, KernelState, TrainingRows
from aivc.instruments._perturb._measured import MeasuredSingles, MeasuredState
from aivc.instruments._perturb._shrinkage import NullShrinkage, ShrinkageState
from aivc.instruments._perturb._state import FittedState, dump_state, load_state
from aivc.instruments._perturb._target import TargetEffect, TargetEffectState

__all__ = [
    "Blend",
    "BlendState",
    "Calibration",
    "CalibrationState",
    "CellGeneration",
    "CellState",
    "ContextState",
    "ContextTransfer",
    "EmbeddingTables",
    "FittedState",
    "InferredSingles",
    "InferredState",
    "InteractionState",
    "Interactions",
    "KernelRegression",
    "KernelState",
    "MeasuredSingles",
    "MeasuredState",
    "NullShrinkage",
    "ShrinkageState",
    "TargetEffect",
    "TargetEffectState",
    "TrainingRows",
    "additive_parts",
    "dump_state",
    "fit_interactions",
    "load_state",
]
