from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from aivc.cells import ANNOTATOR_CANDIDATES, CellAnnotator
from aivc.data import DataValidationError, log_normalize
from aivc.instruments import get_instrument_class


def _cells(
    n_types: int = 4,
    n_per: int = 60,
    n_genes: int = 120,
    batches: tuple[str, ...] = ("d1", "d2", "d3"),
    seed: int = 0,
) -> ad.AnnData:
    """Poisson counts: each type raises its own block of genes; each batch scales genes at random."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, n_genes)
    rows, types, donors = [], [], []
    for b in batches:
        batch_effect = rng.lognormal(0.0, 0.3, n_genes)
        for t in range(n_types):
            mu = base.copy()
            mu[t * 12 : (t + 1) * 12] *= 6.0
            lib = rng.lognormal(0.0, 0.3, (n_per, 1))
            rows.append(rng.poisson(mu * batch_effect * lib))
            types += [f"type{t}"] * n_per
            donors += [b] * n_per
    x = np.vstack(rows).astype(np.float32)
    x[:, 0] += 20  # some counts above 14, as real data have
    obs = pd.DataFrame(
        {"cell_type": types, "donor": donors}, index=[f"c{i}" for i in range(len(types))]
    )
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def data() -> tuple[ad.AnnData, ad.AnnData]:
    cells = _cells()
    query = cells[cells.obs["donor"] == "d3"].copy()
    return cells[cells.obs["donor"] != "d3"].copy(), query


@pytest.fixture(scope="module")
def fitted(data) -> CellAnnotator:
    reference, _ = data
    return CellAnnotator(label_key="cell_type", batch_key="donor", n_pcs=10, n_top_genes=100).fit(
        reference
    )


def test_chooses_on_held_out_batches_and_transfers(fitted, data) -> None:
    _, query = data
    sel = fitted.selection_
    assert sel["folds"] == "held-out batches" and sel["n_folds"] == 2
    assert set(sel["candidates"]) == {c.name for c in ANNOTATOR_CANDIDATES}
    assert sel["chosen"] in sel["candidates"]
    # the choice follows the rule: best score, or an earlier candidate within one SE of it
    scores = {k: v["score"] for k, v in sel["candidates"].items()}
    assert scores[sel["chosen"]] >= max(scores.values()) - 0.1
    table = fitted.predict_table(query)
    assert list(table.index) == list(query.obs_names)
    truth = query.obs["cell_type"].to_numpy()
    assert (table["label_forced"].to_numpy() == truth).mean() > 0.95
    proba = fitted.predict_proba(query)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert table.attrs["input"] == "raw counts, log-normalised here"
    assert get_instrument_class("aivc-annotator") is CellAnnotator


def test_answer_is_the_best_held_out_ensemble(fitted) -> None:
    from aivc.cells._annotate import ENSEMBLE_SIZES

    sel = fitted.selection_
    sizes = sel["ensembles"]
    assert set(sizes) == {str(s or "all") for s in ENSEMBLE_SIZES}
    assert sizes["1"]["members"] == [sel["chosen"]]
    # top-k by held-out score, in that order
    ranked = sorted(sel["candidates"], key=lambda c: -sel["candidates"][c]["score"])
    assert sizes["3"]["members"] == ranked[:3]
    assert len(sizes["all"]["members"]) == len(ANNOTATOR_CANDIDATES)
    best = max(v["score"] for v in sizes.values())
    # the best size answers; on a tie the larger one
    winners = [k for k, v in sizes.items() if v["score"] == best]
    assert sel["members"] == sizes[winners[-1]]["members"]
    assert len(fitted.fitted_models_) == len(sel["members"])


def test_rare_far_types_get_their_own_unknown_threshold() -> None:
    from aivc.cells._annotate import _class_thresholds

    rng = np.random.default_rng(0)
    common = rng.uniform(0.0, 0.9, 500)  # type 0: many typical cells
    rare = np.array([0.97, 0.99, 0.995])  # type 1: few cells, all far from the rest
    held = np.concatenate([common, rare])
    predicted = np.array([0] * 500 + [1] * 3)
    overall = float(np.quantile(held, 0.98))
    thr = _class_thresholds(held, predicted, 3, 0.02, overall)
    assert thr[0] == overall  # never below the overall threshold
    assert thr[1] == pytest.approx(0.995)  # its highest held-out score
    assert thr[2] == overall  # a type never answered on held-out cells
    assert (rare > thr[1]).sum() == 0
    assert np.all(_class_thresholds(held, predicted, 3, 0.0, np.inf) == np.inf)


def test_log_normalised_input_is_never_normalised_twice(fitted, data) -> None:
    reference, query = data
    lognorm = query.copy()
    lognorm.X, _ = log_normalize(query.X, dense=True)
    lognorm.obs["total"] = np.asarray(query.X.sum(axis=1)).ravel()
    counts_p = fitted.predict_proba(query)
    # used as given: the same log-expression, the same answer
    np.testing.assert_allclose(fitted.predict_proba(lognorm), counts_p, atol=1e-9)
    assert (
        fitted.predict_table(lognorm).attrs["input"]
        == "log-normalised values, used as given (no counts)"
    )
    # with library sizes the counts are rebuilt, and the answer is still the same
    ann = CellAnnotator(
        label_key="cell_type",
        batch_key="donor",
        n_pcs=10,
        n_top_genes=100,
        library_size_key="total",
    )
    ref_log = reference.copy()
    ref_log.X, _ = log_normalize(reference.X, dense=True)
    ref_log.obs["total"] = np.asarray(reference.X.sum(axis=1)).ravel()
    ann.fit(ref_log)
    assert ann.input_ == "log-normalised values; counts rebuilt from obs['total']"
    np.testing.assert_allclose(ann.predict_proba(lognorm), counts_p, atol=1e-6)
    # a wrong library size is caught, not silently used
    bad = lognorm.copy()
    bad.obs["total"] = bad.obs["total"] * 1.7
    with pytest.raises(DataValidationError, match="not integers"):
        ann.predict_proba(bad)
    # declared modes are checked against the values
    with pytest.raises(DataValidationError, match="looks like raw counts"):
        CellAnnotator(label_key="cell_type", input="log-normalized").fit(reference)
    with pytest.raises(DataValidationError, match="not raw counts"):
        CellAnnotator(label_key="cell_type", input="counts").fit(ref_log)


def test_reference_without_batch_column(data) -> None:
    reference, query = data
    no_batch = reference.copy()
    del no_batch.obs["donor"]
    ann = CellAnnotator(label_key="cell_type", n_pcs=10, n_top_genes=100).fit(no_batch)
    assert ann.selection_["folds"] == "label-stratified folds (one batch)"
    assert (ann.predict(query) == query.obs["cell_type"].to_numpy()).mean() > 0.9
    with pytest.raises(DataValidationError, match=r"obs\['donor'\].*batch_key=None"):
        CellAnnotator(label_key="cell_type", batch_key="donor").fit(no_batch)
    with pytest.raises(DataValidationError, match="obs\\['celltype'\\]"):
        CellAnnotator(label_key="celltype").fit(no_batch)
    with pytest.raises(ValueError, match="Name the reference's cell-type column"):
        CellAnnotator().fit(no_batch)
    with pytest.raises(ValueError, match="Unknown annotator candidate"):
        CellAnnotator(label_key="cell_type", candidates=("svm",)).fit(no_batch)


def test_unknown_type_is_flagged(data) -> None:
    from sklearn.metrics import roc_auc_score

    reference, query = data
    ref = reference[reference.obs["cell_type"] != "type2"].copy()
    ann = CellAnnotator(label_key="cell_type", batch_key="donor", n_pcs=10, n_top_genes=100).fit(
        ref
    )
    table = ann.predict_table(query)
    new = query.obs["cell_type"].to_numpy() == "type2"
    assert roc_auc_score(new, table["unknown_score"]) > 0.95
    assert table.loc[new, "is_unknown"].mean() > 0.8
    known = ~new
    forced = (
        table["label_forced"].to_numpy()[known] == query.obs["cell_type"].to_numpy()[known]
    ).mean()
    answered = (table["label"].to_numpy()[known] == query.obs["cell_type"].to_numpy()[known]).mean()
    assert forced - answered <= 0.05


def test_save_load_identical(fitted, data, tmp_path) -> None:
    _, query = data
    path = fitted.save(tmp_path / "ann")
    again = CellAnnotator.load(path)
    np.testing.assert_array_equal(again.predict_proba(query), fitted.predict_proba(query))
    np.testing.assert_array_equal(again.transform(query), fitted.transform(query))
    pd.testing.assert_frame_equal(again.predict_table(query), fitted.predict_table(query))
    assert again.selection_ == fitted.selection_
    out = again.annotate(query.copy())
    assert out.obsm["aivc_celltype_proba"].shape == (query.n_obs, 4)


@pytest.mark.slow
def test_mouse_query_on_human_reference(data_dir) -> None:
    from aivc.data import load

    rng = np.random.default_rng(0)
    human, mouse = load("baron_human"), load("baron_mouse")
    human = human[np.sort(rng.choice(human.n_obs, 700, replace=False))].copy()
    mouse = mouse[np.sort(rng.choice(mouse.n_obs, 400, replace=False))].copy()
    ann = CellAnnotator(
        label_key="cell_ontology_class",
        batch_key="donor",
        candidates=("logistic-c0.1",),
        n_top_genes=500,
        n_pcs=20,
        n_folds=3,
        seed=0,
    )
    ann.fit(human, species="human")
    table = ann.predict_table(mouse, species="mouse")
    assert table.attrs["missing_genes"] < 0.3
    truth = mouse.obs["cell_ontology_class"].astype(str).to_numpy()
    scored = np.isin(truth, ann.classes_)
    majority = pd.Series(truth[scored]).value_counts(normalize=True).iloc[0]
    assert (table["label_forced"].to_numpy()[scored] == truth[scored]).mean() > majority + 0.05
    # without the species the mouse symbols match almost none of the human panel
    with pytest.raises(DataValidationError, match="measures none"):
        ann.predict_table(mouse[:, ~mouse.var_names.str.upper().isin(ann.genes_)].copy())


def test_without_harmonypy_the_harmony_candidate_is_left_out(data, monkeypatch) -> None:
    import importlib.util

    reference, _ = data
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "harmonypy" else real(name, *a),
    )
    ann = CellAnnotator(label_key="cell_type", batch_key="donor", n_pcs=10, n_top_genes=100)
    ann.fit(reference)
    assert "harmony-knn" not in ann.selection_["candidates"]
    with pytest.raises(ImportError, match="need harmonypy"):
        CellAnnotator(label_key="cell_type", candidates=("harmony-knn",)).fit(reference)
