"""Explanations of a predicted perturbation response.

Three views of one prediction, each checkable:

* **attribution** — which measured training perturbations the prediction
  resembles, and through which knowledge source (GO, STRING, HuRI, ...) the
  requested target is close to them. For each source, the similarity-weighted
  average of the model's fitted training responses is compared with the
  prediction: the source whose neighbourhood reproduces the prediction best is
  the one that carried it.
* **pathways** — GO biological processes over-represented among the predicted
  differentially expressed genes (hypergeometric test over the measured genes,
  Benjamini–Hochberg).
* **network neighbours** — interaction partners of the target (STRING, HuRI)
  among the measured genes, and whether they are predicted to respond.

On simulated data, :func:`edge_precision` scores the predicted responders of a
regulator against the true network.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from aivc.instruments._base import PerturbationModel

__all__ = ["Explanation", "edge_precision", "explain", "gene_set_enrichment"]

logger = logging.getLogger(__name__)

#: Interaction networks read for neighbours: file and symbol columns.
_NEIGHBOUR_FILES = {
    "string": "string_v12_human_notextmining_700_top3.tsv.gz",
    "huri": "huri_ppi_luck2020.tsv.gz",
}
GO_BP_FILE = "go_bp_propagated_5to1000.gmt.gz"


@dataclass
class Explanation:
    """Why the model predicts what it predicts for one perturbation.

    Attributes
    ----------
    perturbation, context
        What was explained.
    top_genes
        The most changed genes: ``gene``, ``delta`` and, with model
        uncertainty, ``low`` / ``high``.
    attribution
        One row per knowledge source: ``source``, ``coverage`` (whether the
        target has an embedding there), ``agreement`` (Pearson r between the
        prediction and the source's neighbour average), ``neighbours`` (the
        closest training perturbations with their similarity).
    pathways
        GO-BP terms enriched among the predicted DE genes: ``term``, ``name``,
        ``overlap``, ``size``, ``p_value``, ``q_value``, ``genes``.
    neighbours
        Network partners of the target among measured genes: ``gene``,
        ``networks``, ``delta``, ``rank`` (by |delta| among all genes),
        ``responds`` (in the top DE set).
    notes
        What could not be computed and why.
    """

    perturbation: str
    context: str | None
    top_genes: pd.DataFrame
    attribution: pd.DataFrame
    pathways: pd.DataFrame
    neighbours: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (records per table)."""

        def records(df: pd.DataFrame) -> list[dict[str, object]]:
            return df.replace({np.nan: None}).to_dict(orient="records")

        return {
            "perturbation": self.perturbation,
            "context": self.context,
            "top_genes": records(self.top_genes),
            "attribution": records(self.attribution),
            "pathways": records(self.pathways),
            "neighbours": records(self.neighbours),
            "notes": list(self.notes),
        }


@lru_cache(maxsize=4)
def _gene_sets(path: str) -> tuple[tuple[str, str, frozenset[str]], ...]:
    """GMT file rows as ``(term, name, genes)``."""
    sets = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > 2:
                sets.append((parts[0], parts[1], frozenset(parts[2:])))
    return tuple(sets)


