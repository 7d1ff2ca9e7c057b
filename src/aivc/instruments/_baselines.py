"""The baselines every aivc model is compared with.

- ``control``: no change.
- ``train-mean``: the mean change over all training perturbations.
- ``additive``: the sum of the measured single-gene changes (combinations).
- ``linear`` / ``linear-knowledge``: the low-rank linear model of Ahlmann-Eltze,
  Huber & Anders (2025), ``Y ~ G K P + b``, with perturbation embeddings from the
  training data or from Gene Ontology knowledge.
- ``nearest-neighbour``: the change of the most similar training condition in
  gene-embedding (and context) space.
- ``context-mean``: the mean change of the training perturbations measured in
  the query's context (``train-mean`` where none was measured there).
- ``perturbation-elsewhere``: the same perturbation's mean change in the other
  contexts where it was measured (``train-mean`` where it never was).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from aivc.data._validate import DataValidationError
from aivc.instruments._base import PerturbationModel, PerturbationSummary
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "AdditiveModel",
    "ContextMeanModel",
    "ControlModel",
    "LinearModel",
    "NearestNeighbourModel",
    "PerturbationElsewhereModel",
    "TrainMeanModel",
]

logger = logging.getLogger(__name__)

_EMBEDDINGS = ("data", "go", "string", "huri", "fused")


@register_instrument("control", description="Predicts no change: perturbed = control mean.")
class ControlModel(PerturbationModel):
    """Predicts no change (perturbed cells look like controls)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        pass

    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        return np.zeros((len(perturbations), len(self.genes_)))


@register_instrument(
    "train-mean",
    description="Predicts the mean change over all training perturbations (Virtual Cell Challenge baseline).",
)
class TrainMeanModel(PerturbationModel):
    """Predicts the mean change over all training conditions."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self.mean_delta_ = summary.delta.mean(axis=0)

    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        return np.tile(self.mean_delta_, (len(perturbations), 1))

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean_delta": self.mean_delta_}, {}

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.mean_delta_ = arrays["mean_delta"]


def _group_means(keys: list[str], delta: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mean of the rows of ``delta`` per distinct key, keys sorted."""
    names = sorted(set(keys))
    pos = {k: i for i, k in enumerate(names)}
    codes = np.array([pos[k] for k in keys], dtype=int)
    sums = np.zeros((len(names), delta.shape[1]))
    np.add.at(sums, codes, delta)
    counts = np.bincount(codes, minlength=len(names)).astype(float)
    return names, sums / counts[:, None]


#: Key of the conditions of a schema without contexts (never a real context name).
_NO_CONTEXT = "\x00none"


