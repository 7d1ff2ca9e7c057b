"""Virtual screens: score every single perturbation of a gene list, or every pair of a panel.

:func:`screen` predicts each candidate's mean profile with a fitted
perturbation model, scores it under an :class:`~aivc.experiments.Objective`
and ranks the candidates twice: by the predicted score, and by an
uncertainty-aware score (the objective's lowest value inside the model's
per-gene intervals, a lower confidence bound) when the model has the
``"uncertainty"`` capability.

The work runs in chunks with the package progress bar. With
``checkpoint=DIR`` every finished chunk is written atomically, so an
interrupted screen resumes by skipping the finished chunks and gives
identical results. With a ``distributed.Client`` the chunks run on a Dask
cluster.

Pairs are vectorised. The model predicts the panel's single effects once;
a pair's change is the sum of its singles' changes plus the model's own
composition term, estimated from the model's predictions for a sample of
pairs and checked there (``pairs="auto"``): linear and additive models
compose exactly this way. A model whose pair predictions do not (one with
learned interactions) is asked for every pair through its batch prediction
instead (``pairs="exact"``), which is slower. Pair intervals add the two
singles' half-widths: conservative, they hold whenever both singles'
intervals hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._io import atomic_path, write_text_atomic
from aivc._labels import check_known
from aivc._progress import progress
from aivc.experiments._objectives import Objective, make_objective

if TYPE_CHECKING:
    from distributed import Client

    from aivc.instruments import PerturbationModel

__all__ = ["ScreenResult", "screen"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class ScreenResult:
    """The ranked candidates of a virtual screen.

    Attributes
    ----------
    table
        One row per candidate, best predicted score first: ``candidate``,
        ``score`` (objective under the predicted profile, higher is better),
        ``score_lower`` / ``score_upper`` (lowest and highest score inside the
        interval box; NaN without intervals), ``effect_size`` (root-mean-square
        predicted change), ``rank_effect`` (rank by ``score``) and
        ``rank_uncertainty`` (rank by ``score_lower``; missing without intervals).
    objective
        The objective's description.
    uncertainty
        How the uncertainty-aware ranking was made, or why it is unavailable.
    pair_method
        ``"composed"`` or ``"exact"`` for pair screens, ``None`` for singles.
    chunks_total, chunks_resumed
        Chunks of the screen, and those read back from the checkpoint.
    seconds
        Wall time of the call.
    """

    table: pd.DataFrame
    objective: str
    uncertainty: str
    pair_method: str | None
    chunks_total: int
    chunks_resumed: int
    seconds: float

    def top(self, n: int = 10, *, by: str = "effect") -> pd.DataFrame:
        """The ``n`` best candidates by ``"effect"`` or ``"uncertainty"`` rank."""
        col = {"effect": "rank_effect", "uncertainty": "rank_uncertainty"}.get(by)
        if col is None:
            msg = f"by must be 'effect' or 'uncertainty'. Got {by!r} instead."
            raise ValueError(msg)
        if self.table[col].isna().all():
            msg = f"No uncertainty-aware ranking: {self.uncertainty}"
            raise ValueError(msg)
        return self.table.sort_values(col).head(n)


# ----------------------------------------------------------------------------- chunk work
@dataclass
class _Work:
    """Everything a worker needs to score chunks (sent once to every Dask worker)."""

    kind: str  # "singles", "pairs-composed", "pairs-exact"
    n_items: int
    chunk_size: int
    objective: Objective
    base: np.ndarray
    level: float
    with_intervals: bool
    labels: list[str] | None = None  # singles
    model: Any = None  # singles and exact pairs
    context: str | None = None
    panel: list[str] | None = None  # pairs
    separator: str = "+"
    singles: np.ndarray | None = None  # pairs: panel x genes change
    below: np.ndarray | None = None  # pairs: delta - lower of each single
    above: np.ndarray | None = None  # pairs: upper - delta of each single
    offset: np.ndarray | None = None  # pairs: composition term
    fast: dict[str, np.ndarray] | None = None  # pairs: per-single terms of built-in objectives

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_size, min(self.n_items, (k + 1) * self.chunk_size)


def _pairs_at(n: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genes ``(i, j)``, ``i < j``, of pair numbers ``k`` in the order of ``np.triu_indices(n, 1)``."""
    k = np.asarray(k, dtype=np.int64)

    def row_start(i: np.ndarray) -> np.ndarray:
        return i * (2 * n - i - 1) // 2

    root = np.sqrt(np.maximum((2 * n - 1) ** 2 - 8 * k.astype(np.float64), 0.0))
    i = np.clip(np.floor((2 * n - 1 - root) / 2).astype(np.int64), 0, max(n - 2, 0))
    i = np.where(row_start(i) > k, i - 1, i)  # floating-point error at row boundaries
    i = np.where(row_start(i + 1) <= k, i + 1, i)
    return i, k - row_start(i) + i + 1


