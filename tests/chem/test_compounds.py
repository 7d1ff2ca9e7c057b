"""Compound structures: parsing, fingerprints, caching, names without structure."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rdkit")

from aivc.chem import (
    CompoundLibrary,
    InvalidSmilesError,
    MissingStructureError,
    canonical_smiles,
    featurize,
    tanimoto,
)

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
ASPIRIN_OTHER_WAY = "OC(=O)c1ccccc1OC(C)=O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"


@pytest.mark.parametrize("bad", ["C1CC", "not a molecule", "", "   ", "c1ccccc1X"])
def test_invalid_smiles_is_refused_with_its_text(bad):
    with pytest.raises(InvalidSmilesError) as e:
        canonical_smiles(bad)
    assert repr(bad) in str(e.value)


def test_one_molecule_written_two_ways_gets_one_vector(tmp_path, monkeypatch):
    from aivc._settings import settings

    monkeypatch.setattr(settings, "cache_dir", tmp_path)
    a, b = featurize([ASPIRIN, ASPIRIN_OTHER_WAY], "morgan2")
    assert np.array_equal(a, b) and a.sum() > 0
    assert featurize(CAFFEINE, "maccs").shape == (1, 167)


def test_fingerprints_are_cached_on_disk_and_reread(tmp_path, monkeypatch):
    from aivc._settings import settings
    from aivc.chem import _compounds

    monkeypatch.setattr(settings, "cache_dir", tmp_path)
    first = featurize([ASPIRIN, CAFFEINE], "morgan2-counts")
    assert (tmp_path / "compounds" / "morgan2-counts.npz").is_file()
    _compounds._MEMORY.clear()
    monkeypatch.setattr(_compounds, "_one", lambda s, k: pytest.fail("recomputed a cached vector"))
    again = featurize([CAFFEINE, ASPIRIN], "morgan2-counts")
    assert np.array_equal(again, first[::-1])


def test_unknown_fingerprint_names_the_choices():
    with pytest.raises(ValueError, match="morgan2"):
        featurize([ASPIRIN], "ecfp99")


def test_tanimoto_of_a_molecule_with_itself_is_one():
    fp = featurize([ASPIRIN, CAFFEINE], "morgan2")
    sim = tanimoto(fp)
    assert np.allclose(np.diag(sim), 1.0)
    assert 0 <= sim[0, 1] < 0.5
    assert tanimoto(np.zeros((1, 8)), np.zeros((1, 8)))[0, 0] == 0.0


def test_library_names_without_structure_and_unknown_names():
    lib = CompoundLibrary.from_table(["aspirin", "aspirin", "mystery"], [np.nan, ASPIRIN, None])
    assert lib.smiles_of("aspirin") == canonical_smiles(ASPIRIN)
    with pytest.raises(MissingStructureError, match="pass its SMILES"):
        lib.smiles_of("mystery")
    assert lib.smiles_of(CAFFEINE) == canonical_smiles(CAFFEINE)  # a structure is its own compound
    with pytest.raises(KeyError, match="Did you mean 'aspirin'"):
        lib.smiles_of("asprin")
