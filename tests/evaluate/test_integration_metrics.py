from __future__ import annotations

import numpy as np
import pytest

from aivc.evaluate._scib import (
    batch_silhouette,
    graph_connectivity,
    integration_scores,
    isolated_label_silhouette,
    lisi,
    nmi_ari_kmeans,
)


def _blobs(mixed: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two well separated cell types x two batches; batches either overlap or sit far apart."""
    rng = np.random.default_rng(seed)
    n = 80
    labels = np.repeat(["a", "b"], 2 * n)
    batches = np.tile(np.repeat(["b1", "b2"], n), 2)
    x = rng.normal(scale=0.5, size=(4 * n, 5))
    x[labels == "b", 0] += 20.0
    if not mixed:
        x[batches == "b2", 1] += 10.0
    return x, labels, batches


def test_mixed_batches_score_high_on_batch_metrics():
    x, lab, bat = _blobs(mixed=True)
    s = integration_scores(x, lab, bat)
    assert s["batch_asw"] > 0.9
    assert s["ilisi"] > 0.8
    assert s["graph_connectivity"] == pytest.approx(1.0)
    assert s["nmi"] == pytest.approx(1.0)
    assert s["ari"] == pytest.approx(1.0)
    assert s["clisi"] == pytest.approx(1.0, abs=1e-3)
    assert s["label_asw"] > 0.9
    assert s["overall"] == pytest.approx(0.6 * s["bio"] + 0.4 * s["batch"])


def test_separated_batches_score_low_on_batch_metrics():
    x, lab, bat = _blobs(mixed=False)
    mixed = integration_scores(*_blobs(mixed=True))
    s = integration_scores(x, lab, bat)
    assert s["batch_asw"] < 0.3
    assert s["ilisi"] < 0.05
    # each cell type splits into two components of equal size
    assert s["graph_connectivity"] == pytest.approx(0.5)
    assert s["batch"] < mixed["batch"] - 0.4
    # cell types are still perfectly separated
    assert s["clisi"] == pytest.approx(1.0, abs=1e-3)


def test_lisi_counts_effective_number_of_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    even = np.tile(["p", "q", "r"], 100)
    assert np.median(lisi(x, even)) == pytest.approx(3.0, rel=0.15)
    assert np.allclose(lisi(x, np.repeat("p", 300)), 1.0)


def test_scrambled_labels_lose_bio_conservation():
    x, lab, bat = _blobs(mixed=True)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(lab)
    nmi, ari = nmi_ari_kmeans(x, shuffled)
    assert nmi < 0.1
    assert ari < 0.1
    assert isolated_label_silhouette(x, shuffled, bat) < 0.55


def test_batch_silhouette_and_connectivity_validate_inputs():
    x, lab, bat = _blobs(mixed=True)
    with pytest.raises(ValueError, match="one entry per cell"):
        batch_silhouette(x, lab[:-1], bat)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        graph_connectivity(bad, lab)


@pytest.mark.slow
def test_run_integration_writes_strict_json(data_dir, tmp_path):
    import json

    from aivc.evaluate.tasks.integration import run_integration

    result = run_integration(tmp_path, dataset="baron_mouse", models=["pca"], seeds=[0])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["task"] == "integration"
    assert on_disk["n_cells"] == 1886
    assert on_disk["batches"] == ["mouse1", "mouse2"]
    pca = on_disk["models"]["pca"]
    assert 0.0 <= pca["overall"]["mean"] <= 1.0
    assert pca["overall"]["mean"] == pytest.approx(result["models"]["pca"]["overall"]["mean"])
    assert "| pca |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="Unknown integration models"):
        run_integration(tmp_path, models=["umap"], seeds=[0])
