"""hsmm_timecourse from the Bioconductor data package ``HSMMSingleCell`` 1.18.0.

The source is Debian's binary package ``r-bioc-hsmmsinglecell`` 1.18.0-1 (the
Bioconductor release 1.18.0, RELEASE_3_16, as packaged for Debian bookworm),
whose sha256 Debian publishes in its package index. It installs the package's
three R data files, ``HSMM_expr_matrix.rda`` (47,192 genes x 271 cells, FPKM,
dense float64), ``HSMM_sample_sheet.rda`` (271 x 7) and
``HSMM_gene_annotation.rda`` (47,192 x 4), which the converter reads from the
``.deb`` without installing it. The same three files in a source tarball of the
package, or on their own, are read too (pass them in a replacement source).

Changes, all from the dataset's provenance notes: the matrix is transposed to
cells x genes and cast to float32 (values that underflow to 0 are dropped), genes
with FPKM > 0 in fewer than 3 cells are removed (counted on the float32 values),
the var index is the gene symbol made unique after the filter, sample-sheet
factors become categoricals of the values present, ``Pseudotime`` is rounded to
15 significant digits (the copy went through a CSV file written by R), and
``time_hours``, ``time_point`` and ``n_cells_fpkm_gt0`` are added.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data.sources import PublicSource, SourceFile, register_source
from aivc.data.sources._rdata import as_matrix, as_strings, read_rda, require_keys

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["as_written_by_r_csv", "convert", "read_deb_members"]

DATASET = "hsmm_timecourse"
PACKAGE = "r-bioc-hsmmsinglecell"
VERSION = "1.18.0-1"
FILENAME = f"{PACKAGE}_{VERSION}_all.deb"
URL = f"https://deb.debian.org/debian/pool/main/r/{PACKAGE}/{FILENAME}"
#: Published in Debian bookworm's package index (``apt-cache show r-bioc-hsmmsinglecell``).
SHA256 = "ae4c4323c5a18f9bf37a2f493c704610622323dd195cb11f5ef121bda36ad1be"
MD5 = "f9a1abd5d5261f5d6340a2357247a38e"
SIZE = 16_773_596

EXPR, SAMPLES, GENES = "HSMM_expr_matrix", "HSMM_sample_sheet", "HSMM_gene_annotation"
OBJECTS = (EXPR, SAMPLES, GENES)
SAMPLE_COLUMNS = ("Library", "Well", "Hours", "Media", "Mapped.Fragments", "Pseudotime", "State")
GENE_COLUMNS = ("gene_short_name", "biotype", "num_cells_expressed", "use_for_ordering")
#: A gene is kept when at least this many cells have FPKM > 0.
MIN_CELLS = 3
PROVENANCE = {
    "X_units": (
        "FPKM (Cufflinks) as provided in HSMM_expr_matrix, stored as float32; not counts, "
        "not log-transformed"
    ),
    "license": "Artistic-2.0",
    "publication": "Trapnell et al. 2014, Nat Biotechnol 32:381-386, doi:10.1038/nbt.2859",
    "see": "PROVENANCE.md",
    "source": "Bioconductor HSMMSingleCell 1.18.0 (Debian package r-bioc-hsmmsinglecell 1.18.0-1)",
}


def read_deb_members(path: str | Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """Files of a Debian binary package (``.deb``) whose paths end with one of ``suffixes``.

    A ``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the installed
    files; gzip, bzip2 and xz compression are read (not zstd).

    Parameters
    ----------
    path
        The ``.deb``.
    suffixes
        Path endings to look for (e.g. ``"/data/HSMM_expr_matrix.rda"``).

    Returns
    -------
    dict
        Suffix -> content of the first file that ends with it (suffixes not found are absent).
    """
    path = Path(path)
    with path.open("rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            msg = f"{path.name} is not a Debian package (no ar archive header)."
            raise ValueError(msg)
        data_tar: bytes | None = None
        names = []
        while header := fh.read(60):
            if len(header) < 60 or header[58:60] != b"`\n":
                msg = f"{path.name} has a damaged ar member header."
                raise ValueError(msg)
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            names.append(name)
            if name.startswith("data.tar"):
                data_tar = fh.read(size)
                break
            fh.seek(size + size % 2, io.SEEK_CUR)
    if data_tar is None:
        msg = f"{path.name} has no data.tar member (members: {names})."
        raise ValueError(msg)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*")
    except tarfile.ReadError as err:
        msg = f"{path.name}: its {names[-1]} could not be read (gzip, bzip2 or xz expected): {err}"
        raise ValueError(msg) from err
    return _tar_members(archive, suffixes)


def _tar_members(archive: tarfile.TarFile, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with archive:
        for member in archive:
            if not member.isfile():
                continue
            for suffix in suffixes:
                if suffix not in found and ("/" + member.name.lstrip("./")).endswith(suffix):
                    handle = archive.extractfile(member)
                    assert handle is not None  # a regular file
                    found[suffix] = handle.read()
    return found


def _rda_files(paths: Mapping[str, Path]) -> dict[str, bytes | Path]:
    """The three ``.rda`` files, from the ``.deb``, a source tarball or the files themselves."""
    wanted = {name: f"/data/{name}.rda" for name in OBJECTS}
    found: dict[str, bytes | Path] = {}
    for filename, path in paths.items():
        if filename.endswith(".deb"):
            members = read_deb_members(path, tuple(wanted.values()))
        elif filename.endswith((".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")):
            members = _tar_members(tarfile.open(path, mode="r:*"), tuple(wanted.values()))
        else:
            members = {}
            for suffix in wanted.values():
                if ("/" + filename).endswith(suffix.removeprefix("/data")):
                    members[suffix] = Path(path)
        for name, suffix in wanted.items():
            if suffix in members:
                found.setdefault(name, members[suffix])
    missing = [f"{name}.rda" for name in OBJECTS if name not in found]
    if missing:
        msg = (
            f"Converting {DATASET!r} needs {missing} (HSMMSingleCell's data folder); the source "
            f"files {sorted(paths)} do not hold them."
        )
        raise ValueError(msg)
    return found


def _read_object(source: bytes | Path, name: str) -> object:
    objects = read_rda(source, what=f"{name}.rda")
    return require_keys(objects, [name], what=f"{name}.rda")[name]


def as_written_by_r_csv(values: np.ndarray) -> np.ndarray:
    """Doubles as R's ``write.csv`` writes them: rounded to 15 significant digits.

    The data directory's copy took the sample sheet through a CSV file written by R,
    so its ``Pseudotime`` carries 15 significant digits, not the full double.
    """
    return np.array([float(f"{v:.15g}") for v in np.asarray(values, dtype=np.float64)])


def _categorical(values: object) -> pd.Categorical:
    """A factor as a categorical of the values present (R's unused levels dropped), sorted."""
    return pd.Categorical(as_strings(values))


def convert(paths: Mapping[str, Path]) -> AnnData:
    """Build hsmm_timecourse from HSMMSingleCell's three R data files.

    Parameters
    ----------
    paths
        ``{"r-bioc-hsmmsinglecell_1.18.0-1_all.deb": path}``; a source tarball of the
        package or the three ``.rda`` files themselves are read too.

    Returns
    -------
    AnnData
        271 cells x 21,512 genes of FPKM (float32 CSR), sample sheet in ``obs``,
        gene annotation in ``var``.
    """
    import anndata as ad
    from anndata.utils import make_index_unique

    files = _rda_files(paths)
    expr = as_matrix(_read_object(files[EXPR], EXPR), what=EXPR)
    samples = require_keys(_read_object(files[SAMPLES], SAMPLES), SAMPLE_COLUMNS, what=SAMPLES)
    genes = require_keys(_read_object(files[GENES], GENES), GENE_COLUMNS, what=GENES)
    if expr.row_names is None or expr.col_names is None:
        msg = f"{EXPR} has no row or column names; genes and cells are matched by them."
        raise ValueError(msg)
    gene_ids = as_strings(genes.index)
    cell_ids = as_strings(samples.index)
    if not np.array_equal(expr.row_names, gene_ids):
        msg = f"The rows of {EXPR} and of {GENES} are not the same genes in the same order."
        raise ValueError(msg)
    if not np.array_equal(expr.col_names, cell_ids):
        msg = f"The columns of {EXPR} and the rows of {SAMPLES} are not the same cells in the same order."
        raise ValueError(msg)

    x = sp.csr_matrix(expr.values.T, dtype=np.float32)
    x.eliminate_zeros()  # values below float32's range are now 0
    n_cells = np.asarray((x > 0).sum(axis=0)).ravel().astype(np.int64)
    keep = n_cells >= MIN_CELLS
    x = x[:, keep]
    x.sort_indices()

    obs = pd.DataFrame(index=pd.Index(cell_ids, dtype=object))
    for column in SAMPLE_COLUMNS:
        values = samples[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            obs[column] = _categorical(values)
        elif column == "Mapped.Fragments":
            obs[column] = values.to_numpy(dtype=np.int64)
        else:
            obs[column] = as_written_by_r_csv(values.to_numpy(dtype=np.float64))
    hours = as_strings(samples["Hours"])
    obs["time_hours"] = hours.astype(np.int64)
    obs["time_point"] = np.array([f"{h}h" for h in hours], dtype=object)

    symbols = as_strings(genes["gene_short_name"])[keep]
    var = pd.DataFrame(
        {
            "gene_id": gene_ids[keep],
            "gene_short_name": symbols,
            "biotype": _categorical(as_strings(genes["biotype"])[keep]),
            "num_cells_expressed": genes["num_cells_expressed"].to_numpy(dtype=np.int64)[keep],
            "use_for_ordering": genes["use_for_ordering"].to_numpy(dtype=bool)[keep],
            "n_cells_fpkm_gt0": n_cells[keep],
        },
        index=make_index_unique(pd.Index(symbols, dtype=object)),
    )
    return ad.AnnData(X=x, obs=obs, var=var, uns={"provenance": dict(PROVENANCE)})


SOURCE = register_source(
    PublicSource(
        dataset=DATASET,
        origin=(
            f"Debian bookworm package {PACKAGE} {VERSION}: the Bioconductor experiment-data package "
            "HSMMSingleCell 1.18.0 (Artistic-2.0), data/HSMM_expr_matrix.rda, HSMM_sample_sheet.rda "
            "and HSMM_gene_annotation.rda"
        ),
        files=(SourceFile(url=URL, filename=FILENAME, md5=MD5, sha256=SHA256, size=SIZE),),
        convert=convert,
        notes=(
            "FPKM values are transposed to cells x genes and cast to float32; entries that underflow "
            "to 0 (float64 subnormals) are dropped. Genes with FPKM > 0 in fewer than 3 cells, counted "
            "on the float32 values, are removed (21,512 of 47,192 kept); var names are the gene "
            "symbols made unique after that filter. Sample-sheet factors keep only the levels in use. "
            "Pseudotime is rounded to 15 significant digits: the data directory's copy took the "
            "sample sheet through a CSV written by R (write.csv keeps 15), which its provenance "
            "notes mention but do not list as a change. time_hours, time_point and "
            "n_cells_fpkm_gt0 are added. Checked on the real package against the data directory's "
            "copy: X, obs and var come out identical, bit for bit. The .deb and its checksums are "
            "those of Debian's package index; Debian's snapshot archive keeps the same file once "
            "bookworm leaves the mirrors. The Bioconductor git commit (a838786, RELEASE_3_16) is "
            "known only by its short id here, so the package's GitHub mirror is not the pinned URL."
        ),
    )
)
