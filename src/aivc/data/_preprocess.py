"""Preprocessing of perturbation data: normalisation, gene selection, pseudobulk, DE."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import DTypeLike

from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError, get_counts, validate

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CONDITION_SEP",
    "DOSE_SEP",
    "condition_labels",
    "differential_expression",
    "dose_label",
    "highly_variable_genes",
    "log_normalize",
    "prepare",
    "pseudobulk",
    "treatment_labels",
]

logger = logging.getLogger(__name__)

#: Separator between perturbation and context in a condition label.
CONDITION_SEP = " | "
#: Separator between perturbation and dose in a treatment label (``"D001 @ 10"``).
DOSE_SEP = " @ "


def dose_label(perturbation: str, dose: float | None) -> str:
    """The treatment label of a perturbation at a dose (the plain label when the dose is 0/None)."""
    if dose is None or not np.isfinite(dose) or dose == 0:
        return perturbation
    return f"{perturbation}{DOSE_SEP}{float(dose):g}"


def treatment_labels(adata: AnnData, schema: PerturbationSchema) -> pd.Series:
    """Perturbation of each cell, with its dose when the schema has a dose column and it is non-zero."""
    pert = adata.obs[schema.perturbation_key].astype(str)
    if schema.dose_key is None:
        return pert.rename("treatment")
    dose = pd.to_numeric(adata.obs[schema.dose_key], errors="coerce").to_numpy(dtype=float)
    has_dose = np.isfinite(dose) & (dose != 0) & (pert != schema.control_label).to_numpy()
    out = pert.to_numpy().astype(object)
    out[has_dose] = [dose_label(p, d) for p, d in zip(out[has_dose], dose[has_dose], strict=True)]
    return pd.Series(out, index=adata.obs_names, name="treatment")


@overload
def log_normalize(
    counts: object,
    *,
    target_sum: float | None = ...,
    dtype: DTypeLike = ...,
    dense: Literal[False] = ...,
    scaling: Literal["factor", "fraction"] = ...,
) -> tuple[sp.csr_matrix, float]: ...


@overload
def log_normalize(
    counts: object,
    *,
    target_sum: float | None = ...,
    dtype: DTypeLike = ...,
    dense: Literal[True],
    scaling: Literal["factor", "fraction"] = ...,
) -> tuple[np.ndarray, float]: ...


def log_normalize(
    counts: object,
    *,
    target_sum: float | None = 1e4,
    dtype: DTypeLike = np.float32,
    dense: bool = False,
    scaling: Literal["factor", "fraction"] = "factor",
) -> tuple[sp.csr_matrix | np.ndarray, float]:
    """Library-size normalisation followed by ``log1p``.

    Each cell's counts are scaled to sum to ``target_sum`` and then
    ``log1p``-transformed; cells without counts stay zero. The arithmetic is
    done in float64 whatever the input type.

    Parameters
    ----------
    counts
        Cells x genes raw counts (dense or sparse). Library sizes are summed
        in the input's own layout (dense rows or sparse rows; for integer
        counts the two are identical).
    target_sum
        Total each cell is scaled to (default 10,000, the usual convention and
        the scale of published reference numbers); ``None`` uses the median library size.
    dtype
        Data type of the result (float32 by default, as in :func:`prepare`).
    dense
        Return a dense array instead of CSR.
    scaling
        Order of the per-cell arithmetic; the two agree up to the last bit of
        float64. ``"factor"`` (default, used by :func:`prepare`) multiplies
        each count by ``target_sum / library size``; ``"fraction"`` divides
        each count by its library size and then multiplies by ``target_sum``
        (the arithmetic of the ``lab-loop`` benchmark, kept so that its
        numbers are reproduced exactly).

    Returns
    -------
    The log-normalised matrix (CSR, or dense with ``dense=True``, of ``dtype``)
    and the target sum used.
    """
    if scaling not in ("factor", "fraction"):
        msg = f"scaling must be 'factor' or 'fraction'; got {scaling!r}."
        raise ValueError(msg)
    if sp.issparse(counts):
        m = sp.csr_matrix(counts, dtype=np.float64)
        lib = np.asarray(m.sum(axis=1)).ravel()
    else:
        values = np.asarray(counts, dtype=np.float64)
        lib = values.sum(axis=1)
        m = sp.csr_matrix(values)
    if target_sum is None:
        positive = lib[lib > 0]
        target_sum = float(np.median(positive)) if positive.size else 1.0
    if scaling == "factor":
        scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
        m = sp.diags(scale) @ m
    else:
        per_entry = np.repeat(np.where(lib > 0, lib, 1.0), np.diff(m.indptr))
        m.data = m.data / per_entry * target_sum  # a new array: the input is not modified
    m.data = np.log1p(m.data)
    out = sp.csr_matrix(m, dtype=dtype)
    return (out.toarray() if dense else out), float(target_sum)


def prepare(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    target_sum: float | None = 1e4,
    known_genes: Sequence[str] | None = None,
    validate_input: bool = True,
) -> tuple[AnnData, PerturbationSchema]:
    """Validate and log-normalise a perturbation dataset.

    Returns a new AnnData whose ``X`` is library-size normalised + ``log1p``
    (float32 CSR), with the raw counts in ``layers["counts"]``, and the schema
    that describes it (``counts_layer="counts"``). The input is not modified.

    Writes ``uns["aivc"]`` with ``schema`` and ``preprocessing`` (the target
    sum) in the returned object. When the schema names a counts layer and the
    input's ``X`` holds something else (e.g. values normalised another way),
    ``X`` is rebuilt from the counts: this is logged with the largest absolute
    difference from the input's ``X`` on a sample of cells, and recorded in
    ``preprocessing`` as ``x_rebuilt_from`` (the layer),
    ``shipped_x_max_abs_diff`` and ``shipped_x_cells_compared``.
    """
    if validate_input:
        validate(adata, schema, known_genes=known_genes)
    counts = sp.csr_matrix(get_counts(adata, schema), dtype=np.float32)
    x, used = log_normalize(counts, target_sum=target_sum)
    preprocessing: dict[str, object] = {
        "normalisation": "library size + log1p",
        "target_sum": used,
    }
    if schema.counts_layer is not None:
        preprocessing.update(_shipped_x_comparison(adata.X, x, schema.counts_layer))
    import anndata as ad

    obs = adata.obs.copy()
    for key in schema.obs_keys().values():
        if isinstance(obs[key].dtype, pd.CategoricalDtype):
            obs[key] = obs[key].cat.remove_unused_categories()
    out = ad.AnnData(X=x, obs=obs, var=adata.var.copy(), layers={"counts": counts})
    new_schema = replace(schema, counts_layer="counts")
    out.uns["aivc"] = {"schema": new_schema.to_dict(), "preprocessing": preprocessing}
    return out, new_schema


#: Cells of the input's ``X`` compared with the rebuilt one (evenly spaced rows).
_X_SAMPLE_CELLS = 1000


def _shipped_x_comparison(shipped: object, rebuilt: sp.csr_matrix, layer: str) -> dict[str, object]:
    """How far the input's non-count ``X`` is from the ``X`` rebuilt from ``layers[layer]``.

    Returns the entries recorded in ``uns["aivc"]["preprocessing"]`` (none when
    the input has no ``X`` or its ``X`` holds counts) and logs the difference.
    """
    if shipped is None or getattr(shipped, "shape", None) != rebuilt.shape or not rebuilt.shape[0]:
        return {}
    rows = np.unique(np.linspace(0, rebuilt.shape[0] - 1, _X_SAMPLE_CELLS).astype(int))
    block = shipped[rows]  # type: ignore[index]
    given = block.toarray() if sp.issparse(block) else np.asarray(block)
    given = np.asarray(given, dtype=np.float64)
    if np.array_equal(given, np.round(given)):
        return {}  # X holds counts too: nothing of the input is replaced
    diff = float(np.max(np.abs(given - rebuilt[rows].toarray())))
    # an X that already is this normalisation (data prepared before) is no news
    level = logging.INFO if diff > 1e-3 else logging.DEBUG
    logger.log(
        level,
        "X is rebuilt from layers[%r] (library size + log1p); the X the data came with differs "
        "from it by up to %.3g (largest absolute difference over %d cells), and is not used.",
        layer,
        diff,
        len(rows),
    )
    return {
        "x_rebuilt_from": f"layers[{layer!r}]",
        "shipped_x_max_abs_diff": diff,
        "shipped_x_cells_compared": len(rows),
    }


def highly_variable_genes(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    n_top_genes: int,
    keep: Sequence[str] | None = None,
) -> np.ndarray:
    """Highly variable genes that always keep the perturbed targets.

    Uses scanpy's ``seurat`` dispersion ranking on the log-normalised ``X``
    and then adds every perturbation target present in ``var_names`` (and any
    gene in ``keep``), so a perturbed gene's own knockdown is never dropped.

    Returns
    -------
    Boolean mask over ``var_names``.
    """
    import scanpy as sc

    if n_top_genes >= adata.n_vars:
        return np.ones(adata.n_vars, dtype=bool)
    stats = sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor="seurat", inplace=False
    )
    mask = stats["highly_variable"].to_numpy(dtype=bool)
    targets = {
        t
        for label in adata.obs[schema.perturbation_key].astype(str).unique()
        for t in schema.targets(label)
    }
    forced = targets | set(keep or ())
    mask |= adata.var_names.isin(list(forced))
    return mask


def condition_labels(adata: AnnData, schema: PerturbationSchema) -> pd.Series:
    """The condition of each cell: its treatment (perturbation and dose), and its context when declared."""
    pert = treatment_labels(adata, schema)
    if schema.context_key is None:
        return pert.rename("condition")
    ctx = adata.obs[schema.context_key].astype(str)
    return (pert + CONDITION_SEP + ctx).rename("condition")


def _group_means(x: object, groups: pd.Series) -> tuple[np.ndarray, pd.Index, np.ndarray]:
    codes, uniques = pd.factorize(groups, sort=True)
    n = len(uniques)
    indicator = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n, len(codes))
    )
    sizes = np.asarray(indicator.sum(axis=1)).ravel()
    sums = indicator @ x
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    return sums / sizes[:, None], pd.Index(uniques), sizes.astype(int)


def pseudobulk(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    layer: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean expression per condition (perturbation, and context when declared).

    Parameters
    ----------
    adata
        Log-normalised data (use :func:`prepare`).
    schema
        The dataset schema.
    layer
        Layer to average; ``None`` uses ``X``.

    Returns
    -------
    means
        Conditions x genes means.
    info
        One row per condition: ``perturbation``, ``context``, ``dose`` (0 without one), ``n_cells``.
    """
    x = adata.X if layer is None else adata.layers[layer]
    cond = condition_labels(adata, schema)
    means, index, sizes = _group_means(x, cond)
    pert = (
        adata.obs[schema.perturbation_key]
        .astype(str)
        .groupby(cond.to_numpy(), observed=True)
        .first()
    )
    if schema.context_key is not None:
        ctx = (
            adata.obs[schema.context_key]
            .astype(str)
            .groupby(cond.to_numpy(), observed=True)
            .first()
        )
        context = ctx.reindex(index).to_numpy()
    else:
        context = np.full(len(index), None, dtype=object)
    if schema.dose_key is not None:
        dose_values = pd.to_numeric(adata.obs[schema.dose_key], errors="coerce").fillna(0.0)
        dose = (
            dose_values.groupby(cond.to_numpy(), observed=True)
            .first()
            .reindex(index)
            .to_numpy(dtype=float)
        )
    else:
        dose = np.zeros(len(index))
    info = pd.DataFrame(
        {
            "perturbation": pert.reindex(index).to_numpy(),
            "context": context,
            "dose": dose,
            "n_cells": sizes,
        },
        index=index,
    )
    return pd.DataFrame(means, index=index, columns=adata.var_names.copy()), info


