"""Real genome-wide pooled CRISPR screens as experiment-design benchmarks.

The screens are the gene-level summaries that GeneDisco (Mehrjou et al., ICLR
2022) and BioDiscoveryAgent (Roohani et al. 2024) use: a screen plays the
laboratory, and a gene's score is revealed only once the gene is "measured".
Files live under ``AIVC_DATA_DIR/crispr_screens_genedisco`` (see its
PROVENANCE.md).

Scores (one float per gene, larger ``|score|`` = stronger effect):

* ``schmidt2022-ifng`` / ``schmidt2022-il2`` -- Schmidt et al. 2022, primary
  human CD4+ T cells, CRISPRi, IFN-gamma-high vs -low (IL-2-high vs -low)
  sorts: the MAGeCK gene log-fold-change averaged over the two donors.
* ``zhuang2019`` -- Zhuang et al. 2019 NK-resistance knockout screen (MAGeCK
  MLE): the beta averaged over the two replicates.
* ``sanchez2021`` -- Sanchez et al. 2021 tau-level CRISPRi screen: the more
  extreme of ``-RSA_Down`` and ``-RSA_Up`` signed towards its direction.

The Zhu 2021 table of the same folder is not registered: its gene ids were
mangled into dates by a spreadsheet (duplicated ids). The last two are kept for choosing hyperparameters on screens other than
the evaluated ones.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from aivc._settings import settings
from aivc.data._validate import DataValidationError

__all__ = [
    "ESSENTIAL_GO_TERMS",
    "SCREENS",
    "ScreenSpec",
    "essential_machinery_genes",
    "load_screen",
    "read_mageck_summary",
    "screen_hits",
]

#: Folder of the screen tables under the data directory.
SCREEN_FOLDER = "crispr_screens_genedisco"

#: Core essential machinery removed by the ``no-essential`` variant: GO id -> term.
#: A gene is removed when it is annotated to the term or to any descendant
#: (``is_a`` / ``part_of`` closure of ``go_term_parents``).
ESSENTIAL_GO_TERMS: dict[str, str] = {
    "GO:0022626": "cytosolic ribosome",
    "GO:0005681": "spliceosomal complex",
    "GO:0000502": "proteasome complex",
    "GO:0005665": "RNA polymerase II, core complex",
    "GO:0016251": "RNA polymerase II general transcription initiation factor activity",
    "GO:0006260": "DNA replication",
}


@dataclass(frozen=True)
class ScreenSpec:
    """A registered screen: files, how its gene score is computed, and a description."""

    name: str
    files: tuple[str, ...]
    kind: str
    description: str


SCREENS: dict[str, ScreenSpec] = {
    "schmidt2022-ifng": ScreenSpec(
        "schmidt2022-ifng",
        ("schmidt_ifng_d1.gene_summary.txt.gz", "schmidt_ifng_d2.gene_summary.txt.gz"),
        "mageck-lfc",
        "Schmidt 2022 primary CD4+ T cells, CRISPRi, IFN-gamma high vs low; donor-averaged LFC",
    ),
    "schmidt2022-il2": ScreenSpec(
        "schmidt2022-il2",
        ("schmidt_il2_d1.gene_summary.txt.gz", "schmidt_il2_d2.gene_summary.txt.gz"),
        "mageck-lfc",
        "Schmidt 2022 primary CD4+ T cells, CRISPRi, IL-2 high vs low; donor-averaged LFC",
    ),
    "zhuang2019": ScreenSpec(
        "zhuang2019",
        ("zhuang_2019_low_selection.gene_summary.txt.gz",),
        "mageck-mle",
        "Zhuang 2019 cancer-cell resistance to NK cells (knockout, low selection); replicate-averaged beta",
    ),
    "sanchez2021": ScreenSpec(
        "sanchez2021",
        ("sanchezetal2021_21days.csv.gz",),
        "rsa",
        "Sanchez 2021 tau levels in iPSC neurons (CRISPRi, day 21); signed strongest RSA",
    ),
}


def _screen_path(filename: str, data_dir: str | Path | None) -> Path:
    base = Path(data_dir) if data_dir is not None else settings.data_dir
    path = base / SCREEN_FOLDER / filename
    if not path.exists():
        msg = (
            f"Screen table {filename!r} not found under {str(base / SCREEN_FOLDER)!r}. "
            "Set AIVC_DATA_DIR to the folder that holds 'crispr_screens_genedisco'."
        )
        raise FileNotFoundError(msg)
    return path


def _read_table(path: Path, sep: str) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as fh:
        return pd.read_csv(fh, sep=sep)


def _require(table: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        msg = (
            f"Screen table {path.name!r} lacks columns {missing}; expected {list(columns)}, "
            f"received {list(table.columns)}."
        )
        raise DataValidationError(msg)


def _numeric(
    table: pd.DataFrame, gene_col: str, value_cols: Sequence[str], path: Path
) -> pd.DataFrame:
    genes = table[gene_col]
    if genes.isna().any():
        msg = f"Screen table {path.name!r} has {int(genes.isna().sum())} rows without a gene id."
        raise DataValidationError(msg)
    out = pd.DataFrame(index=pd.Index(genes.astype(str), name="gene"))
    for c in value_cols:
        values = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            examples = list(out.index[bad][:5])
            msg = (
                f"Screen table {path.name!r}: column {c!r} must hold finite numbers; "
                f"received {int(bad.sum())} missing or non-numeric values (genes {examples})."
            )
            raise DataValidationError(msg)
        out[c] = values
    if out.index.duplicated().any():
        dups = list(out.index[out.index.duplicated()][:5])
        msg = f"Screen table {path.name!r} lists genes more than once, e.g. {dups}."
        raise DataValidationError(msg)
    return out


def read_mageck_summary(path: str | Path) -> pd.Series:
    """Gene log-fold-changes of one MAGeCK ``test`` gene summary.

    Parameters
    ----------
    path
        Tab-separated (optionally gzipped) gene summary with columns ``id`` and
        ``neg|lfc`` (``pos|lfc`` holds the same gene LFC in MAGeCK output).

    Returns
    -------
    Series of LFCs indexed by gene id.

    Raises
    ------
    DataValidationError
        When columns are missing, genes repeat, or an LFC is missing/non-numeric.
    """
    path = Path(path)
    table = _read_table(path, "\t")
    _require(table, ["id", "neg|lfc"], path)
    return _numeric(table, "id", ["neg|lfc"], path)["neg|lfc"].rename("lfc")


def _load_uncached(spec: ScreenSpec, data_dir: str | Path | None) -> pd.Series:
    paths = [_screen_path(f, data_dir) for f in spec.files]
    if spec.kind == "mageck-lfc":
        donors = [read_mageck_summary(p) for p in paths]
        common = donors[0].index
        for d in donors[1:]:
            common = common.intersection(d.index)
        score = sum(d.reindex(common) for d in donors) / len(donors)
    elif spec.kind == "mageck-mle":
        table = _read_table(paths[0], "\t")
        cols = ["Rep1|beta", "Rep2|beta"]
        _require(table, ["Gene", *cols], paths[0])
        values = _numeric(table, "Gene", cols, paths[0])
        score = values.mean(axis=1)
    elif spec.kind == "rsa":
        table = _read_table(paths[0], ",")
        _require(table, ["Symbol", "RSA_Down", "RSA_Up"], paths[0])
        values = _numeric(table, "Symbol", ["RSA_Down", "RSA_Up"], paths[0])
        down, up = -values["RSA_Down"], -values["RSA_Up"]
        score = pd.Series(np.where(down >= up, -down, up), index=values.index)
    else:  # pragma: no cover - guarded by the registry
        msg = f"unknown screen kind {spec.kind!r}."
        raise ValueError(msg)
    return score.astype(float).rename(spec.name).sort_index()


@lru_cache(maxsize=8)
def _load_cached(name: str, data_dir: str | None) -> pd.Series:
    return _load_uncached(SCREENS[name], data_dir)


def load_screen(name: str, *, data_dir: str | Path | None = None) -> pd.Series:
    """Per-gene score of a registered screen.

    Parameters
    ----------
    name
        One of :data:`SCREENS` (e.g. ``"schmidt2022-ifng"``).
    data_dir
        Data folder; defaults to ``aivc.settings.data_dir``.

    Returns
    -------
    Series of scores indexed by gene symbol (sorted), named after the screen.
    """
    if name not in SCREENS:
        msg = f"Unknown screen {name!r}; expected one of {sorted(SCREENS)}."
        raise ValueError(msg)
    return _load_cached(name, None if data_dir is None else str(data_dir)).copy()


def screen_hits(scores: np.ndarray | pd.Series, *, fraction: float = 0.01) -> np.ndarray:
    """Boolean mask of the hits: the ``ceil(fraction * n)`` genes with the largest ``|score|``.

    Ties at the threshold are broken by position (stable sort), so the number
    of hits is exactly ``ceil(fraction * n)``.
    """
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or not np.isfinite(values).all():
        msg = f"scores must be a finite 1-d array; received shape {values.shape}."
        raise ValueError(msg)
    if not 0.0 < fraction <= 1.0:
        msg = f"fraction must be in (0, 1]; received {fraction}."
        raise ValueError(msg)
    n_hits = int(np.ceil(fraction * values.size))
    order = np.argsort(-np.abs(values), kind="stable")
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:n_hits]] = True
    return mask


def _go_descendants(parents: pd.DataFrame, roots: Sequence[str]) -> dict[str, set[str]]:
    """Each root and every term below it through ``is_a`` / ``part_of`` edges."""
    keep = parents["relationship_type"].isin(["isa", "is_a", "part of", "part_of"])
    children: dict[str, list[str]] = {}
    for child, parent in zip(parents.loc[keep, "child"], parents.loc[keep, "parent"], strict=True):
        children.setdefault(parent, []).append(child)
    out = {}
    for root in roots:
        seen, stack = {root}, [root]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        out[root] = seen
    return out


def essential_machinery_genes(
    *,
    terms: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, frozenset[str]]:
    """Genes annotated to core essential machinery, per GO term.

    Parameters
    ----------
    terms
        GO ids; defaults to :data:`ESSENTIAL_GO_TERMS`.
    data_dir
        Data folder holding ``genes/human_go_annotations.tsv.gz`` and
        ``genes/go_term_parents.tsv.gz``.

    Returns
    -------
    GO id -> symbols annotated to the term or any of its descendants
    (``is_a``/``part_of`` closure; all evidence codes).
    """
    from aivc.genes import knowledge_path

    terms = list(ESSENTIAL_GO_TERMS if terms is None else terms)
    parents = pd.read_csv(
        knowledge_path("go_term_parents.tsv.gz", data_dir),
        sep="\t",
        usecols=["child", "parent", "relationship_type"],
        dtype=str,
    )
    ann = pd.read_csv(
        knowledge_path("human_go_annotations.tsv.gz", data_dir),
        sep="\t",
        usecols=["symbol", "go_id"],
        dtype=str,
    ).dropna()
    closure = _go_descendants(parents, terms)
    return {t: frozenset(ann.loc[ann["go_id"].isin(closure[t]), "symbol"]) for t in terms}
