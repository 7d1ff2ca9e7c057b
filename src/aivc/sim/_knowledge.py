"""A simulated knowledge base: what curators would have recorded about a simulated world.

Real prior knowledge (Gene Ontology, STRING, HuRI) partly and noisily records
the structure that makes knockouts share phenotypes. :func:`simulated_knowledge`
writes the same kind of record for a simulated world, from its truth:

- **Annotations** (GO-like, biological process): one term per functional
  module (its members and the regulator it feeds), one per regulator's
  transcriptional program (the regulator and its direct targets), and parent
  terms grouping a few modules into a process, under one root.
- **Interactions** (STRING-like, scored, and HuRI-like, binary): the pairs of
  a complex, the steps of a pathway (and its last step to its output), and
  regulator-target pairs (STRING only).

Both are degraded by a :class:`KnowledgeQuality`: a share of the true
records is left out (``false_negative``), spurious records make up a share of
what is written (``false_positive``), and ``study_bias`` tilts both towards
well-studied genes (hubs: their true records are kept more often and they
collect more spurious ones), as curated databases are. The tables have the
columns and file names of the real ones, so :mod:`aivc.genes` builds
embeddings from a simulated knowledge base unchanged:
``aivc.genes.go_embedding(data_dir=<folder>)`` with the tables under
``<folder>/genes/``.
"""

from __future__ import annotations

import gzip
import io
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aivc._io import write_bytes_atomic
from aivc.sim._modules import FunctionalModules
from aivc.sim._network import GeneNetwork

__all__ = ["KNOWLEDGE_QUALITIES", "KnowledgeQuality", "simulated_knowledge", "write_knowledge"]

#: Share of the true regulator-target pairs within the STRING-like table's scope. Chosen on
#: papalexi2021, the one real screen here with STRING partners among its effective knockouts
#: (``benchmarks/sim_realism.py``, seeds 0-2, shares 1, 0.3, 0.1 and 0 tried): real
#: partners' phenotypes correlate 0.44 (15 pairs); with every regulatory pair recorded the
#: simulated partners correlated 0.10-0.28, with a tenth of them 0.17-0.49 (4-19 pairs).
STRING_REGULATORY_SHARE = 0.1

#: Root term of the simulated ontology (the real biological-process root, so it is dropped like it).
ROOT_TERM = ("GO:0008150", "biological_process")
_TERM_BASE = 9_000_000  # simulated terms: GO:9000001, ... (no clash with real GO ids)


