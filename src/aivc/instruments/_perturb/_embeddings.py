"""Target embeddings of ``aivc-perturb``: the tables the knowledge kernel compares targets with.

Knowledge sources (Gene Ontology, STRING, HuRI) come from :mod:`aivc.genes`;
data sources are computed from the training data (co-expression in the
control cells, the genes' loadings on the training responses) or given
(perturbation features such as drug descriptors). Every table has one row per
named target.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.genes._fused import KNOWLEDGE_SOURCES
from aivc.instruments import _manipulator_module as mm

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from aivc.instruments._base import PerturbationSummary

__all__ = [
    "ALL_SOURCES",
    "DATA_SOURCES",
    "KNOWLEDGE_SOURCES",
    "EmbeddingTables",
    "data_tables",
    "knowledge_tables",
]

logger = logging.getLogger(__name__)

DATA_SOURCES = ("coexpression", "response")
ALL_SOURCES = (*KNOWLEDGE_SOURCES, *DATA_SOURCES, "features")


def knowledge_tables(wanted: Sequence[str], known: frozenset[str]) -> dict[str, pd.DataFrame]:
    """The knowledge embeddings in ``wanted``, restricted to the ``known`` targets.

    Sources whose files are missing are skipped with a log message. Aliases
    among the known targets get the row of their official symbol.
    """
    from aivc.genes import gene_aliases, go_embedding, network_embedding

    out: dict[str, pd.DataFrame] = {}
    for s in wanted:
        try:
            table = go_embedding() if s == "go" else network_embedding(s)
        except FileNotFoundError as e:
            logger.info("aivc-perturb: no %s embedding (%s); source skipped", s, e)
            continue
        out[s] = table
    if not out:
        return out
    try:
        aliases = gene_aliases()
    except FileNotFoundError:
        aliases = {}
    for s, table in out.items():
        keep = table.index.isin(list(known))
        extra = {
            a: sym
            for a, sym in aliases.items()
            if a in known and sym in table.index and a not in table.index
        }
        parts = [table[keep]]
        if extra:
            rows = table.loc[list(extra.values())]
            rows.index = list(extra.keys())
            parts.append(rows)
        out[s] = pd.concat(parts) if len(parts) > 1 else parts[0]
    return out


def data_tables(
    wanted: Sequence[str],
    summary: PerturbationSummary,
    adata: AnnData,
    *,
    seed: int,
    n_coexpression_cells: int,
) -> dict[str, pd.DataFrame]:
    """The data embeddings in ``wanted``: co-expression, response loadings and target features.

    Co-expression uses up to ``n_coexpression_cells`` control cells sampled
    with ``seed``.
    """
    out: dict[str, pd.DataFrame] = {}
    genes = summary.genes
    if "coexpression" in wanted:
        schema = summary.schema
        ctrl = np.flatnonzero(
            adata.obs[schema.perturbation_key].astype(str).to_numpy() == schema.control_label
        )
        rng = np.random.default_rng(seed)
        if len(ctrl) > n_coexpression_cells:
            ctrl = np.sort(rng.choice(ctrl, n_coexpression_cells, replace=False))
        x = adata.X[ctrl]
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=np.float64)
        x = x - x.mean(axis=0)
        sd = x.std(axis=0)
        x = x / np.where(sd > 1e-8, sd, np.inf)
        emb = mm.top_right_singular(x, 32)
        if emb.shape[1] >= 2:
            out["coexpression"] = pd.DataFrame(mm.unit_rows(emb), index=genes)
    if "response" in wanted:
        singles = [i for i, p in enumerate(summary.perturbations) if summary.schema.order(p) == 1]
        y = summary.delta[singles] if len(singles) >= 3 else summary.delta
        yc = y - y.mean(axis=0)
        emb = mm.top_right_singular(yc, 10)
        if emb.shape[1] >= 2:
            out["response"] = pd.DataFrame(mm.unit_rows(emb), index=genes)
    if "features" in wanted and summary.features is not None and summary.features.shape[0]:
        v = summary.features.to_numpy(dtype=np.float64)
        sd = v.std(axis=0)
        v = (v - v.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
        out["features"] = pd.DataFrame(mm.unit_rows(v), index=summary.features.index)
    return out


class EmbeddingTables:
    """Embedding tables by source (float32, one row per target) with a row lookup.

    Parameters
    ----------
    values
        Source -> targets x dimensions array.
    targets
        Source -> the target name of each row.
    """

    def __init__(self, values: dict[str, np.ndarray], targets: dict[str, list[str]]) -> None:
        if set(values) != set(targets):
            msg = f"Embedding sources {sorted(values)} and their target lists {sorted(targets)} differ."
            raise ValueError(msg)
        self.values = values
        self.targets = targets
        self.rows = {s: {g: i for i, g in enumerate(names)} for s, names in targets.items()}

    @classmethod
    def from_frames(cls, frames: dict[str, pd.DataFrame]) -> EmbeddingTables:
        """Tables from data frames indexed by target (stored as float32)."""
        values = {s: t.astype(np.float32).to_numpy() for s, t in frames.items()}
        return cls(values, {s: list(t.index) for s, t in frames.items()})

    @property
    def sources(self) -> list[str]:
        return list(self.values)

    def subset(self, sources: Sequence[str]) -> EmbeddingTables:
        """The tables of ``sources`` only."""
        return EmbeddingTables(
            {s: self.values[s] for s in sources}, {s: self.targets[s] for s in sources}
        )

    def has(self, source: str, target: str) -> bool:
        return target in self.rows[source]

    def embed(self, source: str, targets: Sequence[str]) -> np.ndarray:
        """Rows of ``targets`` in one source (float64; zeros for targets without a row)."""
        values = self.values[source]
        pos = self.rows[source]
        out = np.zeros((len(targets), values.shape[1]))
        for i, t in enumerate(targets):
            j = pos.get(t)
            if j is not None:
                out[i] = values[j]
        return out
