"""Gene orthologs between human and mouse, to put cells of both species in one gene space."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._settings import settings

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "ORTHOLOG_FILE",
    "SPECIES",
    "OrthologMap",
    "map_orthologs",
    "mouse_style_share",
    "ortholog_table",
    "orthologs_to_adata",
]

logger = logging.getLogger(__name__)

#: The ortholog table under the data directory (Ensembl BioMart export).
ORTHOLOG_FILE = "pancreas_baron_human_mouse/orthologs_human_mouse_ensembl.tsv.gz"

#: Species names and their column in the ortholog table.
SPECIES = {"human": "human_symbol", "mouse": "mouse_symbol"}

#: Ways of resolving a gene with several orthologs.
MANY_POLICIES = ("best", "drop")

#: A symbol written the mouse (MGI) way: a capital, then lower case (``Stat1``, ``Jak2``, ``Gm1234``).
_MOUSE_STYLE = re.compile(r"^[A-Z](?=[a-z0-9.-]*[a-z])[a-z0-9.-]*$")


def mouse_style_share(
    symbols: Sequence[str], *, human_symbols: Collection[str] | None = None
) -> float:
    """Share of ``symbols`` written the mouse way (``Stat1``, not ``STAT1``).

    Mouse (MGI) symbols are a capital followed by lower case; human (HGNC)
    symbols are upper case. A symbol in ``human_symbols`` (e.g.
    :func:`aivc.genes.gene_symbols`) never counts, so the few human symbols
    with lower case (``C10orf11``) do not make a human panel look like mouse.

    Returns
    -------
    A number in [0, 1]; 0 for no symbols.
    """
    names = [str(s) for s in symbols]
    if not names:
        return 0.0
    human = human_symbols if human_symbols is not None else ()
    hits = sum(1 for s in names if _MOUSE_STYLE.match(s) and s not in human)
    return hits / len(names)


def _ortholog_path(data_dir: str | Path | None) -> Path:
    base = Path(data_dir) if data_dir is not None else settings.data_dir
    path = base / ORTHOLOG_FILE
    if not path.exists():
        msg = (
            f"Ortholog table {ORTHOLOG_FILE!r} not found under {str(base)!r}. "
            "Set AIVC_DATA_DIR to the folder that holds it."
        )
        raise FileNotFoundError(msg)
    return path


@lru_cache(maxsize=2)
def _table_cached(path: str) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={"human_symbol": str, "mouse_symbol": str})
    table = table.dropna(subset=["human_symbol", "mouse_symbol"])
    for col in (
        "gene_order_conservation_score",
        "whole_genome_alignment_coverage",
        "orthology_confidence",
    ):
        table[col] = pd.to_numeric(table[col], errors="coerce").fillna(0.0)
    return table.drop_duplicates(["human_symbol", "mouse_symbol"]).reset_index(drop=True)


def ortholog_table(data_dir: str | Path | None = None) -> pd.DataFrame:
    """The human–mouse ortholog pairs (one row per pair, copy of a cached table).

    Columns: ``human_symbol``, ``mouse_symbol``, ``homology_type``
    (``ortholog_one2one``, ``ortholog_one2many``, ``ortholog_many2many``),
    ``gene_order_conservation_score``, ``whole_genome_alignment_coverage``,
    ``orthology_confidence`` (0/1).
    """
    return _table_cached(str(_ortholog_path(data_dir))).copy()


@dataclass
class OrthologMap:
    """Result of :func:`map_orthologs`.

    Attributes
    ----------
    mapping
        Source symbol -> target symbol for every mapped gene (injective: no two
        source genes share a target).
    table
        One row per requested symbol (in request order): ``source``,
        ``target`` (empty when unmapped), ``status`` and ``n_candidates``.
        ``status`` is one of ``"one2one"`` (an Ensembl one-to-one ortholog),
        ``"best_of_many"`` (an Ensembl one-to-many or many-to-many pair: several
        genes on either side; the best-scored candidate is kept),
        ``"unmapped_many"`` (such a gene with ``many="drop"``),
        ``"unmapped_duplicate"`` (its target was taken by a better source
        gene, or the symbol was requested twice), ``"not_in_table"``.
    from_species, to_species
        The two species.
    """

    mapping: dict[str, str]
    table: pd.DataFrame
    from_species: str
    to_species: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def unmapped(self) -> list[str]:
        """Requested symbols that did not map, in request order."""
        return self.table.loc[self.table["target"] == "", "source"].tolist()

    def __len__(self) -> int:
        return len(self.mapping)


def map_orthologs(
    symbols: Sequence[str],
    *,
    from_species: str = "mouse",
    to_species: str = "human",
    many: str = "best",
    data_dir: str | Path | None = None,
) -> OrthologMap:
    """Map gene symbols of one species to their orthologs in another.

    One-to-one orthologs (Ensembl ``ortholog_one2one``) map directly. For a
    gene with several candidate orthologs (``one2many`` / ``many2many``):

    - ``many="best"`` keeps the candidate with the highest orthology
      confidence, then gene-order conservation, then whole-genome alignment
      coverage (ties broken by symbol, so the result is deterministic);
    - ``many="drop"`` leaves the gene unmapped (status ``"unmapped_many"``).

    The mapping is made injective: when several requested genes end on the
    same target, one-to-one pairs win, then the better-scored pair; the
    others are reported as ``"unmapped_duplicate"``. Nothing is dropped
    silently: every requested symbol has a row in ``table`` and a log
    message gives the counts per status.

    Parameters
    ----------
    symbols
        Gene symbols of ``from_species`` (exact, case-sensitive: mouse
        symbols are MGI-style such as ``Gcg``, human ones HGNC-style such as ``GCG``).
    from_species, to_species
        ``"mouse"`` or ``"human"`` (different from each other).
    many
        ``"best"`` or ``"drop"``.
    data_dir
        Data directory holding the ortholog table.

    Returns
    -------
    :class:`OrthologMap`.
    """
    for name, value in (("from_species", from_species), ("to_species", to_species)):
        if value not in SPECIES:
            msg = f"The {name!r} parameter must be one of {sorted(SPECIES)}. Got {value!r} instead."
            raise ValueError(msg)
    if from_species == to_species:
        msg = f"from_species and to_species must differ. Got {from_species!r} twice."
        raise ValueError(msg)
    if many not in MANY_POLICIES:
        msg = f"The 'many' parameter must be one of {list(MANY_POLICIES)}. Got {many!r} instead."
        raise ValueError(msg)
    if isinstance(symbols, str):
        msg = "symbols must be a sequence of gene symbols, not one string."
        raise TypeError(msg)
    src_col, dst_col = SPECIES[from_species], SPECIES[to_species]
    requested = [str(s) for s in symbols]
    table = _table_cached(str(_ortholog_path(data_dir)))
    wanted = set(requested)
    pairs = table[table[src_col].isin(wanted)].copy()
    pairs["one2one"] = pairs["homology_type"] == "ortholog_one2one"
    pairs = pairs.sort_values(
        [
            src_col,
            "one2one",
            "orthology_confidence",
            "gene_order_conservation_score",
            "whole_genome_alignment_coverage",
            dst_col,
        ],
        ascending=[True, False, False, False, False, True],
    )
    n_candidates = pairs.groupby(src_col).size()
    best = pairs.drop_duplicates(src_col, keep="first").set_index(src_col)

    status: dict[str, str] = {}
    chosen: dict[str, str] = {}
    for s in dict.fromkeys(requested):
        if s not in best.index:
            status[s] = "not_in_table"
        elif n_candidates[s] == 1 and bool(best.at[s, "one2one"]):
            status[s], chosen[s] = "one2one", best.at[s, dst_col]
        elif many == "drop":
            status[s] = "unmapped_many"
        else:
            status[s], chosen[s] = "best_of_many", best.at[s, dst_col]
    # injectivity: rank claims on each target, one-to-one first, then by score
    if chosen:
        claims = best.loc[list(chosen)].reset_index()
        claims = claims.sort_values(
            [
                dst_col,
                "one2one",
                "orthology_confidence",
                "gene_order_conservation_score",
                "whole_genome_alignment_coverage",
                src_col,
            ],
            ascending=[True, False, False, False, False, True],
        )
        losers = claims[claims.duplicated(dst_col, keep="first")][src_col]
        for s in losers:
            status[s] = "unmapped_duplicate"
            del chosen[s]
    rows, seen = [], set()
    for s in requested:
        st = status[s]
        if s in seen:
            st = "unmapped_duplicate"
        target = chosen.get(s, "") if s not in seen else ""
        seen.add(s)
        rows.append((s, target, st, int(n_candidates.get(s, 0))))
    out = pd.DataFrame(rows, columns=["source", "target", "status", "n_candidates"])
    counts = {k: int(v) for k, v in out["status"].value_counts().items()}
    logger.info(
        "map_orthologs %s -> %s: %d of %d symbols mapped (%s)",
        from_species,
        to_species,
        len(chosen),
        len(requested),
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    )
    return OrthologMap(
        mapping=dict(chosen),
        table=out,
        from_species=from_species,
        to_species=to_species,
        counts=counts,
    )


def orthologs_to_adata(
    adata: AnnData,
    *,
    from_species: str = "mouse",
    to_species: str = "human",
    many: str = "best",
    data_dir: str | Path | None = None,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    separator: str = "+",
) -> AnnData:
    """A copy of ``adata`` whose genes are renamed to their orthologs.

    Genes that do not map (see :func:`map_orthologs`) are left out of the
    copy; the full per-gene report is stored in
    ``uns["aivc_orthologs"]`` (``from_species``, ``to_species``, ``many``,
    ``counts`` per status, and the ``unmapped`` symbols), and the original
    symbol is kept in ``var["source_symbol"]``. Layers, ``obs`` and ``obsm``
    are kept; ``varm``/``varp`` are not.

    With ``perturbation_key`` the perturbation labels in that ``obs`` column
    are renamed too (each target of ``"A+B"`` on its own, the
    ``control_label`` kept), the original labels kept in
    ``obs[f"{perturbation_key}_{from_species}"]`` and the renamed targets
    recorded in ``uns["aivc_orthologs"]["targets"]``. Genes and targets are
    mapped in one call, so a target and its measured gene get the same name.
    A target without an ortholog raises :class:`ValueError` naming it: its
    cells cannot be labelled in ``to_species``.
    """
    import anndata as ad

    genes = [str(g) for g in adata.var_names]
    labels: pd.Series | None = None
    targets: list[str] = []
    if perturbation_key is not None:
        if control_label is None:
            msg = "Renaming perturbation labels needs the control label (control_label=...)."
            raise ValueError(msg)
        if perturbation_key not in adata.obs:
            msg = (
                f"No obs column {perturbation_key!r} with the perturbation labels; the columns "
                f"are {list(map(str, adata.obs.columns))}."
            )
            raise ValueError(msg)
        labels = adata.obs[perturbation_key].astype(str)
        for label in pd.unique(labels):
            if label != control_label:
                targets += [t.strip() for t in str(label).split(separator)]
        targets = list(dict.fromkeys(targets))
    wanted = set(genes)
    result = map_orthologs(
        genes + [t for t in targets if t not in wanted],
        from_species=from_species,
        to_species=to_species,
        many=many,
        data_dir=data_dir,
    )
    lost = [t for t in targets if t not in result.mapping]
    if lost:
        msg = (
            f"{len(lost)} perturbation targets have no {to_species} ortholog (e.g. {lost[:5]}), "
            f"so their cells cannot be labelled in {to_species} symbols; remove those cells "
            "or rename their targets first."
        )
        raise ValueError(msg)
    keep = np.asarray([str(g) in result.mapping for g in adata.var_names])
    keep &= ~pd.Index(adata.var_names).duplicated()
    if not keep.any():
        msg = (
            f"None of the {adata.n_vars} genes has a {to_species} ortholog; are the symbols "
            f"{from_species} symbols (e.g. {list(adata.var_names[:3])})?"
        )
        raise ValueError(msg)
    idx = np.flatnonzero(keep)
    var = adata.var.iloc[idx].copy()
    var["source_symbol"] = np.asarray(adata.var_names[idx], dtype=str)
    var.index = pd.Index([result.mapping[str(g)] for g in adata.var_names[idx]])
    x = adata.X[:, idx]
    obs = adata.obs.copy()
    if labels is not None and perturbation_key is not None:

        def rename(label: str) -> str:
            if label == control_label:
                return label
            return separator.join(result.mapping[t.strip()] for t in label.split(separator))

        obs[f"{perturbation_key}_{from_species}"] = labels.to_numpy()
        renamed = labels.map(rename)
        if isinstance(adata.obs[perturbation_key].dtype, pd.CategoricalDtype):
            renamed = renamed.astype("category")
        obs[perturbation_key] = renamed.to_numpy()
    out = ad.AnnData(
        X=sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x),
        obs=obs,
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        layers={k: v[:, idx] for k, v in adata.layers.items()},
        uns=dict(adata.uns),
    )
    report: dict[str, object] = {
        "from_species": from_species,
        "to_species": to_species,
        "many": many,
        "counts": result.counts,
        "unmapped": [g for g in result.unmapped if g in wanted],
    }
    if perturbation_key is not None:
        report["targets"] = {t: result.mapping[t] for t in targets}
    out.uns["aivc_orthologs"] = report
    return out
