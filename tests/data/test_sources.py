"""Public sources: download from a loopback server, verify, convert, write atomically."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import aivc.data
from aivc.data._download import ChecksumMismatchError
from aivc.data.sources import PublicSource, SourceFile, git_blob_id, rebuild


def test_git_blob_id_matches_git(tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def _source(base_url: str, folder: Path, blob: str | None = None) -> PublicSource:
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(6, 4)).astype(np.float32)
    np.savetxt(folder / "matrix.csv", x, delimiter=",")

    def convert(paths):
        return ad.AnnData(X=np.loadtxt(paths["matrix.csv"], delimiter=",", dtype=np.float32))

    file = SourceFile(
        url=base_url + "matrix.csv",
        filename="matrix.csv",
        git_blob=blob or git_blob_id(folder / "matrix.csv"),
    )
    return PublicSource(
        dataset="papalexi2021", origin="loopback test", files=(file,), convert=convert
    )


def test_rebuild_downloads_verifies_and_converts(serve_folder, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    source = _source(serve_folder(served), served)
    out = rebuild("papalexi2021", data_dir=tmp_path / "data", source=source)
    assert out == aivc.data.dataset_entry("papalexi2021").path(tmp_path / "data")
    back = ad.read_h5ad(out)
    np.testing.assert_array_equal(back.X, np.loadtxt(served / "matrix.csv", delimiter=","))
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_rebuild_refuses_a_file_whose_git_blob_differs(serve_folder, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    source = _source(serve_folder(served), served, blob="0" * 40)
    with pytest.raises(ChecksumMismatchError, match="git blob"):
        rebuild("papalexi2021", data_dir=tmp_path / "data", source=source)
    entry = aivc.data.dataset_entry("papalexi2021")
    assert not entry.path(tmp_path / "data").exists()
    assert not (entry.path(tmp_path / "data").parent / "source" / "matrix.csv").exists()


def test_a_failing_converter_leaves_no_file(serve_folder, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    source = _source(serve_folder(served), served)

    def broken(paths):
        raise ValueError("the source changed")

    with pytest.raises(ValueError, match="the source changed"):
        rebuild(
            "papalexi2021",
            data_dir=tmp_path / "data",
            source=dataclasses.replace(source, convert=broken),
        )
    assert not aivc.data.dataset_entry("papalexi2021").path(tmp_path / "data").exists()
