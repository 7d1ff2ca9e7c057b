"""The state behind the REST API, the web page and the MCP server.

A :class:`Workspace` is a directory plus in-memory caches: the datasets the
server offers, fitted models (model directories, the format of ``aivc fit``,
under ``models/<id>/``, so they survive a restart and can be used by
``aivc predict``), uploaded measurements and background jobs. The science is
in the Python API: every request is one call of :mod:`aivc.experiments`
(hold-out fits, predictions set against measurements, calibration, screens,
proposals, explanations) or :mod:`aivc.instruments` (model directories); the
workspace keeps names, files, locks and jobs, and turns the library's errors
into its own (:class:`NotFoundError`, :class:`WorkspaceValidationError`...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivc._io import write_json_atomic
from aivc.interfaces.api._errors import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnavailableError,
    WorkspaceValidationError,
    new_error_id,
    public_message,
    with_error_id,
)
from aivc.interfaces.api._jobs import DEFAULT_MAX_QUEUED, JobManager, JobReporter
from aivc.interfaces.api._schemas import _NAME_PATTERN
from aivc.interfaces.api._uploads import (
    DEFAULT_MAX_UPLOAD,
    DEFAULT_MAX_UPLOAD_MEMORY,
    INCOMING_PREFIX,
    UploadWriter,
    inspect_h5ad,
    min_shared_genes,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.data import PerturbationSchema
    from aivc.experiments import CellEmbedding, ObservedChanges
    from aivc.instruments import PerturbationModel
    from aivc.instruments._model_dir import FitRecord

__all__ = [
    "ConflictError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "Workspace",
    "WorkspaceValidationError",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(_NAME_PATTERN)
#: Disk space a workspace may fill by default (bytes): models, uploads, the ledger.
DEFAULT_MAX_WORKSPACE = 10 * 1024**3
#: The embedding whose PCA predictions are placed in, when the page has asked for it.
_PAGE_EMBEDDING = (2000, 0)


_OWN_ERRORS = (NotFoundError, WorkspaceValidationError, PayloadTooLargeError)


@contextmanager
def _library_errors() -> Iterator[None]:
    """Turn the library's errors into the workspace's: unknown names 404, the rest 422.

    The message is the library's where it speaks to the user; one caused by
    another kind of error (a ``TypeError`` inside a library) is logged and
    replaced by a generic one with an error id.
    """
    try:
        yield
    except _OWN_ERRORS:
        raise
    except (KeyError, ValueError) as e:
        message, error_id = public_message(e, logger=logger, what="a request")
        cls = NotFoundError if isinstance(e, KeyError) else WorkspaceValidationError
        err = cls(message)
        if error_id is not None:
            with_error_id(err, error_id)
        raise err from None


@dataclass
class _Dataset:
    name: str
    adata: AnnData
    schema: PerturbationSchema
    description: str
    observed: ObservedChanges | None = None  # dataset and uploads, the newest measurement first
    embeddings: dict[tuple[int, int], CellEmbedding] = field(default_factory=dict)


@dataclass
class _Model:
    """A model directory of the workspace: its record (from the manifest) and, once used, the model."""

    id: str
    record: FitRecord
    model: PerturbationModel | None = None

    @property
    def created(self) -> float:
        return self.record.created.timestamp() if self.record.created is not None else 0.0

    @property
    def heldout(self) -> list[str]:
        return list(self.record.heldout_perturbations)

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        return {
            "id": self.id,
            "dataset": rec.dataset or "",
            "instrument": rec.instrument,
            "params": rec.params,
            "seed": rec.seed,
            "heldout_perturbations": self.heldout,
            "created": self.created,
            "fit_seconds": None if rec.fit_seconds is None else round(rec.fit_seconds, 3),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, _jsonable(obj), sort_keys=True)


class Workspace:
    """Datasets, fitted models, uploads and jobs behind the interfaces.

    Parameters
    ----------
    root
        Directory for fitted models (``models/<id>/``, model directories as
        written by ``aivc fit``; one copied there is offered too) and uploads
        (``uploads/<id>.h5ad``). Created if missing.
    max_upload_bytes
        Largest accepted upload, as sent.
    max_upload_memory_bytes
        Most memory the arrays of an upload may take once read; checked from
        the file's declared shapes and dtypes before any array is read.
    max_workspace_bytes
        Disk quota of ``root``: an upload that would pass it, or a fit started
        once it is reached, is refused (:class:`QuotaExceededError`).
    max_workers
        Fit jobs that may run at the same time.
    max_queued_jobs
        Fit jobs that may wait for a worker; more are refused
        (:class:`~aivc.interfaces.api.JobQueueFullError`).
    ledger
        SQLAlchemy URL of the experiment ledger to read (default: ``ledger.db``
        in ``root``). It is only read: bring it to the current schema with
        ``aivc ledger migrate URL``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        max_upload_memory_bytes: int = DEFAULT_MAX_UPLOAD_MEMORY,
        max_workspace_bytes: int = DEFAULT_MAX_WORKSPACE,
        max_workers: int = 1,
        max_queued_jobs: int = DEFAULT_MAX_QUEUED,
        ledger: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.ledger_url = ledger or f"sqlite:///{(self.root / 'ledger.db').resolve()}"
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_memory_bytes = int(max_upload_memory_bytes)
        self.max_workspace_bytes = int(max_workspace_bytes)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(parents=True, exist_ok=True)
        for stale in (self.root / "uploads").glob(f"{INCOMING_PREFIX}*"):
            stale.unlink(missing_ok=True)  # an upload cut off by a stopped server
        self.jobs = JobManager(max_workers=max_workers, max_queued=max_queued_jobs)
        self._datasets: dict[str, _Dataset] = {}
        self._extra: dict[str, tuple[AnnData, PerturbationSchema, str]] = {}
        self._models: dict[str, _Model] = {}
        self._reserved: set[str] = set()  # model ids of queued and running fits
        self._lock = threading.RLock()
        self._dataset_locks: dict[str, threading.Lock] = {}
        self._known_genes: list[str] | None = None
        self._scan_models()
        from aivc.interfaces.api._spatial import SpatialMaps
        from aivc.interfaces.api._stores import CompoundModels, TemporalModels

        self.compounds = CompoundModels(
            self.root / "compound_models", check_quota=self._check_quota, errors=_library_errors
        )
        self.temporal = TemporalModels(
            self.root / "temporal_models", check_quota=self._check_quota, errors=_library_errors
        )
        self.spatial = SpatialMaps(errors=_library_errors)

    # ------------------------------------------------------------------ datasets
    def add_dataset(
        self, name: str, adata: AnnData, schema: PerturbationSchema, *, description: str = ""
    ) -> None:
        """Offer an in-memory perturbation dataset (raw counts) under ``name``.

        Registered datasets (:func:`aivc.data.list_datasets`) are offered
        automatically; this adds others, e.g. a user's own experiment.
        """
        self._check_name(name, "dataset")
        with self._lock:
            if name in self._extra or name in self._registered_names():
                msg = f"A dataset named {name!r} is already offered; choose another name."
                raise ConflictError(msg)
            self._extra[name] = (adata, schema, description or "dataset added in memory")

    @staticmethod
    def _registered_names() -> set[str]:
        from aivc.data import list_datasets

        return {e.name for e in list_datasets()}

    def list_datasets(self) -> list[dict[str, Any]]:
        """Perturbation datasets that can be used here (local registered ones and added ones)."""
        from aivc.data import list_datasets

        out = []
        for e in list_datasets():
            if e.schema is None or not e.path().exists():
                continue
            out.append(
                {
                    "name": e.name,
                    "description": e.description,
                    "source": "registry",
                    "loaded": e.name in self._datasets,
                    "citation": e.citation,
                }
            )
        for name, (_, _, desc) in sorted(self._extra.items()):
            out.append(
                {
                    "name": name,
                    "description": desc,
                    "source": "memory",
                    "loaded": name in self._datasets,
                    "citation": "",
                }
            )
        return out

    def require_dataset(self, name: str) -> None:
        """Raise :class:`NotFoundError` unless ``name`` is offered here (without loading it)."""
        if name in self._datasets or name in self._extra:
            return
        if name not in {d["name"] for d in self.list_datasets()}:
            self._dataset(name)  # raises NotFoundError with the reason

    def _dataset(self, name: str | None) -> _Dataset:
        if not name:
            msg = "The model records no dataset it was fitted on (it was fitted on a file)."
            raise NotFoundError(msg)
        with self._lock:
            if name in self._datasets:
                return self._datasets[name]
            lock = self._dataset_locks.setdefault(name, threading.Lock())
        with lock:
            if name in self._datasets:
                return self._datasets[name]
            ds = self._load_dataset(name)
            with self._lock:
                self._datasets[name] = ds
            return ds

    def _load_dataset(self, name: str) -> _Dataset:
        from aivc.data import dataset_entry, load, prepare, schema_of

        if name in self._extra:
            raw, schema, desc = self._extra[name]
        else:
            try:
                entry = dataset_entry(name)
            except KeyError as e:
                raise NotFoundError(str(e.args[0])) from None
            if entry.schema is None:
                msg = f"Dataset {name!r} is a {entry.kind} dataset; only perturbation datasets can be used here."
                raise NotFoundError(msg)
            try:
                raw = load(name)
            except FileNotFoundError as e:
                raise NotFoundError(str(e)) from None
            schema, desc = schema_of(raw), entry.description
        adata, schema = prepare(raw, schema, known_genes=None)
        return _Dataset(name=name, adata=adata, schema=schema, description=desc)

    def _data_file(self, name: str) -> Path | None:
        """The registered file of a dataset, for the model directory's record (None in memory)."""
        from aivc.data import dataset_entry

        if name in self._extra:
            return None
        path = dataset_entry(name).path()
        return path if path.is_file() else None

    def dataset_info(self, name: str) -> dict[str, Any]:
        """Cells, genes, perturbations and contexts of a dataset."""
        ds = self._dataset(name)
        s = ds.schema
        perts = ds.adata.obs[s.perturbation_key].astype(str)
        counts = perts.value_counts()
        contexts = (
            sorted(ds.adata.obs[s.context_key].astype(str).unique())
            if s.context_key is not None
            else []
        )
        return {
            "name": name,
            "description": ds.description,
            "n_cells": int(ds.adata.n_obs),
            "n_genes": int(ds.adata.n_vars),
            "schema": s.to_dict(),
            "control_label": s.control_label,
            "contexts": contexts,
            "perturbations": [
                {"label": str(p), "n_cells": int(n)}
                for p, n in sorted(counts.items())
                if p != s.control_label
            ],
            "n_control_cells": int(counts.get(s.control_label, 0)),
            "uploads": [u for u in self.list_uploads() if u["dataset"] == name],
        }

    def embedding(self, name: str, *, n_cells: int = 2000, seed: int = 0) -> dict[str, Any]:
        """2-D PCA of a seeded subsample of the dataset's log-normalised cells.

        Calls :func:`aivc.experiments.cell_embedding`; the result is kept, and
        predictions are placed in it (:meth:`predict` with ``all_genes``).
        """
        from aivc.experiments import cell_embedding
        from aivc.interfaces.api import _experiments

        ds = self._dataset(name)
        key = (int(n_cells), int(seed))
        with self._lock:
            emb = ds.embeddings.get(key)
        if emb is None:
            with _library_errors():
                emb = cell_embedding(ds.adata, ds.schema, n_cells=n_cells, seed=seed)
            with self._lock:
                ds.embeddings[key] = emb
        return _experiments.embedding(emb, dataset=name)

    def _observed(self, ds: _Dataset) -> ObservedChanges:
        """Observed change of every measured condition, in the dataset and its uploads.

        Where a condition was measured more than once, the newest measurement wins.
        """
        with self._lock:
            if ds.observed is not None:
                return ds.observed
        from aivc.experiments import measured_changes, merge_observed

        uploads = [u for u in self.list_uploads() if u["dataset"] == ds.name]  # newest first
        parts = [self._upload_changes(u["id"], ds) for u in uploads]
        parts.append(measured_changes(ds.adata, ds.schema, source="dataset"))
        observed = merge_observed(*parts, genes=list(ds.adata.var_names))
        with self._lock:
            ds.observed = observed
        return observed

    # ------------------------------------------------------------------ instruments
    @staticmethod
    def list_instruments() -> list[dict[str, Any]]:
        """Registered instruments that predict perturbation effects, with their parameters."""
        import inspect

        from aivc.instruments import PerturbationModel, list_instruments

        out = []
        for info in list_instruments():
            # published peers run in their own environments inside benchmarks, not here
            if not issubclass(info.cls, PerturbationModel) or info.kind == "peer":
                continue
            params = {}
            for p in inspect.signature(info.cls.__init__).parameters.values():
                if p.name == "self" or p.kind is not p.KEYWORD_ONLY:
                    continue
                default = p.default if p.default is not p.empty else None
                params[p.name] = _jsonable(default) if _is_plain(default) else repr(default)
            out.append(
                {
                    "name": info.name,
                    "kind": info.kind,
                    "description": info.description,
                    "capabilities": sorted(info.capabilities),
                    "params": params,
                }
            )
        return out

    # ------------------------------------------------------------------ models
    def _model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def _scan_models(self) -> None:
        """Offer every model directory under ``models/`` (written here or by ``aivc fit``)."""
        from aivc.instruments._model_dir import MANIFEST, FitRecord, read_manifest

        for folder in sorted((self.root / "models").iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue  # temporary and deleted directories
            if not _NAME.match(folder.name):
                logger.warning(
                    "skipping model directory %s: its name is not a valid model id", folder
                )
                continue
            try:
                if not (folder / MANIFEST).exists() and (folder / "record.json").exists():
                    _convert_earlier_layout(folder)
                record = FitRecord.from_manifest(read_manifest(folder))
            except (OSError, ValueError, KeyError) as e:
                logger.warning("skipping unreadable model directory %s (%s)", folder, e)
                continue
            self._models[folder.name] = _Model(folder.name, record)

    def known_genes(self) -> list[str] | None:
        """Human gene symbols accepted as targets, when the gene tables are present."""
        if self._known_genes is None:
            from aivc.genes import gene_symbols

            try:
                self._known_genes = sorted(gene_symbols())
            except FileNotFoundError:
                self._known_genes = []
        return self._known_genes or None

    def submit_fit(
        self,
        *,
        dataset: str,
        instrument: str,
        params: dict[str, Any] | None = None,
        name: str | None = None,
        holdout: bool = True,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Queue a fit job; returns the job.

        With ``holdout``, a fifth of the measured perturbations (seeded) is held
        out of training (:func:`aivc.experiments.fit_holdout`) so the page can
        compare predictions with measurements the model never saw.
        """
        from aivc.experiments import perturbation_model

        params = dict(params or {})
        with _library_errors():
            perturbation_model(instrument, params)  # checks the name and the parameters
        self.require_dataset(dataset)
        if name is not None:
            self._check_name(name, "model")
        model_id = name or f"{instrument}-{dataset}-{uuid.uuid4().hex[:6]}"
        self._check_quota()
        with self._lock:
            if (
                model_id in self._models
                or model_id in self._reserved
                or self._model_dir(model_id).exists()
            ):
                msg = (
                    f"A model named {model_id!r} already exists; choose another name or delete it."
                )
                raise ConflictError(msg)
            self._reserved.add(model_id)  # so two jobs cannot race for the name

        def run(rep: JobReporter) -> dict[str, Any]:
            return self._fit(rep, model_id, dataset, instrument, params, holdout, seed)

        def release() -> None:
            with self._lock:
                self._reserved.discard(model_id)

        try:
            job = self.jobs.submit(
                "fit",
                {
                    "model": model_id,
                    "dataset": dataset,
                    "instrument": instrument,
                    "params": params,
                    "holdout": holdout,
                    "seed": seed,
                },
                run,
                cleanup=release,
            )
        except BaseException:  # the queue is full: the name is free again
            release()
            raise
        return job.to_dict()

    def _fit(
        self,
        rep: JobReporter,
        model_id: str,
        dataset: str,
        instrument: str,
        params: dict[str, Any],
        holdout: bool,
        seed: int,
    ) -> dict[str, Any]:
        from aivc.experiments import fit_holdout
        from aivc.instruments._model_dir import (
            FitRecord,
            read_manifest,
            save_model_dir,
            training_info,
        )

        rep.update(0.05, f"loading {dataset}")
        ds = self._dataset(dataset)
        fit = fit_holdout(
            ds.adata,
            ds.schema,
            instrument,
            params=params,
            holdout=holdout,
            seed=seed,
            known_genes=self.known_genes(),
            progress=lambda fraction, message: rep.update(0.25 + 0.6 * fraction, message),
        )
        rep.update(0.9, "saving")
        folder = self._model_dir(model_id)
        training = training_info(
            fit.train, dataset=dataset, data_file=self._data_file(dataset), seed=seed
        )
        save_model_dir(
            fit.model,
            folder,
            training=training,
            controls=fit.train,
            heldout_perturbations=fit.heldout,
            fit_seconds=fit.fit_seconds,
        )
        entry = _Model(model_id, FitRecord.from_manifest(read_manifest(folder)), fit.model)
        with self._lock:
            self._models[model_id] = entry
        return entry.to_dict()

    def list_models(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._models.values())
        return [self._model_info(m) for m in sorted(entries, key=lambda m: (m.created, m.id))]

    def _entry(self, model_id: str) -> _Model:
        with self._lock:
            entry = self._models.get(model_id)
        if entry is None:
            msg = f"Unknown model {model_id!r}; fit one with POST /api/models or list them with GET /api/models."
            raise NotFoundError(msg)
        return entry

    def _model(self, model_id: str) -> tuple[_Model, PerturbationModel]:
        from aivc.instruments._model_dir import load_model_dir

        entry = self._entry(model_id)
        if entry.model is None:
            with self._lock:
                if entry.model is None:
                    entry.model = load_model_dir(self._model_dir(model_id)).model
        return entry, entry.model

    def _model_info(self, entry: _Model) -> dict[str, Any]:
        from aivc.instruments import get_instrument_class

        try:
            caps = sorted(
                getattr(get_instrument_class(entry.record.instrument), "capabilities", ())
            )
        except KeyError:  # a directory of an instrument this installation does not register
            caps = []
        return {**entry.to_dict(), "capabilities": caps}

    def model_info(self, model_id: str) -> dict[str, Any]:
        entry, model = self._model(model_id)
        return {
            **self._model_info(entry),
            "control_label": model.schema_.control_label,
            "n_genes": len(model.genes_),
            "n_known_targets": len(model.known_genes_),
            "train_perturbations": sorted(set(model.train_perturbations_)),
            "contexts": sorted(str(c) for c in model.control_mean_ if c is not None),
        }

    def delete_model(self, model_id: str) -> None:
        import shutil

        entry = self._entry(model_id)
        with self._lock:
            self._models.pop(entry.id, None)
        folder = self._model_dir(model_id)
        if folder.exists():
            trash = folder.with_name(f".deleted-{model_id}-{uuid.uuid4().hex[:6]}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def suggest_perturbations(
        self, model_id: str, query: str = "", *, limit: int = 20
    ) -> list[str]:
        """Autocomplete: measured labels and target genes starting with ``query`` (case-insensitive).

        After a separator (``"A+B"``), the part after it is completed
        (:func:`aivc.experiments.suggest_perturbations`).
        """
        from aivc.experiments import suggest_perturbations

        entry, model = self._model(model_id)
        return suggest_perturbations(model, query, measured=entry.heldout, limit=limit)

    # ------------------------------------------------------------------ prediction
    def _check_labels(self, model: PerturbationModel, perturbations: list[str]) -> list[str]:
        from aivc.experiments import check_perturbations

        with _library_errors():
            return check_perturbations(model, perturbations)

    def predict(
        self,
        model_id: str,
        perturbations: list[str],
        *,
        context: str | None = None,
        top_k: int = 20,
        level: float = 0.9,
        all_genes: bool = False,
    ) -> dict[str, Any]:
        """Predicted mean changes, intervals and DE calls, top genes, and the observed change.

        Calls :func:`aivc.experiments.predict_with_observed` with the
        measurements of the model's dataset and its uploads (none when the
        dataset is not offered here).
        """
        from aivc.experiments import predict_with_observed, resolve_context
        from aivc.interfaces.api import _experiments

        entry, model = self._model(model_id)
        perts = self._check_labels(model, perturbations)
        with _library_errors():
            context = resolve_context(model, context)
        try:
            observed = self._observed(self._dataset(entry.record.dataset))
        except NotFoundError:  # the training data are not here: predictions without measurements
            observed = None
        with _library_errors():
            res = predict_with_observed(
                model, perts, observed=observed, context=context, level=level
            )
        heldout = set(entry.heldout)
        embedding = self._embedding_of(entry.record.dataset) if all_genes else None
        results = [
            _experiments.prediction(
                res,
                i,
                model=model,
                heldout=res.perturbations[i] in heldout,
                top_k=top_k,
                all_genes=all_genes,
                embedding=embedding,
            )
            for i in range(len(res.perturbations))
        ]
        return {
            "model": model_id,
            "instrument": entry.record.instrument,
            "dataset": entry.record.dataset or "",
            "level": res.level,
            "has_intervals": res.has_intervals,
            "predictions": results,
        }

    def _embedding_of(self, dataset: str | None) -> tuple[tuple[int, int], CellEmbedding] | None:
        """The dataset's embedding to place predictions in, once the page asked for one."""
        with self._lock:
            ds = self._datasets.get(dataset or "")
            cached = dict(ds.embeddings) if ds is not None else {}
        if not cached:
            return None
        key = _PAGE_EMBEDDING if _PAGE_EMBEDDING in cached else next(iter(cached))
        return key, cached[key]

    def calibration(self, model_id: str) -> dict[str, Any]:
        """Coverage of the model's intervals on its held-out measured perturbations.

        Calls :func:`aivc.experiments.calibration_curve`: for each nominal
        level, the fraction of (perturbation, gene) pairs whose measured change
        falls inside the predicted interval, on held-out perturbations only.
        """
        from aivc.experiments import calibration_curve
        from aivc.interfaces.api import _experiments

        entry, model = self._model(model_id)
        if not entry.heldout and "uncertainty" in type(model).capabilities:
            msg = f"Model {model_id!r} has no held-out measured perturbations to calibrate on; fit it with holdout=true."
            raise WorkspaceValidationError(msg)
        observed = self._observed(self._dataset(entry.record.dataset))
        with _library_errors():
            curve = calibration_curve(model, observed, heldout=entry.heldout)
        return _experiments.calibration(curve, model_id=model_id)

    # ------------------------------------------------------------------ uploads
    def list_uploads(self) -> list[dict[str, Any]]:
        """Descriptions of the uploads, newest first (by the upload time they record)."""
        out = []
        for f in (self.root / "uploads").glob("*.json"):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        out.sort(key=lambda u: (float(u.get("created", 0.0)), str(u.get("id", ""))), reverse=True)
        return out

    # ------------------------------------------------------------------ disk quota
    def usage_bytes(self) -> int:
        """Bytes of the files under the workspace folder (models, uploads, the ledger)."""
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed while walking
                    continue
        return total

    def _quota_left(self) -> int:
        return self.max_workspace_bytes - self.usage_bytes()

    def _check_quota(self) -> None:
        """Raise :class:`QuotaExceededError` when the workspace has reached its quota."""
        left = self._quota_left()
        if left <= 0:
            msg = (
                f"The workspace has reached its disk quota ({self.max_workspace_bytes / 1e6:,.1f} MB); "
                "delete models (DELETE /api/models/{id}) or start the server with a larger "
                "--max-workspace-gb."
            )
            raise QuotaExceededError(msg)

    def open_upload(self, dataset: str) -> UploadWriter:
        """Start receiving an upload for ``dataset``: a writer that checks each chunk.

        Write the bytes with :meth:`UploadWriter.write`, then call
        :meth:`finish_upload`; call :meth:`UploadWriter.discard` when anything
        fails. Raises :class:`NotFoundError` for a dataset not offered here and
        :class:`QuotaExceededError` when the workspace is full.
        """
        self.require_dataset(dataset)
        self._check_quota()
        return UploadWriter(
            self.root / "uploads",
            dataset=dataset,
            max_bytes=self.max_upload_bytes,
            quota_left=self._quota_left(),
        )

    def finish_upload(
        self, writer: UploadWriter, *, filename: str = "upload.h5ad"
    ) -> dict[str, Any]:
        """Check, read and validate a received upload, then keep it with a JSON description.

        The file's structure is checked first (:func:`~aivc.interfaces.api._uploads.inspect_h5ad`:
        declared memory, no data outside the file); only then is it read with
        anndata (HDF5 only; nothing is unpickled), validated against the
        dataset's schema and genes, and renamed into place. The writer's file
        is removed when any step fails.
        """
        dataset = writer.dataset
        folder = self.root / "uploads"
        try:
            path = writer.close()
            inspect_h5ad(path, max_bytes=self.max_upload_memory_bytes)
            ds = self._dataset(dataset)
            summary = self._validate_upload(path, ds)
            meta = {
                "id": writer.id,
                "dataset": dataset,
                "filename": Path(filename).name[:200],
                "bytes": writer.size,
                "created": time.time(),
                **summary,
            }
            os.replace(path, folder / f"{writer.id}.h5ad")
        finally:
            writer.discard()
        try:
            _write_json_atomic(folder / f"{writer.id}.json", meta)
        except BaseException:
            (folder / f"{writer.id}.h5ad").unlink(missing_ok=True)
            raise
        with self._lock:
            ds.observed = None  # recomputed with the new measurements
        return meta

    def save_upload(
        self, dataset: str, chunks: Any, *, filename: str = "upload.h5ad"
    ) -> dict[str, Any]:
        """Store measured results for ``dataset`` from an iterable of byte chunks.

        The bytes go to a hidden file in the workspace, checked as they arrive
        (:meth:`open_upload`: size limit, disk quota, HDF5 signature), then
        :meth:`finish_upload` checks, validates and keeps them. Nothing is left
        behind when any step fails.
        """
        writer = self.open_upload(dataset)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        return self.finish_upload(writer, filename=filename)

    def _validate_upload(self, path: Path, ds: _Dataset) -> dict[str, Any]:
        from aivc.data import DataValidationError, read_h5ad, validate
        from aivc.experiments import counts_schema

        try:
            adata = read_h5ad(path)
        except Exception as e:  # anndata's own errors: the details go to the log only
            error_id = new_error_id()
            logger.error("could not read upload %s (error id %s)", path, error_id, exc_info=e)
            msg = (
                "The upload could not be read as h5ad; write it with AnnData.write_h5ad "
                f"(error id {error_id})."
            )
            raise with_error_id(WorkspaceValidationError(msg), error_id) from None
        schema = ds.schema
        try:
            validate(adata, counts_schema(schema, adata))
        except (DataValidationError, KeyError, ValueError) as e:
            message, error_id = public_message(e, logger=logger, what="validating an upload")
            msg = f"The upload does not match the schema of {ds.name!r}: {message}"
            err = WorkspaceValidationError(msg)
            raise (with_error_id(err, error_id) if error_id else err) from None
        shared = adata.var_names.intersection(ds.adata.var_names)
        needed = min_shared_genes(ds.adata.n_vars)
        if len(shared) < needed:
            msg = (
                f"The upload shares {len(shared)} genes with {ds.name!r}; at least {needed} are "
                f"needed (50, or half of its {ds.adata.n_vars} genes when that is fewer). Expected "
                f"gene symbols such as {list(ds.adata.var_names[:3])}; got {list(adata.var_names[:3])}."
            )
            raise WorkspaceValidationError(msg)
        labels = adata.obs[schema.perturbation_key].astype(str)
        if not (labels == schema.control_label).any():
            msg = f"The upload has no control cells (label {schema.control_label!r}); measured changes need them."
            raise WorkspaceValidationError(msg)
        return {
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_shared_genes": len(shared),
            "perturbations": sorted(set(labels) - {schema.control_label}),
        }

    def _upload_changes(self, upload_id: str, ds: _Dataset) -> ObservedChanges:
        from aivc.data import read_h5ad
        from aivc.experiments import measured_changes

        adata = read_h5ad(self.root / "uploads" / f"{upload_id}.h5ad")
        return measured_changes(adata, ds.schema, counts=True, source=f"upload:{upload_id}")

    # ------------------------------------------------------------------ experiments
    def screen(
        self,
        model_id: str,
        *,
        objective: str,
        candidates: list[str] | None = None,
        pairs_of: list[str] | None = None,
        context: str | None = None,
        level: float = 0.9,
        top_k: int = 20,
    ) -> dict[str, Any]:
        """A virtual screen of candidates under an objective (:func:`aivc.experiments.screen`).

        Without ``candidates`` or ``pairs_of``: the model's measured targets
        (held-out ones included) and the genes of its panel with prior knowledge.
        """
        from aivc.experiments import resolve_context
        from aivc.interfaces.api import _experiments

        entry, model = self._model(model_id)
        if candidates is not None:
            candidates = self._check_labels(model, candidates)
        if pairs_of is not None:
            pairs_of = self._check_labels(model, pairs_of)
        with _library_errors():
            context = resolve_context(model, context)
            return _experiments.screen(
                model,
                objective=objective,
                candidates=candidates,
                pairs_of=pairs_of,
                context=context,
                level=level,
                top_k=top_k,
                measured=entry.heldout,
            )

    def propose(
        self,
        model_id: str,
        *,
        strategy: str = "gp-ucb",
        batch_size: int = 10,
        candidates: list[str] | None = None,
        context: str | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Suggest the next perturbations to measure, learning from the measured ones.

        Calls :func:`aivc.experiments.propose_next` with the measurements of
        the model's dataset and its uploads.
        """
        from aivc.experiments import propose_next
        from aivc.interfaces.api import _experiments

        entry, model = self._model(model_id)
        observed = self._observed(self._dataset(entry.record.dataset))
        with _library_errors():
            proposals = propose_next(
                model,
                observed,
                strategy=strategy,
                batch_size=batch_size,
                candidates=candidates,
                context=context,
                seed=seed,
            )
        return _experiments.proposals(proposals)

    def ledger_projects(self) -> list[dict[str, Any]]:
        """Projects of the experiment ledger (written by the lab loop), read without writing.

        No ledger yet (no file, or a database without ledger tables): no
        projects. A ledger at another schema version raises
        :class:`ConflictError` (HTTP 409) saying how to migrate it: reads never do.
        """
        from aivc.experiments._ledger import LedgerSchemaError
        from aivc.interfaces.api import _experiments

        try:
            return _experiments.ledger_projects(self.ledger_url)
        except LedgerSchemaError as e:
            if e.version == 0:
                return []
            raise _ledger_outdated(e) from None
        except RuntimeError as e:
            raise _ledger_unavailable(e) from None

    def ledger_project(self, name: str) -> dict[str, Any]:
        """A project's state, rounds, proposals and results (see :meth:`ledger_projects`)."""
        from aivc.experiments._ledger import LedgerSchemaError
        from aivc.interfaces.api import _experiments

        try:
            return _experiments.ledger_project(self.ledger_url, name)
        except KeyError as e:
            raise NotFoundError(str(e.args[0])) from None
        except LedgerSchemaError as e:
            if e.version == 0:
                msg = f"Unknown project {name!r}: the experiment ledger holds no projects yet."
                raise NotFoundError(msg) from None
            raise _ledger_outdated(e) from None
        except RuntimeError as e:
            raise _ledger_unavailable(e) from None

    def explain(
        self, model_id: str, perturbation: str, *, context: str | None = None, n_top: int = 20
    ) -> dict[str, Any]:
        """Top genes, GO-BP pathways among the predicted DE genes, and network neighbours.

        Calls :func:`aivc.experiments.explain`.
        """
        from aivc.experiments import explain, resolve_context

        _, model = self._model(model_id)
        (perturbation,) = self._check_labels(model, [perturbation])
        with _library_errors():
            context = resolve_context(model, context)
        return _jsonable(explain(model, perturbation, context=context, n_top=n_top).to_dict())

    def shutdown(self) -> None:
        self.jobs.shutdown()

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_name(name: str, what: str) -> None:
        if not _NAME.match(name):
            msg = (
                f"Invalid {what} name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit."
            )
            raise WorkspaceValidationError(msg)


def _ledger_outdated(e: Exception) -> ConflictError:
    logger.warning("the experiment ledger cannot be read: %s", e)
    msg = (
        "The experiment ledger is at another schema version than this aivc reads, and reads "
        "never migrate it. Migrate it with `aivc ledger migrate URL`, URL being the server's "
        "--ledger (default: sqlite:///WORKSPACE/ledger.db), or upgrade aivc if the ledger is newer."
    )
    return ConflictError(msg)


def _ledger_unavailable(e: Exception) -> UnavailableError:
    _, error_id = public_message(e, logger=logger, what="opening the experiment ledger")
    msg = f"The experiment ledger cannot be opened now (error id {error_id}); try again later."
    return with_error_id(UnavailableError(msg), error_id or "")  # type: ignore[return-value]


def _convert_earlier_layout(folder: Path) -> None:
    """Rewrite a model saved by an earlier workspace (``record.json`` + ``model/``) as a model directory.

    The model is read with :meth:`PerturbationModel.load` (safetensors and
    JSON) and written with its record by
    :func:`aivc.instruments._model_dir.save_model_dir`; it stores no control
    cells, so ``aivc predict`` needs ``--control`` for it.
    """
    from datetime import UTC, datetime

    from aivc.instruments import PerturbationModel
    from aivc.instruments._model_dir import save_model_dir

    record = json.loads((folder / "record.json").read_text())
    model = PerturbationModel.load(folder / "model")
    save_model_dir(
        model,
        folder,
        training={"dataset": record["dataset"], "seed": int(record["seed"])},
        heldout_perturbations=list(record["heldout_perturbations"]),
        fit_seconds=float(record["fit_seconds"]),
        created=datetime.fromtimestamp(float(record["created"]), UTC),
        overwrite=True,
    )
    logger.info("rewrote the model in %s as a model directory", folder)


def _is_plain(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str | list | tuple | dict)
