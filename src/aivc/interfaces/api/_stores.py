"""Chemical models in a workspace: fit aivc-chem on a profile dataset, ask for a compound's dose response.

A workspace keeps them in ``compound_models/<id>/`` (model directories as
:meth:`aivc.instruments.Instrument.save` writes them, e.g. by ``aivc fit
--model aivc-chem``); the REST API, the MCP server and the web page reach
them through :class:`CompoundModels`.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivc.interfaces.api._errors import ConflictError, NotFoundError, WorkspaceValidationError
from aivc.interfaces.api._schemas import _NAME_PATTERN

if TYPE_CHECKING:
    from aivc.instruments._chemical import ChemicalManipulator
    from aivc.instruments._temporal import TemporalManipulator

__all__ = ["CompoundModels", "SavedModels", "TemporalModels"]

logger = logging.getLogger(__name__)

_NAME = re.compile(_NAME_PATTERN)
MAX_DOSES = 50


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


class SavedModels:
    """Models of one kind kept as :meth:`~aivc.instruments.Instrument.save` directories in a folder.

    Parameters
    ----------
    root
        Folder of the model directories (created if missing).
    check_quota
        Called before a fit; raises when the workspace is full.
    errors
        Context manager factory turning library errors into the workspace's.
    """

    #: Instrument name, used in generated ids.
    instrument = ""
    #: What the API calls these models, for messages.
    what = "model"
    #: The REST path that fits one, for messages.
    endpoint = ""

    def __init__(
        self, root: Path, *, check_quota: Callable[[], None], errors: Callable[[], Any]
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_quota = check_quota
        self._errors = errors
        self._loaded: dict[str, Any] = {}
        self._lock = threading.RLock()

    def datasets(self) -> list[dict[str, Any]]:
        """Datasets present here that such a model can be fit on."""
        from aivc.data import dataset_entry

        out = []
        for name in self._dataset_names():
            entry = dataset_entry(name)
            if entry.path().exists():
                out.append(
                    {"name": name, "description": entry.description, "citation": entry.citation}
                )
        return out

    def _dataset_names(self) -> list[str]:
        raise NotImplementedError

    def _build(self, dataset: str, seed: int) -> Any:
        raise NotImplementedError

    def _info(self, model_id: str, model: Any, dataset: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def _ids(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists()
        )

    def fit(self, dataset: str, *, name: str | None = None, seed: int = 0) -> dict[str, Any]:
        """Fit the instrument on a registered dataset and save it; returns the model's record."""
        known = [d["name"] for d in self.datasets()]
        if dataset not in known:
            msg = f"Unknown dataset {dataset!r} for a {self.what}; available here: {known}."
            raise NotFoundError(msg)
        if name is not None and not _NAME.match(name):
            msg = f"Invalid model name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'."
            raise WorkspaceValidationError(msg)
        model_id = name or f"{self.instrument}-{dataset}-{uuid.uuid4().hex[:6]}"
        self._check_quota()
        with self._lock:
            if (self.root / model_id).exists():
                msg = f"A {self.what} named {model_id!r} already exists; choose another name."
                raise ConflictError(msg)
            with self._errors():
                model = self._build(dataset, seed)
            model.save(self.root / model_id)
            self._loaded[model_id] = model
        return self._info(model_id, model, dataset)

    def _model(self, model_id: str) -> Any:
        from aivc.instruments import Instrument

        with self._lock:
            if model_id not in self._loaded:
                if not _NAME.match(model_id) or model_id not in self._ids():
                    msg = f"Unknown {self.what} {model_id!r}; fit one with POST {self.endpoint}."
                    raise NotFoundError(msg)
                self._loaded[model_id] = Instrument.load(self.root / model_id)
            return self._loaded[model_id]

    def list(self) -> list[dict[str, Any]]:
        """Every model of this kind in the workspace."""
        return [self._info(i, self._model(i)) for i in self._ids()]