def _pair_index(n: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Genes of pairs ``start..stop-1`` (see :func:`_pairs_at`)."""
    return _pairs_at(n, np.arange(start, stop, dtype=np.int64))


def _predict(model: Any, labels: list[str], context: str | None, level: float, intervals: bool):
    if intervals:
        return model.predict_interval(labels, contexts=context, level=level).arrays()
    return np.asarray(model.predict_delta(labels, contexts=context), float), None, None


def _score_chunk(work: _Work, k: int) -> np.ndarray:
    """Scores of chunk ``k``: rows of (score, lower, upper, effect size)."""
    start, stop = work.bounds(k)
    if work.kind == "pairs-composed":
        return _score_fast(work, *_pair_index(len(work.panel), start, stop))
    if work.kind == "singles":
        labels = work.labels[start:stop]
    else:
        i, j = _pair_index(len(work.panel), start, stop)
        labels = [work.panel[a] + work.separator + work.panel[b] for a, b in zip(i, j, strict=True)]
    delta, lower, upper = _predict(
        work.model, labels, work.context, work.level, work.with_intervals
    )
    out = np.full((stop - start, 4), np.nan)
    mean = work.base + delta
    out[:, 0] = work.objective.score(mean)
    if lower is not None:
        lo, hi = work.base + lower, work.base + upper
        out[:, 1], out[:, 2] = work.objective.bounds(mean, lo, hi)
    out[:, 3] = np.sqrt(np.mean(np.square(delta), axis=1))
    return out


def _gram_norm(
    sq: np.ndarray, gram: np.ndarray, i: np.ndarray, j: np.ndarray, n_genes: int
) -> np.ndarray:
    """RMS over genes of ``x_i + x_j`` from the squared norms and the Gram matrix of the rows ``x``."""
    return np.sqrt(np.clip(sq[i] + sq[j] + 2 * gram[i, j], 0, None) / n_genes)


def _fast_terms(work: _Work) -> dict[str, np.ndarray]:
    """Per-single terms that score composed pairs without per-pair model calls.

    A pair's change is ``d_i + d_j + offset``. Linear objectives are sums of
    per-single terms; squared distances and effect sizes follow from Gram
    matrices of shifted single profiles; the interval-box bounds of
    ``towards`` need one elementwise pass over the pair's centred box
    (``|c_i + c_j| +- (h_i + h_j)``) in float32; custom objectives get each
    pair's profile and bounds from one gather-add of pre-shifted singles.
    """
    obj, d = work.objective, work.singles
    n_genes = d.shape[1]
    u = d + work.offset / 2
    terms: dict[str, np.ndarray] = {"eff_gram": u @ u.T}
    terms["eff_sq"] = np.diag(terms["eff_gram"]).copy()
    terms["n_genes"] = np.asarray([n_genes])
    below = work.below if work.with_intervals else None
    above = work.above if work.with_intervals else None
    if obj.kind == "custom":
        # half of the shared state on each single, so a pair's profile is one gather-add
        terms["mh"] = d + (work.base + work.offset) / 2
        if below is not None:
            terms["lh"] = terms["mh"] - below
            terms["uh"] = terms["mh"] + above
        return terms
    if obj.kind == "linear":
        w = obj.weights
        wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
        terms["const"] = np.asarray([(work.base + work.offset) @ w])
        terms["s"] = d @ w
        if below is not None:
            terms["lo"] = (d - below) @ wp + (d + above) @ wn
            terms["hi"] = (d + above) @ wp + (d - below) @ wn
    else:
        v = d + (work.base + work.offset - obj.target) / 2
        terms["v_gram"] = v @ v.T
        terms["v_sq"] = np.diag(terms["v_gram"]).copy()
        if below is not None:
            terms["c"] = (v + (above - below) / 2).astype(np.float32)
            terms["h"] = ((above + below) / 2).astype(np.float32)
    return terms


def _score_fast(work: _Work, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    t = work.fast
    n_genes = int(t["n_genes"][0])
    out = np.full((len(i), 4), np.nan)
    out[:, 3] = _gram_norm(t["eff_sq"], t["eff_gram"], i, j, n_genes)
    if work.objective.kind == "custom":
        mean = t["mh"][i]
        mean += t["mh"][j]
        out[:, 0] = work.objective.score(mean)
        if "lh" in t:
            lo = t["lh"][i]
            lo += t["lh"][j]
            hi = t["uh"][i]
            hi += t["uh"][j]
            out[:, 1], out[:, 2] = work.objective.bounds(mean, lo, hi)
        return out
    if work.objective.kind == "linear":
        c = t["const"][0]
        out[:, 0] = t["s"][i] + t["s"][j] + c
        if "lo" in t:
            out[:, 1] = t["lo"][i] + t["lo"][j] + c
            out[:, 2] = t["hi"][i] + t["hi"][j] + c
        return out
    out[:, 0] = -_gram_norm(t["v_sq"], t["v_gram"], i, j, n_genes)
    if "c" in t:
        centre = t["c"][i]
        centre += t["c"][j]
        np.abs(centre, out=centre)
        half = t["h"][i]
        half += t["h"][j]
        far = centre + half
        out[:, 1] = -np.sqrt(np.einsum("ij,ij->i", far, far, dtype=np.float64) / n_genes)
        del far
        centre -= half
        np.maximum(centre, 0, out=centre)
        out[:, 2] = -np.sqrt(np.einsum("ij,ij->i", centre, centre, dtype=np.float64) / n_genes)
    return out


# ----------------------------------------------------------------------------- checkpoints
class _Checkpoint:
    def __init__(self, path: Path, manifest: dict[str, Any], n_chunks: int) -> None:
        self.path = Path(path)
        self.n_chunks = n_chunks
        self.path.mkdir(parents=True, exist_ok=True)
        mfile = self.path / "manifest.json"
        if mfile.exists():
            try:
                old = json.loads(mfile.read_text())
            except json.JSONDecodeError:
                old = None
            if old != manifest:
                msg = (
                    f"The checkpoint {str(self.path)!r} belongs to a different screen (model, candidates, "
                    "objective or chunk size differ); use a new checkpoint directory or delete this one."
                )
                raise ValueError(msg)
        else:
            write_text_atomic(mfile, json.dumps(manifest, indent=2, sort_keys=True))

    def file(self, k: int) -> Path:
        return self.path / f"chunk-{k:06d}.npy"

    def load(self, k: int, rows: int) -> np.ndarray | None:
        f = self.file(k)
        if not f.exists():
            return None
        try:
            arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError):
            return None  # damaged: computed again
        return arr if arr.shape == (rows, 4) else None

    def save(self, k: int, arr: np.ndarray) -> None:
        with atomic_path(self.file(k)) as tmp, tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(arr, dtype=np.float64), allow_pickle=False)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p, dtype=np.float64).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


# ----------------------------------------------------------------------------- validation
def _check_targets(model: PerturbationModel, names: Sequence[str], what: str) -> list[str]:
    labels = [str(g) for g in names]
    if not labels:
        msg = f"The {what} is empty; pass at least one gene."
        raise ValueError(msg)
    dup = sorted({g for g in labels if labels.count(g) > 1})
    if dup:
        msg = f"The {what} lists {dup[:10]} more than once; list each gene once."
        raise ValueError(msg)
    sep = model.schema_.combination_separator
    check_known(
        labels,
        {g for g in model.known_genes_ if sep not in g},
        what="gene",
        known_as="genes the model was fitted with (known_genes_)",
        where=f" in the {what}",
        advice="Remove the others or refit with known_genes=...",
        error=ValueError,
    )
    return labels


def _base_state(model: PerturbationModel, context: str | None) -> tuple[np.ndarray, str | None]:
    from aivc.experiments._whatif import check_context_declared

    means = model.control_mean_
    if model.schema_.context_key is None:
        check_context_declared(model.schema_, context)
        return np.asarray(means[None], float), None
    if context is None:
        if len(means) == 1:
            context = next(iter(means))
        else:
            msg = f"The model knows several contexts {sorted(map(str, means))}; pass context=<one of them>."
            raise ValueError(msg)
    if context not in means:
        msg = f"Unknown context {context!r}; the model knows {sorted(map(str, means))}."
        raise ValueError(msg)
    return np.asarray(means[context], float), context


def _compose(
    model: PerturbationModel,
    panel: list[str],
    singles: np.ndarray,
    context: str | None,
    pairs: str,
) -> tuple[str, np.ndarray, float]:
    """Check that pair predictions are single sums plus a constant term; return (method, term, error)."""
    n = len(panel)
    n_pairs = n * (n - 1) // 2
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n_pairs, size=min(32, n_pairs), replace=False))
    i, j = _pairs_at(n, sample)
    sep = model.schema_.combination_separator
    labels = [panel[a] + sep + panel[b] for a, b in zip(i, j, strict=True)]
    exact = np.asarray(model.predict_delta(labels, contexts=context), float)
    resid = exact - singles[i] - singles[j]
    offset = resid.mean(axis=0)
    err = float(np.max(np.abs(resid - offset))) if resid.size else 0.0
    scale = 1.0 + float(np.max(np.abs(exact))) if exact.size else 1.0
    if pairs == "exact":
        return "exact", offset, err
    if pairs == "composed" or err <= 1e-6 * scale:
        if err > 1e-6 * scale:
            logger.warning(
                "Pair predictions are not sums of singles (max deviation %.3g on sampled pairs); "
                "pairs='composed' ignores the model's interactions.",
                err,
            )
        return "composed", offset, err
    logger.info(
        "Pair predictions deviate from sums of singles by up to %.3g; asking the model for every pair.",
        err,
    )
    return "exact", offset, err


# ----------------------------------------------------------------------------- screen
def screen(
    model: PerturbationModel,
    candidates: Sequence[str] | None = None,
    *,
    pairs_of: Sequence[str] | None = None,
    objective: str | Objective | Callable[[np.ndarray], np.ndarray],
    context: str | None = None,
    level: float = 0.9,
    chunk_size: int = 8192,
    checkpoint: str | Path | None = None,
    client: Client | str | None = None,
    pairs: str = "auto",
    states: dict[str, np.ndarray] | None = None,
) -> ScreenResult:
    """Score perturbations in silico and rank them under an objective.

    Parameters
    ----------
    model
        A fitted perturbation model (e.g. ``Instrument.load(model_dir)``).
    candidates
        Single perturbations to score (gene symbols the model accepts).
    pairs_of
        Score every pair of this panel instead (``n * (n - 1) / 2`` pairs).
    objective
        ``"up:GENE"``, ``"down:GENE"``, ``"towards:CONTEXT"`` (a context the model
        knows), an :class:`~aivc.experiments.Objective`, or a callable on predicted
        mean profiles (conditions x genes) returning one score each (higher is better).
    context
        Context (e.g. cell type) the perturbations act in, for models with contexts.
    level
        Level of the intervals behind the uncertainty-aware ranking.
    chunk_size
        Candidates scored per chunk (the unit of progress, checkpoints and Dask tasks).
    checkpoint
        Directory for finished chunks; a screen run again with the same
        directory skips them and returns identical results.
    client
        A ``distributed.Client`` to run the chunks on a Dask cluster, a
        scheduler address, or ``"local"`` to start a local cluster for this call.
    pairs
        ``"auto"``, ``"composed"`` or ``"exact"``: how pair predictions are made
        (see the module documentation).
    states
        Extra named target states for ``"towards:NAME"`` (profiles over the model's
        genes), e.g. from :func:`~aivc.experiments.reference_states`; the control
        means of the model's contexts are always available.

    Returns
    -------
    :class:`ScreenResult` with the ranked table.
    """
    from aivc.instruments import PerturbationModel

    t0 = time.perf_counter()
    if not isinstance(model, PerturbationModel):
        msg = f"screen needs a fitted PerturbationModel. Got {type(model).__name__} instead."
        raise TypeError(msg)
    model._check_fitted()
    if (candidates is None) == (pairs_of is None):
        msg = "Pass either candidates=[genes] (single perturbations) or pairs_of=[panel] (all pairs), not both."
        raise ValueError(msg)
    if pairs not in ("auto", "composed", "exact"):
        msg = f"pairs must be 'auto', 'composed' or 'exact'. Got {pairs!r} instead."
        raise ValueError(msg)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        msg = f"chunk_size must be a positive integer. Got {chunk_size!r} instead."
        raise ValueError(msg)
    if not 0 < level < 1:
        msg = f"level must be between 0 and 1. Got {level!r} instead."
        raise ValueError(msg)
    genes = list(map(str, model.genes_))
    base, context = _base_state(model, context)
    known_states = {
        str(k): np.asarray(v, float) for k, v in model.control_mean_.items() if k is not None
    }
    known_states.update({str(k): np.asarray(v, float) for k, v in (states or {}).items()})
    obj = make_objective(objective, genes=genes, states=known_states)
    obj.check(len(genes))
    with_intervals = "uncertainty" in type(model).capabilities
    uncertainty = (
        f"ranked by the lowest objective value inside the model's {level:.0%} per-gene intervals"
        if with_intervals
        else f"unavailable: {type(model).name or type(model).__name__} lacks the 'uncertainty' capability"
    )
    pair_method = None
    if candidates is not None:
        labels = _check_targets(model, candidates, "candidate list")
        work = _Work(
            kind="singles",
            n_items=len(labels),
            chunk_size=int(chunk_size),
            objective=obj,
            base=base,
            level=level,
            with_intervals=with_intervals,
            labels=labels,
            model=model,
            context=context,
        )
        fingerprint = _digest(
            labels, _predict(model, labels[:16], context, level, with_intervals)[0]
        )
    else:
        panel = _check_targets(model, pairs_of, "pair panel")
        if len(panel) < 2:
            msg = f"A pair screen needs a panel of at least 2 genes. Got {len(panel)}."
            raise ValueError(msg)
        d, lo, hi = _predict(model, panel, context, level, with_intervals)
        pair_method, offset, _err = _compose(model, panel, d, context, pairs)
        n_pairs = len(panel) * (len(panel) - 1) // 2
        work = _Work(
            kind="pairs-" + pair_method,
            n_items=n_pairs,
            chunk_size=int(chunk_size),
            objective=obj,
            base=base,
            level=level,
            with_intervals=with_intervals,
            model=model if pair_method == "exact" else None,
            context=context,
            panel=panel,
            separator=model.schema_.combination_separator,
            singles=d,
            below=None if lo is None else d - lo,
            above=None if hi is None else hi - d,
            offset=offset,
        )
        if pair_method == "composed":
            work.fast = _fast_terms(work)
        fingerprint = _digest(panel, d, offset, *([lo, hi] if lo is not None else []))
        labels = None
    n_chunks = max(1, -(-work.n_items // work.chunk_size))
    ckpt = None
    if checkpoint is not None:
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "kind": work.kind,
            "n_items": work.n_items,
            "chunk_size": work.chunk_size,
            "model": f"{type(model).__name__}:{fingerprint}",
            "objective": obj.to_dict(),
            "context": context,
            "level": level,
            "intervals": with_intervals,
        }
        ckpt = _Checkpoint(Path(checkpoint), manifest, n_chunks)
    scores: list[np.ndarray | None] = [None] * n_chunks
    resumed = 0
    if ckpt is not None:
        for k in range(n_chunks):
            a, b = work.bounds(k)
            arr = ckpt.load(k, b - a)
            if arr is not None:
                scores[k] = arr
                resumed += 1
    todo = [k for k in range(n_chunks) if scores[k] is None]
    if resumed:
        logger.info("Resuming the screen: %d of %d chunks already done.", resumed, n_chunks)
    if todo:
        if client is None:
            for k in progress(todo, desc="virtual screen", total=len(todo), unit="chunk"):
                arr = _score_chunk(work, k)
                if ckpt is not None:
                    ckpt.save(k, arr)
                scores[k] = arr
        else:
            _run_dask(client, work, todo, scores, ckpt)
    all_scores = np.vstack(scores)
    table = _table(work, labels, all_scores, with_intervals)
    return ScreenResult(
        table=table,
        objective=obj.name,
        uncertainty=uncertainty,
        pair_method=pair_method,
        chunks_total=n_chunks,
        chunks_resumed=resumed,
        seconds=time.perf_counter() - t0,
    )


def _run_dask(
    client: Client | str,
    work: _Work,
    todo: list[int],
    scores: list[np.ndarray | None],
    ckpt: _Checkpoint | None,
) -> None:
    from distributed import as_completed

    from aivc._settings import settings
    from aivc.data._ooc import dask_client

    with dask_client(client, n_workers=max(1, min(settings.n_jobs, 4))) as dask:
        if dask is None:  # pragma: no cover - _run_dask is only called with a client
            msg = "No Dask client to run the screen on."
            raise RuntimeError(msg)
        shared = dask.scatter(work, broadcast=True)
        futures = {dask.submit(_score_chunk, shared, k, pure=False): k for k in todo}
        done = as_completed(futures, with_results=True)
        for fut, arr in progress(done, desc="virtual screen (dask)", total=len(todo), unit="chunk"):
            k = futures[fut]
            if ckpt is not None:
                ckpt.save(k, arr)
            scores[k] = arr


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def _table(
    work: _Work, labels: list[str] | None, s: np.ndarray, with_intervals: bool
) -> pd.DataFrame:
    if labels is None:
        i, j = _pair_index(len(work.panel), 0, work.n_items)
        panel = np.asarray(work.panel, dtype=object)
        a, b = panel[i], panel[j]
        labels = (pd.Series(a) + work.separator + pd.Series(b)).to_numpy()
    df = pd.DataFrame(
        {
            "candidate": labels,
            "score": s[:, 0],
            "score_lower": s[:, 1],
            "score_upper": s[:, 2],
            "effect_size": s[:, 3],
        }
    )
    df["rank_effect"] = _ranks(s[:, 0])
    if with_intervals:
        df["rank_uncertainty"] = pd.array(_ranks(s[:, 1]), dtype="Int64")
    else:
        df["rank_uncertainty"] = pd.array([pd.NA] * len(df), dtype="Int64")
    return df.sort_values("rank_effect", kind="stable").reset_index(drop=True)