@dataclass(frozen=True)
class KnowledgeQuality:
    """How faithfully the knowledge base records the truth.

    Attributes
    ----------
    false_negative
        Expected share of true records (annotations, interactions) left out.
    false_positive
        Expected share of the written records that are spurious.
    study_bias
        Exponent of the tilt towards well-studied genes (0: none). A gene's
        attention is ``(1 + its number of true records) ** study_bias``; its
        chance to lose a true record is inversely proportional to it and its
        chance to gain a spurious one proportional, with the overall rates
        kept at ``false_negative`` and ``false_positive``.
    """

    false_negative: float = 0.3
    false_positive: float = 0.2
    study_bias: float = 1.0

    def __post_init__(self) -> None:
        for name in ("false_negative", "false_positive"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                msg = f"KnowledgeQuality.{name} must be in [0, 1). Got {value!r} instead."
                raise ValueError(msg)
        if self.study_bias < 0:
            msg = f"KnowledgeQuality.study_bias must be >= 0. Got {self.study_bias!r} instead."
            raise ValueError(msg)


#: Named qualities, from perfect to nearly useless.
KNOWLEDGE_QUALITIES: dict[str, KnowledgeQuality] = {
    "perfect": KnowledgeQuality(0.0, 0.0, 0.0),
    "good": KnowledgeQuality(0.2, 0.1, 1.0),
    "typical": KnowledgeQuality(0.5, 0.3, 1.0),
    "poor": KnowledgeQuality(0.8, 0.6, 1.0),
    "useless": KnowledgeQuality(0.95, 0.95, 0.0),
}


def _term_id(i: int) -> str:
    return f"GO:{_TERM_BASE + i:07d}"


def _true_terms(
    network: GeneNetwork, modules: FunctionalModules, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, int]]]:
    """Terms, parent links and true (term, gene) memberships."""
    names = network.gene_names
    terms: list[tuple[str, str, str]] = [(*ROOT_TERM, "The simulated biological process root.")]
    parents: list[tuple[str, str]] = []
    members: list[tuple[str, int]] = []
    n = 0
    # processes: groups of 2-4 modules under one parent term
    order = rng.permutation(modules.n_modules)
    groups = np.array_split(order, max(1, modules.n_modules // 3)) if modules.n_modules else []
    for group in groups:
        n += 1
        process = _term_id(n)
        terms.append((process, f"process {n}", "Modules acting together in one process."))
        parents.append((process, ROOT_TERM[0]))
        for m in group:
            n += 1
            tid = _term_id(n)
            kind = str(modules.kind[m])
            out = names[modules.output[m]]
            terms.append((tid, f"{kind} feeding {out}", f"A simulated {kind} needed by {out}."))
            parents.append((tid, process))
            members += [(tid, int(g)) for g in modules.module_genes(m)]
    for reg in network.regulators:
        targets = network.targets_of(int(reg))
        if not len(targets):
            continue
        n += 1
        tid = _term_id(n)
        terms.append((tid, f"program of {names[reg]}", f"Genes transcribed under {names[reg]}."))
        parents.append((tid, ROOT_TERM[0]))
        members += [(tid, int(reg))] + [(tid, int(t)) for t in targets]
    return (
        pd.DataFrame(terms, columns=["go_id", "term", "definition"]),
        pd.DataFrame(parents, columns=["child", "parent"]),
        members,
    )


def _true_pairs(
    network: GeneNetwork, modules: FunctionalModules
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical pairs (complexes, pathway steps), all pairs (plus regulator-target), and
    which of all the pairs are regulatory only."""
    physical: set[tuple[int, int]] = set()
    for m in range(modules.n_modules):
        genes = modules.module_genes(m)
        if modules.kind[m] == "complex":
            physical |= {
                (min(a, b), max(a, b)) for i, a in enumerate(genes) for b in genes[i + 1 :]
            }
        else:  # a cascade: each step to the next, the last to the output
            physical |= {(min(a, b), max(a, b)) for a, b in itertools.pairwise(genes)}
    regulatory = {
        (min(a, b), max(a, b))
        for a, b in zip(network.source.tolist(), network.target.tolist(), strict=True)
        if a != b
    }
    phys = np.asarray(sorted(physical), dtype=np.int64).reshape(-1, 2)
    all_pairs = sorted(physical | regulatory)
    every = np.asarray(all_pairs, dtype=np.int64).reshape(-1, 2)
    only_regulatory = np.asarray([p not in physical for p in all_pairs], dtype=bool)
    return phys, every, only_regulatory


def _degrade(
    true_items: np.ndarray,
    item_gene: np.ndarray,
    attention: np.ndarray,
    quality: KnowledgeQuality,
    rng: np.random.Generator,
    draw_spurious: Callable[[int, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each true item with a gene-tilted chance, then add spurious ones.

    Returns the kept items' positions and ``n_spurious`` new items from
    ``draw_spurious(n, gene_weights)``.
    """
    inv = 1.0 / attention[item_gene]
    fn = np.clip(quality.false_negative * inv / inv.mean(), 0.0, 1.0) if len(inv) else inv
    kept = np.flatnonzero(rng.random(len(true_items)) >= fn)
    share = quality.false_positive
    n_spurious = int(rng.binomial(round(len(kept) / (1.0 - share)), share)) if share > 0 else 0
    weights = attention / attention.sum()
    return kept, draw_spurious(n_spurious, weights)


def simulated_knowledge(
    network: GeneNetwork,
    modules: FunctionalModules,
    quality: KnowledgeQuality | str = "good",
    *,
    seed: int = 0,
    regulatory_share: float | None = None,
) -> dict[str, pd.DataFrame]:
    """The knowledge-base tables of a simulated world, keyed by their file names.

    Parameters
    ----------
    network, modules
        The world's truth (:class:`~aivc.sim.GroundTruth` ``.network`` and ``.modules``).
    quality
        A :class:`KnowledgeQuality` or a name of :data:`KNOWLEDGE_QUALITIES`.
    seed
        Seed of the noise.
    regulatory_share
        Share of the true regulator-target pairs that the STRING-like table can
        record at all (its scope; default :data:`STRING_REGULATORY_SHARE`): a
        high-confidence functional network records complexes and pathways far
        more completely than which factor regulates which gene. Pairs outside
        the scope are not counted as missed records.

    Returns
    -------
    ``{file name: table}`` for ``human_gene_info.tsv.gz``, ``go_terms.tsv.gz``,
    ``go_term_parents.tsv.gz``, ``human_go_annotations.tsv.gz``,
    ``go_bp_propagated_5to1000.gmt.gz`` (as a table of ``go_id``, ``term``,
    ``genes``), ``string_v12_human_notextmining_700_top3.tsv.gz``,
    ``huri_ppi_luck2020.tsv.gz`` and ``human_gene_descriptions_go_derived.tsv.gz``,
    plus ``truth_records.tsv.gz`` saying which written records are true
    (for measuring; :mod:`aivc.genes` never reads it).
    """
    if isinstance(quality, str):
        if quality not in KNOWLEDGE_QUALITIES:
            msg = f"Unknown knowledge quality {quality!r}; expected one of {list(KNOWLEDGE_QUALITIES)}."
            raise ValueError(msg)
        quality = KNOWLEDGE_QUALITIES[quality]
    rng = np.random.default_rng([seed, 31])
    names = np.asarray(network.gene_names).astype(str)
    n_genes = len(names)
    entrez = np.arange(1, n_genes + 1)

    share = STRING_REGULATORY_SHARE if regulatory_share is None else float(regulatory_share)
    if not 0.0 <= share <= 1.0:
        msg = (
            f"The 'regulatory_share' parameter must be in [0, 1]. Got {regulatory_share!r} instead."
        )
        raise ValueError(msg)
    terms, parents, members = _true_terms(network, modules, rng)
    phys, every, regulatory = _true_pairs(network, modules)
    if share < 1.0:  # the regulator-target pairs in the STRING-like table's scope
        scope = rng.random(len(every)) < share
        every = every[~regulatory | scope]
    degree = np.bincount(
        np.concatenate([np.asarray([g for _, g in members], dtype=np.int64), every.ravel()]),
        minlength=n_genes,
    )
    attention = (1.0 + degree) ** quality.study_bias

    # annotations
    term_ids = terms["go_id"].to_numpy()[1:]  # the root is never annotated directly
    mem_term = np.asarray([t for t, _ in members], dtype=object)
    mem_gene = np.asarray([g for _, g in members], dtype=np.int64)

    def spurious_annotations(k: int, w: np.ndarray) -> np.ndarray:
        genes = rng.choice(n_genes, size=k, p=w)
        return np.stack([rng.choice(term_ids, size=k), genes.astype(object)], axis=1)

    kept, extra = _degrade(mem_term, mem_gene, attention, quality, rng, spurious_annotations)
    ann = pd.DataFrame(
        {
            "go_id": np.concatenate([mem_term[kept], extra[:, 0] if len(extra) else []]),
            "gene": np.concatenate([mem_gene[kept], extra[:, 1] if len(extra) else []]).astype(
                np.int64
            ),
        }
    )
    # a spurious record may hit a true one, so truth is looked up rather than assumed
    true_set = set(zip(mem_term.tolist(), mem_gene.tolist(), strict=True))
    ann["true"] = [(t, g) in true_set for t, g in zip(ann["go_id"], ann["gene"], strict=True)]
    ann = ann.drop_duplicates(["go_id", "gene"]).reset_index(drop=True)
    term_name = dict(zip(terms["go_id"], terms["term"], strict=True))

    # interactions
    def spurious_pairs(k: int, w: np.ndarray) -> np.ndarray:
        a = rng.choice(n_genes, size=k, p=w)
        b = rng.choice(n_genes, size=k, p=w)
        ok = a != b
        return np.sort(np.stack([a[ok], b[ok]], axis=1), axis=1)

    tables_pairs: dict[str, pd.DataFrame] = {}
    for label, pairs in (("string", every), ("huri", phys)):
        kept_p, extra_p = _degrade(pairs, pairs[:, 0], attention, quality, rng, spurious_pairs)
        both = np.vstack([pairs[kept_p], extra_p.reshape(-1, 2)]) if len(pairs) else extra_p
        truth = {tuple(p) for p in pairs.tolist()}
        frame = pd.DataFrame(both.reshape(-1, 2), columns=["a", "b"]).drop_duplicates()
        frame["true"] = [(a, b) in truth for a, b in zip(frame["a"], frame["b"], strict=True)]
        tables_pairs[label] = frame.reset_index(drop=True)

    string = tables_pairs["string"]
    score = np.where(
        string["true"],
        rng.integers(750, 1000, len(string)),
        rng.integers(700, 900, len(string)),
    )
    channels = [
        "neighborhood", "neighborhood_transferred", "fusion", "cooccurrence", "homology",
        "coexpression", "coexpression_transferred", "experiments", "experiments_transferred",
        "database", "database_transferred",
    ]  # fmt: skip
    string_table = pd.DataFrame(
        {
            "symbol_a": names[string["a"]],
            "symbol_b": names[string["b"]],
            "entrez_a": entrez[string["a"]],
            "entrez_b": entrez[string["b"]],
            **{c: 0 for c in channels},
        }
    )
    string_table["experiments"] = score
    string_table["combined_score"] = score
    huri = tables_pairs["huri"]
    huri_table = pd.DataFrame(
        {
            "ensembl_a": [f"SIMG{i:011d}" for i in huri["a"]],
            "ensembl_b": [f"SIMG{i:011d}" for i in huri["b"]],
            "symbol_a": names[huri["a"]],
            "entrez_a": entrez[huri["a"]],
            "symbol_b": names[huri["b"]],
            "entrez_b": entrez[huri["b"]],
        }
    )

    annotations = pd.DataFrame(
        {
            "symbol": names[ann["gene"]],
            "entrez_id": entrez[ann["gene"]],
            "go_id": ann["go_id"].to_numpy(),
            "evidence": "IEA",
            "aspect": "P",
            "go_term": [term_name[t] for t in ann["go_id"]],
        }
    ).sort_values(["symbol", "go_id"], kind="stable")
    gene_info = pd.DataFrame(
        {
            "entrez_id": entrez,
            "symbol": names,
            "gene_name": [f"simulated gene {s}" for s in names],
            "gene_type": "protein-coding",
            "chromosome": "",
            "cytoband": "",
            "ensembl_id": [f"SIMG{i:011d}" for i in range(n_genes)],
            "uniprot_id": "",
            "aliases": "",
        }
    )
    # gene sets: each term with the genes annotated to it or below it
    children: dict[str, list[str]] = {}
    for child, parent in zip(parents["child"], parents["parent"], strict=True):
        children.setdefault(parent, []).append(child)
    direct = annotations.groupby("go_id")["symbol"].apply(set).to_dict()

    def below(t: str) -> set[str]:
        out = set(direct.get(t, set()))
        for c in children.get(t, []):
            out |= below(c)
        return out

    gmt = pd.DataFrame(
        [
            (t, term_name[t], sorted(genes))
            for t in terms["go_id"]
            if t != ROOT_TERM[0] and 2 <= len(genes := below(t)) <= 1000
        ],
        columns=["go_id", "term", "genes"],
    )
    by_gene = annotations.groupby("symbol")["go_term"].apply(list).to_dict()
    descriptions = pd.DataFrame(
        {
            "symbol": names,
            "entrez_id": entrez,
            "gene_type": "protein-coding",
            "gene_name": gene_info["gene_name"],
            "n_go_terms": [len(by_gene.get(s, [])) for s in names],
            "description": [
                f"{s} (simulated gene {s}) is a protein-coding gene."
                + (f" Biological process: {', '.join(by_gene[s])}." if s in by_gene else "")
                for s in names
            ],
        }
    )
    records = pd.concat(
        [
            pd.DataFrame(
                {
                    "kind": "annotation",
                    "a": names[ann["gene"]],
                    "b": ann["go_id"].to_numpy(),
                    "true": ann["true"].to_numpy(),
                }
            ),
            *(
                pd.DataFrame(
                    {
                        "kind": label,
                        "a": names[frame["a"]],
                        "b": names[frame["b"]],
                        "true": frame["true"].to_numpy(),
                    }
                )
                for label, frame in tables_pairs.items()
            ),
        ],
        ignore_index=True,
    )
    summary = {
        "quality": asdict(quality),
        "true_annotations": len(members),
        "true_string_pairs": len(every),
        "true_huri_pairs": len(phys),
    }
    records.attrs["summary"] = summary
    return {
        "human_gene_info.tsv.gz": gene_info,
        "go_terms.tsv.gz": terms.assign(ontology="BP")[["go_id", "term", "ontology", "definition"]],
        "go_term_parents.tsv.gz": parents.assign(relationship_type="isa", ontology="BP"),
        "human_go_annotations.tsv.gz": annotations.reset_index(drop=True),
        "go_bp_propagated_5to1000.gmt.gz": gmt,
        "string_v12_human_notextmining_700_top3.tsv.gz": string_table,
        "huri_ppi_luck2020.tsv.gz": huri_table,
        "human_gene_descriptions_go_derived.tsv.gz": descriptions,
        "truth_records.tsv.gz": records,
    }


def write_knowledge(folder: str | Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write :func:`simulated_knowledge` tables under ``folder/genes/`` (gzip, each file atomically).

    Returns ``folder``, the directory to pass as ``data_dir`` to :mod:`aivc.genes`.
    """
    folder = Path(folder)
    target = folder / "genes"
    target.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if name.endswith(".gmt.gz"):
            text = "".join(
                "\t".join([t, term, *genes]) + "\n"
                for t, term, genes in zip(
                    table["go_id"], table["term"], table["genes"], strict=True
                )
            )
        else:
            buf = io.StringIO()
            table.to_csv(buf, sep="\t", index=False)
            text = buf.getvalue()
        write_bytes_atomic(target / name, gzip.compress(text.encode("utf-8"), mtime=0))
    return folder
