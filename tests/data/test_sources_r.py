"""Sources read from R data files: papalexi2021 (sceptredata), hsmm_timecourse (HSMMSingleCell), mimitou2019_cite_small (CiteFuse).

Each test writes a small ``.rda`` with the structure of the real source (object
names, R classes, slots and columns; a few cells and genes), serves it from
127.0.0.1, rebuilds the dataset with :func:`aivc.data.sources.rebuild` and
compares the result with an AnnData worked out by hand. The ``.rda`` files are
written by :func:`write_rda` below, a small writer of R's serialization format
(XDR, gzip), since ``rdata`` cannot write S4 objects such as a ``dgCMatrix``.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import aivc.data
from aivc.data.sources import (
    PublicSource,
    git_blob_id,
    list_sources,
    rebuild,
    source_of,
)

pytest.importorskip("rdata", reason="the R sources need aivc's 'sources' extra (rdata)")

# ----------------------------------------------------------------------------- an R data writer
# R's serialization (R Internals, "Serialization formats"): every item starts with a flags
# integer (SEXP type in the low byte, then the object, attributes and tag bits and the
# "levels" field), big-endian (XDR).
NILVALUE, REF, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC, S4 = (
    254,
    255,
    1,
    2,
    9,
    10,
    13,
    14,
    16,
    19,
    25,
)
NA_INT = -(2**31)
UTF8, ASCII, S4_BIT = 1 << 3, 1 << 6, 1 << 4


@dataclass
class RItem:
    """One R object to serialize: its SEXP type, value, attributes (in order) and flags."""

    sexp: int
    value: object = None
    attributes: list[tuple[str, RItem]] = field(default_factory=list)
    levels: int = 0

    def with_attrs(self, **attrs: RItem) -> RItem:
        return dataclasses.replace(self, attributes=[*self.attributes, *attrs.items()])


def r_chars(values: Sequence[str | None]) -> RItem:
    return RItem(STR, list(values))


def r_int(values: Sequence[int] | np.ndarray) -> RItem:
    return RItem(INT, np.asarray(values, dtype=">i4"))


def r_real(values: Sequence[float] | np.ndarray) -> RItem:
    return RItem(REAL, np.asarray(values, dtype=">f8"))


def r_lgl(values: Sequence[bool]) -> RItem:
    return RItem(LGL, np.asarray(values, dtype=">i4"))


def r_list(items: Mapping[str, RItem] | Sequence[RItem | None]) -> RItem:
    """An R list (``VECSXP``), named when given a mapping."""
    if isinstance(items, Mapping):
        return RItem(VEC, list(items.values())).with_attrs(names=r_chars(list(items)))
    return RItem(VEC, list(items))


def r_factor(values: Sequence[str], levels: Sequence[str]) -> RItem:
    codes = [list(levels).index(v) + 1 for v in values]
    return r_int(codes).with_attrs(levels=r_chars(levels), **{"class": r_chars(["factor"])})


def r_data_frame(columns: Mapping[str, RItem], row_names: Sequence[str] | int) -> RItem:
    """A data.frame; ``row_names`` as strings, or a row count for R's automatic row names."""
    rows = r_int([NA_INT, -row_names]) if isinstance(row_names, int) else r_chars(row_names)
    return RItem(VEC, list(columns.values())).with_attrs(
        names=r_chars(list(columns)), **{"class": r_chars(["data.frame"]), "row.names": rows}
    )


def r_matrix(values: np.ndarray, rows: Sequence[str] | None, cols: Sequence[str] | None) -> RItem:
    """A dense double matrix with dimnames (column-major, as R stores it)."""
    dimnames = r_list(
        [None if rows is None else r_chars(rows), None if cols is None else r_chars(cols)]
    )
    return r_real(np.asarray(values, dtype=float).ravel(order="F")).with_attrs(
        dim=r_int(values.shape), dimnames=dimnames
    )


def r_sparse(
    values: np.ndarray, rows: Sequence[str] | None, cols: Sequence[str] | None, r_class: str
) -> RItem:
    """A ``dgCMatrix`` (compressed columns) or ``dgTMatrix`` (triplets) of the Matrix package."""
    values = np.asarray(values, dtype=float)
    if r_class == "dgCMatrix":
        csc = sp.csc_matrix(values)
        index_slots = {"i": r_int(csc.indices), "p": r_int(csc.indptr)}
        x = csc.data
    elif r_class == "dgTMatrix":
        coo = sp.coo_matrix(values)
        index_slots = {"i": r_int(coo.row), "j": r_int(coo.col)}
        x = coo.data
    else:
        raise ValueError(r_class)
    dimnames = r_list(
        [None if rows is None else r_chars(rows), None if cols is None else r_chars(cols)]
    )
    slots = {
        **index_slots,
        "Dim": r_int(values.shape),
        "Dimnames": dimnames,
        "x": r_real(x),
        "factors": r_list([]),
    }
    return r_s4(r_class, "Matrix", slots)