class CompoundModels(SavedModels):
    """The chemical models (aivc-chem) of a workspace."""

    instrument = "aivc-chem"
    what = "compound model"
    endpoint = "/api/compound-models"

    def _dataset_names(self) -> list[str]:
        from aivc.data import PROFILE_SCHEMAS

        return sorted(PROFILE_SCHEMAS)

    def _build(self, dataset: str, seed: int) -> ChemicalManipulator:
        from aivc.data import load_profiles
        from aivc.instruments._chemical import ChemicalManipulator

        adata, schema, _ = load_profiles(dataset)
        return ChemicalManipulator(seed=seed).fit(adata, schema)

    def _info(
        self, model_id: str, model: ChemicalManipulator, dataset: str | None = None
    ) -> dict[str, Any]:
        table = model.table_
        return {
            "id": model_id,
            "instrument": "aivc-chem",
            "dataset": dataset,
            "n_compounds": len(set(table.compounds)),
            "n_conditions": len(table.compounds),
            "n_features": len(table.features),
            "compounds": sorted(set(map(str, table.compounds))),
            "chosen": {fam: v["chosen"] for fam, v in model.selection_.items()},
        }

    def predict(
        self,
        model_id: str,
        compound: str,
        doses: Sequence[float],
        *,
        dose_unit: str = "uM",
        level: float = 0.9,
        top_k: int = 10,
    ) -> dict[str, Any]:
        """A compound's predicted dose response: the ``top_k`` most changed features, each as a curve
        with its interval, and the measured changes where the compound was measured."""
        from aivc.instruments._chemical import dose_response

        if not 1 <= len(doses) <= MAX_DOSES:
            msg = f"Give 1 to {MAX_DOSES} doses; got {len(doses)}."
            raise WorkspaceValidationError(msg)
        model = self._model(model_id)
        with self._errors():
            table = dose_response(model, compound, doses, dose_unit=dose_unit, level=level)
        n_d, n_f = len(doses), len(model.features_)
        delta = table["delta"].to_numpy().reshape(n_d, n_f)
        lower = table["lower"].to_numpy().reshape(n_d, n_f)
        upper = table["upper"].to_numpy().reshape(n_d, n_f)
        order = np.argsort(-np.abs(delta).max(0))[:top_k]
        measured = compound in model.train_.curves
        observed: list[dict[str, Any]] = []
        if measured:
            rows = np.flatnonzero(model.table_.compounds == compound)
            for j in order:
                observed.append(
                    {
                        "feature": model.features_[j],
                        "dose_um": [float(d) for d in model.table_.doses[rows]],
                        "delta": [float(v) for v in model.table_.delta[rows, j]],
                    }
                )
        smiles = (
            model.library_.structures.get(compound)
            if measured
            else model.library_.smiles_of(compound)
        )
        return {
            "model": model_id,
            "compound": compound,
            "smiles": smiles,
            "measured": measured,
            "candidate": model.selection_["seen" if measured else "unseen"]["chosen"],
            "doses": [float(d) for d in doses],
            "dose_unit": dose_unit,
            "level": level,
            "features": [
                {
                    "feature": model.features_[j],
                    "delta": _finite(delta[:, j]),
                    "lower": _finite(lower[:, j]),
                    "upper": _finite(upper[:, j]),
                }
                for j in order
            ],
            "observed": observed,
        }


MAX_TIMES = 20


class TemporalModels(SavedModels):
    """The temporal models (aivc-time) of a workspace."""

    instrument = "aivc-time"
    what = "temporal model"
    endpoint = "/api/temporal-models"

    def _dataset_names(self) -> list[str]:
        from aivc.evaluate.tasks.time import TIME_COURSES

        return sorted(TIME_COURSES)

    def _build(self, dataset: str, seed: int) -> TemporalManipulator:
        from aivc.evaluate.tasks.time import load_time_course
        from aivc.instruments._temporal import TemporalManipulator

        adata, key, kind, layer = load_time_course(dataset, None, None, None)
        return TemporalManipulator(seed=seed).fit(adata, time_key=key, expression=kind, layer=layer)

    def _info(
        self, model_id: str, model: TemporalManipulator, dataset: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": model_id,
            "instrument": "aivc-time",
            "dataset": dataset,
            "times": [float(t) for t in model.times_],
            "n_genes": len(model.genes_),
            "chosen": {use: v["chosen"] for use, v in model.selection_.items()},
        }

    def forecast(
        self, model_id: str, times: Sequence[float], *, n_cells: int = 200, top_k: int = 10
    ) -> dict[str, Any]:
        """The predicted population at each time: its cells on the first two components and the
        genes whose mean changes most from the last measured time before it."""
        if not 1 <= len(times) <= MAX_TIMES:
            msg = f"Give 1 to {MAX_TIMES} times; got {len(times)}."
            raise WorkspaceValidationError(msg)
        model = self._model(model_id)
        measured = model.times_
        out = []
        for t in times:
            with self._errors():
                cells = model.predict_cells(float(t), n_cells=n_cells)
            before = float(measured[measured <= t].max())
            ref = model.center_ + model.populations_[before].mean(0) @ model.components_
            change = model.center_ + cells.mean(0) @ model.components_ - ref
            order = np.argsort(-np.abs(change))[:top_k]
            use = "forecast" if t > measured[-1] else "interpolate"
            out.append(
                {
                    "time": float(t),
                    "rule": use,
                    "candidate": model.selection_[use]["chosen"],
                    "compared_with_time": before,
                    "cells_pc": np.round(cells[:, :2], 4).tolist(),
                    "top_genes": [
                        {"gene": model.genes_[j], "change": float(change[j])} for j in order
                    ],
                }
            )
        return {
            "model": model_id,
            "measured_times": [float(x) for x in measured],
            "measured_pc": [
                {
                    "time": float(x),
                    "cells_pc": np.round(model.populations_[float(x)][:, :2], 4).tolist(),
                }
                for x in measured
            ],
            "predictions": out,
        }
