"""The observed change of each condition: its mean expression minus a control reference.

This is the one place where "the effect of a perturbation" is measured from
cells. Models fit on it (:class:`aivc.instruments.PerturbationSummary`),
benchmarks score against it, and the API and reports compare predictions with
it. What counts as the control is an explicit choice (``control=``):

``"context"``
    The pooled control cells of the condition's context (every batch).
``"batch"``
    The control cells of the condition's own batches, weighted by the
    condition's share of cells in each batch.
``"auto"``
    The pooled controls, except where the schema names a batch column and the
    condition's cells sit in the batches in other proportions than the
    controls, enough to bias the pooled comparison: then the batch-matched
    controls (see :func:`observed_changes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args, overload

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._preprocess import condition_labels, pseudobulk
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["MIN_BATCH_CONTROLS", "ControlReference", "observed_changes"]

#: How the control reference of a condition is chosen (see :func:`observed_changes`).
ControlReference = Literal["context", "batch", "auto"]

#: With ``control="auto"``: fewest control cells of a context in one batch for that batch's
#: controls to serve as the reference of the batch's perturbed cells.
MIN_BATCH_CONTROLS = 30


def _context_key(c: object) -> str | None:
    return None if c is None or (isinstance(c, float) and np.isnan(c)) else str(c)


@overload
def observed_changes(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    control: ControlReference = ...,
    layer: str | None = ...,
    standard_errors: Literal[False] = ...,
    missing_controls: Literal["raise", "drop"] = ...,
) -> tuple[pd.DataFrame, pd.DataFrame]: ...


@overload
def observed_changes(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    control: ControlReference = ...,
    layer: str | None = ...,
    standard_errors: Literal[True],
    missing_controls: Literal["raise", "drop"] = ...,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]: ...


def observed_changes(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    control: ControlReference = "context",
    layer: str | None = None,
    standard_errors: bool = False,
    missing_controls: Literal["raise", "drop"] = "raise",
) -> tuple[pd.DataFrame, pd.DataFrame] | tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean change of each measured condition against its control cells.

    A condition is a treatment (perturbation, and dose where the schema has a
    dose column) in a context (where the schema has a context column); its
    change is its mean expression minus the mean of a control reference from
    the same context.

    Parameters
    ----------
    adata
        Log-normalised data (see :func:`aivc.data.prepare` and
        :func:`aivc.data.log_normalize`), cells x genes, dense or sparse.
    schema
        The dataset schema (perturbation, control label, context, batch, dose columns).
    control
        Which control cells are the reference of a condition.

        ``"context"`` (default)
            The control cells of the condition's context, pooled over batches.
        ``"batch"``
            The control cells of the condition's own batches: the mean of each
            batch's controls (in the condition's context), weighted by the
            condition's share of cells in that batch. Cells in batches without
            controls fall back on the pooled controls. Needs a batch column.
        ``"auto"``
            The pooled controls, or the batch-matched ones where the design
            calls for it. With a batch column, the pooled controls are a
            biased reference for a condition whose cells sit in the batches in
            other proportions than the controls (as in rounds of experiments,
            each batch with its own controls): the change then carries the
            batches' offsets. The matched reference (batches with at least
            :data:`MIN_BATCH_CONTROLS` controls; the rest pooled) is unbiased
            but noisier, so a condition gets it only when the estimated squared
            bias of the pooled one (summed over genes, its sampling variance
            removed) exceeds the extra variance of the matched one. Without a
            batch column, or with one batch, this is ``"context"``.
    layer
        Layer to average; ``None`` uses ``X``.
    standard_errors
        Also return the standard error of each change (per gene, from the
        within-group variances of the condition and of its reference, as for
        a difference of independent means).
    missing_controls
        What to do with conditions whose context has no control cells:
        ``"raise"`` a :class:`~aivc.data.DataValidationError`, or ``"drop"``
        them from the result.

    Returns
    -------
    delta
        Conditions x genes change, indexed by condition label (as
        :func:`aivc.data.condition_labels`), columns ``var_names``; control
        conditions are not included.
    info
        One row per condition: ``perturbation``, ``context``, ``dose`` (0
        without one), ``n_cells``, ``n_controls`` (control cells of the
        context) and ``reference`` (``"context"`` or ``"batch"``: the
        reference its change was measured against).
    se
        Only with ``standard_errors=True``: the standard errors, shaped as ``delta``.

    Raises
    ------
    DataValidationError
        ``control="batch"`` without a batch column, or a context with
        perturbed cells and no control cells (with ``missing_controls="raise"``).
    """
    if control not in get_args(ControlReference):
        msg = f"control must be one of {list(get_args(ControlReference))}; got {control!r}."
        raise ValueError(msg)
    if missing_controls not in ("raise", "drop"):
        msg = f"missing_controls must be 'raise' or 'drop'; got {missing_controls!r}."
        raise ValueError(msg)
    has_batches = schema.batch_key is not None and schema.batch_key in adata.obs
    if control == "batch" and not has_batches:
        msg = (
            "control='batch' needs the batch of each cell, but the schema names no batch column "
            f"(batch_key={schema.batch_key!r}) present in adata.obs; declare it in the schema or "
            "use control='context'."
        )
        raise DataValidationError(msg)
    means, info = pseudobulk(adata, schema, layer=layer)
    is_ctrl = info["perturbation"].to_numpy() == schema.control_label
    values = means.to_numpy()
    control_mean = {
        _context_key(c): values[i]
        for i, c in zip(np.flatnonzero(is_ctrl), info["context"].to_numpy()[is_ctrl], strict=True)
    }
    n_controls = {
        _context_key(c): int(n)
        for c, n in zip(
            info["context"].to_numpy()[is_ctrl], info["n_cells"].to_numpy()[is_ctrl], strict=True
        )
    }
    rows = np.flatnonzero(~is_ctrl)
    contexts = [_context_key(c) for c in info["context"].to_numpy()[rows]]
    has_controls = np.array([c in control_mean for c in contexts], dtype=bool)
    if not has_controls.all():
        if missing_controls == "raise":
            c = next(c for c, ok in zip(contexts, has_controls, strict=True) if not ok)
            msg = f"Context {c!r} has perturbed cells but no control cells; add its controls."
            raise DataValidationError(msg)
        rows = rows[has_controls]
        contexts = [c for c, ok in zip(contexts, has_controls, strict=True) if ok]
    mean = values[rows]
    refs = (
        np.stack([control_mean[c] for c in contexts])
        if len(rows)
        else np.zeros((0, values.shape[1]))
    )
    reference = np.full(len(rows), "context", dtype=object)
    weights: list[tuple[np.ndarray, float] | None] = [None] * len(rows)
    stats = None
    if control != "context" and has_batches and len(rows):
        stats = _BatchControls(adata, schema, info, layer)
        if control == "batch" or stats.n_batches >= 2:
            for out, ctx in enumerate(contexts):
                found = stats.reference(
                    rows[out],
                    ctx,
                    control_mean[ctx],
                    min_controls=MIN_BATCH_CONTROLS if control == "auto" else 1,
                    only_if_biased=control == "auto",
                )
                if found is not None:
                    refs[out], weights[out] = found[0], found[1:]
                    reference[out] = "batch"
    delta = pd.DataFrame(mean - refs, index=means.index[rows], columns=means.columns)
    out_info = info.iloc[rows].copy()
    out_info["n_controls"] = [n_controls[c] for c in contexts]
    out_info["reference"] = reference
    if not standard_errors:
        return delta, out_info
    if stats is None:
        stats = _BatchControls(adata, schema, info, layer, batches=has_batches)
    se = np.empty_like(delta.to_numpy())
    for out, ctx in enumerate(contexts):
        se[out] = stats.standard_error(rows[out], ctx, weights[out])
    return delta, out_info, pd.DataFrame(se, index=delta.index, columns=delta.columns)