@register_instrument(
    "context-mean",
    description="Predicts the mean change of the training perturbations measured in the same context.",
)
class ContextMeanModel(PerturbationModel):
    """The mean change of the training conditions of the query's context.

    Where contexts (cell types, cell lines, donors) respond differently, this
    is the strongest simple baseline for a perturbation never measured in a
    context that other perturbations were measured in. A context with no
    training perturbation gets the mean over all training conditions
    (``train-mean``); without contexts the model is ``train-mean``.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self.mean_delta_ = summary.delta.mean(axis=0)
        keys = [_NO_CONTEXT if c is None else c for c in summary.contexts]
        self.context_names_, self.context_deltas_ = _group_means(keys, summary.delta)

    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        pos = {c: i for i, c in enumerate(self.context_names_)}
        rows = [pos.get(_NO_CONTEXT if c is None else c) for c in contexts]
        return (
            np.stack([self.mean_delta_ if r is None else self.context_deltas_[r] for r in rows])
            if rows
            else np.zeros((0, len(self.genes_)))
        )

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"mean_delta": self.mean_delta_, "context_deltas": self.context_deltas_}
        names = [None if c == _NO_CONTEXT else c for c in self.context_names_]
        return arrays, {"contexts": names}

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.mean_delta_ = arrays["mean_delta"]
        self.context_deltas_ = arrays["context_deltas"]
        self.context_names_ = [_NO_CONTEXT if c is None else c for c in meta["contexts"]]


@register_instrument(
    "perturbation-elsewhere",
    description="Predicts the same perturbation's mean change in the other contexts where it was measured.",
)
class PerturbationElsewhereModel(PerturbationModel):
    """The perturbation's mean change over the contexts where it was measured.

    The strongest simple baseline for a perturbation measured in some contexts
    and asked for in another: it assumes the response does not depend on the
    context. A measurement in the query's own context is used when present; a
    perturbation never measured anywhere gets the mean over all training
    conditions (``train-mean``).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self.mean_delta_ = summary.delta.mean(axis=0)
        self.perturbation_names_, self.perturbation_deltas_ = _group_means(
            list(summary.perturbations), summary.delta
        )
        keys = [
            f"{p}\x00{_NO_CONTEXT if c is None else c}"
            for p, c in zip(summary.perturbations, summary.contexts, strict=True)
        ]
        self.pair_names_, self.pair_deltas_ = _group_means(keys, summary.delta)

    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        by_pert = {p: i for i, p in enumerate(self.perturbation_names_)}
        by_pair = {k: i for i, k in enumerate(self.pair_names_)}
        out = np.tile(self.mean_delta_, (len(perturbations), 1))
        for i, (p, c) in enumerate(zip(perturbations, contexts, strict=True)):
            pair = by_pair.get(f"{p}\x00{_NO_CONTEXT if c is None else c}")
            if pair is not None:
                out[i] = self.pair_deltas_[pair]
            elif p in by_pert:
                out[i] = self.perturbation_deltas_[by_pert[p]]
        return out

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "mean_delta": self.mean_delta_,
            "perturbation_deltas": self.perturbation_deltas_,
            "pair_deltas": self.pair_deltas_,
        }
        pairs = [key.split("\x00", 1) for key in self.pair_names_]
        meta = {
            "perturbations": list(self.perturbation_names_),
            "pairs": [[p, None if c == _NO_CONTEXT else c] for p, c in pairs],
        }
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.mean_delta_ = arrays["mean_delta"]
        self.perturbation_deltas_ = arrays["perturbation_deltas"]
        self.pair_deltas_ = arrays["pair_deltas"]
        self.perturbation_names_ = list(meta["perturbations"])
        self.pair_names_ = [f"{p}\x00{_NO_CONTEXT if c is None else c}" for p, c in meta["pairs"]]