def differential_expression(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    perturbations: Sequence[str] | None = None,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Differential expression of each perturbation against the control cells.

    Uses scanpy's Wilcoxon rank-sum test (``rank_genes_groups`` with the
    control as reference) on log-normalised ``X``: it is vectorised over all
    groups in one pass, non-parametric (no count model to misspecify after
    normalisation) and is what GEARS-style top-DE metrics are defined with.
    When the schema declares a context, each perturbation is compared with the
    controls of its own context, and keys are condition labels.

    Parameters
    ----------
    adata
        Log-normalised data.
    schema
        The dataset schema.
    perturbations
        Perturbations to test (default: all non-control).
    max_cells
        Subsample each group to at most this many cells (seeded) to bound time.
    seed
        Seed for the subsampling.

    Returns
    -------
    Condition label -> DataFrame indexed by gene with ``score`` (Wilcoxon z),
    ``logfoldchange``, ``pvals_adj``, sorted by decreasing ``|score|``.
    """
    import scanpy as sc

    pert = treatment_labels(adata, schema)
    contexts = (
        [None]
        if schema.context_key is None
        else sorted(adata.obs[schema.context_key].astype(str).unique())
    )
    rng = np.random.default_rng(seed)
    out: dict[str, pd.DataFrame] = {}
    for ctx in contexts:
        in_ctx = (
            np.ones(adata.n_obs, dtype=bool)
            if ctx is None
            else (adata.obs[schema.context_key].astype(str) == ctx).to_numpy()
        )
        is_ctrl = in_ctx & (pert == schema.control_label).to_numpy()
        if not is_ctrl.any():
            msg = f"No control cells in context {ctx!r}; differential expression needs them."
            raise DataValidationError(msg)
        wanted = sorted(set(pert[in_ctx]) - {schema.control_label})
        if perturbations is not None:
            wanted = [p for p in wanted if p in set(perturbations)]
        if not wanted:
            continue
        keep = np.zeros(adata.n_obs, dtype=bool)
        group = pd.Series(np.where(is_ctrl, "__control__", pert.to_numpy()), index=adata.obs_names)
        for g in ["__control__", *wanted]:
            idx = np.flatnonzero(in_ctx & (group == g).to_numpy())
            if max_cells is not None and len(idx) > max_cells:
                idx = rng.choice(idx, max_cells, replace=False)
            keep[idx] = True
        sub = adata[keep].copy()
        sub.obs["_aivc_group"] = pd.Categorical(group[keep].to_numpy())
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            # scanpy fills its result table column by column (pandas PerformanceWarning);
            # genes never detected in either group give 0/0 Wilcoxon scores (set to 0 below)
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            sc.tl.rank_genes_groups(
                sub,
                "_aivc_group",
                groups=wanted,
                reference="__control__",
                method="wilcoxon",
                key_added="_aivc_de",
                tie_correct=True,
            )
        res = sub.uns["_aivc_de"]
        for p in wanted:
            df = pd.DataFrame(
                {
                    "score": np.asarray(res["scores"][p], dtype=float),
                    "logfoldchange": np.asarray(res["logfoldchanges"][p], dtype=float),
                    "pvals_adj": np.asarray(res["pvals_adj"][p], dtype=float),
                },
                index=pd.Index(np.asarray(res["names"][p], dtype=str), name="names"),
            )
            df["score"] = df["score"].fillna(0.0)
            df = df.iloc[np.argsort(-np.abs(df["score"].to_numpy()), kind="stable")]
            key = p if ctx is None else p + CONDITION_SEP + ctx
            out[key] = df
    return out