class _BatchControls:
    """Per-batch control statistics of each context, computed once and reused per condition."""

    def __init__(
        self,
        adata: AnnData,
        schema: PerturbationSchema,
        info: pd.DataFrame,
        layer: str | None,
        *,
        batches: bool = True,
    ) -> None:
        self.x = adata.X if layer is None else adata.layers[layer]
        if batches:
            batch = adata.obs[schema.batch_key].astype(str).to_numpy()
        else:
            batch = np.zeros(adata.n_obs, dtype=np.int64)
        self.batch_codes, batch_names = pd.factorize(batch, sort=True)
        self.n_batches = len(batch_names)
        cond = condition_labels(adata, schema).astype(str).to_numpy()
        index = {str(label): i for i, label in enumerate(info.index)}
        self.cond_codes = np.array([index[c] for c in cond], dtype=np.int64)
        # cells per (condition, batch)
        self.counts = np.zeros((len(info), self.n_batches))
        np.add.at(self.counts, (self.cond_codes, self.batch_codes), 1.0)
        is_ctrl = info["perturbation"].to_numpy() == schema.control_label
        self.ctrl_row = {
            _context_key(c): int(i)
            for i, c in zip(
                np.flatnonzero(is_ctrl), info["context"].to_numpy()[is_ctrl], strict=True
            )
        }
        self._moments: dict[str | None, tuple[np.ndarray, np.ndarray, float]] = {}
        self._ctrl_var: dict[tuple[str | None, int | None], tuple[np.ndarray, int]] = {}

    def _control_moments(self, ctx: str | None) -> tuple[np.ndarray, np.ndarray, float]:
        """Control mean per batch, control count per batch, and the summed within-batch variance."""
        if ctx not in self._moments:
            ci = self.ctrl_row[ctx]
            rows = np.flatnonzero(self.cond_codes == ci)
            n_b = self.counts[ci]
            ind = sp.csr_matrix(
                (np.ones(rows.size), (self.batch_codes[rows], np.arange(rows.size))),
                shape=(self.n_batches, rows.size),
            )
            xr = self.x[rows]
            sums = ind @ xr
            sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
            sq = ind @ (xr.multiply(xr) if sp.issparse(xr) else xr * xr)
            sq = sq.toarray() if sp.issparse(sq) else np.asarray(sq)
            safe = np.maximum(n_b, 1.0)[:, None]
            # within-batch variance of the controls, per gene, summed over genes
            within = (sq.sum(0) - (sums**2 / safe).sum(0)) / max(rows.size - self.n_batches, 1)
            within = np.maximum(within, 0.0)
            self._moments[ctx] = (sums / safe, n_b, float(within.sum()))
        return self._moments[ctx]

    def reference(
        self,
        row: int,
        ctx: str | None,
        pooled: np.ndarray,
        *,
        min_controls: int,
        only_if_biased: bool,
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The batch-matched reference of condition ``row``, its batch weights and pooled share.

        ``None`` when no batch has ``min_controls`` controls or (with ``only_if_biased``)
        when the pooled reference is not biased enough to be worth the extra variance.
        """
        c_b, n_b, total_var = self._control_moments(ctx)
        usable = n_b >= min_controls
        if usable.sum() < 1:
            return None
        w = self.counts[row]
        w = np.where(usable, w / w.sum(), 0.0)
        if not (w > 0).any():
            return None  # no cell of the condition in a batch with enough controls
        n_ctrl = float(n_b.sum())
        rest = 1.0 - w.sum()  # share of cells in batches without enough controls: pooled
        ref_matched = w @ c_b + rest * pooled
        if only_if_biased:
            var_matched = float((w[usable] ** 2 / n_b[usable]).sum()) + rest**2 / n_ctrl
            # bias of the pooled reference and its sampling variance, per unit of gene variance
            gap = w - (1.0 - rest) * n_b / n_ctrl
            present = n_b > 0
            var_bias = float((gap[present] ** 2 / n_b[present]).sum())
            bias2 = float(((ref_matched - pooled) ** 2).sum()) - var_bias * total_var
            extra = (var_matched - 1.0 / n_ctrl) * total_var
            if not bias2 > extra:
                return None
        return ref_matched, w, rest

    def _dense_var(self, cells: np.ndarray) -> np.ndarray:
        sub = self.x[cells]
        sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
        return sub.var(axis=0)

    def _control_var(self, ctx: str | None, batch: int | None) -> tuple[np.ndarray, int]:
        """Per-gene variance and number of the controls of a context (in one batch, or all)."""
        key = (ctx, batch)
        if key not in self._ctrl_var:
            ctrl = np.flatnonzero(self.cond_codes == self.ctrl_row[ctx])
            if batch is not None:
                ctrl = ctrl[self.batch_codes[ctrl] == batch]
            self._ctrl_var[key] = (self._dense_var(ctrl), ctrl.size)
        return self._ctrl_var[key]

    def standard_error(
        self, row: int, ctx: str | None, weights: tuple[np.ndarray, float] | None
    ) -> np.ndarray:
        """Standard error of condition ``row``'s change against its reference (pooled or matched)."""
        cells = np.flatnonzero(self.cond_codes == row)
        var = self._dense_var(cells) / cells.size
        if weights is None:
            var_c, n_c = self._control_var(ctx, None)
            return np.sqrt(var + var_c / n_c)
        w, rest = weights
        ref_var = np.zeros_like(var)
        for b in np.flatnonzero(w > 0):
            var_b, n_b = self._control_var(ctx, int(b))
            ref_var = ref_var + w[b] ** 2 * var_b / n_b
        if rest > 0:
            var_c, n_c = self._control_var(ctx, None)
            ref_var = ref_var + rest**2 * var_c / n_c
        return np.sqrt(var + ref_var)
