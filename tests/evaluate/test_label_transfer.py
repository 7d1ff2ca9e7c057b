from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from aivc.data import DataValidationError
from aivc.evaluate.tasks.label_transfer import (
    TRANSFERS,
    VARIANTS,
    label_transfer_metrics,
    resolve_transfers,
    run_label_transfer,
    shared_gene_panel,
    transfer_labels,
)

#: Few epochs, 300 genes and 20 components: the annotator's many held-out logistic fits stay quick.
QUICK = dataclasses.replace(VARIANTS["quick"], n_top_genes=300, n_pcs=20)
M2H = TRANSFERS["baron-mouse-to-human"]
H2M = TRANSFERS["baron-human-to-mouse"]


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
    models = ["pca-knn", "logistic", "aivc"]
    full = transfer_labels(mouse, human, spec=M2H, models=models, config=QUICK)
    rng = np.random.default_rng(1)
    keep = np.sort(rng.choice(human.n_vars, human.n_vars // 2, replace=False))
    partial_query = human[:, keep].copy()
    partial = transfer_labels(mouse, partial_query, spec=M2H, models=models, config=QUICK)
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
    # kNN never answers "unknown"; the annotator rarely does for types the reference has
    assert full["metrics"]["pca-knn"]["abstention"] == 0.0
    assert full["metrics"]["pca-knn"]["unknown_rate_excluded"] == 0.0
    assert 0.0 <= full["metrics"]["aivc"]["abstention"] < 0.1
    assert full["extra"]["aivc"]["chosen"] in full["extra"]["aivc"]["candidates"]


def test_no_shared_genes_and_bad_input_refused(small_pair) -> None:
    human, mouse = small_pair
    renamed = mouse[:, :200].copy()
    renamed.var_names = [f"notagene{i}" for i in range(renamed.n_vars)]
    with pytest.raises(DataValidationError, match="share only 0 genes"):
        shared_gene_panel(human, renamed, n_top_genes=100)
    with pytest.raises(ValueError, match="Unknown label-transfer model"):
        transfer_labels(human, mouse, spec=H2M, models=["x"], config=QUICK)
    # a query without a batch column is one batch; a reference without the declared one is refused
    no_donor = mouse.copy()
    del no_donor.obs["donor"]
    res = transfer_labels(human, no_donor, spec=H2M, models=["pca-knn"], config=QUICK)
    assert res["metrics"]["pca-knn"]["accuracy"] > 0.3
    with pytest.raises(DataValidationError, match="obs\\['donor'\\]"):
        transfer_labels(no_donor, human, spec=M2H, models=["pca-knn"], config=QUICK)
    no_label = mouse.copy()
    del no_label.obs["cell_ontology_class"]
    with pytest.raises(DataValidationError, match="--cell-type-key"):
        transfer_labels(human, no_label, spec=H2M, models=["pca-knn"], config=QUICK)


def test_run_label_transfer_rejects_unknown_dataset_and_variant(tmp_path) -> None:
    with pytest.raises(ValueError, match="label-transfer dataset"):
        run_label_transfer(tmp_path, dataset="pbmc")
    with pytest.raises(ValueError, match="variant"):
        run_label_transfer(tmp_path, variant="huge")
    with pytest.raises(ValueError, match="--cell-type-key"):
        run_label_transfer(tmp_path, dataset="cells.h5ad", query_key="tech")
    with pytest.raises(ValueError, match="declares its own columns"):
        run_label_transfer(tmp_path, dataset="baron", cell_type_key="x")


def test_resolve_transfers() -> None:
    assert [s.name for s in resolve_transfers(None)] == [
        "baron-human-to-mouse",
        "baron-mouse-to-human",
    ]
    (kang,) = resolve_transfers("kang2018")
    assert (kang.label_key, kang.batch_key, kang.query_value) == ("cell_type", None, "stimulated")
    (spec,) = resolve_transfers(
        "some/pbmc.h5ad", cell_type_key="ct", batch_key="tech", query_key="tech", query_value="v3"
    )
    assert spec.name == "pbmc:tech=v3" and spec.reference == spec.query == "some/pbmc.h5ad"
    assert (spec.label_key, spec.batch_key) == ("ct", "tech")


def test_label_transfer_on_a_file_through_the_cli(tmp_path, technology_file) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    path = technology_file
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "benchmark", "label-transfer", "--dataset", str(path), "--out", str(out),
            "--cell-type-key", "kind", "--batch-key", "chemistry", "--query-key", "chemistry",
            "--query-value", "v3", "--models", "aivc,logistic,pca-knn,harmony", "--seeds", "0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    (d,) = res["directions"].values()
    assert d["n_query"] == 200 and d["n_reference"] == 400
    for m in ("aivc", "logistic", "pca-knn", "harmony"):
        assert res["models"][m]["accuracy"]["mean"] > 0.9
    # the declared columns are the only ones read: a wrong one is a clear error
    bad = CliRunner().invoke(
        app,
        [
            "benchmark", "label-transfer", "--dataset", str(path), "--out", str(tmp_path / "bad"),
            "--cell-type-key", "celltype", "--query-key", "chemistry", "--query-value", "v3",
            "--models", "logistic", "--seeds", "0",
        ],
    )  # fmt: skip
    assert bad.exit_code != 0 and "celltype" in bad.output


@pytest.mark.slow
def test_benchmark_writes_strict_json(data_dir, tmp_path) -> None:
    from aivc.evaluate import run_task

    out = tmp_path / "lt"
    run_task(
        "label-transfer",
        out,
        dataset="baron-mouse-to-human",
        models=["pca-knn", "logistic"],
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
    for name in ("pca-knn", "logistic"):
        entry = result["models"][name]
        assert entry["accuracy"]["mean"] is not None
        assert set(entry["by_direction"]) == {"baron-mouse-to-human"}
        assert result["wall_seconds"][name] > 0
    # deterministic baseline: no spread over seeds
    assert result["models"]["pca-knn"]["accuracy"]["sd"] == 0.0
    # the baselines never answer unknown for the acinar (and mast, epsilon) cells the reference lacks
    assert d["models"]["pca-knn"]["unknown_rate_excluded"]["mean"] == 0.0
    assert d["models"]["logistic"]["abstention"]["mean"] == 0.0
    assert "| logistic |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_encoder_plus_decoder_runs(small_pair) -> None:
    human, mouse = small_pair
    res = transfer_labels(mouse, human, spec=M2H, models=["aivc-encoder"], config=QUICK)
    m = res["metrics"]["aivc-encoder"]
    assert 0.0 <= m["accuracy"] <= m["accuracy_forced"] + 1e-12
    assert res["extra"]["aivc-encoder"]["temperature"] > 0


@pytest.mark.slow
def test_log_normalised_input_without_counts_skips_count_models(data_dir) -> None:
    from dataclasses import replace

    from aivc.data import load, log_normalize

    kang = load("kang2018")
    rng = np.random.default_rng(0)
    kang = kang[np.sort(rng.choice(kang.n_obs, 600, replace=False))].copy()
    counts = kang.layers["counts"]
    kang.X, _ = log_normalize(counts)
    kang.obs["library"] = np.asarray(counts.sum(axis=1)).ravel()
    del kang.layers["counts"]
    stim = kang.obs["condition_source"].astype(str) == "stimulated"
    ref, query = kang[~stim].copy(), kang[stim].copy()
    spec = replace(TRANSFERS["kang2018-control-to-stimulated"], counts_layer=None)
    res = transfer_labels(ref, query, spec=spec, models=["logistic", "scanvi"], config=QUICK)
    assert "scanvi" in res["skipped"] and "needs raw counts" in res["skipped"]["scanvi"]
    assert res["input"]["reference"] == "log-normalised values, used as given (no counts)"
    rebuilt = transfer_labels(
        ref,
        query,
        spec=replace(spec, library_size_key="library"),
        models=["logistic"],
        config=QUICK,
    )
    assert "counts rebuilt" in rebuilt["input"]["reference"]
    # rebuilding the counts and normalising them gives back the same values: the same answer
    assert rebuilt["metrics"]["logistic"]["accuracy"] == pytest.approx(
        res["metrics"]["logistic"]["accuracy"], abs=1e-9
    )


def test_query_mixing_is_zero_apart_and_one_when_mixed() -> None:
    from aivc.evaluate.tasks.label_transfer import query_mixing

    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    assert query_mixing(ref, query) > 0.85
    assert query_mixing(ref, query + 50.0) < 0.01
    # half of the query lands on the reference: in between
    half = query.copy()
    half[:150] += 50.0
    assert 0.2 < query_mixing(ref, half) < 0.8


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # lightning's notes on tiny training runs
def test_mapping_without_retraining_and_retraining_both_answer(small_pair) -> None:
    human, mouse = small_pair
    res = transfer_labels(
        mouse, human, spec=M2H, models=["scanvi", "scanvi-retrain", "logistic"], config=QUICK
    )
    for name in ("scanvi", "scanvi-retrain"):
        m = res["metrics"][name]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["query_mixing"] <= 1.0
    assert res["extra"]["scanvi"]["retrained_on_query"] is False
    assert "query" in res["extra"]["scanvi"]["epochs"]  # the query-only surgery step ran
    assert res["extra"]["scanvi-retrain"]["retrained_on_query"] is True
    assert "query" not in res["extra"]["scanvi-retrain"]["epochs"]
    assert np.isnan(res["metrics"]["logistic"]["query_mixing"])  # no joint space