@register_instrument(
    "additive",
    description="Sum of the measured single-gene changes; unmeasured singles fall back to their mean.",
)
class AdditiveModel(PerturbationModel):
    """change(A+B) = change(A) + change(B), from the training singles.

    A target never measured as a single contributes the mean single-gene
    change (so an unseen single is predicted like ``train-mean`` over singles).
    Changes are taken in the query's context when measured there, otherwise
    averaged over the contexts where they were measured.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "dose"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        schema = summary.schema
        doses = summary.doses or [0.0] * len(summary.perturbations)
        singles = [i for i, p in enumerate(summary.perturbations) if schema.order(p) == 1]
        rows = singles if singles else list(range(len(summary.perturbations)))
        self.fallback_delta_ = summary.delta[rows].mean(axis=0)
        keys, deltas = [], []
        for i in singles:
            keys.append([summary.perturbations[i], summary.contexts[i], float(doses[i])])
            deltas.append(summary.delta[i])
        self.single_keys_ = keys
        self.single_deltas_ = np.stack(deltas) if deltas else np.zeros((0, len(self.genes_)))
        self._index()

    def _index(self) -> None:
        self._by_pert: dict[str, list[int]] = {}
        for i, key in enumerate(self.single_keys_):
            self._by_pert.setdefault(key[0], []).append(i)

    def single_delta(
        self, target: str, context: str | None, dose: float = 0.0
    ) -> np.ndarray | None:
        """The measured change of a single target (``None`` when never measured).

        Prefers the query's context; among the measured doses takes the one
        nearest in log-dose (so an unmeasured dose gets its nearest measured
        neighbour), averaging over contexts when the target was not measured in
        the query's.
        """
        rows = self._by_pert.get(target)
        if not rows:
            return None
        in_ctx = [i for i in rows if self.single_keys_[i][1] == context]
        rows = in_ctx or rows

        def dist(i: int) -> float:
            d = float(self.single_keys_[i][2] if len(self.single_keys_[i]) > 2 else 0.0)
            return abs(np.log10(d + 1e-6) - np.log10(dose + 1e-6))

        best = min(dist(i) for i in rows)
        chosen = [i for i in rows if dist(i) == best]
        return self.single_deltas_[chosen].mean(axis=0)

    def _predict_delta(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None = None,
    ) -> np.ndarray:
        doses = doses or [0.0] * len(perturbations)
        out = np.zeros((len(perturbations), len(self.genes_)))
        for i, (p, c) in enumerate(zip(perturbations, contexts, strict=True)):
            for t in self.schema_.targets(p):
                d = self.single_delta(t, c, doses[i])
                out[i] += self.fallback_delta_ if d is None else d
        return out

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"fallback_delta": self.fallback_delta_, "single_deltas": self.single_deltas_}, {
            "single_keys": self.single_keys_
        }

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.fallback_delta_ = arrays["fallback_delta"]
        self.single_deltas_ = arrays["single_deltas"]
        self.single_keys_ = [list(k) for k in meta["single_keys"]]
        self._index()


# ----------------------------------------------------------------------------- embeddings
class _EmbeddingMixin:
    """Perturbation and context features shared by the linear and neighbour models."""

    perturbation_embedding: str
    n_context_components: int

    def _check_embedding_param(self) -> None:
        if self.perturbation_embedding not in _EMBEDDINGS:
            msg = (
                f"The 'perturbation_embedding' parameter of {type(self).__name__} must be one of "
                f"{list(_EMBEDDINGS)}. Got {self.perturbation_embedding!r} instead."
            )
            raise ValueError(msg)

    def _knowledge_table(self) -> pd.DataFrame:
        """The chosen knowledge embedding (GO, STRING, HuRI or their fusion), with rows
        added for unambiguous aliases of embedded genes."""
        from aivc.genes import fused_embedding, gene_aliases, go_embedding, network_embedding

        if self.perturbation_embedding == "go":
            table = go_embedding()
        elif self.perturbation_embedding == "fused":
            table = fused_embedding()[0]
        else:
            table = network_embedding(self.perturbation_embedding)
        try:
            aliases = gene_aliases()
        except FileNotFoundError:
            return table
        extra = {a: s for a, s in aliases.items() if s in table.index and a not in table.index}
        if extra:
            alias_rows = table.loc[list(extra.values())]
            alias_rows.index = list(extra.keys())
            table = pd.concat([table, alias_rows])
        return table

    def _set_gene_table(self, table: pd.DataFrame) -> None:
        self.gene_table_ = table
        self._gene_pos = {g: i for i, g in enumerate(table.index)}

    def _set_feature_table(self, features: pd.DataFrame | None) -> None:
        """Standardised features of non-gene targets (drugs), or None."""
        if features is None or features.shape[0] == 0:
            self.feature_table_ = None
            self._feature_pos: dict[str, int] = {}
            return
        values = features.to_numpy(dtype=np.float64)
        sd = values.std(axis=0)
        values = (values - values.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
        self.feature_table_ = pd.DataFrame(values, index=features.index.astype(str))
        self._feature_pos = {g: i for i, g in enumerate(self.feature_table_.index)}

    def _pert_features(
        self, perturbations: list[str], doses: list[float] | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """Features of each label and the targets without any.

        The sum of the targets' gene embeddings, followed, when non-gene target
        features were given, by the sum of those features and the same sum
        scaled by log10(dose).
        """
        table = self.gene_table_.to_numpy()
        out = np.zeros((len(perturbations), table.shape[1]))
        feats = getattr(self, "feature_table_", None)
        extra = None if feats is None else np.zeros((len(perturbations), 2 * feats.shape[1]))
        missing: list[str] = []
        for i, p in enumerate(perturbations):
            for t in self.schema_.targets(p):  # type: ignore[attr-defined]
                if extra is not None and t in self._feature_pos:
                    f = feats.to_numpy()[self._feature_pos[t]]
                    dose = 0.0 if doses is None else float(doses[i])
                    extra[i, : len(f)] += f
                    extra[i, len(f) :] += f * (np.log10(dose) if dose > 0 else 0.0)
                    continue
                j = self._gene_pos.get(t)
                if j is None:
                    missing.append(t)
                else:
                    out[i] += table[j]
        if extra is not None:
            out = np.hstack([out, extra])
        return out, missing

    def _feature_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if getattr(self, "feature_table_", None) is None:
            return {}, {}
        return {"feature_table": self.feature_table_.to_numpy()}, {
            "feature_table_index": list(map(str, self.feature_table_.index))
        }

    def _set_feature_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if "feature_table" in arrays:
            self.feature_table_ = pd.DataFrame(
                arrays["feature_table"], index=meta["feature_table_index"]
            )
            self._feature_pos = {g: i for i, g in enumerate(self.feature_table_.index)}
        else:
            self.feature_table_ = None
            self._feature_pos = {}

    def _fit_context_space(self, summary: PerturbationSummary) -> None:
        keys = [k for k in summary.control_mean if k is not None]
        if len(keys) < 2:
            self.context_center_ = np.zeros(len(summary.genes))
            self.context_basis_ = np.zeros((len(summary.genes), 0))
            return
        m = np.stack([summary.control_mean[k] for k in keys])
        self.context_center_ = m.mean(axis=0)
        _, s, vt = np.linalg.svd(m - self.context_center_, full_matrices=False)
        k = min(self.n_context_components, int((s > 1e-8 * max(s[0], 1e-12)).sum()))
        self.context_basis_ = vt[:k].T

    def _context_features(self, control_mean: np.ndarray) -> np.ndarray:
        return (control_mean - self.context_center_) @ self.context_basis_


def _ridge_solve(a: np.ndarray, lam: float) -> np.ndarray:
    """(A^T A + lam I)^-1 A^T, computed stably."""
    k = a.shape[1]
    return np.linalg.solve(a.T @ a + lam * np.eye(k), a.T)


@register_instrument(
    "linear",
    description="Low-rank linear model Y ~ G K P + b (Ahlmann-Eltze et al. 2025) with perturbation embeddings from the data.",
)
class LinearModel(_EmbeddingMixin, PerturbationModel):
    """The linear baseline of Ahlmann-Eltze, Huber & Anders (2025).

    The training changes ``Y`` (genes x conditions) are modelled as
    ``G K P^T + b``: ``G`` holds the top principal components of ``Y`` over
    genes, ``P`` the embedding of each condition and ``b`` the mean change.
    ``K`` is the ridge solution. The perturbation embedding of a target is its
    row of ``G`` (``perturbation_embedding="data"``; targets outside the
    measured genes get zeros, i.e. the mean change) or its Gene Ontology
    embedding (``"go"``, or the STRING / HuRI / fused embeddings); combinations sum their targets' embeddings, and with
    several contexts the principal components of the contexts' control means
    are appended.

    A perturbation measured in training, in the same context, is answered
    with its measured change: the low-rank fit is for what was not measured
    (a target outside the gene panel has no ``"data"`` embedding, so the
    fit alone would give every such target the same mean change). Targets
    with no embedding that were never measured get the mean change, with a
    warning that names them.

    Parameters
    ----------
    n_components
        Rank of the gene embedding ``G``.
    ridge
        Ridge penalty; ``None`` chooses it by leave-one-condition-out
        cross-validation on the training conditions only.
    perturbation_embedding
        ``"data"``, or a knowledge embedding: ``"go"``, ``"string"``, ``"huri"`` or
        ``"fused"`` (all three, see :func:`aivc.genes.fused_embedding`).
    n_context_components
        Context features kept when the data have several contexts.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context", "dose"})
    ridge_grid: ClassVar[tuple[float, ...]] = (0.01, 0.1, 1.0, 10.0, 100.0)

    def __init__(
        self,
        *,
        n_components: int = 10,
        ridge: float | None = None,
        perturbation_embedding: str = "data",
        n_context_components: int = 5,
    ) -> None:
        self.n_components = n_components
        self.ridge = ridge
        self.perturbation_embedding = perturbation_embedding
        self.n_context_components = n_context_components

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_embedding_param()
        if self.perturbation_embedding != "data":
            self._set_gene_table(self._knowledge_table())
        self._set_feature_table(summary.features)
        self._fit_context_space(summary)
        perts, ctxs, y = summary.perturbations, summary.contexts, summary.delta
        doses = summary.doses or [0.0] * len(perts)
        base = np.stack([summary.control_mean[c] for c in ctxs])
        if self.ridge is None:
            self.ridge_ = self._choose_ridge(perts, doses, y, base)
        else:
            self.ridge_ = float(self.ridge)
        self._solve(perts, doses, y, base, self.ridge_)
        self.measured_delta_ = np.asarray(y, dtype=np.float64)

    @property
    def _measured(self) -> dict[tuple[str, str | None], int]:
        """(perturbation, context) of each training condition -> its row of ``measured_delta_``."""
        return {
            (str(p), None if c is None else str(c)): i
            for i, (p, c) in enumerate(
                zip(self.train_perturbations_, self.train_contexts_, strict=True)
            )
        }

    def _features(
        self,
        perturbations: list[str],
        doses: list[float],
        control_mean: np.ndarray,
        g: np.ndarray | None = None,
        *,
        warn: bool = False,
    ) -> np.ndarray:
        if self.perturbation_embedding == "data":
            table = pd.DataFrame(g if g is not None else self.g_, index=self.genes_)
            self._set_gene_table(table)
        pf, missing = self._pert_features(perturbations, doses)
        # a target measured on its own is answered with its measured change (_predict_delta)
        unmeasured = sorted(set(missing) - set(self.train_perturbations_)) if warn else []
        if unmeasured:
            logger.warning(
                "%s: %d target(s) have no %s embedding and were not measured in training: they "
                "get the mean change of the training perturbations, e.g. %s",
                type(self).__name__,
                len(unmeasured),
                self.perturbation_embedding,
                unmeasured[:5],
            )
        elif missing:
            logger.debug(
                "%s: %d target(s) have no %s embedding and get the mean change, e.g. %s",
                type(self).__name__,
                len(set(missing)),
                self.perturbation_embedding,
                sorted(set(missing))[:5],
            )
        return np.hstack([pf, self._context_features(control_mean)])

    @staticmethod
    def _gene_basis(yc: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` left singular vectors of ``yc.T`` (genes x k), via the small Gram matrix."""
        evals, evecs = np.linalg.eigh(yc @ yc.T)
        order = np.argsort(evals)[::-1][:k]
        s = np.sqrt(np.clip(evals[order], 0, None))
        keep = s > 1e-10 * max(float(s[0]) if s.size else 0.0, 1e-300)
        u = yc.T @ evecs[:, order[keep]] / s[keep]
        if u.shape[1] == 0:
            u = np.zeros((yc.shape[1], 1))
        return u

    def _decompose(
        self, perts: list[str], doses: list[float], y: np.ndarray, base: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """b, centred Y, G and P for a set of training conditions (independent of the ridge)."""
        b = y.mean(axis=0)
        yc = y - b
        k = max(1, min(self.n_components, yc.shape[0] - 1, yc.shape[1]))
        g = self._gene_basis(yc, k)
        self.g_ = g
        p = self._features(perts, doses, base, g)
        return b, yc, g, p

    def _solve(
        self, perts: list[str], doses: list[float], y: np.ndarray, base: np.ndarray, lam: float
    ) -> None:
        b, yc, g, p = self._decompose(perts, doses, y, base)
        self._set_solution(b, yc, g, p, lam)

    def _set_solution(
        self, b: np.ndarray, yc: np.ndarray, g: np.ndarray, p: np.ndarray, lam: float
    ) -> None:
        # K = (G^T G + lam I)^-1 G^T Yc^T P (P^T P + lam I)^-1
        self.b_, self.g_ = b, g
        self.k_ = _ridge_solve(g, lam) @ yc.T @ _ridge_solve(p, lam).T

    def _choose_ridge(
        self, perts: list[str], doses: list[float], y: np.ndarray, base: np.ndarray
    ) -> float:
        """Ridge penalty with the lowest cross-validated error on the training conditions.

        Leave-one-condition-out up to 30 conditions, seeded 5-fold above.
        """
        n = len(perts)
        if n < 3:
            return 1.0
        if n <= 30:
            folds = [np.array([i]) for i in range(n)]
        else:
            folds = np.array_split(np.random.default_rng(0).permutation(n), 5)
        errors = np.zeros(len(self.ridge_grid))
        for held in folds:
            keep = np.setdiff1d(np.arange(n), held)
            b, yc, g, p = self._decompose(
                [perts[j] for j in keep], [doses[j] for j in keep], y[keep], base[keep]
            )
            for j, lam in enumerate(self.ridge_grid):
                self._set_solution(b, yc, g, p, lam)
                pred = self._predict_raw(
                    [perts[i] for i in held], [doses[i] for i in held], base[held]
                )
                errors[j] += float(np.sum((pred - y[held]) ** 2))
        return float(self.ridge_grid[int(np.argmin(errors))])

    def _predict_raw(
        self,
        perturbations: list[str],
        doses: list[float],
        control_mean: np.ndarray,
        *,
        warn: bool = False,
    ) -> np.ndarray:
        p = self._features(perturbations, doses, control_mean, warn=warn)
        return p @ self.k_.T @ self.g_.T + self.b_

    def _predict_delta(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None = None,
    ) -> np.ndarray:
        pred = self._predict_raw(
            perturbations, doses or [0.0] * len(perturbations), control_mean, warn=True
        )
        measured = self._measured
        for i, (p, c) in enumerate(zip(perturbations, contexts, strict=True)):
            row = measured.get((p, c))
            if row is not None and not (doses and doses[i]):
                pred[i] = self.measured_delta_[row]
        return pred

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        feat_arrays, feat_meta = self._feature_state()
        arrays = {
            "measured_delta": self.measured_delta_,
            "g": self.g_,
            "k": self.k_,
            "b": self.b_,
            "context_center": self.context_center_,
            "context_basis": self.context_basis_,
            **feat_arrays,
        }
        meta: dict[str, Any] = {"ridge": self.ridge_, **feat_meta}
        if self.perturbation_embedding != "data":
            arrays["gene_table"] = self.gene_table_.to_numpy()
            meta["gene_table_index"] = list(map(str, self.gene_table_.index))
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if "measured_delta" not in arrays:
            msg = (
                f"This {type(self).__name__} was saved by an older aivc without the measured changes "
                "of its training perturbations; fit it again and save it."
            )
            raise DataValidationError(msg)
        self.measured_delta_ = np.asarray(arrays["measured_delta"])
        self.g_, self.k_, self.b_ = arrays["g"], arrays["k"], arrays["b"]
        self.context_center_, self.context_basis_ = (
            arrays["context_center"],
            arrays["context_basis"],
        )
        self.ridge_ = meta["ridge"]
        self._set_feature_state(arrays, meta)
        if self.perturbation_embedding != "data":
            self._set_gene_table(pd.DataFrame(arrays["gene_table"], index=meta["gene_table_index"]))


@register_instrument(
    "linear-knowledge",
    description="The linear baseline with perturbation embeddings from Gene Ontology knowledge.",
)
class KnowledgeLinearModel(LinearModel):
    """:class:`LinearModel` with Gene Ontology perturbation embeddings by default."""

    def __init__(
        self,
        *,
        n_components: int = 10,
        ridge: float | None = None,
        perturbation_embedding: str = "go",
        n_context_components: int = 5,
    ) -> None:
        super().__init__(
            n_components=n_components,
            ridge=ridge,
            perturbation_embedding=perturbation_embedding,
            n_context_components=n_context_components,
        )


@register_instrument(
    "nearest-neighbour",
    description="The change of the most similar training condition in gene-embedding (and context) space.",
)
class NearestNeighbourModel(_EmbeddingMixin, PerturbationModel):
    """Copies the change of the nearest training condition.

    Similarity is the cosine of the perturbation embeddings (sum of the
    targets' Gene Ontology or data embeddings) plus the cosine of the context
    features (principal components of the contexts' control means). A query
    whose targets have no embedding gets the mean training change.

    Parameters
    ----------
    perturbation_embedding
        A knowledge embedding (``"go"``, ``"string"``, ``"huri"``, ``"fused"``) or ``"data"``
        (principal components of the training changes).
    n_context_components
        Context features kept when the data have several contexts.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "context", "dose"})

    def __init__(
        self, *, perturbation_embedding: str = "go", n_context_components: int = 5
    ) -> None:
        self.perturbation_embedding = perturbation_embedding
        self.n_context_components = n_context_components

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_embedding_param()
        if self.perturbation_embedding != "data":
            self._set_gene_table(self._knowledge_table())
        else:
            yc = summary.delta - summary.delta.mean(axis=0)
            k = max(1, min(10, yc.shape[0] - 1))
            self._set_gene_table(pd.DataFrame(LinearModel._gene_basis(yc, k), index=summary.genes))
        self._set_feature_table(summary.features)
        self._fit_context_space(summary)
        self.train_delta_ = summary.delta
        self.mean_delta_ = summary.delta.mean(axis=0)
        base = np.stack([summary.control_mean[c] for c in summary.contexts])
        self.train_pert_features_, _ = self._pert_features(
            summary.perturbations, summary.doses or None
        )
        self.train_context_features_ = self._context_features(base)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 1e-12)

    def _predict_delta(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None = None,
    ) -> np.ndarray:
        qp, _ = self._pert_features(perturbations, doses)
        qc = self._context_features(control_mean)
        sim = self._unit(qp) @ self._unit(self.train_pert_features_).T
        if qc.shape[1]:
            sim = sim + self._unit(qc) @ self._unit(self.train_context_features_).T
        out = self.train_delta_[np.argmax(sim, axis=1)].copy()
        no_info = (np.linalg.norm(qp, axis=1) < 1e-12) & (qc.shape[1] == 0)
        out[no_info] = self.mean_delta_
        return out

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        feat_arrays, feat_meta = self._feature_state()
        return {
            **feat_arrays,
            "gene_table": self.gene_table_.to_numpy(),
            "train_delta": self.train_delta_,
            "mean_delta": self.mean_delta_,
            "train_pert_features": self.train_pert_features_,
            "train_context_features": self.train_context_features_,
            "context_center": self.context_center_,
            "context_basis": self.context_basis_,
        }, {"gene_table_index": list(map(str, self.gene_table_.index)), **feat_meta}

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._set_gene_table(pd.DataFrame(arrays["gene_table"], index=meta["gene_table_index"]))
        self._set_feature_state(arrays, meta)
        self.train_delta_ = arrays["train_delta"]
        self.mean_delta_ = arrays["mean_delta"]
        self.train_pert_features_ = arrays["train_pert_features"]
        self.train_context_features_ = arrays["train_context_features"]
        self.context_center_, self.context_basis_ = (
            arrays["context_center"],
            arrays["context_basis"],
        )
