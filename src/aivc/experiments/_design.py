"""Inverse design: which perturbations move a start state closest to a target state.

Every candidate (single genes, then pairs of the most promising singles, and
doses where the manipulator models them) is scored by the distance between the
predicted perturbed state and the target. Where the manipulator gives
intervals, the distance gets one too: the per-gene interval is read as a normal
predictive distribution and the squared distance's mean and variance follow in
closed form, so uncertainty costs no sampling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from aivc.data._validate import DataValidationError, check_gene_panel
from aivc.instruments._base import PerturbationModel

__all__ = ["DesignResult", "as_state", "inverse_design", "log_expression"]

logger = logging.getLogger(__name__)


@dataclass
class DesignResult:
    """Ranked designs and the predicted path of the best one.

    Attributes
    ----------
    table
        One row per design, best first: ``perturbation``, ``order`` (number of
        targets), ``dose``, ``distance`` (expected distance to the target after
        the perturbation), ``distance_low`` / ``distance_high`` (interval at
        ``level``; NaN without model uncertainty), ``improvement`` (start
        distance minus ``distance``), ``composition`` (``model`` when the
        manipulator predicted the combination itself, ``additive`` when single
        effects were summed).
    path
        The best design reached step by step (start, then one target added at a
        time): ``step``, ``perturbation``, ``distance``, ``distance_low``,
        ``distance_high``.
    start_distance
        Distance between the start and the target states.
    level
        Nominal coverage of the intervals.
    genes
        Genes over which distances are measured.
    candidates
        What the candidates were, in words (e.g. ``"candidates: 25 measured
        targets + 240 genes with knowledge"``).
    """

    table: pd.DataFrame
    path: pd.DataFrame
    start_distance: float
    level: float
    genes: list[str]
    candidates: str = ""

    @property
    def best(self) -> str:
        """The perturbation predicted to land closest to the target."""
        return str(self.table["perturbation"].iloc[0])


def log_expression(
    adata: AnnData, *, target_sum: float = 1e4, what: str = "cells"
) -> tuple[AnnData, str | None]:
    """``adata`` with log-normalised ``X``, and a note when it had to be normalised.

    Models are fitted on library-size normalised, ``log1p``-transformed
    expression (:func:`aivc.data.prepare`). An ``X`` that holds raw counts
    (non-negative integers with values above what log-expression reaches, the
    rule ``aivc predict`` applies to control cells) is normalised the same
    way, over all of its genes, in a copy; any other ``X`` is returned as is.

    Parameters
    ----------
    adata
        Cells whose ``X`` is log-expression or raw counts.
    target_sum
        Library size the counts are scaled to (the training data's; 10,000 by default).
    what
        What the cells are, for the note ("target cells").

    Returns
    -------
    The cells (``adata`` itself when ``X`` is not counts) and the note, or ``None``.
    """
    from aivc.data import looks_like_counts
    from aivc.data._preprocess import log_normalize

    x = adata.X
    if x is None or adata.n_obs == 0 or not looks_like_counts(x):
        return adata, None
    top = float(x.max()) if sparse.issparse(x) else float(np.max(x))
    normalised, used = log_normalize(x, target_sum=target_sum)
    out = AnnData(X=normalised, obs=adata.obs.copy(), var=adata.var.copy())
    note = (
        f"the {what} hold raw counts (integers up to {top:g}), not log-expression; they were "
        f"log-normalised as the model's training data were (library size to {used:g}, then log1p)"
    )
    return out, note


def as_state(state: object, genes: Sequence[str], *, what: str = "state") -> np.ndarray:
    """A mean log-expression vector over ``genes`` from a vector, Series or AnnData.

    An AnnData contributes the mean of its cells (log-normalised ``X``; raw
    counts are log-normalised first, with a warning, see :func:`log_expression`);
    a Series is aligned by gene name; an array must already follow ``genes``.
    """
    genes = list(genes)
    if isinstance(state, AnnData):
        if state.n_obs == 0:
            msg = f"The {what} AnnData has no cells; expected at least one."
            raise DataValidationError(msg)
        state, note = log_expression(state, what=f"{what} cells")
        if note is not None:
            logger.warning("%s.", note[:1].upper() + note[1:])
        idx = check_gene_panel(state.var_names, genes)
        x = state.X[:, idx]
        vec = np.asarray(x.mean(axis=0)).ravel() if sparse.issparse(x) else np.mean(x, axis=0)
    elif isinstance(state, pd.Series):
        missing = [g for g in genes if g not in state.index]
        if missing:
            msg = (
                f"The {what} lacks {len(missing)} of the model's {len(genes)} genes "
                f"(e.g. {missing[:5]}); give a value for every gene."
            )
            raise DataValidationError(msg)
        vec = state.loc[genes].to_numpy(dtype=np.float64)
    else:
        vec = np.asarray(state, dtype=np.float64).ravel()
        if vec.shape != (len(genes),):
            msg = f"The {what} has {vec.size} values; expected one per model gene ({len(genes)})."
            raise DataValidationError(msg)
    vec = np.asarray(vec, dtype=np.float64)
    if not np.isfinite(vec).all():
        msg = f"The {what} contains NaN or infinite values."
        raise DataValidationError(msg)
    return vec


def _distance_with_interval(
    offset: np.ndarray, scale: np.ndarray | None, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected distance ``||offset + scale * eps||`` and its interval, rows independent.

    ``offset`` is predicted state minus target (candidates x genes), ``scale``
    the per-gene predictive standard deviation. The squared distance has mean
    ``sum(m^2 + s^2)`` and variance ``sum(4 m^2 s^2 + 2 s^4)``; its quantiles are
    taken from the matching normal and mapped back through the square root.
    """
    if scale is None:
        d = np.sqrt(np.sum(offset**2, axis=1))
        nan = np.full_like(d, np.nan)
        return d, nan, nan
    m2 = offset**2
    s2 = scale**2
    mean_sq = np.sum(m2 + s2, axis=1)
    var_sq = np.sum(4 * m2 * s2 + 2 * s2**2, axis=1)
    z = stats.norm.ppf(0.5 + level / 2)
    sd = np.sqrt(var_sq)
    low = np.sqrt(np.clip(mean_sq - z * sd, 0, None))
    high = np.sqrt(mean_sq + z * sd)
    return np.sqrt(mean_sq), low, high


class _Scorer:
    """Predicts candidates in chunks and scores their distance to the target."""

    def __init__(
        self,
        model: PerturbationModel,
        *,
        start: np.ndarray,
        target: np.ndarray,
        mask: np.ndarray,
        context: str | None,
        control: AnnData | None,
        level: float,
        chunk_size: int,
    ) -> None:
        self.model = model
        self.start = start
        self.target = target
        self.mask = mask
        self.context = context
        self.control = control
        self.level = level
        self.chunk_size = chunk_size
        self.uncertain = "uncertainty" in type(model).capabilities

    def deltas(self, perts: list[str], doses: list[float]) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted change and per-gene predictive sd (None without uncertainty)."""
        kw = {"contexts": self.context, "doses": doses, "control": self.control}
        if not self.uncertain:
            return self.model.predict_delta(perts, **kw), None
        delta, low, high = self.model.predict_interval(perts, level=self.level, **kw).arrays()
        z = stats.norm.ppf(0.5 + self.level / 2)
        return delta, np.maximum(high - low, 0) / (2 * z)

    def score(
        self, perts: list[str], doses: list[float], extra: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Distances (mean, low, high) and the predicted change of each candidate."""
        out_d, out_lo, out_hi, out_delta = [], [], [], []
        for i in range(0, len(perts), self.chunk_size):
            sl = slice(i, i + self.chunk_size)
            delta, sd = self.deltas(perts[sl], doses[sl])
            if extra is not None:
                delta = delta + extra[sl]
            offset = (self.start + delta - self.target)[:, self.mask]
            d, lo, hi = _distance_with_interval(
                offset, None if sd is None else sd[:, self.mask], self.level
            )
            out_d.append(d)
            out_lo.append(lo)
            out_hi.append(hi)
            out_delta.append(delta)
        if not perts:
            empty = np.zeros(0)
            return empty, empty, empty, np.zeros((0, len(self.start)))
        return (
            np.concatenate(out_d),
            np.concatenate(out_lo),
            np.concatenate(out_hi),
            np.concatenate(out_delta),
        )


def inverse_design(
    model: PerturbationModel,
    *,
    target: object,
    start: object | None = None,
    context: str | None = None,
    control: AnnData | None = None,
    candidates: Sequence[str] | None = None,
    pairs: bool = True,
    top_singles: int = 30,
    doses: Sequence[float] | None = None,
    genes: Sequence[str] | None = None,
    level: float = 0.9,
    n_top: int = 50,
    chunk_size: int = 512,
) -> DesignResult:
    """Search single and paired perturbations (and doses) that move ``start`` towards ``target``.

    Parameters
    ----------
    model
        A fitted perturbation manipulator.
    target
        The target state: mean log-expression over the model's genes (array or
        Series by gene) or an AnnData whose cells' mean is the target.
    start
        The start state in the same forms; default the control mean of
        ``context`` (or the model's only context).
    context
        Context the perturbations act in (a cell type or line).
    control
        Control cells of a context the model was not trained on.
    candidates
        Targets to try; default :func:`~aivc.experiments.default_candidates`
        (the model's measured targets and the genes of its panel with prior
        knowledge). Unknown names raise with suggestions.
    pairs
        Also try every pair among the ``top_singles`` best singles.
    doses
        Doses to try for manipulators with the ``"dose"`` capability (drugs);
        ignored otherwise (a warning is logged).
    genes
        Restrict the distance to these genes (e.g. markers of the target state).
    level
        Coverage of the distance intervals (models with uncertainty only).
    n_top
        Rows kept in the result table.

    Returns
    -------
    DesignResult
        Ranked designs (expected distance, interval, improvement) and the
        predicted path of the best design.
    """
    model._check_fitted()
    if not 0 < level < 1:
        msg = f"level must be in (0, 1); got {level}."
        raise ValueError(msg)
    from aivc.experiments._candidates import default_candidates
    from aivc.experiments._whatif import check_context_declared

    check_context_declared(model.schema_, context)
    model_genes = [str(g) for g in model.genes_]
    if context is None and model.schema_.context_key is not None:
        contexts = [c for c in model.control_mean_ if c is not None]
        if len(contexts) != 1:
            msg = f"The model knows several contexts {sorted(contexts)}; pass context=."
            raise ValueError(msg)
        context = contexts[0]
    target_vec = as_state(target, model_genes, what="target")
    if start is None:
        start_vec = _context_baseline(model, context, control)
    else:
        start_vec = as_state(start, model_genes, what="start")
    mask = np.ones(len(model_genes), dtype=bool)
    if genes is not None:
        mask = np.isin(model_genes, [str(g) for g in genes])
        if not mask.any():
            msg = "None of the requested distance genes are measured by the model."
            raise DataValidationError(msg)
    if candidates is None:
        chosen = default_candidates(model)
        cands, described = list(chosen.labels), chosen.description
    else:
        cands = list(dict.fromkeys(str(c) for c in candidates))
        described = f"candidates: {len(cands)} given"
    if not cands:
        msg = "No candidate perturbations to try."
        raise ValueError(msg)
    from aivc.data._validate import check_perturbation_labels

    check_perturbation_labels(cands, model.schema_, known_genes=model._known_set)
    dose_grid = [0.0]
    if doses is not None:
        if "dose" in type(model).capabilities:
            dose_grid = [float(d) for d in doses]
        else:
            logger.warning("%s does not model doses; the doses are ignored.", type(model).__name__)
    scorer = _Scorer(
        model,
        start=start_vec,
        target=target_vec,
        mask=mask,
        context=context,
        control=control,
        level=level,
        chunk_size=chunk_size,
    )
    start_d = float(np.sqrt(np.sum((start_vec - target_vec)[mask] ** 2)))

    single_perts = [c for c in cands for _ in dose_grid]
    single_doses = [d for _ in cands for d in dose_grid]
    d, lo, hi, single_delta = scorer.score(single_perts, single_doses)
    rows = pd.DataFrame(
        {
            "perturbation": single_perts,
            "order": [len(model.schema_.targets(p)) for p in single_perts],
            "dose": single_doses,
            "distance": d,
            "distance_low": lo,
            "distance_high": hi,
            "composition": "model",
        }
    )
    frames = [rows]
    if pairs and len(cands) > 1:
        singles = rows[rows["order"] == 1].sort_values("distance")
        best = list(dict.fromkeys(singles["perturbation"]))[:top_singles]
        pair_labels = [
            model.schema_.combination_separator.join((a, b)) for a, b in combinations(best, 2)
        ]
        if pair_labels:
            pair_doses = [dose_grid[0]] * len(pair_labels)
            if "combination" in type(model).capabilities:
                pd_, plo, phi, _ = scorer.score(pair_labels, pair_doses)
                composition = "model"
            else:
                # Sum the single effects; the intervals of a sum are not modelled.
                pos = {p: i for i, p in enumerate(single_perts) if single_doses[i] == dose_grid[0]}
                sep = model.schema_.combination_separator
                summed = np.stack(
                    [
                        single_delta[pos[a]] + single_delta[pos[b]]
                        for a, b in (p.split(sep) for p in pair_labels)
                    ]
                )
                offset = (start_vec + summed - target_vec)[:, mask]
                pd_, plo, phi = _distance_with_interval(offset, None, level)
                composition = "additive"
            frames.append(
                pd.DataFrame(
                    {
                        "perturbation": pair_labels,
                        "order": 2,
                        "dose": pair_doses,
                        "distance": pd_,
                        "distance_low": plo,
                        "distance_high": phi,
                        "composition": composition,
                    }
                )
            )
    table = pd.concat(frames, ignore_index=True)
    table["improvement"] = start_d - table["distance"]
    table = table.sort_values(["distance", "perturbation"], kind="stable").head(n_top)
    table = table.reset_index(drop=True)
    path = _path(scorer, table.iloc[0], model, start_d)
    return DesignResult(
        table=table,
        path=path,
        start_distance=start_d,
        level=level,
        genes=model_genes,
        candidates=described,
    )


def _context_baseline(
    model: PerturbationModel, context: str | None, control: AnnData | None
) -> np.ndarray:
    """Control mean log-expression of ``context`` (from the model or ``control``)."""
    means = dict(model.control_mean_)
    if control is not None:
        means.update(model._control_means_from(control))
    if context not in means:
        msg = (
            f"No control state for context {context!r}; the model knows "
            f"{sorted(str(c) for c in model.control_mean_)}. Pass start= or control=."
        )
        raise DataValidationError(msg)
    return np.asarray(means[context], dtype=np.float64)


def _path(
    scorer: _Scorer, best: pd.Series, model: PerturbationModel, start_d: float
) -> pd.DataFrame:
    """Start, then the best design's targets added one at a time (best single first)."""
    targets = model.schema_.targets(str(best["perturbation"]))
    steps = [
        {
            "step": 0,
            "perturbation": model.schema_.control_label,
            "distance": start_d,
            "distance_low": np.nan,
            "distance_high": np.nan,
        }
    ]
    if len(targets) > 1:
        d, _, _, _ = scorer.score(list(targets), [float(best["dose"])] * len(targets))
        targets = [targets[i] for i in np.argsort(d, kind="stable")]
    sep = model.schema_.combination_separator
    for k in range(1, len(targets) + 1):
        label = sep.join(targets[:k])
        if k == len(targets):
            d, lo, hi = best["distance"], best["distance_low"], best["distance_high"]
        else:
            dd, ll, hh, _ = scorer.score([label], [float(best["dose"])])
            d, lo, hi = dd[0], ll[0], hh[0]
        steps.append(
            {
                "step": k,
                "perturbation": label,
                "distance": float(d),
                "distance_low": float(lo),
                "distance_high": float(hi),
            }
        )
    return pd.DataFrame(steps)