def gene_set_enrichment(
    genes: Sequence[str],
    universe: Sequence[str],
    *,
    gene_sets: Sequence[tuple[str, str, frozenset[str]]] | None = None,
    min_overlap: int = 2,
    data_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Hypergeometric over-representation of ``genes`` in gene sets, within ``universe``.

    Sets are restricted to the universe (the measured genes), so a panel of a
    few hundred genes is not compared with the whole genome. Default sets: GO
    biological processes (propagated, 5–1000 genes) from the knowledge folder.
    Returns terms with at least ``min_overlap`` hits, sorted by p-value, with
    Benjamini–Hochberg q-values over all tested terms.
    """
    if gene_sets is None:
        from aivc.genes._knowledge import knowledge_path

        gene_sets = _gene_sets(str(knowledge_path(GO_BP_FILE, data_dir)))
    uni = frozenset(map(str, universe))
    hits = frozenset(map(str, genes)) & uni
    cols = ["term", "name", "overlap", "size", "p_value", "q_value", "genes"]
    rows = []
    n_uni, n_hits = len(uni), len(hits)
    for term, name, members in gene_sets:
        inside = members & uni
        if len(inside) < 2:
            continue
        overlap = hits & inside
        rows.append((term, name, len(overlap), len(inside), overlap))
    if not rows or not n_hits:
        return pd.DataFrame(columns=cols)
    overlaps = np.array([r[2] for r in rows])
    sizes = np.array([r[3] for r in rows])
    p = stats.hypergeom.sf(overlaps - 1, n_uni, sizes, n_hits)
    order = np.argsort(p, kind="stable")
    q = np.empty_like(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    table = pd.DataFrame(
        {
            "term": [r[0] for r in rows],
            "name": [r[1] for r in rows],
            "overlap": overlaps,
            "size": sizes,
            "p_value": p,
            "q_value": q,
            "genes": [",".join(sorted(r[4])) for r in rows],
        }
    )
    table = table[table["overlap"] >= min_overlap]
    return table.sort_values(["p_value", "term"], kind="stable").reset_index(drop=True)


@lru_cache(maxsize=4)
def _edges(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Symbols of both ends of every interaction in a network table."""
    edges = pd.read_csv(path, sep="\t", usecols=["symbol_a", "symbol_b"], dtype=str).dropna()
    return edges["symbol_a"].to_numpy(), edges["symbol_b"].to_numpy()


def _partners(path: str, genes: Sequence[str]) -> set[str]:
    """Interaction partners of any of ``genes``."""
    a, b = _edges(path)
    query = list(genes)
    return set(b[np.isin(a, query)]) | set(a[np.isin(b, query)])


def _embeddings(sources: Sequence[str], data_dir: str | Path | None) -> dict[str, pd.DataFrame]:
    from aivc.genes import go_embedding, network_embedding

    out: dict[str, pd.DataFrame] = {}
    for s in sources:
        out[s] = (
            go_embedding(data_dir=data_dir)
            if s == "go"
            else network_embedding(s, data_dir=data_dir)
        )
    return out


def _target_vector(emb: pd.DataFrame, targets: Sequence[str]) -> np.ndarray | None:
    rows = [t for t in targets if t in emb.index]
    if not rows:
        return None
    v = emb.loc[rows].to_numpy(dtype=np.float64).sum(axis=0)
    n = np.linalg.norm(v)
    return v / n if n > 0 else None


def _attribution(
    model: PerturbationModel,
    targets: Sequence[str],
    delta: np.ndarray,
    context: str | None,
    control: AnnData | None,
    sources: Sequence[str],
    data_dir: str | Path | None,
    n_neighbours: int,
) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    schema = model.schema_
    train = [
        p
        for p, c in zip(model.train_perturbations_, model.train_contexts_, strict=True)
        if c == context or context not in set(model.train_contexts_)
    ]
    train = [p for p in dict.fromkeys(train) if not set(schema.targets(p)) & set(targets)]
    cols = ["source", "coverage", "agreement", "neighbours"]
    if not train:
        notes.append("No other training perturbations to attribute the prediction to.")
        return pd.DataFrame(columns=cols), notes
    fitted = model.predict_delta(train, contexts=context, control=control)
    rows = []
    try:
        embeddings = _embeddings(sources, data_dir)
    except FileNotFoundError as e:
        notes.append(f"Knowledge embeddings unavailable: {e}")
        return pd.DataFrame(columns=cols), notes
    for source, emb in embeddings.items():
        tv = _target_vector(emb, targets)
        if tv is None:
            rows.append(
                {"source": source, "coverage": False, "agreement": np.nan, "neighbours": ""}
            )
            continue
        vectors = {i: _target_vector(emb, schema.targets(p)) for i, p in enumerate(train)}
        usable = [i for i, v in vectors.items() if v is not None]
        if not usable:
            rows.append({"source": source, "coverage": True, "agreement": np.nan, "neighbours": ""})
            continue
        mat = np.stack([vectors[i] for i in usable])
        sim = mat @ tv
        k = min(n_neighbours, len(usable))
        top = np.argsort(-sim, kind="stable")[:k]
        w = np.clip(sim[top], 0, None)
        if w.sum() <= 0:
            agreement = np.nan
        else:
            avg = (w[:, None] * fitted[[usable[i] for i in top]]).sum(axis=0) / w.sum()
            agreement = (
                float(np.corrcoef(avg, delta)[0, 1])
                if avg.std() > 0 and delta.std() > 0
                else np.nan
            )
        rows.append(
            {
                "source": source,
                "coverage": True,
                "agreement": agreement,
                "neighbours": ", ".join(f"{train[usable[i]]} ({sim[i]:.2f})" for i in top),
            }
        )
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values("agreement", ascending=False, na_position="last").reset_index(
        drop=True
    ), notes


def explain(
    model: PerturbationModel,
    perturbation: str,
    *,
    context: str | None = None,
    control: AnnData | None = None,
    n_top: int = 20,
    sources: Sequence[str] = ("go", "string", "huri"),
    networks: Sequence[str] = ("string", "huri"),
    n_neighbours: int = 5,
    level: float = 0.9,
    data_dir: str | Path | None = None,
) -> Explanation:
    """Explain one prediction: attribution, enriched pathways and responding network neighbours.

    Parameters
    ----------
    model
        A fitted perturbation manipulator.
    perturbation
        ``"GENE"`` or ``"A+B"``; unknown genes raise with suggestions.
    n_top
        Size of the predicted DE set (largest |change|).
    sources
        Knowledge sources for the attribution.
    networks
        Interaction networks for the neighbours.
    level
        Interval level for ``top_genes`` (models with uncertainty).
    """
    from aivc.experiments._whatif import check_context_declared
    from aivc.genes._knowledge import knowledge_path

    model._check_fitted()
    check_context_declared(model.schema_, context)
    targets = list(model.schema_.targets(str(perturbation)))
    genes = np.asarray([str(g) for g in model.genes_])
    notes: list[str] = []
    if "uncertainty" in type(model).capabilities:
        d, lo, hi = model.predict_interval(
            [perturbation], contexts=context, control=control, level=level
        ).arrays()
        delta, low, high = d[0], lo[0], hi[0]
    else:
        delta = model.predict_delta([perturbation], contexts=context, control=control)[0]
        low = high = np.full_like(delta, np.nan)
        notes.append(f"{type(model).__name__} gives no intervals.")
    n_top = max(1, min(n_top, len(genes)))
    order = np.argsort(-np.abs(delta), kind="stable")
    top = order[:n_top]
    top_genes = pd.DataFrame(
        {"gene": genes[top], "delta": delta[top], "low": low[top], "high": high[top]}
    )
    attribution, more = _attribution(
        model, targets, delta, context, control, sources, data_dir, n_neighbours
    )
    notes += more
    try:
        pathways = gene_set_enrichment(genes[top], genes, data_dir=data_dir)
    except FileNotFoundError as e:
        pathways = pd.DataFrame(
            columns=["term", "name", "overlap", "size", "p_value", "q_value", "genes"]
        )
        notes.append(f"GO-BP gene sets unavailable: {e}")
    rank = np.empty(len(genes), dtype=np.int64)
    rank[order] = np.arange(1, len(genes) + 1)
    pos = {g: i for i, g in enumerate(genes)}
    found: dict[str, list[str]] = {}
    for net in networks:
        try:
            path = knowledge_path(_NEIGHBOUR_FILES[net], data_dir)
        except FileNotFoundError as e:
            notes.append(f"Network {net} unavailable: {e}")
            continue
        for g in sorted(_partners(str(path), targets)):
            if g in pos and g not in targets:
                found.setdefault(g, []).append(net)
    neighbours = pd.DataFrame(
        {
            "gene": list(found),
            "networks": [",".join(sorted(set(v))) for v in found.values()],
            "delta": [float(delta[pos[g]]) for g in found],
            "rank": [int(rank[pos[g]]) for g in found],
        }
    )
    neighbours["responds"] = neighbours["rank"] <= n_top
    neighbours = neighbours.sort_values(["rank", "gene"], kind="stable").reset_index(drop=True)
    if not len(neighbours):
        notes.append("No network partner of the target is among the measured genes.")
    return Explanation(
        perturbation=str(perturbation),
        context=context,
        top_genes=top_genes,
        attribution=attribution,
        pathways=pathways,
        neighbours=neighbours,
        notes=notes,
    )


def edge_precision(
    deltas: np.ndarray,
    regulators: Sequence[int],
    true_targets: Sequence[np.ndarray],
    *,
    k: int = 20,
) -> dict[str, float]:
    """Precision of recovered regulator -> target edges against a random-edge baseline.

    Parameters
    ----------
    deltas
        Predicted changes, one row per perturbed regulator (genes in columns).
    regulators
        Column index of each row's perturbed gene (excluded from its own list).
    true_targets
        Column indices of each regulator's true direct targets.
    k
        Edges claimed per regulator: its ``k`` genes with the largest |change|.

    Returns
    -------
    ``precision`` (mean over regulators with at least one true target),
    ``random_precision`` (the expected precision of ``k`` genes drawn uniformly
    among the other genes: true targets / (genes - 1)), their ratio
    ``enrichment`` and ``n_regulators``.
    """
    n_genes = deltas.shape[1]
    kk = min(k, n_genes - 1)
    prec, rand = [], []
    for row, reg, tgt in zip(deltas, regulators, true_targets, strict=True):
        tgt_set = set(map(int, tgt)) - {int(reg)}
        if not tgt_set:
            continue
        score = np.abs(np.asarray(row, dtype=np.float64)).copy()
        score[reg] = -np.inf
        claimed = np.argsort(-score, kind="stable")[:kk]
        prec.append(len(tgt_set & set(map(int, claimed))) / kk)
        rand.append(len(tgt_set) / (n_genes - 1))
    if not prec:
        msg = "None of the regulators has a true target; nothing to score."
        raise ValueError(msg)
    p, r = float(np.mean(prec)), float(np.mean(rand))
    return {
        "precision": p,
        "random_precision": r,
        "enrichment": p / r if r > 0 else float("inf"),
        "n_regulators": float(len(prec)),
    }
