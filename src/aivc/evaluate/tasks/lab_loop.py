"""The ``lab-loop`` benchmark: acquisition strategies against a laboratory that reveals results only when asked.

Datasets (``aivc benchmark lab-loop --dataset D``):

* ``schmidt2022-ifng``, ``schmidt2022-il2`` (and the tuning screens
  ``sanchez2021``, ``zhuang2019``): the GeneDisco / BioDiscoveryAgent protocol
  on a real genome-wide CRISPR screen. The pool is every gene of the screen;
  hits are the 1% of genes with the largest ``|score|``; nothing is measured
  at the start; 5 rounds of 128 genes; a gene's score is revealed only after
  it was chosen. Metric: ``hit_ratio`` (fraction of hits found) after each
  round and ``hit_ratio_final``. ``--variant no-essential`` first removes the
  core essential machinery (:data:`~aivc.experiments._screens_data.ESSENTIAL_GO_TERMS`)
  from the pool and recomputes the hits on what remains.
* ``simulator`` (default) and ``papalexi2021``: see :mod:`aivc.evaluate.tasks._lab_loop_cells`.
  The simulator campaigns run on worlds with functional modules and gene features
  from each world's simulated knowledge base (``--variant knowledge``, the
  default); ``--variant coexpression`` runs them on worlds without modules.

Every campaign is run by the production driver :func:`aivc.experiments.run_loop`:
each round is proposed, measured, recorded and committed to a ledger (one
project per strategy and seed, in a temporary SQLite file unless ``ledger=``
names one), with the benchmark's gene features, priors, feedback values and
random streams passed in through the loop's options, and the benchmark's
scores computed from each committed round (``on_round``). On screens the lab
is an :class:`aivc.experiments.ScreenScoresLab` and no perturbation model is
refitted (``model=None``).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._io import write_json_atomic
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task
from aivc.experiments._acquisition import STRATEGIES
from aivc.experiments._screens_data import (
    ESSENTIAL_GO_TERMS,
    SCREENS,
    essential_machinery_genes,
    load_screen,
    screen_hits,
)

if TYPE_CHECKING:
    from aivc.experiments import Ledger, RoundOutcome

__all__ = [
    "SCREEN_PROTOCOL",
    "ScreenFeatures",
    "campaign_ledger",
    "lab_loop_markdown",
    "run_lab_loop",
    "run_screen_loop",
    "screen_features",
    "simulate_screen_campaign",
]

logger = logging.getLogger(__name__)

#: The GeneDisco-style protocol on real screens.
SCREEN_PROTOCOL: dict[str, Any] = {
    "n_rounds": 5,
    "batch_size": 128,
    "hit_fraction": 0.01,
    "initial": "nothing measured; each strategy chooses round 1 itself",
}

#: Strategies of the screen benchmark and their features.
SCREEN_MODELS = ("random", "uncertainty", "gp-ucb", "degree-prior", "aivc-design")

#: Hyperparameters of aivc-design, chosen on the sanchez2021 and zhuang2019 screens with and
#: without the no-essential filter (never on the Schmidt screens), by the sum of hit_ratio_final
#: over those four campaigns. First grid: beta in {0, 0.5, 1} x target |score| / rank / log, a
#: random share of the first batch in {0, 0.25}, prior-slope shrinkage (prior_corr 0.3 or 0.5 at
#: strength 100) or none (best: beta=1 on |score|, 0.353). Second grid: beta in
#: {1, 1.5, 2, 2.5, 3}, prior_corr in {0.3, 0.5} x prior_strength in {30, 100} or no shrinkage,
#: prior_share in {0.25, 0.5}, random_start 0.1, diverse=False, knowledge weights GO/STRING
#: 0.3/0.7 and 0.7/0.3. Best: beta=2 with prior_corr=0.3 at strength 30 (0.385; better or tied
#: on all four tuning campaigns), the same settings for both variants.
AIVC_DESIGN_PARAMS: dict[str, Any] = {"beta": 2.0, "prior_corr": 0.3, "prior_strength": 30.0}
#: Weights of the knowledge feature map blocks (GO sets, STRING neighbourhoods).
KNOWLEDGE_WEIGHTS: dict[str, float] = {"go": 0.5, "string": 0.5}
#: UCB weight of gp-ucb.
GP_UCB_BETA = 1.0


@dataclass
class ScreenFeatures:
    """Gene features for a pool of screen genes (rows follow ``genes``)."""

    genes: pd.Index
    string_embedding: np.ndarray
    knowledge: np.ndarray
    degree: np.ndarray
    prior: np.ndarray
    coverage: pd.DataFrame


def _official(genes: pd.Index, known: set[str], data_dir: str | Path | None) -> list[str]:
    """Map outdated symbols to official ones where the symbol itself is unknown."""
    from aivc.genes import gene_aliases

    aliases = gene_aliases(data_dir)
    return [g if g in known else aliases.get(g, g) for g in genes]


def _string_edges(data_dir: str | Path | None) -> pd.DataFrame:
    from aivc.genes import knowledge_path

    edges = pd.read_csv(
        knowledge_path("string_v12_human_notextmining_700_top3.tsv.gz", data_dir),
        sep="\t",
        usecols=["symbol_a", "symbol_b", "combined_score"],
        dtype={"symbol_a": str, "symbol_b": str},
    ).dropna()
    return edges[edges["symbol_a"] != edges["symbol_b"]]


def _go_sets(data_dir: str | Path | None, min_size: int = 5, max_size: int = 1000) -> pd.DataFrame:
    """(symbol, go_id) pairs: propagated BP sets plus CC/MF annotations propagated along is_a/part_of."""
    from aivc.genes import knowledge_path

    pairs = []
    with gzip.open(knowledge_path("go_bp_propagated_5to1000.gmt.gz", data_dir), "rt") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > 2:
                pairs.append(pd.DataFrame({"symbol": parts[2:], "go_id": parts[0]}))
    ann = pd.read_csv(
        knowledge_path("human_go_annotations.tsv.gz", data_dir),
        sep="\t",
        usecols=["symbol", "go_id", "aspect"],
        dtype=str,
    ).dropna()
    direct = ann.loc[ann["aspect"].isin(["C", "F"]), ["symbol", "go_id"]].drop_duplicates()
    parents = pd.read_csv(
        knowledge_path("go_term_parents.tsv.gz", data_dir),
        sep="\t",
        usecols=["child", "parent", "relationship_type"],
        dtype=str,
    )
    parents = parents[parents["relationship_type"].isin(["isa", "part of"])][["child", "parent"]]
    seen = direct
    frontier = direct
    while len(frontier):
        up = frontier.merge(parents, left_on="go_id", right_on="child")[["symbol", "parent"]]
        up = up.rename(columns={"parent": "go_id"}).drop_duplicates()
        merged = up.merge(seen, on=["symbol", "go_id"], how="left", indicator=True)
        frontier = merged.loc[merged["_merge"] == "left_only", ["symbol", "go_id"]]
        seen = pd.concat([seen, frontier], ignore_index=True)
    pairs.append(seen)
    allpairs = pd.concat(pairs, ignore_index=True).drop_duplicates()
    sizes = allpairs["go_id"].map(allpairs["go_id"].value_counts())
    return allpairs[(sizes >= min_size) & (sizes <= max_size)]


def _row_normalise(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0)) @ m


def _reduce(m: sp.csr_matrix, *, n_components: int) -> np.ndarray:
    """Seeded truncated SVD ``U S`` of a sparse map: inner products of rows are kept approximately."""
    from sklearn.decomposition import TruncatedSVD

    k = min(n_components, min(m.shape) - 1)
    return TruncatedSVD(
        n_components=k, algorithm="randomized", n_iter=5, random_state=0
    ).fit_transform(m)


def screen_features(
    genes: Sequence[str],
    *,
    data_dir: str | Path | None = None,
    weights: dict[str, float] | None = None,
    n_components: int = 256,
) -> ScreenFeatures:
    """Knowledge features of screen genes; genes without knowledge keep a zero fallback.

    * ``string_embedding``: 64-d STRING spectral embedding
      (:func:`aivc.genes.network_embedding`); zeros for genes not in STRING.
    * ``knowledge``: sparse feature map ``[sqrt(w_go) * GO-set membership,
      sqrt(w_string) * STRING neighbourhood]``, each block row-normalised
      (sets weighted by ``1/sqrt(size)``; neighbourhood = combined-score
      weighted adjacency plus self loop), reduced to ``n_components``
      dimensions by a seeded truncated SVD (scaled so inner products
      approximate the map's). Its inner product is the kernel of
      ``aivc-design``. Zero rows for genes without GO and STRING entries.
    * ``degree``: number of STRING partners (0 when absent).
    * ``prior``: standardised ``log1p(degree)``.
    """
    import hashlib

    from aivc._settings import settings
    from aivc.genes import gene_symbols, knowledge_path, network_embedding

    weights = dict(KNOWLEDGE_WEIGHTS if weights is None else weights)
    pool = pd.Index([str(g) for g in genes])
    h = hashlib.sha256(f"screen-features-v1-{sorted(weights.items())}-{n_components}".encode())
    h.update("\n".join(pool).encode())
    for f in (
        "string_v12_human_notextmining_700_top3.tsv.gz",
        "human_go_annotations.tsv.gz",
        "go_bp_propagated_5to1000.gmt.gz",
        "go_term_parents.tsv.gz",
    ):
        st = knowledge_path(f, data_dir).stat()
        h.update(f"{f}:{st.st_size}:{int(st.st_mtime)}".encode())
    cache_file = settings.cache_dir / "screens" / f"features_{h.hexdigest()[:16]}.npz"
    if cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            coverage = pd.DataFrame({"string": z["in_string"], "go": z["has_go"]}, index=pool)
            return ScreenFeatures(
                pool, z["string_emb"], z["knowledge"], z["degree"], z["prior"], coverage
            )
    mapped = pd.Index(_official(pool, set(gene_symbols(data_dir, include_aliases=False)), data_dir))
    emb = network_embedding("string", n_components=64, data_dir=data_dir)
    in_string = mapped.isin(emb.index)
    string_emb = emb.reindex(mapped).to_numpy(dtype=float)
    string_emb = np.nan_to_num(string_emb, nan=0.0)

    edges = _string_edges(data_dir)
    index = {g: i for i, g in enumerate(mapped)}
    a = edges["symbol_a"].map(index)
    b = edges["symbol_b"].map(index)
    ok = a.notna() & b.notna()
    ai, bi = a[ok].to_numpy(dtype=int), b[ok].to_numpy(dtype=int)
    w = edges.loc[ok, "combined_score"].to_numpy(dtype=float) / 1000.0
    n = len(pool)
    adj = sp.coo_matrix((np.r_[w, w], (np.r_[ai, bi], np.r_[bi, ai])), shape=(n, n)).tocsr()
    adj.sum_duplicates()
    # degree over the whole STRING network (partners outside the pool count too)
    all_partners = pd.concat(
        [
            edges[["symbol_a", "symbol_b"]],
            edges[["symbol_b", "symbol_a"]].set_axis(["symbol_a", "symbol_b"], axis=1),
        ]
    )
    deg_table = all_partners.drop_duplicates().groupby("symbol_a").size()
    degree = deg_table.reindex(mapped).fillna(0).to_numpy(dtype=float)
    net = adj + sp.diags(in_string.astype(float))
    net = _row_normalise(sp.csr_matrix(net))

    sets = _go_sets(data_dir)
    sets = sets[sets["symbol"].isin(index)]
    term_codes, terms = pd.factorize(sets["go_id"])
    rows = sets["symbol"].map(index).to_numpy(dtype=int)
    sizes = np.bincount(term_codes)
    go = sp.csr_matrix(
        (1.0 / np.sqrt(sizes[term_codes]), (rows, term_codes)), shape=(n, len(terms))
    )
    has_go = np.asarray(go.getnnz(axis=1) > 0)
    go = _row_normalise(go)
    knowledge_map = sp.hstack(
        [np.sqrt(weights["go"]) * go, np.sqrt(weights["string"]) * net], format="csr"
    )
    knowledge = _reduce(knowledge_map, n_components=n_components)
    logdeg = np.log1p(degree)
    prior = (logdeg - logdeg.mean()) / (logdeg.std() or 1.0)
    coverage = pd.DataFrame({"string": in_string, "go": has_go}, index=pool)
    from aivc.genes._knowledge import _save_npz_atomic

    _save_npz_atomic(
        cache_file,
        string_emb=string_emb,
        knowledge=knowledge,
        degree=degree,
        prior=prior,
        in_string=np.asarray(in_string),
        has_go=has_go,
    )
    return ScreenFeatures(pool, string_emb, knowledge, degree, prior, coverage)


def _strategy_inputs(
    name: str, feats: ScreenFeatures
) -> tuple[np.ndarray | sp.spmatrix, np.ndarray | None, dict[str, Any]]:
    if name == "aivc-design":
        return feats.knowledge, feats.prior, dict(AIVC_DESIGN_PARAMS)
    if name == "degree-prior":
        return feats.string_embedding, feats.degree, {}
    if name == "gp-ucb":
        return feats.string_embedding, None, {"beta": GP_UCB_BETA}
    return feats.string_embedding, None, {}


def _subset(feats: ScreenFeatures, keep: np.ndarray) -> ScreenFeatures:
    return ScreenFeatures(
        feats.genes[keep],
        feats.string_embedding[keep],
        feats.knowledge[keep],
        feats.degree[keep],
        feats.prior[keep],
        feats.coverage.iloc[keep],
    )


@contextlib.contextmanager
def campaign_ledger(ledger: Ledger | str | Path | None = None) -> Iterator[Ledger]:
    """The ledger lab-loop campaigns are recorded in.

    Parameters
    ----------
    ledger
        A :class:`~aivc.experiments.Ledger` (left open), its URL or a path to a
        SQLite file (opened and closed here); ``None`` opens a temporary SQLite
        file that is removed afterwards.
    """
    from aivc.experiments import Ledger

    if isinstance(ledger, Ledger):
        yield ledger
        return
    with contextlib.ExitStack() as stack:
        if ledger is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aivc-lab-loop-"))
            ledger = Path(tmp) / "ledger.db"
        yield stack.enter_context(Ledger(ledger))


def simulate_screen_campaign(
    strategy: str,
    *,
    features: np.ndarray | sp.spmatrix,
    values: np.ndarray,
    hits: np.ndarray,
    n_rounds: int,
    batch_size: int,
    seed: int,
    prior: np.ndarray | None = None,
    genes: Sequence[str] | None = None,
    ledger: Ledger | str | Path | None = None,
    project: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """One design campaign against a screen: reveal ``|values|`` of chosen genes round by round.

    The campaign is an :func:`aivc.experiments.run_loop` project on an
    :class:`aivc.experiments.ScreenScoresLab` of ``values`` (no perturbation
    model; the strategy sees ``features`` and the revealed ``|values|``; one
    random stream seeded by ``seed`` for all rounds).

    Parameters
    ----------
    strategy
        Acquisition strategy.
    features
        Genes x d features the strategy sees.
    values
        The screen's score of every gene.
    hits
        Boolean mask of the genes that count as hits.
    n_rounds
        Rounds.
    batch_size
        Genes per round.
    seed
        Seed of the campaign's random stream.
    prior
        Per-gene prior scores (for strategies that use one).
    genes
        Gene names (default ``gene0``, ``gene1``, ...).
    ledger
        Where the campaign is recorded (see :func:`campaign_ledger`).
    project
        Its project name (default ``"screen:<strategy>:seed<seed>"``).
    **params
        Options of the strategy.

    Returns
    -------
    The chosen indices per round (``"rounds"``) and the fraction of ``hits``
    found after each round (``"hit_ratio"``).
    """
    from aivc.experiments import ScreenScoresLab, run_loop

    values = np.asarray(values, dtype=float)
    names = (
        [str(g) for g in genes] if genes is not None else [f"gene{i}" for i in range(values.size)]
    )
    row = {g: i for i, g in enumerate(names)}
    rounds: list[list[int]] = []
    ratios: list[float] = []

    def record(outcome: RoundOutcome) -> None:
        rounds.append([row[g] for g in outcome.proposed])
        measured = np.asarray([row[g] for g in outcome.measured], dtype=int)
        ratios.append(float(hits[measured].sum() / hits.sum()))

    with campaign_ledger(ledger) as led:
        run_loop(
            led,
            project or f"screen:{strategy}:seed{seed}",
            lab=ScreenScoresLab(pd.Series(values, index=names)),
            candidates=names,
            model=None,
            strategy=strategy,
            strategy_params=params,
            batch_size=batch_size,
            n_rounds=n_rounds,
            seed=seed,
            prior=prior,
            features=features,
            rng=np.random.default_rng(seed),
            on_round=record,
        )
    return {"rounds": rounds, "hit_ratio": ratios}


def run_screen_loop(
    dataset: str,
    *,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    variant: str | None = None,
    data_dir: str | Path | None = None,
    n_rounds: int | None = None,
    batch_size: int | None = None,
    ledger: Ledger | str | Path | None = None,
) -> dict[str, Any]:
    """The GeneDisco-style campaign on a real screen for every strategy and seed.

    Each campaign is a project ``"<dataset>[/<variant>]:<strategy>:seed<seed>"``
    in ``ledger`` (see :func:`campaign_ledger`; the projects must not exist yet).
    """
    from aivc.evaluate._memory import ResourceMeter

    if variant not in (None, "no-essential"):
        msg = f"lab-loop on screens has variants [None, 'no-essential']; received {variant!r}."
        raise ValueError(msg)
    models = list(SCREEN_MODELS if models is None else models)
    unknown = [m for m in models if m not in STRATEGIES]
    if unknown:
        msg = f"unknown strategies {unknown}; expected names from {sorted(STRATEGIES)}."
        raise ValueError(msg)
    n_rounds = int(n_rounds or SCREEN_PROTOCOL["n_rounds"])
    batch_size = int(batch_size or SCREEN_PROTOCOL["batch_size"])
    scores = load_screen(dataset, data_dir=data_dir)
    with ResourceMeter() as prep:
        feats = screen_features(scores.index, data_dir=data_dir)
    pool_note: dict[str, Any] = {"n_screen_genes": len(scores)}
    keep = np.ones(len(scores), dtype=bool)
    if variant == "no-essential":
        ess = essential_machinery_genes(data_dir=data_dir)
        official = pd.Index(_official(scores.index, set().union(*ess.values()), data_dir))
        removed = np.zeros(len(scores), dtype=bool)
        per_term = {}
        for term, genes in ess.items():
            hit = scores.index.isin(genes) | official.isin(genes)
            per_term[f"{term} {ESSENTIAL_GO_TERMS[term]}"] = int(hit.sum())
            removed |= hit
        keep = ~removed
        pool_note.update(
            removed_essential=int(removed.sum()),
            removed_per_term=per_term,
            essential_terms=ESSENTIAL_GO_TERMS,
        )
    feats = _subset(feats, np.flatnonzero(keep))
    values = scores.to_numpy(dtype=float)[keep]
    hits = screen_hits(values, fraction=SCREEN_PROTOCOL["hit_fraction"])
    no_features = ~(feats.coverage["string"] | feats.coverage["go"]).to_numpy()
    pool_note.update(
        n_pool=int(keep.sum()),
        n_hits=int(hits.sum()),
        hit_threshold_abs_score=float(np.abs(values[hits]).min()),
        n_without_string=int((~feats.coverage["string"]).sum()),
        n_without_go=int((~feats.coverage["go"]).sum()),
        n_without_any_knowledge=int(no_features.sum()),
        fallback="genes without knowledge stay in the pool: zero feature vectors (STRING "
        "embedding and knowledge map), degree 0",
    )
    results: dict[str, Any] = {}
    wall, peak, runs = {}, {}, {}
    genes = [str(g) for g in feats.genes]
    stem = dataset if variant is None else f"{dataset}/{variant}"
    with campaign_ledger(ledger) as led:
        for name in models:
            x, prior, params = _strategy_inputs(name, feats)
            per_seed = []
            with ResourceMeter() as meter:
                for seed in seeds:
                    per_seed.append(
                        simulate_screen_campaign(
                            name,
                            features=x,
                            values=values,
                            hits=hits,
                            n_rounds=n_rounds,
                            batch_size=batch_size,
                            seed=int(seed),
                            prior=prior,
                            genes=genes,
                            ledger=led,
                            project=f"{stem}:{name}:seed{int(seed)}",
                            **params,
                        )
                    )
            wall[name] = meter.wall_seconds
            peak[name] = meter.peak_increase_mb
            curves = np.array([r["hit_ratio"] for r in per_seed])
            results[name] = {
                "hit_ratio": [summarize(curves[:, t]) for t in range(n_rounds)],
                "hit_ratio_final": summarize(curves[:, -1]),
                "hits_found_final": summarize(curves[:, -1] * hits.sum()),
                "per_seed_hit_ratio": curves.tolist(),
                "params": params,
            }
            runs[name] = [
                [feats.genes[np.asarray(b, dtype=int)].tolist() for b in r["rounds"]]
                for r in per_seed
            ]
            logger.info("%s: hit_ratio_final %.3f", name, results[name]["hit_ratio_final"]["mean"])
    return {
        "task": "lab-loop",
        "dataset": dataset,
        "variant": variant,
        "description": SCREENS[dataset].description,
        "protocol": {**SCREEN_PROTOCOL, "n_rounds": n_rounds, "batch_size": batch_size},
        "pool": pool_note,
        "seeds": [int(s) for s in seeds],
        "models": results,
        "features": {
            "random": "none",
            "uncertainty": "64-d STRING spectral embedding (zeros when absent), RBF GP on |score|",
            "gp-ucb": f"64-d STRING spectral embedding, RBF GP on |score|, UCB beta={GP_UCB_BETA}",
            "degree-prior": "STRING degree (number of partners)",
            "aivc-design": "sparse knowledge map (GO sets + STRING neighbourhoods, weights "
            f"{KNOWLEDGE_WEIGHTS}), prior mean = affine(standardised log1p STRING degree) "
            f"fitted to revealed |score|, GP-BUCB {AIVC_DESIGN_PARAMS}",
        },
        "wall_seconds": {
            **{k: round(v, 3) for k, v in wall.items()},
            "features": round(prep.wall_seconds, 3),
        },
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "peak resident memory above the process's memory before the strategy ran (all seeds)",
        "machine": machine_info(),
        "chosen_genes": runs,
    }


_SCREEN_DATASETS = ("schmidt2022-ifng", "schmidt2022-il2", "sanchez2021", "zhuang2019")
_CELL_DATASETS = ("simulator", "papalexi2021")


def lab_loop_markdown(result: dict[str, Any]) -> str:
    """A readable table of a lab-loop ``results.json``."""
    variant = f" (variant {result['variant']})" if result.get("variant") else ""
    lines = [f"# lab-loop on {result['dataset']}{variant}", "", result.get("description", ""), ""]
    proto = result["protocol"]
    lines.append(
        f"{proto['n_rounds']} rounds x {proto['batch_size']}; seeds {result['seeds']}; "
        "mean ± sd over seeds."
    )
    lines.append("")
    models = result["models"]
    n_rounds = proto["n_rounds"]
    has_error = any("error_auc" in m for m in models.values())
    has_rel = any("final_error_rel" in m for m in models.values())
    head = "| strategy | " + " | ".join(f"hit_ratio r{t + 1}" for t in range(n_rounds))
    head += " | hit_ratio_final ↑ |" + (" error_auc ↓ | final error ↓ |" if has_error else "")
    head += " final error / no change ↓ | measured to reach random's final |" if has_rel else ""
    head += " wall s | peak MB |"
    n_cols = n_rounds + 3 + (2 if has_error else 0) + (2 if has_rel else 0)
    # random's final model no better than no change: reaching it is not learning
    random_rel = models.get("random", {}).get("final_error_rel") or {}
    unlearned = random_rel.get("mean") is not None and random_rel["mean"] >= 1.0
    lines += [head, "|---|" + "---|" * n_cols]
    for name, m in models.items():
        row = f"| {name} | " + " | ".join(f"{x['mean']:.3f}" for x in m["hit_ratio"])
        row += f" | {fmt_summary(m['hit_ratio_final'])} |"
        if has_error:
            row += (
                f" {fmt_summary(m['error_auc'], 5)} | {fmt_summary(m['final_error'], 5)} |"
                if "error_auc" in m
                else " | |"
            )
        if has_rel:
            reach = m.get("n_to_reach_random_final_error")
            reached = "n/a" if unlearned else "never" if reach is None else f"{reach:.0f}"
            row += f" {fmt_summary(m['final_error_rel'], 3)} | {reached} |"
        row += f" {result['wall_seconds'].get(name, 0):.1f} | {result['peak_memory_mb'].get(name, 0):.0f} |"
        lines.append(row)
    lines.append("")
    if has_rel and unlearned:
        lines += [
            "Random design's final model is no better than predicting no change, so no number "
            "measured is needed to reach it (n/a).",
            "",
        ]
    phrases = {
        "no_change_error": "predicting no change for the held-out perturbations gives an error of",
        "pool_mean_error": "predicting the true mean change of the whole pool,",
        "pool_oracle_error": "ridge regressions from the gene features to the true changes of "
        "every pool candidate (ridge picked on the held-out set),",
    }
    refs = [
        f"{phrase} {fmt_summary(value, 5)}"
        for key, phrase in phrases.items()
        if (value := next((m[key] for m in models.values() if m.get(key)), None)) is not None
    ]
    if refs:
        lines.append("Reference: " + "; ".join(refs) + ".")
        lines.append("")
    for key in ("pool", "features", "notes"):
        if result.get(key):
            lines.append(
                f"**{key}**: `{result[key]}`"
                if not isinstance(result[key], str)
                else f"**{key}**: {result[key]}"
            )
            lines.append("")
    m = result["machine"]
    lines.append(f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {m['aivc']}.")
    lines.append("")
    return "\n".join(lines)


def run_lab_loop(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the lab-loop benchmark and write ``results.json`` and ``results.md`` into ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    dataset
        ``"simulator"`` (default), ``"papalexi2021"``, or a screen
        (``"schmidt2022-ifng"``, ``"schmidt2022-il2"``, ``"sanchez2021"``,
        ``"zhuang2019"``).
    models
        Strategy names; defaults to all five.
    seeds
        One campaign per seed and strategy; default 0-4 on screens, 0-2 otherwise.
    variant
        ``"no-essential"`` for screens (removes core essential machinery); on the
        simulator ``"knowledge"`` (the default: worlds with functional modules, gene
        features from their simulated knowledge base) or ``"coexpression"`` (worlds
        without modules, co-expression features).

    The campaigns are recorded in a temporary ledger; :func:`run_screen_loop`
    and :func:`~aivc.evaluate.tasks._lab_loop_cells.run_cell_loop` take a
    ``ledger`` to keep them.
    """
    dataset = dataset or "simulator"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset in _SCREEN_DATASETS:
        seeds = (0, 1, 2, 3, 4) if seeds is None else seeds
        result = run_screen_loop(dataset, models=models, seeds=seeds, variant=variant)
        chosen = result.pop("chosen_genes")
        write_json_atomic(out / "chosen_genes.json", chosen)
    elif dataset in _CELL_DATASETS:
        from aivc.evaluate.tasks._lab_loop_cells import run_cell_loop

        result = run_cell_loop(
            dataset,
            models=models,
            seeds=(0, 1, 2) if seeds is None else seeds,
            variant=variant,
        )
    else:
        msg = f"lab-loop datasets are {[*_CELL_DATASETS, *_SCREEN_DATASETS]}; received {dataset!r}."
        raise ValueError(msg)
    write_results(out, result, lab_loop_markdown(result))
    return result


register_task(
    Task(
        name="lab-loop",
        description="Find hits or learn a response in rounds of experiments, against a lab that answers only what is asked",
        datasets=(*_CELL_DATASETS, *_SCREEN_DATASETS),
        models=SCREEN_MODELS,
        seeds=(),
        run=run_lab_loop,
        variants=("no-essential", "knowledge", "coexpression"),
    )
)
