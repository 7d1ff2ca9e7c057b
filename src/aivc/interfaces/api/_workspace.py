"""The state behind the REST API, the web page and the MCP server.

A :class:`Workspace` is a directory plus in-memory caches: prepared datasets,
fitted models (saved with :meth:`aivc.instruments.Instrument.save`, so they
survive a restart), uploaded measurements and background jobs. Every method
is a thin call into the Python API (:mod:`aivc.data`, :mod:`aivc.instruments`,
:mod:`aivc.experiments`); nothing here models biology.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._io import atomic_path, write_json_atomic
from aivc._labels import check_known
from aivc.interfaces.api._jobs import JobManager, JobReporter

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.data import PerturbationSchema
    from aivc.instruments import PerturbationModel

__all__ = [
    "ConflictError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Workspace",
    "WorkspaceValidationError",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Largest upload accepted by default (bytes).
DEFAULT_MAX_UPLOAD = 256 * 1024 * 1024


class NotFoundError(KeyError):
    """An unknown dataset, model, gene, context, job or upload (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _de_call(low: float, high: float) -> str:
    """``up`` / ``down`` when the interval of the change excludes zero, ``none`` otherwise."""
    return "up" if low > 0 else "down" if high < 0 else "none"


class WorkspaceValidationError(ValueError):
    """A request that is well-formed JSON but cannot be carried out as asked (HTTP 422)."""


class ConflictError(RuntimeError):
    """The request clashes with the current state, e.g. a name in use (HTTP 409)."""


class PayloadTooLargeError(ValueError):
    """An upload larger than the workspace accepts (HTTP 413)."""


@dataclass
class _Dataset:
    name: str
    adata: AnnData
    schema: PerturbationSchema
    description: str
    observed: pd.DataFrame | None = None  # condition rows, genes columns (changes vs control)
    observed_info: pd.DataFrame | None = None
    embeddings: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


@dataclass
class _ModelRecord:
    id: str
    dataset: str
    instrument: str
    params: dict[str, Any]
    seed: int
    heldout: list[str]
    created: float
    fit_seconds: float
    model: PerturbationModel | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "instrument": self.instrument,
            "params": self.params,
            "seed": self.seed,
            "heldout_perturbations": self.heldout,
            "created": self.created,
            "fit_seconds": round(self.fit_seconds, 3),
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
        Directory for fitted models (``models/<id>/``) and uploads
        (``uploads/<id>.h5ad``). Created if missing.
    max_upload_bytes
        Largest accepted upload.
    max_workers
        Fit jobs that may run at the same time.
    ledger
        SQLAlchemy URL of the experiment ledger to read (default: ``ledger.db``
        in ``root``).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        max_workers: int = 1,
        ledger: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.ledger_url = ledger or f"sqlite:///{(self.root / 'ledger.db').resolve()}"
        self.max_upload_bytes = int(max_upload_bytes)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(max_workers=max_workers)
        self._datasets: dict[str, _Dataset] = {}
        self._extra: dict[str, tuple[AnnData, PerturbationSchema, str]] = {}
        self._models: dict[str, _ModelRecord] = {}
        self._lock = threading.RLock()
        self._dataset_locks: dict[str, threading.Lock] = {}
        self._known_genes: list[str] | None = None
        self._scan_models()

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

    def _dataset(self, name: str) -> _Dataset:
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
        """2-D PCA of a seeded subsample of the dataset's log-normalised cells."""
        from sklearn.decomposition import PCA

        ds = self._dataset(name)
        key = (int(n_cells), int(seed))
        with self._lock:
            if key in ds.embeddings:
                return ds.embeddings[key]
        a = ds.adata
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(a.n_obs, min(n_cells, a.n_obs), replace=False))
        x = a.X[take]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(x)
        s = ds.schema
        out = {
            "dataset": name,
            "method": "PCA of log-normalised expression",
            "n_cells": len(take),
            "seed": seed,
            "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
            "x": np.round(xy[:, 0], 4).tolist(),
            "y": np.round(xy[:, 1], 4).tolist(),
            "perturbation": a.obs[s.perturbation_key].astype(str).to_numpy()[take].tolist(),
            "context": (
                a.obs[s.context_key].astype(str).to_numpy()[take].tolist()
                if s.context_key is not None
                else None
            ),
            "_pca": pca,
        }
        with self._lock:
            ds.embeddings[key] = out
        return out

    def _observed(self, ds: _Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Observed mean change per measured condition (perturbation, context), dataset and uploads."""
        with self._lock:
            if ds.observed is not None and ds.observed_info is not None:
                return ds.observed, ds.observed_info
        from aivc.data import observed_changes

        # conditions of a context without controls are left out (nothing to compare with)
        delta, info = observed_changes(ds.adata, ds.schema, missing_controls="drop")
        info["source"] = "dataset"
        frames, infos = [delta], [info]
        for u in self.list_uploads():
            if u["dataset"] != ds.name:
                continue
            d2, i2 = self._upload_changes(u["id"], ds)
            i2["source"] = f"upload:{u['id']}"
            frames.insert(0, d2)
            infos.insert(0, i2)
        delta = pd.concat(frames)
        info = pd.concat(infos)
        keep = ~delta.index.duplicated(keep="first")  # the newest measurement wins
        delta, info = delta[keep], info[keep]
        with self._lock:
            ds.observed, ds.observed_info = delta, info
        return delta, info

    # ------------------------------------------------------------------ instruments
    @staticmethod
    def list_instruments() -> list[dict[str, Any]]:
        """Registered instruments that predict perturbation effects, with their parameters."""
        import inspect

        from aivc.instruments import PerturbationModel, list_instruments

        out = []
        for info in list_instruments():
            if not issubclass(info.cls, PerturbationModel):
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
    def _scan_models(self) -> None:
        for rec_file in sorted((self.root / "models").glob("*/record.json")):
            try:
                d = json.loads(rec_file.read_text())
                rec = _ModelRecord(
                    id=d["id"],
                    dataset=d["dataset"],
                    instrument=d["instrument"],
                    params=d["params"],
                    seed=int(d["seed"]),
                    heldout=list(d["heldout_perturbations"]),
                    created=float(d["created"]),
                    fit_seconds=float(d["fit_seconds"]),
                )
            except (OSError, ValueError, KeyError) as e:
                logger.warning("skipping unreadable model record %s (%s)", rec_file, e)
                continue
            self._models[rec.id] = rec

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
        out of training so the page can compare predictions with measurements
        the model never saw.
        """
        from aivc.instruments import PerturbationModel, get_instrument_class

        params = dict(params or {})
        try:
            cls = get_instrument_class(instrument)
        except KeyError as e:
            raise NotFoundError(str(e.args[0])) from None
        if not issubclass(cls, PerturbationModel):
            msg = (
                f"Instrument {instrument!r} is not a perturbation model; it cannot be fitted here."
            )
            raise WorkspaceValidationError(msg)
        try:
            cls(**params)
        except (TypeError, ValueError) as e:
            msg = f"Invalid parameters for {instrument!r}: {e}"
            raise WorkspaceValidationError(msg) from None
        if dataset not in self._extra and dataset not in {d["name"] for d in self.list_datasets()}:
            self._dataset(dataset)  # raises NotFoundError with the reason
        if name is not None:
            self._check_name(name, "model")
        model_id = name or f"{instrument}-{dataset}-{uuid.uuid4().hex[:6]}"
        with self._lock:
            if model_id in self._models or (self.root / "models" / model_id).exists():
                msg = (
                    f"A model named {model_id!r} already exists; choose another name or delete it."
                )
                raise ConflictError(msg)
            # reserve the name so two jobs cannot race for it
            self._models[model_id] = _ModelRecord(
                model_id, dataset, instrument, params, seed, [], time.time(), 0.0
            )
            self._models[model_id].created = -1.0  # marks a reservation

        def run(rep: JobReporter) -> dict[str, Any]:
            return self._fit(rep, model_id, dataset, instrument, params, holdout, seed)

        def release() -> None:
            with self._lock:
                rec = self._models.get(model_id)
                if rec is not None and rec.created < 0:
                    del self._models[model_id]

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
        from aivc.data.splits import kfold_perturbations
        from aivc.instruments import make_instrument

        rep.update(0.05, f"loading {dataset}")
        ds = self._dataset(dataset)
        s = ds.schema
        rep.update(0.25, "choosing held-out perturbations")
        labels = ds.adata.obs[s.perturbation_key].astype(str)
        perts = sorted(set(labels) - {s.control_label})
        heldout: list[str] = []
        train = ds.adata
        if holdout and len(perts) >= 5:
            heldout = list(
                kfold_perturbations(perts, s, n_folds=5, seeds=[seed])[0].test_perturbations
            )
            train = ds.adata[~labels.isin(heldout).to_numpy()].copy()
        known = self.known_genes()
        rep.update(0.35, f"fitting {instrument} on {train.n_obs} cells")
        model = make_instrument(instrument, **params)
        t0 = time.perf_counter()
        model.fit(train, s, known_genes=known)  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t0
        rep.update(0.9, "saving")
        rec = _ModelRecord(
            model_id, dataset, instrument, params, seed, heldout, time.time(), seconds
        )
        folder = self.root / "models" / model_id
        model.save(folder / "model")  # type: ignore[attr-defined]
        _write_json_atomic(folder / "record.json", rec.to_dict())
        rec.model = model  # type: ignore[assignment]
        with self._lock:
            self._models[model_id] = rec
        return rec.to_dict()

    def list_models(self) -> list[dict[str, Any]]:
        with self._lock:
            recs = [r for r in self._models.values() if r.created >= 0]
        return [self._model_info(r) for r in sorted(recs, key=lambda r: r.created)]

    def _record(self, model_id: str) -> _ModelRecord:
        with self._lock:
            rec = self._models.get(model_id)
        if rec is None or rec.created < 0:
            msg = f"Unknown model {model_id!r}; fit one with POST /api/models or list them with GET /api/models."
            raise NotFoundError(msg)
        return rec

    def _model(self, model_id: str) -> tuple[_ModelRecord, PerturbationModel]:
        from aivc.instruments import PerturbationModel

        rec = self._record(model_id)
        if rec.model is None:
            with self._lock:
                if rec.model is None:
                    rec.model = PerturbationModel.load(self.root / "models" / model_id / "model")
        return rec, rec.model  # type: ignore[return-value]

    def _model_info(self, rec: _ModelRecord) -> dict[str, Any]:
        from aivc.instruments import get_instrument_class

        caps = sorted(getattr(get_instrument_class(rec.instrument), "capabilities", ()))
        return {**rec.to_dict(), "capabilities": caps}

    def model_info(self, model_id: str) -> dict[str, Any]:
        rec, model = self._model(model_id)
        return {
            **self._model_info(rec),
            "control_label": model.schema_.control_label,
            "n_genes": len(model.genes_),
            "n_known_targets": len(model.known_genes_),
            "train_perturbations": sorted(set(model.train_perturbations_)),
            "contexts": sorted(str(c) for c in model.control_mean_ if c is not None),
        }

    def delete_model(self, model_id: str) -> None:
        import shutil

        rec = self._record(model_id)
        with self._lock:
            self._models.pop(rec.id, None)
        folder = self.root / "models" / model_id
        if folder.exists():
            trash = folder.with_name(f".deleted-{model_id}-{uuid.uuid4().hex[:6]}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def suggest_perturbations(
        self, model_id: str, query: str = "", *, limit: int = 20
    ) -> list[str]:
        """Autocomplete: target genes and measured labels starting with ``query`` (case-insensitive).

        After a separator (``"A+B"``), the part after it is completed.
        """
        rec, model = self._model(model_id)
        sep = model.schema_.combination_separator
        head, _, tail = query.rpartition(sep)
        prefix = (tail if head else query).strip().upper()
        measured = sorted(set(model.train_perturbations_) | set(rec.heldout))
        out: list[str] = []
        if not head:
            out += [p for p in measured if p.upper().startswith(prefix)]
        genes = [g for g in model.known_genes_ if g.upper().startswith(prefix)]
        genes.sort(key=lambda g: (g.upper() != prefix, g not in set(model.genes_), len(g), g))
        out += [f"{head}{sep}{g}" if head else g for g in genes]
        return list(dict.fromkeys(out))[:limit]

    # ------------------------------------------------------------------ prediction
    def _check_labels(self, model: PerturbationModel, perturbations: list[str]) -> None:
        s = model.schema_
        known = frozenset(model.known_genes_)
        for p in perturbations:
            if p == s.control_label:
                msg = f"{p!r} is the control label; ask for a perturbation (a gene or 'A{s.combination_separator}B')."
                raise WorkspaceValidationError(msg)
            try:
                targets = s.targets(p)
            except ValueError as e:
                raise WorkspaceValidationError(str(e)) from None
            if len(set(targets)) != len(targets):
                msg = f"The perturbation {p!r} names the same target twice."
                raise WorkspaceValidationError(msg)
            if len(targets) > 1 and "combination" not in type(model).capabilities:
                logger.info("%s has no 'combination' capability; predicting %s anyway", model, p)
            check_known(
                targets,
                known,
                what="gene",
                known_as="target genes the model knows",
                where=f" in {p!r}",
                error=NotFoundError,
            )

    @staticmethod
    def _context(model: PerturbationModel, context: str | None) -> str | None:
        if model.schema_.context_key is None:
            return None
        contexts = sorted(str(c) for c in model.control_mean_ if c is not None)
        if context is None:
            if len(contexts) == 1:
                return contexts[0]
            msg = f"This model was trained on several contexts; pass one of {contexts}."
            raise WorkspaceValidationError(msg)
        if context not in contexts:
            msg = f"Unknown context {context!r}; the model knows {contexts}."
            raise NotFoundError(msg)
        return context

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
        """Predicted mean changes, intervals (when the model gives them) and top genes."""
        rec, model = self._model(model_id)
        perts = [p.strip() for p in perturbations]
        self._check_labels(model, perts)
        context = self._context(model, context)
        has_interval = "uncertainty" in type(model).capabilities
        if has_interval:
            delta, lower, upper = model.predict_interval(perts, contexts=context, level=level)
        else:
            delta = model.predict_delta(perts, contexts=context)
            lower = upper = None
        genes = [str(g) for g in model.genes_]
        try:
            observed, info = self._observed(self._dataset(rec.dataset))
        except NotFoundError:  # the training data are gone: predictions without measurements
            observed = info = None
        train = set(model.train_perturbations_)
        results = []
        for i, p in enumerate(perts):
            cond = p if context is None else f"{p}{_condition_sep()}{context}"
            obs_row = None
            n_obs_cells = 0
            source = None
            if observed is not None and cond in observed.index:
                obs_row = observed.loc[cond].reindex(genes).to_numpy(dtype=float)
                n_obs_cells = int(info.loc[cond, "n_cells"])
                source = str(info.loc[cond, "source"])
            d = delta[i]
            order = np.argsort(-np.abs(d), kind="stable")[:top_k]
            top = []
            for j in order:
                row = {"gene": genes[j], "delta": float(d[j])}
                if has_interval:
                    row["lower"], row["upper"] = float(lower[i, j]), float(upper[i, j])
                    row["de"] = _de_call(lower[i, j], upper[i, j])
                if obs_row is not None:
                    row["observed"] = _finite(obs_row[j])
                top.append(row)
            item: dict[str, Any] = {
                "perturbation": p,
                "context": context,
                "measured": obs_row is not None,
                "observed_source": source,
                "n_observed_cells": n_obs_cells,
                "in_training": p in train,
                "heldout": p in set(rec.heldout),
                "top_genes": top,
                # A gene is called differentially expressed when its interval excludes no change.
                "de_genes": (
                    [
                        {
                            "gene": genes[j],
                            "delta": float(d[j]),
                            "call": _de_call(lower[i, j], upper[i, j]),
                        }
                        for j in np.argsort(-np.abs(d), kind="stable")
                        if lower[i, j] > 0 or upper[i, j] < 0
                    ]
                    if has_interval
                    else None
                ),
            }
            if obs_row is not None:
                ok = np.isfinite(obs_row)
                item["pearson_observed"] = _finite(
                    np.corrcoef(d[ok], obs_row[ok])[0, 1]
                    if ok.sum() > 2 and d[ok].std() > 0
                    else None
                )
                if has_interval:
                    inside = (lower[i][ok] <= obs_row[ok]) & (obs_row[ok] <= upper[i][ok])
                    item["interval_coverage"] = float(inside.mean())
            if all_genes:
                item["genes"] = genes
                item["delta"] = np.round(d, 5).tolist()
                if has_interval:
                    item["lower"] = np.round(lower[i], 5).tolist()
                    item["upper"] = np.round(upper[i], 5).tolist()
                if obs_row is not None:
                    item["observed"] = [_finite(v) for v in np.round(obs_row, 5)]
                item["embedding"] = self._project(rec.dataset, model, context, d, obs_row)
            results.append(item)
        return {
            "model": model_id,
            "instrument": rec.instrument,
            "dataset": rec.dataset,
            "level": level if has_interval else None,
            "has_intervals": has_interval,
            "predictions": results,
        }

    def _project(
        self,
        dataset: str,
        model: PerturbationModel,
        context: str | None,
        delta: np.ndarray,
        observed: np.ndarray | None,
    ) -> dict[str, Any] | None:
        """Control, predicted and observed mean states in the dataset's cached PCA, if any."""
        with self._lock:
            ds = self._datasets.get(dataset)
            cached = dict(ds.embeddings) if ds is not None else {}
        if not cached:
            return None
        key = (2000, 0) if (2000, 0) in cached else next(iter(cached))
        pca = cached[key]["_pca"]
        genes = [str(g) for g in model.genes_]
        if list(map(str, ds.adata.var_names)) != genes:
            return None
        base = np.asarray(model.control_mean_[context], dtype=float)
        states = [base, base + delta]
        if observed is not None:
            states.append(base + np.nan_to_num(observed))
        xy = pca.transform(np.stack(states))
        return {
            "n_cells": key[0],
            "seed": key[1],
            "control": np.round(xy[0], 4).tolist(),
            "predicted": np.round(xy[1], 4).tolist(),
            "observed": np.round(xy[2], 4).tolist() if observed is not None else None,
        }

    def calibration(
        self, model_id: str, *, levels: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    ) -> dict[str, Any]:
        """Coverage of the model's intervals on its held-out measured perturbations.

        For each nominal level, the fraction of (perturbation, gene) pairs whose
        measured change falls inside the predicted interval. Only held-out
        perturbations count, so the curve is not flattered by training data.
        """
        rec, model = self._model(model_id)
        if "uncertainty" not in type(model).capabilities:
            msg = f"{rec.instrument!r} gives no intervals, so it has no calibration curve."
            raise WorkspaceValidationError(msg)
        observed, info = self._observed(self._dataset(rec.dataset))
        conds = [c for c in observed.index if info.loc[c, "perturbation"] in set(rec.heldout)]
        if not conds:
            msg = f"Model {model_id!r} has no held-out measured perturbations to calibrate on; fit it with holdout=true."
            raise WorkspaceValidationError(msg)
        perts = [str(info.loc[c, "perturbation"]) for c in conds]
        ctxs = [
            None if pd.isna(info.loc[c, "context"]) else str(info.loc[c, "context"]) for c in conds
        ]
        obs = observed.loc[conds].reindex(columns=list(model.genes_)).to_numpy(dtype=float)
        ok = np.isfinite(obs)
        coverage = []
        for lv in levels:
            _, lo, hi = model.predict_interval(perts, contexts=ctxs, level=lv)
            coverage.append(float(((lo <= obs) & (obs <= hi))[ok].mean()))
        return {
            "model": model_id,
            "levels": list(levels),
            "coverage": coverage,
            "n_perturbations": len(conds),
            "perturbations": perts,
        }

    # ------------------------------------------------------------------ uploads
    def list_uploads(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted((self.root / "uploads").glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def save_upload(
        self, dataset: str, chunks: Any, *, filename: str = "upload.h5ad"
    ) -> dict[str, Any]:
        """Store measured results for ``dataset`` from an iterable of byte chunks.

        The bytes go to a temporary file (refused with :class:`PayloadTooLargeError`
        past ``max_upload_bytes``), are read with anndata (HDF5 only; nothing is
        unpickled), validated against the dataset's schema and genes, and only
        then renamed into place with a JSON description. Nothing is left behind
        when any step fails.
        """
        ds = self._dataset(dataset)
        folder = self.root / "uploads"
        upload_id = uuid.uuid4().hex[:12]
        with atomic_path(folder / f"{upload_id}.h5ad") as tmp:
            size = 0
            with tmp.open("wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        msg = f"The upload is larger than the {self.max_upload_bytes} bytes this server accepts."
                        raise PayloadTooLargeError(msg)
                    fh.write(chunk)
            summary = self._validate_upload(tmp, ds)
            meta = {
                "id": upload_id,
                "dataset": dataset,
                "filename": Path(filename).name[:200],
                "bytes": size,
                "created": time.time(),
                **summary,
            }
        try:
            _write_json_atomic(folder / f"{upload_id}.json", meta)
        except BaseException:
            (folder / f"{upload_id}.h5ad").unlink(missing_ok=True)
            raise
        with self._lock:
            ds.observed = ds.observed_info = None  # recomputed with the new measurements
        return meta

    def _validate_upload(self, path: Path, ds: _Dataset) -> dict[str, Any]:
        from aivc.data import DataValidationError, read_h5ad, validate

        with path.open("rb") as fh:
            if fh.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
                msg = "The upload is not an h5ad file (no HDF5 signature); write it with AnnData.write_h5ad."
                raise WorkspaceValidationError(msg)
        try:
            adata = read_h5ad(path)
        except (DataValidationError, FileNotFoundError) as e:
            raise WorkspaceValidationError(str(e)) from None
        schema = ds.schema
        upload_schema = _replace_counts(schema, adata)
        try:
            validate(adata, upload_schema)
        except (DataValidationError, KeyError, ValueError) as e:
            msg = f"The upload does not match the schema of {ds.name!r}: {e}"
            raise WorkspaceValidationError(msg) from None
        shared = adata.var_names.intersection(ds.adata.var_names)
        if len(shared) == 0:
            msg = (
                f"The upload shares no genes with {ds.name!r} (expected gene symbols such as "
                f"{list(ds.adata.var_names[:3])}; got {list(adata.var_names[:3])})."
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

    def _upload_changes(self, upload_id: str, ds: _Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
        from aivc.data import observed_changes, prepare, read_h5ad

        adata = read_h5ad(self.root / "uploads" / f"{upload_id}.h5ad")
        schema = _replace_counts(ds.schema, adata)
        prepared, schema = prepare(adata, schema, known_genes=None)
        delta, info = observed_changes(prepared, schema, missing_controls="drop")
        return delta.reindex(columns=ds.adata.var_names), info

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
        """A virtual screen of candidates under an objective (:mod:`aivc.experiments`)."""
        from aivc.interfaces.api import _experiments

        _, model = self._model(model_id)
        for labels in (candidates, pairs_of):
            if labels is not None:
                self._check_labels(model, [c.strip() for c in labels])
        context = self._context(model, context)
        try:
            return _experiments.screen(
                model,
                objective=objective,
                candidates=None if candidates is None else [c.strip() for c in candidates],
                pairs_of=None if pairs_of is None else [c.strip() for c in pairs_of],
                context=context,
                level=level,
                top_k=top_k,
            )
        except ValueError as e:  # unknown objective gene, bad objective text
            raise WorkspaceValidationError(str(e)) from None

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
        """Suggest the next perturbations to measure, learning from the measured ones."""
        from aivc.interfaces.api import _experiments

        rec, model = self._model(model_id)
        if candidates is not None:
            candidates = [c.strip() for c in candidates]
            self._check_labels(model, candidates)
        context = self._context(model, context)
        observed, info = self._observed(self._dataset(rec.dataset))
        rows = info.index if context is None else info.index[info["context"].astype(str) == context]
        by_label = observed.loc[rows].reindex(columns=[str(g) for g in model.genes_])
        by_label.index = info.loc[rows, "perturbation"].astype(str).to_numpy()
        by_label = by_label[~by_label.index.duplicated()].fillna(0.0)
        try:
            return _experiments.propose(
                model,
                by_label,
                strategy=strategy,
                batch_size=batch_size,
                candidates=candidates,
                context=context,
                seed=seed,
            )
        except KeyError as e:
            raise NotFoundError(str(e.args[0])) from None
        except ValueError as e:
            raise WorkspaceValidationError(str(e)) from None

    def ledger_projects(self) -> list[dict[str, Any]]:
        """Projects of the experiment ledger (written by the lab loop)."""
        from aivc.interfaces.api import _experiments

        return _experiments.ledger_projects(self.ledger_url)

    def ledger_project(self, name: str) -> dict[str, Any]:
        from aivc.interfaces.api import _experiments

        try:
            return _experiments.ledger_project(self.ledger_url, name)
        except KeyError as e:
            raise NotFoundError(str(e.args[0])) from None

    def explain(
        self, model_id: str, perturbation: str, *, context: str | None = None, n_top: int = 20
    ) -> dict[str, Any]:
        """Top genes, GO-BP pathways among the predicted DE genes, and network neighbours.

        Calls :func:`aivc.experiments._explain.explain`.
        """
        from aivc.experiments._explain import explain

        _, model = self._model(model_id)
        perturbation = perturbation.strip()
        self._check_labels(model, [perturbation])
        context = self._context(model, context)
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


def _condition_sep() -> str:
    from aivc.data import CONDITION_SEP

    return CONDITION_SEP


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if np.isfinite(f) else None


def _is_plain(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str | list | tuple | dict)


def _replace_counts(schema: PerturbationSchema, adata: AnnData) -> PerturbationSchema:
    """The dataset schema, reading counts from ``layers['counts']`` when the upload has them."""
    from dataclasses import replace

    layer = schema.counts_layer
    if layer is not None and layer not in adata.layers:
        layer = None
    return replace(schema, counts_layer=layer)