def r_s4(r_class: str, package: str, slots: Mapping[str, RItem]) -> RItem:
    class_attr = r_chars([r_class]).with_attrs(package=r_chars([package]))
    return RItem(S4, None, [*slots.items(), ("class", class_attr)], levels=S4_BIT)


def _int(out: io.BytesIO, value: int) -> None:
    out.write(struct.pack(">i", value))


def _flags(
    sexp: int, *, is_object: bool = False, attrs: bool = False, tag: bool = False, levels: int = 0
) -> int:
    return sexp | (is_object << 8) | (attrs << 9) | (tag << 10) | (levels << 12)


def _char(out: io.BytesIO, value: str | None) -> None:
    if value is None:
        _int(out, _flags(CHAR))
        _int(out, -1)
        return
    raw = value.encode()
    _int(out, _flags(CHAR, levels=ASCII if raw.isascii() else UTF8))
    _int(out, len(raw))
    out.write(raw)


def _pairlist(out: io.BytesIO, items: Sequence[tuple[str, RItem]], symbols: dict[str, int]) -> None:
    """A tagged pairlist (attributes, the objects of an .rda); a repeated tag is a reference."""
    for name, item in items:
        _int(out, _flags(LIST, tag=True))
        if name in symbols:
            _int(out, (symbols[name] << 8) | REF)
        else:
            symbols[name] = len(symbols) + 1
            _int(out, _flags(SYM))
            _char(out, name)
        _item(out, item, symbols)
    _int(out, _flags(NILVALUE))


def _item(out: io.BytesIO, item: RItem | None, symbols: dict[str, int]) -> None:
    if item is None:
        _int(out, _flags(NILVALUE))
        return
    is_object = any(name == "class" for name, _ in item.attributes)
    _int(
        out, _flags(item.sexp, is_object=is_object, attrs=bool(item.attributes), levels=item.levels)
    )
    if item.sexp in (LGL, INT, REAL):
        values = np.asarray(item.value)
        _int(out, len(values))
        out.write(values.tobytes())
    elif item.sexp == STR:
        _int(out, len(item.value))
        for value in item.value:
            _char(out, value)
    elif item.sexp == VEC:
        _int(out, len(item.value))
        for value in item.value:
            _item(out, value, symbols)
    elif item.sexp != S4:  # an S4 object is its attributes (the slots)
        raise ValueError(item.sexp)
    if item.attributes:
        _pairlist(out, item.attributes, symbols)


def write_rda(path: Path, objects: Mapping[str, RItem], *, version: int = 3) -> Path:
    """Write ``objects`` as R's ``save()`` does: ``RDX<version>``, XDR, gzip."""
    out = io.BytesIO()
    out.write(f"RDX{version}\nX\n".encode())
    _int(out, version)
    _int(out, 0x040201)  # written by R 4.2.1
    _int(out, 0x030500 if version == 3 else 0x020300)
    if version == 3:
        _int(out, len(b"UTF-8"))
        out.write(b"UTF-8")
    _pairlist(out, list(objects.items()), {})
    path.write_bytes(gzip.compress(out.getvalue(), mtime=0))
    return path


# ----------------------------------------------------------------------------- helpers
def _serve(serve_folder, name: str, folder: Path) -> PublicSource:
    """The registered source of ``name`` with its files served from ``folder`` on 127.0.0.1."""
    registered = source_of(name)
    assert registered is not None, f"{name} has no registered source"
    base = serve_folder(folder)
    files = tuple(
        dataclasses.replace(
            f,
            url=base + f.filename,
            git_blob=git_blob_id(folder / f.filename),
            md5=None,
            sha256=None,
            size=(folder / f.filename).stat().st_size,
        )
        for f in registered.files
    )
    return dataclasses.replace(registered, files=files)


def _rebuild(serve_folder, name: str, folder: Path, data_dir: Path) -> ad.AnnData:
    out = rebuild(name, data_dir=data_dir, source=_serve(serve_folder, name, folder))
    assert out == aivc.data.dataset_entry(name).path(data_dir)
    return ad.read_h5ad(out)


