"""Virtual instruments: decoders and manipulators that read and transform representations.

Every instrument follows :class:`Instrument` (estimator-style parameters,
``fit``, safe ``save``/``load``); perturbation manipulators follow
:class:`PerturbationModel`. The baselines that every model is compared with
live here as ordinary instruments, and :func:`check_instrument` is the
conformance check any third-party instrument can run.

Instruments register with :func:`register_instrument`; the registry finds
those defined outside this package (aivc's cell decoders and encoder, and
third-party packages) through the ``aivc.instruments`` entry-point group
(:data:`ENTRY_POINT_GROUP`), so this package never imports the layers above it.
"""

from __future__ import annotations

from aivc.instruments._base import (
    FORMAT_VERSION,
    Instrument,
    NotFittedError,
    PerturbationModel,
    PerturbationSummary,
    PredictionInterval,
    clip_interval,
    floor_at_zero,
)
from aivc.instruments._baselines import (
    AdditiveModel,
    ContextMeanModel,
    ControlModel,
    KnowledgeLinearModel,
    LinearModel,
    NearestNeighbourModel,
    PerturbationElsewhereModel,
    TrainMeanModel,
)
from aivc.instruments._conformal import (
    ConformalCalibrator,
    ConformalModel,
    CrossFitResult,
    check_level,
    conformal_quantile,
    cross_fit_residuals,
    jackknife_gene_scale,
)
from aivc.instruments._conformance import ConformanceError, check_decoder, check_instrument
from aivc.instruments._gears import GearsModel
from aivc.instruments._manipulator import PerturbModel
from aivc.instruments._model_dir import (
    ModelDirectory,
    fit_model_dir,
    load_model_dir,
    predict_model_dir,
    save_model_dir,
)
from aivc.instruments._registry import (
    ENTRY_POINT_GROUP,
    InstrumentInfo,
    get_instrument_class,
    list_instruments,
    make_instrument,
    register_instrument,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FORMAT_VERSION",
    "AdditiveModel",
    "ConformalCalibrator",
    "ConformalModel",
    "ConformanceError",
    "ContextMeanModel",
    "ControlModel",
    "CrossFitResult",
    "GearsModel",
    "Instrument",
    "InstrumentInfo",
    "KnowledgeLinearModel",
    "LinearModel",
    "ModelDirectory",
    "NearestNeighbourModel",
    "NotFittedError",
    "PerturbModel",
    "PerturbationElsewhereModel",
    "PerturbationModel",
    "PerturbationSummary",
    "PredictionInterval",
    "TrainMeanModel",
    "check_decoder",
    "check_instrument",
    "check_level",
    "clip_interval",
    "conformal_quantile",
    "cross_fit_residuals",
    "fit_model_dir",
    "floor_at_zero",
    "get_instrument_class",
    "jackknife_gene_scale",
    "list_instruments",
    "load_model_dir",
    "make_instrument",
    "predict_model_dir",
    "register_instrument",
    "save_model_dir",
]
