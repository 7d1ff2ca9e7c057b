"""Self-describing model directories: a fitted perturbation model plus what it was trained on.

A model directory extends the :meth:`Instrument.save` layout (``config.json``
and ``weights.safetensors``) with:

- ``aivc-model.json``: the manifest (model-directory version, aivc version,
  instrument name and class, parameters, schema, preprocessing, training data
  name, file and SHA-256, number of cells, training perturbations, seed, and
  the optional record of the fit: perturbations held out of training, time of
  writing, seconds the fit took).
- ``genes.json``: the measured genes, in the order of every predicted vector.
- ``schema.json``: the dataset schema (which ``obs`` columns hold what).
- ``controls.safetensors``: a seeded sample of the training control cells
  (log-normalised, CSR arrays) with their contexts in the manifest, so the
  directory can predict cells without the training data.

Nothing is pickled; loading checks the manifest version, the class and the
gene list against the weights' config. The format is documented in
``docs/model-format.md``. ``aivc fit`` / ``aivc predict`` and the workspace
behind the REST API and the MCP server all read and write this one format.

Example
-------
>>> save_model_dir(model, "models/papalexi", training=training_info(adata, dataset="papalexi2021"))
>>> loaded = load_model_dir("models/papalexi")
>>> loaded.model.predict_delta(["STAT1"])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError
from aivc.instruments._base import FORMAT_VERSION, PerturbationModel, _json_default

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "MANIFEST",
    "MODEL_DIR_VERSION",
    "FitRecord",
    "ModelDirectory",
    "file_sha256",
    "interval_calls",
    "load_model_dir",
    "read_manifest",
    "save_model_dir",
    "training_info",
]

#: Version of the layout written; version 2 added the optional record of the fit
#: (``training.heldout_perturbations``, ``training.fit_seconds``, a ``created`` time
#: with microseconds). Both versions are read.
MODEL_DIR_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "aivc-model.json"
GENES = "genes.json"
SCHEMA = "schema.json"
CONTROLS = "controls.safetensors"


@dataclass(frozen=True)
class FitRecord:
    """What a model directory says about its fit, read from the manifest alone.

    Attributes
    ----------
    instrument
        Registry name of the model.
    params
        Constructor parameters of the model.
    dataset
        Name of the dataset it was fitted on (registered, or offered by a
        workspace); ``None`` when it was fitted on a file.
    data_file
        Name of the training file, when there was one.
    seed
        Seed of the fit (held-out choice, control sample, and the model's seed
        where ``aivc fit`` set it); ``None`` when not recorded.
    heldout_perturbations
        Measured perturbations of the dataset held out of training (empty when
        none were).
    created
        When the directory was written (UTC); ``None`` when not recorded.
    fit_seconds
        Seconds the fit took; ``None`` when not recorded.
    """

    instrument: str
    params: dict[str, Any]
    dataset: str | None
    data_file: str | None
    seed: int | None
    heldout_perturbations: tuple[str, ...]
    created: datetime | None
    fit_seconds: float | None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FitRecord:
        """The record held by a manifest (``aivc-model.json``) of either version."""
        training = manifest.get("training") or {}
        created = manifest.get("created")
        seed = training.get("seed")
        seconds = training.get("fit_seconds")
        return cls(
            instrument=str(manifest["instrument"]),
            params=dict(manifest.get("params") or {}),
            dataset=training.get("dataset"),
            data_file=training.get("data_file"),
            seed=None if seed is None else int(seed),
            heldout_perturbations=tuple(map(str, training.get("heldout_perturbations") or ())),
            created=None if not created else datetime.fromisoformat(str(created)),
            fit_seconds=None if seconds is None else float(seconds),
        )


@dataclass
class ModelDirectory:
    """A loaded model directory: the fitted model, its manifest and its reference control cells."""

    model: PerturbationModel
    manifest: dict[str, Any]
    path: Path
    controls: AnnData | None

    @property
    def schema(self) -> PerturbationSchema:
        return self.model.schema_

    @property
    def genes(self) -> list[str]:
        return list(map(str, self.model.genes_))

    @property
    def record(self) -> FitRecord:
        """Instrument, parameters, dataset, seed, held-out perturbations, time and duration of the fit."""
        return FitRecord.from_manifest(self.manifest)


def interval_calls(lower: np.ndarray, upper: np.ndarray, *, not_called: str = "ns") -> np.ndarray:
    """Differential-expression calls from intervals of the predicted change.

    A gene is called ``"up"`` when its whole interval lies above zero,
    ``"down"`` when it lies below, and ``not_called`` when it holds zero.

    Parameters
    ----------
    lower, upper
        Bounds of the interval of each change (any matching shapes).
    not_called
        The call of a gene whose interval holds zero.

    Returns
    -------
    An array of strings of the shape of ``lower``.
    """
    lower, upper = np.asarray(lower), np.asarray(upper)
    return np.where(lower > 0, "up", np.where(upper < 0, "down", not_called))


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def training_info(
    adata: AnnData,
    *,
    dataset: str | None = None,
    data_file: str | Path | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What a model was trained on, for the manifest.

    Parameters
    ----------
    adata
        The (prepared) training data.
    dataset
        Registered dataset name, if any.
    data_file
        The file the data were read from; its SHA-256 is recorded.
    seed
        The seed of the fit.
    """
    info: dict[str, Any] = {
        "dataset": dataset,
        "data_file": None if data_file is None else Path(data_file).name,
        "data_sha256": None if data_file is None else file_sha256(data_file),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "seed": seed,
    }
    prep = adata.uns.get("aivc", {}).get("preprocessing")
    if prep is not None:
        info["preprocessing"] = {k: _plain(v) for k, v in dict(prep).items()}
    return info


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _control_sample(
    adata: AnnData, schema: PerturbationSchema, genes: list[str], max_cells: int, seed: int
) -> tuple[sp.csr_matrix, list[str | None]]:
    labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    ctrl = labels == schema.control_label
    ctx = (
        adata.obs[schema.context_key].astype(str).to_numpy()
        if schema.context_key is not None
        else np.full(adata.n_obs, None, dtype=object)
    )
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    contexts: list[str | None] = []
    for c in pd.unique(ctx[ctrl]):
        pool = np.flatnonzero(ctrl & (ctx == c))
        take = np.sort(rng.choice(pool, min(max_cells, len(pool)), replace=False))
        rows.append(take)
        contexts += [None if c is None else str(c)] * len(take)
    idx = pd.Index(adata.var_names).get_indexer(genes)
    x = sp.csr_matrix(adata.X[np.concatenate(rows)][:, idx], dtype=np.float32)
    return x, contexts