def _dense(x: object) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Frames equal, dtypes included (rebuild() writes string columns as they are)."""
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def _assert_adata(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert type(got.X) is type(expected.X) and got.X.dtype == expected.X.dtype
    np.testing.assert_array_equal(_dense(got.X), _dense(expected.X))
    _assert_frame(got.obs, expected.obs)
    _assert_frame(got.var, expected.var)
    assert sorted(got.layers) == sorted(expected.layers)
    assert sorted(got.obsm) == sorted(expected.obsm)
    for key, value in expected.obsm.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got.obsm[key], value, check_exact=True)
        else:
            assert type(got.obsm[key]) is type(value) and got.obsm[key].dtype == value.dtype
            np.testing.assert_array_equal(_dense(got.obsm[key]), _dense(value))
    assert sorted(got.uns) == sorted(expected.uns)
    for key, value in expected.uns.items():
        if isinstance(value, Mapping):
            assert sorted(got.uns[key]) == sorted(value)
            for inner, item in value.items():
                np.testing.assert_array_equal(got.uns[key][inner], item)
        else:
            np.testing.assert_array_equal(got.uns[key], value)


def _layout(adata: ad.AnnData) -> dict[str, object]:
    """What a dataset looks like, without its size: slots, names and dtypes."""

    def dtypes(frame: pd.DataFrame) -> list[tuple[str, str]]:
        return [
            (str(c), "category" if isinstance(t, pd.CategoricalDtype) else str(t))
            for c, t in frame.dtypes.items()
        ]

    def kind(value: object) -> object:
        if isinstance(value, pd.DataFrame):
            return ("DataFrame", sorted({str(t) for t in value.dtypes}), value.index.name)
        if sp.issparse(value):
            return (value.format, str(value.dtype))
        return (type(value).__name__, str(getattr(value, "dtype", "")))

    return {
        "X": kind(adata.X),
        "obs": dtypes(adata.obs),
        "var": dtypes(adata.var),
        "index names": (adata.obs.index.name, adata.var.index.name),
        "layers": {k: kind(v) for k, v in adata.layers.items()},
        "obsm": {k: kind(v) for k, v in adata.obsm.items()},
        "uns": {
            k: sorted(v) if isinstance(v, Mapping) else type(v).__name__
            for k, v in adata.uns.items()
        },
    }


def _real(data_dir: Path, name: str) -> ad.AnnData:
    path = aivc.data.dataset_entry(name).path(data_dir)
    if not path.exists():
        pytest.skip(f"{path.name} is not in the data folder")
    return ad.read_h5ad(path)


# ----------------------------------------------------------------------------- papalexi2021 (sceptredata)
GENES = ["STAT1", "PCBP3", "MT-ND1", "JAK2"]
RESPONSE = np.array(  # genes x cells
    [[3, 0, 1, 0, 2, 0], [0, 5, 0, 0, 1, 1], [7, 8, 9, 6, 5, 4], [0, 0, 0, 2, 0, 1]]
)
GRNAS = ["CUL3g1", "NTg1", "NTg10", "STAT1g1", "STAT1g2", "PDL1g1"]  # matrix row order
GRNA_COUNTS = np.array(  # gRNAs x cells
    [
        [0, 9, 0, 0, 0, 1],
        [2, 0, 0, 5, 0, 0],
        [0, 9, 30, 0, 0, 0],
        [40, 0, 0, 0, 0, 0],
        [0, 1, 0, 3, 12, 0],
        [0, 0, 1, 0, 0, 4],
    ]
)
TARGET_IDS = ["PDL1g1", "CUL3g1", "NTg1", "NTg10", "STAT1g1", "STAT1g2"]
TARGETS = ["CD274", "CUL3", "non-targeting", "non-targeting", "STAT1", "STAT1"]
BIO_REP = ["rep_1", "rep_1", "rep_2", "rep_2", "rep_3", "rep_1"]


def _lowmoi(folder: Path, *, matrix_class: str = "dgTMatrix", **replace: RItem | None) -> Path:
    parts = {
        "response_matrix": r_sparse(RESPONSE, GENES, None, matrix_class),
        "grna_matrix": r_sparse(GRNA_COUNTS, GRNAS, None, matrix_class),
        "grna_target_data_frame": r_data_frame(
            {"grna_id": r_chars(TARGET_IDS), "grna_target": r_chars(TARGETS)}, len(TARGET_IDS)
        ),
        "extra_covariates": r_data_frame({"bio_rep": r_chars(BIO_REP)}, len(BIO_REP)),
    }
    parts.update(replace)
    parts = {k: v for k, v in parts.items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    return write_rda(folder / "lowmoi_example_data.rda", {"lowmoi_example_data": r_list(parts)})


def _expected_papalexi(blob: str) -> ad.AnnData:
    n = 6
    constant = {
        "perturbation_type": "CRISPRko (ECCITE-seq)",
        "cell_type": "THP-1",
        "cell_line": "THP-1",
        "treatment": "IFN-gamma (all cells, per original study)",
    }
    top = np.array([40, 9, 30, 5, 12, 4])
    total = np.array([42, 19, 31, 8, 12, 5])
    obs = pd.DataFrame(
        {
            # cell 1 ties CUL3g1 and NTg10 at 9 UMIs: the first in the matrix's row order wins
            "perturbation": pd.Categorical(
                ["STAT1", "CUL3", "control", "control", "STAT1", "CD274"]
            ),
            "grna_assigned": pd.Categorical(
                ["STAT1g1", "CUL3g1", "NTg10", "NTg1", "STAT1g2", "PDL1g1"]
            ),
            "grna_top_umi": top.astype(np.int64),
            "grna_second_umi": np.array([2, 9, 1, 3, 0, 1], dtype=np.int64),
            "grna_total_umi": total.astype(np.int64),
            "grna_top_fraction": top / total,
            "is_control": np.array([False, False, True, True, False, False]),
            "nperts": np.array([1, 1, 0, 0, 1, 1], dtype=np.int64),
            **{k: pd.Categorical([v] * n) for k, v in constant.items()},
            "batch": pd.Categorical(BIO_REP),
        },
        index=pd.Index([f"cell_{i}" for i in range(n)], dtype=object),
    )
    var = pd.DataFrame(
        {"gene_symbol": np.array(GENES, dtype=object)}, index=pd.Index(GENES, dtype=object)
    )
    return ad.AnnData(
        X=sp.csr_matrix(RESPONSE.T.astype(np.int32)),
        obs=obs,
        var=var,
        obsm={"grna_counts": sp.csr_matrix(GRNA_COUNTS.T.astype(np.int32))},
        uns={
            "grna_names": np.array(GRNAS, dtype=object),
            "grna_targets": {
                "grna_id": np.array(TARGET_IDS, dtype=object),
                "grna_target": np.array(TARGETS, dtype=object),
            },
            "source": {
                "blob": blob,
                "commit": "ec722d5df90dfd34ace6cc9a5745ab6a5c2a6731",
                "path": "data/lowmoi_example_data.rda",
                "repo": "Katsevich-Lab/sceptredata",
            },
        },
    )


@pytest.mark.parametrize("matrix_class", ["dgTMatrix", "dgCMatrix"])
def test_papalexi2021_rebuilds_from_sceptredata(
    serve_folder, tmp_path: Path, matrix_class: str
) -> None:
    served = tmp_path / "served"
    rda = _lowmoi(served, matrix_class=matrix_class)
    got = _rebuild(serve_folder, "papalexi2021", served, tmp_path / "data")
    _assert_adata(got, _expected_papalexi(git_blob_id(rda)))


def test_papalexi2021_source_missing_a_part_is_a_clear_error(tmp_path: Path) -> None:
    from aivc.data.sources import sceptre

    rda = _lowmoi(tmp_path, extra_covariates=None)
    with pytest.raises(ValueError, match="extra_covariates"):
        sceptre.convert({rda.name: rda})


def test_papalexi2021_cell_without_grna_umi_is_an_error(tmp_path: Path) -> None:
    from aivc.data.sources import sceptre

    counts = GRNA_COUNTS.copy()
    counts[:, 2] = 0
    rda = _lowmoi(tmp_path, grna_matrix=r_sparse(counts, GRNAS, None, "dgTMatrix"))
    with pytest.raises(ValueError, match="no gRNA UMI"):
        sceptre.convert({rda.name: rda})


def test_papalexi2021_fractional_counts_are_an_error(tmp_path: Path) -> None:
    from aivc.data.sources import sceptre

    rda = _lowmoi(tmp_path, response_matrix=r_sparse(RESPONSE + 0.5, GENES, None, "dgCMatrix"))
    with pytest.raises(ValueError, match="not whole numbers"):
        sceptre.convert({rda.name: rda})


# ----------------------------------------------------------------------------- hsmm_timecourse (HSMMSingleCell)
HSMM_GENES = [  # (Ensembl id, symbol, biotype, num_cells_expressed, use_for_ordering)
    ("ENSG00000000003.10", "TSPAN6", "protein_coding", 231, False),
    ("ENSG00000000005.5", "TNMD", "protein_coding", 0, False),
    ("ENSG00000000419.8", "DPM1", "protein_coding", 2, False),
    ("ENSG00000005001.1", "PKD1P1", "pseudogene", 9, True),
    ("ENSG00000005002.1", "PKD1P1", "pseudogene", 7, False),
    ("ENSG00000000457.8", "SCYL3", "antisense", 3, False),
    ("ENSG00000000460.12", "DPM1", "lincRNA", 372, True),
]
HSMM_CELLS = ["T0_CT_A01", "T0_CT_A03", "T24_CT_B01", "T48_CT_C02", "T72_CT_H12"]
HSMM_FPKM = np.array(  # genes x cells
    [
        [21.9844, 3.5, 0.0, 1.25, 7.0],  # 4 cells: kept
        [0.0, 0.0, 0.0, 0.0, 0.0],  # never detected: dropped
        [77.5808, 0.0, 0.0, 2.0, 0.0],  # 2 cells: dropped
        [1.5, 2.5, 3.5, 0.0, 0.0],  # 3 cells: kept
        [1e-40, 0.0, 4.75, 5.0, 0.0],  # 3 cells, one a float32 subnormal: kept
        [1e-320, 0.0, 6.0, 0.0, 8.0],  # 1e-320 is 0 in float32, so 2 cells: dropped
        [0.5, 0.25, 0.125, 175.7, 11.1],  # 5 cells: kept
    ]
)
HSMM_LIBRARY_LEVELS = [
    "SCC10013_A01",
    "SCC10013_A02",
    "SCC10013_A03",
    "SCC10014_B01",
    "SCC10015_C02",
    "SCC10016_H12",
]
HSMM_WELL_LEVELS = ["A01", "A02", "A03", "B01", "C02", "H12"]


def _hsmm_rdas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [g[0] for g in HSMM_GENES]
    sample_sheet = r_data_frame(
        {
            "Library": r_factor(
                ["SCC10013_A01", "SCC10013_A03", "SCC10014_B01", "SCC10015_C02", "SCC10016_H12"],
                HSMM_LIBRARY_LEVELS,
            ),
            "Well": r_factor(["A01", "A03", "B01", "C02", "H12"], HSMM_WELL_LEVELS),
            "Hours": r_factor(["0", "0", "24", "48", "72"], ["0", "24", "48", "72"]),
            "Media": r_factor(["GM", "GM", "DM", "DM", "DM"], ["DM", "GM"]),
            "Mapped.Fragments": r_int([1958074, 1930722, 1452623, 2566325, 2383438]),
            "Pseudotime": r_real(
                [
                    23.916672939758301,
                    9.0222651392221451,
                    7.5466078125678912,
                    21.463948011397816,
                    11.299805708945264,
                ]
            ),
            "State": r_factor(["1", "1", "2", "2", "1"], ["1", "2", "3"]),
        },
        HSMM_CELLS,
    )
    gene_annotation = r_data_frame(
        {
            "gene_short_name": r_chars([g[1] for g in HSMM_GENES]),
            "biotype": r_factor(
                [g[2] for g in HSMM_GENES],
                [
                    "3prime_overlapping_ncrna",
                    "antisense",
                    "lincRNA",
                    "protein_coding",
                    "pseudogene",
                ],
            ),
            "num_cells_expressed": r_int([g[3] for g in HSMM_GENES]),
            "use_for_ordering": r_lgl([g[4] for g in HSMM_GENES]),
        },
        ids,
    )
    # HSMMSingleCell's files were written in R's format version 2
    return [
        write_rda(
            folder / "HSMM_expr_matrix.rda",
            {"HSMM_expr_matrix": r_matrix(HSMM_FPKM, ids, HSMM_CELLS)},
            version=2,
        ),
        write_rda(folder / "HSMM_sample_sheet.rda", {"HSMM_sample_sheet": sample_sheet}, version=2),
        write_rda(
            folder / "HSMM_gene_annotation.rda",
            {"HSMM_gene_annotation": gene_annotation},
            version=2,
        ),
    ]


def _tar_xz(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _deb(path: Path, files: Mapping[str, bytes]) -> Path:
    """A Debian binary package: an ar archive of debian-binary, control.tar.xz and data.tar.xz."""
    members = {
        "debian-binary": b"2.0\n",
        "control.tar.xz": _tar_xz({"./control": b"Package: r-bioc-hsmmsinglecell\n"}),
        "data.tar.xz": _tar_xz(files),
    }
    out = bytearray(b"!<arch>\n")
    for name, content in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        out += content + (b"\n" if len(content) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def _hsmm_deb(folder: Path, rdas: Sequence[Path]) -> Path:
    data = "./usr/lib/R/site-library/HSMMSingleCell/data/"
    files = {data + p.name: p.read_bytes() for p in rdas}
    files["./usr/share/doc/r-bioc-hsmmsinglecell/copyright"] = b"Artistic-2.0\n"
    return _deb(folder / "r-bioc-hsmmsinglecell_1.18.0-1_all.deb", files)


def _expected_hsmm() -> ad.AnnData:
    keep = [0, 3, 4, 6]
    x = np.array(
        [
            [21.9844, 1.5, 1e-40, 0.5],
            [3.5, 2.5, 0.0, 0.25],
            [0.0, 3.5, 4.75, 0.125],
            [1.25, 0.0, 5.0, 175.7],
            [7.0, 0.0, 0.0, 11.1],
        ],
        dtype=np.float32,
    )
    obs = pd.DataFrame(
        {
            "Library": pd.Categorical(
                ["SCC10013_A01", "SCC10013_A03", "SCC10014_B01", "SCC10015_C02", "SCC10016_H12"]
            ),
            "Well": pd.Categorical(["A01", "A03", "B01", "C02", "H12"]),
            "Hours": pd.Categorical(["0", "0", "24", "48", "72"]),
            "Media": pd.Categorical(["GM", "GM", "DM", "DM", "DM"]),
            "Mapped.Fragments": np.array(
                [1958074, 1930722, 1452623, 2566325, 2383438], dtype=np.int64
            ),
            # 15 significant digits, as R's write.csv wrote them for the data directory's copy
            "Pseudotime": np.array(
                [
                    23.9166729397583,
                    9.02226513922215,
                    7.54660781256789,
                    21.4639480113978,
                    11.2998057089453,
                ]
            ),
            "State": pd.Categorical(["1", "1", "2", "2", "1"]),  # level "3" is unused
            "time_hours": np.array([0, 0, 24, 48, 72], dtype=np.int64),
            "time_point": np.array(["0h", "0h", "24h", "48h", "72h"], dtype=object),
        },
        index=pd.Index(HSMM_CELLS, dtype=object),
    )
    var = pd.DataFrame(
        {
            "gene_id": np.array([HSMM_GENES[i][0] for i in keep], dtype=object),
            "gene_short_name": np.array(["TSPAN6", "PKD1P1", "PKD1P1", "DPM1"], dtype=object),
            "biotype": pd.Categorical(["protein_coding", "pseudogene", "pseudogene", "lincRNA"]),
            "num_cells_expressed": np.array([231, 9, 7, 372], dtype=np.int64),
            "use_for_ordering": np.array([False, True, False, True]),
            "n_cells_fpkm_gt0": np.array([4, 3, 3, 5], dtype=np.int64),
        },
        # made unique after the filter: the dropped DPM1 leaves the kept one its plain name
        index=pd.Index(["TSPAN6", "PKD1P1", "PKD1P1-1", "DPM1"], dtype=object),
    )
    from aivc.data.sources.hsmm import PROVENANCE

    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=var, uns={"provenance": dict(PROVENANCE)})


def test_hsmm_timecourse_rebuilds_from_the_debian_package(serve_folder, tmp_path: Path) -> None:
    rdas = _hsmm_rdas(tmp_path / "r")
    served = tmp_path / "served"
    served.mkdir()
    _hsmm_deb(served, rdas)
    got = _rebuild(serve_folder, "hsmm_timecourse", served, tmp_path / "data")
    _assert_adata(got, _expected_hsmm())
    assert got.X.nnz == 15  # the float64 subnormal that is 0 in float32 is not stored
    assert got.X.data.min() == np.float32(1e-40)


def test_hsmm_timecourse_converts_the_three_rda_files_too(tmp_path: Path) -> None:
    from aivc.data.sources import hsmm

    rdas = _hsmm_rdas(tmp_path)
    got = hsmm.convert({p.name: p for p in rdas})
    _assert_adata(got, _expected_hsmm())


def test_rebuilt_hsmm_timecourse_keeps_its_plain_string_columns(
    serve_folder, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    _hsmm_deb(served, _hsmm_rdas(tmp_path / "r"))
    got = _rebuild(serve_folder, "hsmm_timecourse", served, tmp_path / "data")
    assert got.obs["time_point"].dtype == object
    assert got.var["gene_short_name"].dtype == object


def test_hsmm_timecourse_package_without_the_data_is_a_clear_error(tmp_path: Path) -> None:
    from aivc.data.sources import hsmm

    rdas = _hsmm_rdas(tmp_path / "r")
    deb = _deb(
        tmp_path / hsmm.FILENAME,
        {"./usr/lib/R/site-library/HSMMSingleCell/data/" + rdas[0].name: rdas[0].read_bytes()},
    )
    with pytest.raises(ValueError, match=r"HSMM_sample_sheet\.rda.*HSMM_gene_annotation\.rda"):
        hsmm.convert({deb.name: deb})


# ----------------------------------------------------------------------------- mimitou2019_cite_small (CiteFuse)
CELLS = ["AAGCCGCGTTGTCTTT", "GATCGCGGTTATCGGT", "GGCTGGTAGAGGTTAT", "CTACACCCAATAGCAA"]
RNA_NAMES = ["hg19_AL627309.1", "hg19_CD8A", "hg19_MT-CYB"]
RNA = np.array([[0, 1, 0, 2], [5, 0, 0, 3], [10, 4, 6, 0]])  # genes x cells
ADT_NAMES = ["CD8", "CD4", "B220 (CD45R)", "IgG1"]  # not in sorted order
ADT = np.array([[3, 0, 8, 1], [0, 7, 1, 0], [2, 2, 0, 5], [0, 1, 0, 0]])
HTO_NAMES = ["HTO44_5P", "HTO28_5P", "HTO29_5P"]
HTO = np.array([[548, 0, 196, 2], [0, 205, 0, 2], [2, 3, 3, 9]])


def _citeseq_example(folder: Path, **replace: RItem) -> Path:
    parts = {
        "RNA": r_sparse(RNA, RNA_NAMES, CELLS, "dgCMatrix"),
        "ADT": r_sparse(ADT, ADT_NAMES, CELLS, "dgCMatrix"),
        "HTO": r_sparse(HTO, HTO_NAMES, CELLS, "dgCMatrix"),
    }
    parts.update(replace)
    folder.mkdir(parents=True, exist_ok=True)
    return write_rda(folder / "CITEseq_example.rda", {"CITEseq_example": r_list(parts)})


def _expected_mimitou() -> ad.AnnData:
    cells = pd.Index(CELLS, dtype=object, name="cell_barcode")
    protein = pd.DataFrame(
        {
            "B220 (CD45R)": [2, 2, 0, 5],
            "CD4": [0, 7, 1, 0],
            "CD8": [3, 0, 8, 1],
            "IgG1": [0, 1, 0, 0],
        },
        index=cells,
        dtype=np.float32,
    )
    hashtags = pd.DataFrame(
        {"HTO28_5P": [0, 205, 0, 2], "HTO29_5P": [2, 3, 3, 9], "HTO44_5P": [548, 0, 196, 2]},
        index=cells,
        dtype=np.float32,
    )
    obs = pd.DataFrame(
        {
            "n_counts_rna": np.array([15, 5, 6, 5], dtype=np.float32),
            "n_counts_adt": np.array([5, 10, 9, 6], dtype=np.int64),
            "hto_max": pd.Categorical(["HTO44_5P", "HTO28_5P", "HTO44_5P", "HTO29_5P"]),
            "batch": pd.Categorical(["eccite_pbmc_ctrl"] * 4),
        },
        index=cells,
    )
    var = pd.DataFrame(
        index=pd.Index(["AL627309.1", "CD8A", "MT-CYB"], dtype=object, name="gene_symbol")
    )
    from aivc.data.sources.citefuse import UNS

    return ad.AnnData(
        X=sp.csr_matrix(RNA.T.astype(np.float32)),
        obs=obs,
        var=var,
        obsm={"protein_counts": protein, "hto_counts": hashtags},
        uns=dict(UNS),
    )


def test_mimitou2019_cite_small_rebuilds_from_citefuse(serve_folder, tmp_path: Path) -> None:
    served = tmp_path / "served"
    _citeseq_example(served)
    got = _rebuild(serve_folder, "mimitou2019_cite_small", served, tmp_path / "data")
    _assert_adata(got, _expected_mimitou())


def test_mimitou2019_cite_small_reads_dense_matrices(tmp_path: Path) -> None:
    from aivc.data.sources import citefuse

    rda = _citeseq_example(
        tmp_path,
        RNA=r_matrix(RNA, RNA_NAMES, CELLS),
        ADT=r_matrix(ADT, ADT_NAMES, CELLS),
        HTO=r_matrix(HTO, HTO_NAMES, CELLS),
    )
    _assert_adata(citefuse.convert({rda.name: rda}), _expected_mimitou())


def test_mimitou2019_cite_small_needs_the_same_cells_in_every_matrix(tmp_path: Path) -> None:
    from aivc.data.sources import citefuse

    rda = _citeseq_example(
        tmp_path, HTO=r_sparse(HTO, HTO_NAMES, [*CELLS[:3], "OTHER"], "dgCMatrix")
    )
    with pytest.raises(ValueError, match=r"HTO does not hold the same cells"):
        citefuse.convert({rda.name: rda})


# ----------------------------------------------------------------------------- all three
SMALL_SOURCES: dict[str, Callable[[Path], Mapping[str, Path]]] = {
    "papalexi2021": lambda folder: {"lowmoi_example_data.rda": _lowmoi(folder)},
    "hsmm_timecourse": lambda folder: {
        p.name: p for p in [_hsmm_deb(folder, _hsmm_rdas(folder / "r"))]
    },
    "mimitou2019_cite_small": lambda folder: {"CITEseq_example.rda": _citeseq_example(folder)},
}


@pytest.mark.parametrize("name", sorted(SMALL_SOURCES))
def test_converted_small_source_has_the_layout_of_the_local_file(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    real = _real(data_dir, name)
    converted = source_of(name).convert(SMALL_SOURCES[name](tmp_path))
    assert _layout(converted) == _layout(real)


@pytest.mark.parametrize("name", sorted(SMALL_SOURCES))
def test_r_sources_are_registered_and_pinned(name: str) -> None:
    assert name in list_sources()
    source = source_of(name)
    assert source is not None and source.origin and source.notes
    for file in source.files:
        assert file.url.startswith("https://")
        assert file.git_blob or file.sha256 or file.md5
        if file.git_blob is not None:
            assert len(file.git_blob) == 40 and int(file.git_blob, 16) >= 0
            # a raw GitHub URL at a full commit id
            commit = file.url.split("/")[5]
            assert file.url.startswith("https://raw.githubusercontent.com/") and len(commit) == 40


def test_datasets_list_marks_the_r_sources_rebuild() -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    result = CliRunner().invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, result.output
    download = {
        row[0]: row[4] for row in (line.split("\t") for line in result.output.splitlines()[1:])
    }
    assert {name: download[name] for name in SMALL_SOURCES} == dict.fromkeys(
        SMALL_SOURCES, "rebuild"
    )


def test_reading_r_data_without_rdata_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    from aivc.data.sources import sceptre

    rda = _lowmoi(tmp_path)
    monkeypatch.setitem(sys.modules, "rdata", None)
    with pytest.raises(ImportError, match=r"aivc\[sources\]"):
        sceptre.convert({rda.name: rda})


def test_a_matrix_without_its_slots_is_a_clear_error(tmp_path: Path) -> None:
    from aivc.data.sources._rdata import read_rda

    broken = r_s4(
        "dgCMatrix", "Matrix", {"i": r_int([0]), "Dim": r_int([1, 1]), "x": r_real([1.0])}
    )
    path = write_rda(tmp_path / "broken.rda", {"m": broken})
    with pytest.raises(ValueError, match=r"lacks the slot\(s\) \['p'\]"):
        read_rda(path, what="broken.rda")


@pytest.mark.parametrize(
    ("r_file", "objects", "version"),
    [
        (
            "test_s4__xdr__version_3.rda",
            {
                "test_s4": r_s4(
                    "Person", ".GlobalEnv", {"name": r_chars(["Carlos"]), "age": r_real([28.0])}
                )
            },
            3,
        ),
        (
            "test_dataframe_rownames__xdr__version_3.rda",
            {
                "test_dataframe_rownames": r_data_frame(
                    {"class": r_factor(["a", "b", "b"], ["a", "b"]), "value": r_int([1, 2, 3])},
                    ["Madrid", "Frankfurt", "Herzberg am Harz"],
                )
            },
            3,
        ),
        (
            "test_logical__xdr__version_2.rda",
            {"test_logical": r_lgl([True, True, False, True, False])},
            2,
        ),
    ],
)
def test_the_rda_writer_writes_what_r_writes(
    r_file: str, objects: dict, version: int, tmp_path: Path
) -> None:
    """Compare with files R itself wrote (shipped with rdata's own tests), the R version field aside."""
    import rdata

    written_by_r = gzip.decompress((rdata.TESTDATA_PATH / "generated" / r_file).read_bytes())
    ours = bytearray(
        gzip.decompress(write_rda(tmp_path / r_file, objects, version=version).read_bytes())
    )
    ours[11:15] = written_by_r[11:15]  # the version of R that wrote the file
    assert bytes(ours) == written_by_r
