"""Request and response bodies of the REST API (pydantic models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CalibrationOut",
    "DatasetOut",
    "ErrorOut",
    "ExplainIn",
    "FitIn",
    "InstrumentOut",
    "JobOut",
    "PredictIn",
    "PredictOut",
    "ProposeIn",
    "ScreenIn",
]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Every error: what went wrong and what to do next."""

    detail: Any
    error_id: str | None = Field(
        default=None, description="Where the server log has the details, when it has some."
    )


class DatasetOut(BaseModel):
    name: str
    description: str
    source: str = Field(description="'registry' (AIVC_DATA_DIR) or 'memory'.")
    loaded: bool
    citation: str = ""


class InstrumentOut(BaseModel):
    name: str
    kind: str
    description: str
    capabilities: list[str]
    params: dict[str, Any] = Field(description="Keyword parameters and their defaults.")


class FitIn(_Strict):
    """Fit a registered instrument on a dataset, in the background."""

    dataset: str = Field(min_length=1, max_length=200, examples=["papalexi2021"])
    instrument: str = Field(min_length=1, max_length=200, examples=["linear-knowledge"])
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword hyperparameters of the instrument."
    )
    name: str | None = Field(
        default=None, pattern=_NAME_PATTERN, description="Model id (default: generated)."
    )
    holdout: bool = Field(
        default=True,
        description="Hold a seeded fifth of the measured perturbations out of training, so "
        "predictions can be compared with measurements the model never saw.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class JobOut(BaseModel):
    id: str
    kind: str
    params: dict[str, Any]
    state: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: float
    message: str
    result: dict[str, Any] | None = None
    error: str | None = None
    error_id: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None


class PredictIn(_Strict):
    """Perturbations to predict: ``"GENE"`` or ``"A+B"`` (the dataset's separator)."""

    perturbations: list[str] = Field(min_length=1, max_length=50, examples=[["STAT1"]])
    context: str | None = Field(default=None, max_length=200)
    top_k: int = Field(default=20, ge=1, le=500)
    level: float = Field(default=0.9, gt=0.0, lt=1.0, description="Interval level.")
    all_genes: bool = Field(
        default=False, description="Also return every gene's change (for volcano plots)."
    )


class GeneChange(BaseModel):
    gene: str
    delta: float
    lower: float | None = None
    upper: float | None = None
    de: str | None = Field(
        default=None, description="up / down when the interval excludes no change, else none."
    )
    observed: float | None = None


class DECall(BaseModel):
    gene: str
    delta: float
    call: str


class Prediction(BaseModel):
    perturbation: str
    context: str | None
    measured: bool
    observed_source: str | None
    n_observed_cells: int
    in_training: bool
    heldout: bool
    top_genes: list[GeneChange]
    de_genes: list[DECall] | None = Field(
        default=None,
        description="Genes whose interval excludes no change, by |delta| (models with intervals).",
    )
    pearson_observed: float | None = None
    interval_coverage: float | None = None
    genes: list[str] | None = None
    delta: list[float] | None = None
    lower: list[float] | None = None
    upper: list[float] | None = None
    observed: list[float | None] | None = None
    embedding: dict[str, Any] | None = Field(
        default=None,
        description="Control, predicted and observed mean states in the dataset's 2-D PCA "
        "(when all_genes and an embedding was computed).",
    )


class PredictOut(BaseModel):
    model: str
    instrument: str
    dataset: str
    level: float | None
    has_intervals: bool
    predictions: list[Prediction]


class CalibrationOut(BaseModel):
    model: str
    levels: list[float]
    coverage: list[float]
    n_perturbations: int
    perturbations: list[str]


class ExplainIn(_Strict):
    perturbation: str = Field(min_length=1, max_length=200, examples=["STAT1"])
    context: str | None = Field(default=None, max_length=200)
    n_top: int = Field(default=20, ge=5, le=200)


class ScreenIn(_Strict):
    """Score candidate perturbations under an objective and rank them."""

    objective: str = Field(
        min_length=3,
        max_length=2000,
        description="'up:GENE[,GENE...]', 'down:GENE' or 'towards:CONTEXT'.",
        examples=["down:CD274"],
    )
    candidates: list[str] | None = Field(
        default=None,
        max_length=5000,
        description="Single perturbations to rank (default: every measured gene of the model).",
    )
    pairs_of: list[str] | None = Field(
        default=None, max_length=200, description="Rank every pair of this panel instead."
    )
    context: str | None = Field(default=None, max_length=200)
    level: float = Field(default=0.9, gt=0.0, lt=1.0)
    top_k: int = Field(default=20, ge=1, le=500)


class ProposeIn(_Strict):
    """Suggest the next perturbations to measure."""

    strategy: str = Field(
        default="gp-ucb",
        max_length=100,
        description="Acquisition strategy: random, uncertainty, gp-ucb, degree-prior, aivc-design.",
    )
    batch_size: int = Field(default=10, ge=1, le=500)
    candidates: list[str] | None = Field(
        default=None,
        max_length=5000,
        description="Perturbations to choose from (default: every measured gene of the model).",
    )
    context: str | None = Field(default=None, max_length=200)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class CompoundFitIn(_Strict):
    """Fit the chemical manipulator (aivc-chem) on a profile dataset."""

    dataset: str = Field(min_length=1, max_length=200, examples=["lincs_cellpainting_a549"])
    name: str | None = Field(
        default=None, pattern=_NAME_PATTERN, description="Model id (default: generated)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class CompoundPredictIn(_Strict):
    """A compound (a name of the training data, or a SMILES) at one or more doses."""

    compound: str = Field(min_length=1, max_length=1000, examples=["CC(=O)Oc1ccccc1C(=O)O"])
    doses: list[float] = Field(min_length=1, max_length=50, examples=[[0.1, 1.0, 10.0]])
    dose_unit: str = Field(default="uM", max_length=8, description="pM, nM, uM, mM or M.")
    level: float = Field(default=0.9, gt=0.0, lt=1.0, description="Interval level.")
    top_k: int = Field(default=10, ge=1, le=100, description="Most changed features returned.")


class TemporalFitIn(_Strict):
    """Fit the temporal manipulator (aivc-time) on a time course."""

    dataset: str = Field(min_length=1, max_length=200, examples=["schiebinger2019"])
    name: str | None = Field(
        default=None, pattern=_NAME_PATTERN, description="Model id (default: generated)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class ForecastIn(_Strict):
    """Times (in the course's unit) to predict the cell population at."""

    times: list[float] = Field(min_length=1, max_length=20, examples=[[10.25, 11.5]])
    n_cells: int = Field(default=200, ge=1, le=2000)
    top_k: int = Field(
        default=10, ge=1, le=100, description="Most changed genes returned per time."
    )