def save_model_dir(
    model: PerturbationModel,
    path: str | Path,
    *,
    training: dict[str, Any] | None = None,
    controls: AnnData | None = None,
    max_control_cells: int = 300,
    heldout_perturbations: Sequence[str] | None = None,
    fit_seconds: float | None = None,
    created: datetime | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a fitted model and its manifest to the directory ``path``, atomically.

    The directory is written under a hidden temporary name beside ``path`` and
    renamed into place once complete, so a reader never sees half of one.

    Parameters
    ----------
    model
        A fitted perturbation model.
    path
        Target directory.
    training
        What it was trained on (see :func:`training_info`).
    controls
        Training data whose control cells are sampled (at most
        ``max_control_cells`` per context, seeded by ``training["seed"]``)
        into ``controls.safetensors``; ``None`` writes none.
    max_control_cells
        Control cells kept per context.
    heldout_perturbations
        Measured perturbations of the training dataset that were kept out of
        the fit (``training.heldout_perturbations``); none by default. None of
        them may be among the model's training perturbations.
    fit_seconds
        Seconds the fit took (``training.fit_seconds``), when known.
    created
        Time of the fit (``created``); default now.
    overwrite
        Replace an existing directory.
    """
    from safetensors.numpy import save_file

    from aivc._version import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{str(path)!r} already exists; pass overwrite=True (--overwrite) to replace it."
        raise FileExistsError(msg)
    model._check_fitted()
    heldout = sorted(dict.fromkeys(map(str, heldout_perturbations or ())))
    leaked = sorted(set(heldout) & set(map(str, model.train_perturbations_)))
    if leaked:
        msg = (
            f"Perturbations {leaked[:5]} are declared held out but the model was trained on them; "
            "fit on data without them, or do not declare them held out."
        )
        raise ValueError(msg)
    training = dict(training or {})
    training["heldout_perturbations"] = heldout
    training["fit_seconds"] = None if fit_seconds is None else float(fit_seconds)
    created = created or datetime.now(UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    genes = list(map(str, model.genes_))
    schema = model.schema_
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        inner = model.save(tmp / "model")
        control_contexts: list[str | None] | None = None
        if controls is not None:
            seed = training.get("seed") or 0
            x, control_contexts = _control_sample(controls, schema, genes, max_control_cells, seed)
            save_file(
                {
                    "data": x.data.astype(np.float32),
                    "indices": x.indices.astype(np.int64),
                    "indptr": x.indptr.astype(np.int64),
                    "shape": np.asarray(x.shape, dtype=np.int64),
                },
                str(inner / CONTROLS),
            )
        manifest = {
            "model_dir_version": MODEL_DIR_VERSION,
            "format_version": FORMAT_VERSION,
            "aivc_version": __version__,
            "created": created.astimezone(UTC).isoformat(timespec="microseconds"),
            "instrument": type(model).name or type(model).__name__,
            "class": type(model).__name__,
            "params": model.get_params(),
            "capabilities": sorted(getattr(type(model), "capabilities", ())),
            "schema": schema.to_dict(),
            "n_genes": len(genes),
            "genes_sha256": hashlib.sha256("\n".join(genes).encode()).hexdigest(),
            "training": {
                **training,
                "perturbations": sorted(set(model.train_perturbations_)),
                "contexts": sorted({str(c) for c in model.control_mean_ if c is not None}),
            },
            "controls": None
            if control_contexts is None
            else {
                "file": CONTROLS,
                "n_cells": len(control_contexts),
                # rows are grouped by context, in this order
                "contexts": [
                    {"context": c, "n_cells": control_contexts.count(c)}
                    for c in dict.fromkeys(control_contexts)
                ],
            },
        }
        (inner / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
        )
        (inner / GENES).write_text(json.dumps(genes))
        (inner / SCHEMA).write_text(schema.to_json())
        if path.exists():  # overwrite: move the old directory aside, then swap in the new one
            os.replace(path, tmp / "replaced")
            try:
                os.replace(inner, path)
            except BaseException:
                os.replace(tmp / "replaced", path)
                raise
        else:
            os.replace(inner, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        msg = f"{str(path)!r} is not valid JSON ({e}); the model directory is corrupted."
        raise DataValidationError(msg) from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest (``aivc-model.json``) of the model directory ``path``, without loading the model.

    Raises :class:`FileNotFoundError` when ``path`` is no directory and
    :class:`DataValidationError` when it has no manifest, an unreadable one,
    or one of a version this aivc does not read.
    """
    path = Path(path)
    if not path.is_dir():
        msg = f"No model directory at {str(path)!r}; create one with `aivc fit ... --out {path}`."
        raise FileNotFoundError(msg)
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        msg = (
            f"{str(path)!r} has no {MANIFEST}; it is not an aivc model directory "
            "(an Instrument.save directory can be read with PerturbationModel.load)."
        )
        raise DataValidationError(msg)
    manifest = _read_json(manifest_file)
    if not isinstance(manifest, dict):
        msg = (
            f"{str(manifest_file)!r} does not hold a JSON object; the model directory is corrupted."
        )
        raise DataValidationError(msg)
    version = manifest.get("model_dir_version")
    if version not in READABLE_VERSIONS:
        msg = (
            f"Model directory version {version!r} in {str(path)!r}; this aivc reads versions "
            f"{list(READABLE_VERSIONS)}."
        )
        raise DataValidationError(msg)
    return manifest


def load_model_dir(
    path: str | Path, *, expected: type[PerturbationModel] | None = None
) -> ModelDirectory:
    """Read a model directory written by :func:`save_model_dir`.

    Checks the manifest version, that the manifest, ``config.json`` and the
    loaded model agree on the class, and that ``genes.json`` is the model's
    gene list; raises :class:`DataValidationError` otherwise.

    Parameters
    ----------
    path
        The model directory.
    expected
        A class the model must be (a subclass of); default any perturbation model.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    manifest = read_manifest(path)
    config = _read_json(path / "config.json") if (path / "config.json").exists() else {}
    if config.get("class") != manifest.get("class"):
        msg = (
            f"{str(path)!r} is inconsistent: the manifest names class {manifest.get('class')!r} but "
            f"config.json holds {config.get('class')!r}."
        )
        raise DataValidationError(msg)
    model = (expected or PerturbationModel).load(path)
    if type(model).__name__ != manifest["class"]:
        msg = f"{str(path)!r} loaded as {type(model).__name__}, but its manifest names {manifest['class']}."
        raise DataValidationError(msg)
    genes = _read_json(path / GENES) if (path / GENES).exists() else None
    if genes is None or list(map(str, model.genes_)) != list(genes):
        msg = (
            f"The gene list of {str(path)!r} ({GENES}) does not match the model's genes "
            f"({len(model.genes_)}); the directory is corrupted or was edited."
        )
        raise DataValidationError(msg)
    if manifest.get("n_genes") != len(genes):
        msg = f"The manifest of {str(path)!r} declares {manifest.get('n_genes')} genes but {GENES} lists {len(genes)}."
        raise DataValidationError(msg)
    controls = None
    info = manifest.get("controls")
    if info:
        import anndata as ad

        try:
            arr = load_file(str(path / info["file"]))
        except Exception as e:  # safetensors raises its own error types for damaged files
            msg = f"Could not read control cells from {str(path)!r} ({e}); the model directory is corrupted."
            raise DataValidationError(msg) from None
        shape = tuple(int(v) for v in arr["shape"])
        x = sp.csr_matrix((arr["data"], arr["indices"], arr["indptr"]), shape=shape)
        schema = model.schema_
        obs = pd.DataFrame({schema.perturbation_key: [schema.control_label] * shape[0]})
        if schema.context_key is not None:
            obs[schema.context_key] = [
                str(block["context"]) for block in info["contexts"] for _ in range(block["n_cells"])
            ]
        obs.index = [f"ref_control_{i}" for i in range(shape[0])]
        controls = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    return ModelDirectory(model=model, manifest=manifest, path=path, controls=controls)


# ----------------------------------------------------------------------------- fit / predict
def parse_param(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is read as JSON when it parses, else kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        msg = f"Parameters are given as key=value (e.g. n_folds=5). Got {text!r} instead."
        raise ValueError(msg)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def fit_model_dir(
    out: str | Path,
    *,
    model: str,
    dataset: str | None = None,
    data: str | Path | None = None,
    schema: PerturbationSchema | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    n_top_genes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Fit a registered perturbation model on a dataset and write a model directory.

    Parameters
    ----------
    out
        The model directory to write.
    model
        Registered instrument name (``aivc instruments list``).
    dataset
        Registered dataset name (its schema is known); or
    data
        An ``.h5ad`` file with raw counts (in ``X`` or ``schema.counts_layer``)
        and the columns named by ``schema`` (or a schema in ``uns["aivc"]``).
    params
        Keyword parameters of the model (checked against its signature).
    seed
        Seed of the model (when it takes one) and of the stored control sample.
    n_top_genes
        Keep this many highly variable genes (and every target) before fitting.
    """
    import inspect

    from aivc.data._preprocess import highly_variable_genes, prepare
    from aivc.data._registry import dataset_entry, load, schema_of
    from aivc.data._validate import read_h5ad
    from aivc.instruments._registry import get_instrument_class

    if (dataset is None) == (data is None):
        msg = "Give exactly one of a registered dataset (--dataset NAME) or a file (--data FILE.h5ad)."
        raise ValueError(msg)
    cls = get_instrument_class(model)
    if not issubclass(cls, PerturbationModel):
        msg = f"{model!r} is not a perturbation model; `aivc instruments list` shows the manipulators."
        raise ValueError(msg)
    if getattr(cls, "peer", ""):
        msg = (
            f"{model!r} is a published peer: it runs in its own environment inside `aivc "
            "benchmark` (e.g. `aivc benchmark unseen-cell-type --models aivc-perturb,"
            f"{model}`) and is not kept as an aivc model directory."
        )
        raise ValueError(msg)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        msg = f"{model!r} has no parameter(s) {unknown}; its parameters are {allowed}."
        raise ValueError(msg)
    if "seed" in allowed and "seed" not in params:
        params["seed"] = seed
    if dataset is not None:
        raw = load(dataset)
        data_file: Path | None = dataset_entry(dataset).path()
        schema = schema or schema_of(raw)
    else:
        data_file = Path(data)  # type: ignore[arg-type]
        raw = read_h5ad(data_file)
        if schema is None:
            schema = schema_of(raw)
    known: list[str] | None = None
    try:
        from aivc.genes import gene_symbols

        known = sorted(gene_symbols())
    except FileNotFoundError:
        known = None
    adata, schema = prepare(raw, schema, known_genes=known if dataset is not None else None)
    if n_top_genes is not None:
        adata = adata[:, highly_variable_genes(adata, schema, n_top_genes=n_top_genes)].copy()
    instrument = cls(**params)
    start = time.perf_counter()
    instrument.fit(adata, schema, known_genes=known)
    seconds = time.perf_counter() - start
    info = training_info(adata, dataset=dataset, data_file=data_file, seed=seed)
    if n_top_genes is not None:
        info["n_top_genes"] = n_top_genes
    return save_model_dir(
        instrument, out, training=info, controls=adata, fit_seconds=seconds, overwrite=overwrite
    )


def _query_controls(md: ModelDirectory, control: AnnData | None, context: str | None) -> AnnData:
    from aivc.data._expression import looks_like_counts
    from aivc.data._preprocess import log_normalize
    from aivc.data._validate import check_gene_panel

    schema = md.schema
    if control is None:
        if md.controls is None:
            msg = "This model directory stores no control cells; pass --control FILE.h5ad with control cells."
            raise DataValidationError(msg)
        return md.controls
    idx = check_gene_panel(control.var_names, md.genes, what=f"the model in {str(md.path)!r}")
    x = control.X
    if looks_like_counts(x):
        prep = md.manifest.get("training", {}).get("preprocessing", {})
        x, _ = log_normalize(sp.csr_matrix(x), target_sum=prep.get("target_sum", 1e4))
    import anndata as ad

    obs = control.obs.copy()
    if schema.perturbation_key not in obs:
        obs[schema.perturbation_key] = schema.control_label  # every cell is a control
    if schema.context_key is not None and schema.context_key not in obs:
        if context is None:
            msg = (
                f"The control file has no {schema.context_key!r} column; pass --context to say which "
                "context its cells are."
            )
            raise DataValidationError(msg)
        obs[schema.context_key] = context
    for key in schema.obs_keys().values():
        if key in obs:
            obs[key] = obs[key].astype(str)
    out = ad.AnnData(
        X=sp.csr_matrix(sp.csr_matrix(x)[:, idx], dtype=np.float32),
        obs=obs[[k for k in schema.obs_keys().values() if k in obs]],
        var=pd.DataFrame(index=pd.Index(md.genes)),
    )
    if not (out.obs[schema.perturbation_key] == schema.control_label).any():
        msg = f"The control file has no cells labelled {schema.control_label!r} in {schema.perturbation_key!r}."
        raise DataValidationError(msg)
    return out


def predict_model_dir(
    path: str | Path,
    perturbations: list[str],
    *,
    context: str | None = None,
    control: AnnData | None = None,
    dose: float | None = None,
    n_cells: int = 100,
    level: float = 0.9,
    seed: int = 0,
) -> AnnData:
    """Predicted cells, mean changes with intervals and DE calls from a model directory.

    Returns the AnnData of :meth:`PerturbationModel.predict` (predicted cells
    of each perturbation, then control cells, with the schema's columns) with,
    in ``uns["aivc"]``:

    - ``conditions``: the predicted conditions, in order;
    - ``predicted_delta``: conditions x genes predicted mean change;
    - ``delta_lower`` / ``delta_upper`` / ``interval_level``: the interval of
      each change (models with the ``"uncertainty"`` capability only);
    - ``de``: DataFrame of Wilcoxon DE of the predicted cells against the
      predicted controls (``condition``, ``gene``, ``score``, ``logfoldchange``,
      ``pvals_adj``, ``call`` in up/down/ns at adjusted p < 0.05, and
      ``interval_call``: up/down when the interval excludes 0).
      ``logfoldchange`` is the difference of mean log-normalised expression
      (natural log, ``log1p`` scale) between the condition's predicted cells
      and the control cells of its context, so a gene at zero in the controls
      gets a bounded value (its mean log-expression in the predicted cells)
      rather than the ratio against a pseudocount of 1e-9 that scanpy reports;
      its sign, and so ``call``, is that of scanpy's fold change;
    - ``model_dir``: the manifest's instrument, class, training data and hash.
    """
    from aivc.data._preprocess import (
        CONDITION_SEP,
        differential_expression,
        dose_label,
        pseudobulk,
    )

    md = load_model_dir(path)
    model, schema = md.model, md.schema
    perts = [p.strip() for p in perturbations if p.strip()]
    if not perts:
        msg = "No perturbations given; pass e.g. --perturbations STAT1,IRF1+STAT1."
        raise ValueError(msg)
    if n_cells < 1:
        msg = f"--n-cells must be a positive integer. Got {n_cells} instead."
        raise ValueError(msg)
    ctrl = _query_controls(md, control, context)
    ctx = context
    if schema.context_key is not None and ctx is None:
        available = sorted(set(ctrl.obs[schema.context_key].astype(str)))
        if len(available) != 1:
            msg = f"The model has contexts; pass --context, one of {available}."
            raise DataValidationError(msg)
        ctx = available[0]
    doses = None if dose is None else [float(dose)] * len(perts)
    pred = model.predict(perts, control=ctrl, contexts=ctx, doses=doses, n_cells=n_cells, seed=seed)
    uns = dict(pred.uns["aivc"])
    if "uncertainty" in getattr(type(model), "capabilities", ()):
        _, lower, upper = model.predict_interval(
            perts, contexts=ctx, doses=doses, control=ctrl, level=level
        ).arrays()
        uns["delta_lower"] = lower.astype(np.float32)
        uns["delta_upper"] = upper.astype(np.float32)
        uns["interval_level"] = float(level)
    else:
        lower = upper = None
    de = differential_expression(pred, schema, seed=seed)
    means, _ = pseudobulk(pred, schema)
    conds = list(uns["conditions"])
    gpos = {g: i for i, g in enumerate(md.genes)}
    frames = []
    ctx_list = [ctx] * len(perts)
    for i, c in enumerate(conds):
        key = dose_label(perts[i], 0.0 if doses is None else doses[i])
        ctrl_key = schema.control_label
        if ctx_list[i] is not None and schema.context_key is not None:
            key = key + CONDITION_SEP + str(ctx_list[i])
            ctrl_key = ctrl_key + CONDITION_SEP + str(ctx_list[i])
        if key not in de:
            continue
        t = de[key].rename_axis("gene").reset_index()
        t.insert(0, "condition", c)
        # scanpy's log2 ratio of expm1 means reaches 20-30 for genes at zero in the controls
        change = means.loc[key] - means.loc[ctrl_key]
        t["logfoldchange"] = change.reindex(t["gene"]).to_numpy(dtype=float)
        sig = t["pvals_adj"].to_numpy() < 0.05
        lfc = t["logfoldchange"].to_numpy()
        t["call"] = np.where(sig & (lfc > 0), "up", np.where(sig & (lfc < 0), "down", "ns"))
        if lower is not None:
            gi = t["gene"].map(gpos).to_numpy()
            t["interval_call"] = interval_calls(lower[i, gi], upper[i, gi])
        frames.append(t)
    de_table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in de_table.columns:
        if de_table[col].dtype == object:
            de_table[col] = de_table[col].astype(str)
    de_table.index = de_table.index.astype(str)
    uns["de"] = de_table
    uns["model_dir"] = {
        "instrument": md.manifest["instrument"],
        "class": md.manifest["class"],
        "dataset": md.manifest.get("training", {}).get("dataset") or "",
        "data_sha256": md.manifest.get("training", {}).get("data_sha256") or "",
    }
    pred.uns["aivc"] = uns
    return pred
