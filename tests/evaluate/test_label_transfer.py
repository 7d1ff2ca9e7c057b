from __future__ import annotations

import json

import numpy as np
import pytest

from aivc.data import DataValidationError
from aivc.evaluate.tasks.label_transfer import (
    VARIANTS,
    label_transfer_metrics,
    run_label_transfer,
    shared_gene_panel,
    transfer_labels,
)

QUICK = VARIANTS["quick"]


def test_metrics_hand_made() -> None:
    truth = np.array(["a", "a", "b", "b", "x"])
    answer = np.array(["a", "unknown", "b", "a", "unknown"])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    m = label_transfer_metrics(truth, answer, proba, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["abstention"] == pytest.approx(0.25)
    assert m["accuracy_answered"] == pytest.approx(2 / 3)
    assert m["accuracy_forced"] == pytest.approx(0.75)  # a, a, b, a
    assert m["unknown_rate_excluded"] == pytest.approx(1.0)
    # F1(a) = 0.5 (1 TP, 1 FP, 1 FN); F1(b) = 2/3 (1 TP, 0 FP, 1 FN)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    # ECE over the 4 included cells, 15 bins: confidences 0.9, 0.6, 0.8, 0.7, all in different bins
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.2 + 0.7) / 4)
    no_excluded = label_transfer_metrics(truth[:4], answer[:4], proba[:4], ["a", "b"])
    assert np.isnan(no_excluded["unknown_rate_excluded"])


@pytest.fixture(scope="module")
def small_pair(data_dir):
    from aivc.data import load

    rng = np.random.default_rng(0)
    human, mouse = load("baron_human"), load("baron_mouse")
    human = human[np.sort(rng.choice(human.n_obs, 500, replace=False))].copy()
    mouse = mouse[np.sort(rng.choice(mouse.n_obs, 500, replace=False))].copy()
    return human, mouse


@pytest.mark.slow
def test_query_lacking_genes(small_pair) -> None:
    human, mouse = small_pair
    models = ["pca-knn", "logistic", "aivc-pca"]
    full = transfer_labels(
        mouse, human, ref_species="mouse", query_species="human", models=models, config=QUICK
    )
    rng = np.random.default_rng(1)
    keep = np.sort(rng.choice(human.n_vars, human.n_vars // 2, replace=False))
    partial_query = human[:, keep].copy()
    partial = transfer_labels(
        mouse,
        partial_query,
        ref_species="mouse",
        query_species="human",
        models=models,
        config=QUICK,
    )
    assert partial["genes"]["query_genes"] == human.n_vars // 2
    assert partial["genes"]["shared_genes"] < 0.6 * full["genes"]["shared_genes"]
    # the baselines read only genes the query measured
    assert set(partial["panel"]) <= set(partial_query.var_names)
    assert len(partial["panel"]) == partial["genes"]["panel_genes"] <= QUICK.n_top_genes
    assert partial["n_query"] == human.n_obs
    truth = human.obs["cell_ontology_class"].astype(str)
    included = truth[truth.isin(partial["reference_types"])]
    majority = included.value_counts(normalize=True).iloc[0]
    for name in models:
        m = partial["metrics"][name]
        assert 0.0 <= m["accuracy"] <= m["accuracy_forced"] <= 1.0
        assert 0.0 <= m["ece"] <= 1.0
        # better than answering the most frequent type for every cell
        assert m["accuracy_forced"] > majority + 0.05
    # types the mouse reference lacks are excluded and counted
    ref_types = set(mouse.obs["cell_ontology_class"].astype(str))
    expected = {t: int((truth == t).sum()) for t in set(truth) - ref_types}
    assert full["excluded_cells"] == expected
    assert "pancreatic acinar cell" in expected
    assert full["n_query_included"] + sum(full["excluded_cells"].values()) == human.n_obs
    # the decoder answers "unknown" for some cells, the baselines never do
    assert full["metrics"]["pca-knn"]["abstention"] == 0.0
    assert full["metrics"]["pca-knn"]["unknown_rate_excluded"] == 0.0
    assert full["metrics"]["aivc-pca"]["unknown_rate_excluded"] > 0.0


def test_no_shared_genes_and_bad_input_refused(small_pair) -> None:
    human, mouse = small_pair
    renamed = mouse[:, :200].copy()
    renamed.var_names = [f"notagene{i}" for i in range(renamed.n_vars)]
    with pytest.raises(DataValidationError, match="share only 0 genes"):
        shared_gene_panel(human, renamed, n_top_genes=100)
    with pytest.raises(ValueError, match="Unknown label-transfer model"):
        transfer_labels(
            human, mouse, ref_species="human", query_species="mouse", models=["x"], config=QUICK
        )
    bad = mouse.copy()
    del bad.obs["donor"]
    with pytest.raises(DataValidationError, match="obs\\['donor'\\]"):
        transfer_labels(
            human, bad, ref_species="human", query_species="mouse", models=["pca-knn"], config=QUICK
        )


def test_run_label_transfer_rejects_unknown_dataset_and_variant(tmp_path) -> None:
    with pytest.raises(ValueError, match="label-transfer dataset"):
        run_label_transfer(tmp_path, dataset="pbmc")
    with pytest.raises(ValueError, match="variant"):
        run_label_transfer(tmp_path, variant="huge")


@pytest.mark.slow
def test_benchmark_writes_strict_json(data_dir, tmp_path) -> None:
    from aivc.evaluate import run_task

    out = tmp_path / "lt"
    run_task(
        "label-transfer",
        out,
        dataset="baron-mouse-to-human",
        models=["pca-knn", "aivc-pca"],
        seeds=[0, 1],
        variant="quick",
    )

    def no_nan(value: str) -> None:
        msg = f"non-strict JSON constant {value}"
        raise AssertionError(msg)

    result = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    assert result["task"] == "label-transfer"
    assert result["split"]["seeds"] == [0, 1]
    d = result["directions"]["baron-mouse-to-human"]
    # human types absent from the mouse reference
    assert d["excluded_cells"] == {
        "mast cell": 8,
        "pancreatic acinar cell": 231,
        "pancreatic epsilon cell": 3,
    }
    assert d["n_query_included"] == 2142 - 242
    for name in ("pca-knn", "aivc-pca"):
        entry = result["models"][name]
        assert entry["accuracy"]["mean"] is not None
        assert set(entry["by_direction"]) == {"baron-mouse-to-human"}
        assert result["wall_seconds"][name] > 0
    # deterministic baseline: no spread over seeds
    assert result["models"]["pca-knn"]["accuracy"]["sd"] == 0.0
    # the decoder calls some acinar (and mast, epsilon) cells unknown, kNN never does
    assert d["models"]["aivc-pca"]["unknown_rate_excluded"]["mean"] > 0.0
    assert d["models"]["pca-knn"]["unknown_rate_excluded"]["mean"] == 0.0
    assert "| aivc-pca |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_encoder_plus_decoder_runs(small_pair) -> None:
    human, mouse = small_pair
    res = transfer_labels(
        mouse, human, ref_species="mouse", query_species="human", models=["aivc"], config=QUICK
    )
    m = res["metrics"]["aivc"]
    assert 0.0 <= m["accuracy"] <= m["accuracy_forced"] + 1e-12
    assert res["extra"]["aivc"]["temperature"] > 0
