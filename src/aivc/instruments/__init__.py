"""Virtual instruments: decoders and manipulators that read and transform representations.

Every instrument follows :class:`Instrument` (estimator-style parameters,
``fit``, safe ``save``/``load``); perturbation manipulators follow
:class:`PerturbationModel`. The baselines that every model is compared with
live here as ordinary instruments, and :func:`check_instrument` is the
conformance check any third-party instrument can run.
"""

from __future__ import annotations

from aivc.instruments._base import (
    FORMAT_VERSION,
    Instrument,
    NotFittedError,
    PerturbationModel,
    PerturbationSummary,
)
from aivc.instruments._baselines import (
    AdditiveModel,
    ControlModel,
    KnowledgeLinearModel,
    LinearModel,
    NearestNeighbourModel,
    TrainMeanModel,
)
from aivc.instruments._conformance import check_instrument
from aivc.instruments._gears import GearsModel
from aivc.instruments._registry import (
    InstrumentInfo,
    get_instrument_class,
    list_instruments,
    make_instrument,
    register_instrument,
)

__all__ = [
    "FORMAT_VERSION",
    "AdditiveModel",
    "ControlModel",
    "GearsModel",
    "Instrument",
    "InstrumentInfo",
    "KnowledgeLinearModel",
    "LinearModel",
    "NearestNeighbourModel",
    "NotFittedError",
    "PerturbationModel",
    "PerturbationSummary",
    "TrainMeanModel",
    "check_instrument",
    "get_instrument_class",
    "list_instruments",
    "make_instrument",
    "register_instrument",
]
