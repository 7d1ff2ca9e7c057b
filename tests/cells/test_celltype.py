from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from aivc.cells._calibration import expected_calibration_error, fit_temperature, softmax
from aivc.cells._celltype import CellTypeDecoder, calibration_split
from aivc.data import DataValidationError
from aivc.instruments import Instrument, NotFittedError, get_instrument_class, list_instruments


def _clusters(
    n_types: int = 5, n_per_type: int = 120, d: int = 8, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian cell types around centres pointing in different directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_types, d))
    centres = 6 * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    z = np.concatenate([c + spread * rng.normal(size=(n_per_type, d)) for c in centres])
    y = np.repeat([f"type{i}" for i in range(n_types)], n_per_type)
    return z, y


def _adata(z: np.ndarray, y: np.ndarray, key: str = "X_emb") -> ad.AnnData:
    a = ad.AnnData(
        X=np.zeros((len(y), 1), dtype=np.float32),
        obs=pd.DataFrame({"cell_type": pd.Categorical(y)}, index=[f"c{i}" for i in range(len(y))]),
    )
    a.obsm[key] = z
    return a


# ----------------------------------------------------------------------------- ECE
def test_ece_hand_made_case() -> None:
    # two bins: confidence 0.92 (1 of 2 right) and 0.62 (2 of 2 right)
    proba = np.array([[0.92, 0.08], [0.92, 0.08], [0.38, 0.62], [0.62, 0.38]])
    labels = np.array([0, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.92) + 0.5 * abs(1.0 - 0.62)
    assert expected_calibration_error(proba, labels) == pytest.approx(expected, abs=1e-12)
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(proba.max(axis=1), correct) == pytest.approx(
        expected, abs=1e-12
    )
    # a class the model does not have is always wrong
    assert expected_calibration_error(proba[:1], np.array([-1])) == pytest.approx(0.92)
    # one bin: all confidences fall together, ECE = |accuracy - mean confidence|
    assert expected_calibration_error(proba, labels, n_bins=1) == pytest.approx(
        abs(0.75 - np.mean([0.92, 0.92, 0.62, 0.62]))
    )


def test_ece_near_zero_when_calibrated_and_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 20_000)
    correct = rng.uniform(size=conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.02
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(conf, correct, n_bins=0)
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(np.full((3, 2), 0.5), np.array([0, 1]))
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)))


def test_temperature_scaling_recovers_overconfidence() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=1.5, size=(6000, 4))
    p = softmax(true_logits)
    labels = np.array([rng.choice(4, p=row) for row in p])
    logits = 4.0 * true_logits  # a classifier four times too sure of itself
    t = fit_temperature(logits[:3000], labels[:3000])
    assert t == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(softmax(logits[3000:]), labels[3000:])
    after = expected_calibration_error(softmax(logits[3000:], t), labels[3000:])
    assert before > 0.1
    assert after < 0.03


def test_decoder_calibration_improves_heldout_ece() -> None:
    # overlapping types, 40 dimensions, few cells and weak L2: the classifier overfits
    z, y = _clusters(n_types=4, n_per_type=100, d=40, spread=4.0, seed=5)
    rng = np.random.default_rng(3)
    centres = np.stack([z[y == c].mean(axis=0) for c in sorted(set(y))])
    # fresh held-out cells around the same centres
    zt = np.concatenate([c + 4.0 * rng.normal(size=(500, z.shape[1])) for c in centres])
    yt = np.repeat(sorted(set(y)), 500)
    dec = CellTypeDecoder(use_rep=None, regularization=1e-3, class_weight=None).fit(z, labels=y)
    idx = np.searchsorted(dec.classes_, yt)
    raw = expected_calibration_error(softmax(dec.decision_function(zt)), idx)
    cal = expected_calibration_error(dec.predict_proba(zt), idx)
    assert dec.temperature_ > 1.5
    assert raw > 0.1
    assert cal < 0.6 * raw
    assert dec.calibration_["ece_after"] < dec.calibration_["ece_before"]


# ----------------------------------------------------------------------------- unknown
@pytest.mark.parametrize("classifier", ["logistic", "mlp"])
def test_unknown_for_held_out_type(classifier: str) -> None:
    z, y = _clusters(n_types=5, seed=4)
    held = "type4"
    ref = _adata(z[y != held], y[y != held])
    # query: same centres as the reference (fresh noise) plus the held-out type
    rng = np.random.default_rng(6)
    centres = {c: z[y == c].mean(axis=0) for c in sorted(set(y))}
    q_z = np.concatenate([centres[c] + rng.normal(size=(100, z.shape[1])) for c in centres])
    q_y = np.repeat(list(centres), 100)
    query = _adata(q_z, q_y)
    dec = CellTypeDecoder(use_rep="X_emb", classifier=classifier, seed=0).fit(ref)
    answer = dec.predict(query)
    novel = q_y == held
    assert (answer[novel] == "unknown").mean() > 0.8
    assert (answer[~novel] == "unknown").mean() < 0.1
    assert (answer[~novel] == q_y[~novel]).mean() > 0.85
    # the label is configurable
    dec2 = CellTypeDecoder(use_rep="X_emb", classifier=classifier, unknown_label="novel").fit(ref)
    assert set(dec2.predict(query)[novel]) <= {"novel", *centres}
    assert (dec2.predict(query)[novel] == "novel").mean() > 0.8


def test_unknown_rules_combine_as_documented() -> None:
    z, y = _clusters(n_types=3, seed=7)
    tables = {}
    for rule in ("novelty", "confidence", "either", "both"):
        dec = CellTypeDecoder(use_rep=None, unknown_rule=rule, min_confidence=0.9).fit(z, labels=y)
        zq = np.concatenate([z[:50], np.random.default_rng(8).normal(scale=8, size=(50, 8))])
        tables[rule] = dec.predict_table(zq)
    t = tables["either"]
    assert (t["is_unknown"] == (t["is_novel"] | (t["confidence"] < 0.9))).all()
    t = tables["both"]
    assert (t["is_unknown"] == (t["is_novel"] & (t["confidence"] < 0.9))).all()
    assert (tables["novelty"]["is_unknown"] == tables["novelty"]["is_novel"]).all()
    assert (tables["confidence"]["is_unknown"] == (tables["confidence"]["confidence"] < 0.9)).all()
    assert (tables["either"]["label"][tables["either"]["is_unknown"]] == "unknown").all()


def test_adapt_to_query_raises_thresholds_under_global_shift() -> None:
    z, y = _clusters(n_types=4, seed=9)
    rng = np.random.default_rng(10)
    shifted = z + rng.normal(scale=1.0, size=z.shape)  # every query cell noisier
    plain = CellTypeDecoder(use_rep=None, novelty_metric="euclidean").fit(z, labels=y)
    adapt = CellTypeDecoder(use_rep=None, novelty_metric="euclidean", adapt_to_query=True).fit(
        z, labels=y
    )
    t_plain, t_adapt = plain.predict_table(shifted), adapt.predict_table(shifted)
    assert t_adapt.attrs["novelty_shift"] > 1.0
    assert t_plain.attrs["novelty_shift"] == 1.0
    assert t_adapt["is_novel"].mean() < t_plain["is_novel"].mean()


@pytest.mark.slow
def test_unknown_on_real_pancreas_held_out_donor_and_type(data_dir) -> None:
    import scanpy as sc

    from aivc.data import load

    a = load("baron_human")
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=1000, flavor="seurat")
    a = a[:, a.var["highly_variable"].to_numpy()].copy()
    a.X = a.X.toarray()
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=30, svd_solver="arpack", random_state=0)
    lab = a.obs["cell_ontology_class"].astype(str).to_numpy()
    donor = a.obs["donor"].astype(str).to_numpy()
    held = "pancreatic ductal cell"
    train = (donor != "human1") & (lab != held)
    test = donor == "human1"
    dec = CellTypeDecoder(use_rep="X_pca", label_key="cell_ontology_class").fit(a[train])
    answer = dec.predict(a[test])
    novel = lab[test] == held
    assert (answer[novel] == "unknown").mean() > 0.8
    assert (answer[~novel] == "unknown").mean() < 0.25
    known_answered = ~novel & (answer != "unknown")
    assert (answer[known_answered] == lab[test][known_answered]).mean() > 0.9


# ----------------------------------------------------------------------------- persistence
def test_save_load_identical(tmp_path) -> None:
    z, y = _clusters(seed=11)
    a = _adata(z, y)
    dec = CellTypeDecoder(use_rep="X_emb", classifier="mlp", hidden_size=16, max_iter=100).fit(a)
    path = dec.save(tmp_path / "dec")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["state"]["classes"] == dec.classes_
    back = Instrument.load(path)
    assert isinstance(back, CellTypeDecoder)
    assert back.get_params() == dec.get_params()
    np.testing.assert_allclose(back.predict_proba(a), dec.predict_proba(a), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.novelty_score(a), dec.novelty_score(a), rtol=1e-6)
    assert (back.predict(a) == dec.predict(a)).all()
    np.testing.assert_array_equal(back.novelty_threshold_, dec.novelty_threshold_)


def test_deterministic_by_seed() -> None:
    z, y = _clusters(seed=12, spread=2.0)
    a = CellTypeDecoder(use_rep=None, classifier="mlp", max_iter=100, seed=3).fit(z, labels=y)
    b = CellTypeDecoder(use_rep=None, classifier="mlp", max_iter=100, seed=3).fit(z, labels=y)
    c = CellTypeDecoder(use_rep=None, classifier="mlp", max_iter=100, seed=4).fit(z, labels=y)
    np.testing.assert_array_equal(a.predict_proba(z), b.predict_proba(z))
    assert a.temperature_ == b.temperature_
    assert not np.allclose(a.predict_proba(z), c.predict_proba(z))


def test_calibration_split_is_stratified_and_keeps_rare_types() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 20 + ["c"] * 3)
    fit_idx, cal_idx = calibration_split(labels, fraction=0.2, seed=0)
    assert len(set(fit_idx) & set(cal_idx)) == 0
    assert len(fit_idx) + len(cal_idx) == len(labels)
    assert (labels[cal_idx] == "a").sum() == 10
    assert (labels[cal_idx] == "b").sum() == 4
    assert (labels[cal_idx] == "c").sum() == 0  # too rare to hold out


# ----------------------------------------------------------------------------- API and errors
def test_registered_as_decoder_and_annotate() -> None:
    assert get_instrument_class("cell-type") is CellTypeDecoder
    info = {i.name: i for i in list_instruments()}["cell-type"]
    assert info.kind == "decoder"
    z, y = _clusters(seed=13)
    a = _adata(z, y)
    dec = CellTypeDecoder(use_rep="X_emb")
    with pytest.raises(NotFittedError):
        dec.predict(a)
    dec.fit(a)
    dec.annotate(a, key_added="pred")
    assert a.obsm["pred_proba"].shape == (a.n_obs, 5)
    assert {"pred", "pred_confidence", "pred_novelty"} <= set(a.obs.columns)
    np.testing.assert_allclose(a.obsm["pred_proba"].sum(axis=1), 1.0)
    scores = dec.score(a)
    assert scores["accuracy"] > 0.9
    assert 0 <= scores["ece"] < 0.2


def test_bad_input_is_refused() -> None:
    z, y = _clusters(seed=14)
    a = _adata(z, y)
    with pytest.raises(DataValidationError, match="obs\\['celltype'\\]"):
        CellTypeDecoder(use_rep="X_emb", label_key="celltype").fit(a)
    b = a.copy()
    b.obs["cell_type"] = b.obs["cell_type"].astype(object)
    b.obs.iloc[:3, 0] = np.nan
    with pytest.raises(DataValidationError, match="3 reference cells have no cell-type label"):
        CellTypeDecoder(use_rep="X_emb").fit(b)
    c = a.copy()
    c.obsm["X_emb"][5, 2] = np.nan
    with pytest.raises(DataValidationError, match="NaN"):
        CellTypeDecoder(use_rep="X_emb").fit(c)
    with pytest.raises(DataValidationError, match="obsm\\['X_other'\\] is missing"):
        CellTypeDecoder(use_rep="X_other").fit(a)
    dec = CellTypeDecoder(use_rep="X_emb").fit(a)
    narrow = _adata(z[:, :5], y)
    with pytest.raises(DataValidationError, match="5 dimensions; the decoder was fit on 8"):
        dec.predict(narrow)
    with pytest.raises(DataValidationError, match="NaN"):
        dec.predict(c)
    with pytest.raises(DataValidationError, match="unknown_label"):
        CellTypeDecoder(use_rep="X_emb", unknown_label="type0").fit(a)
    with pytest.raises(DataValidationError, match="at least 2 cell types"):
        CellTypeDecoder(use_rep=None).fit(z[:10], labels=["x"] * 10)
    with pytest.raises(ValueError, match="'classifier' parameter"):
        CellTypeDecoder(use_rep="X_emb", classifier="forest").fit(a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'novelty_quantile' parameter"):
        CellTypeDecoder(use_rep="X_emb", novelty_quantile=1.5).fit(a)
    with pytest.raises(DataValidationError, match="cells but"):
        CellTypeDecoder(use_rep=None).fit(z, labels=y[:-1])


@pytest.mark.parametrize("classifier", ["logistic", "mlp"])
def test_conformance(classifier: str) -> None:
    from aivc.instruments._conformance import check_decoder

    z, y = _clusters(n_per_type=60, seed=15)
    ref = _adata(z, y)
    query = _adata(z[::3] + 0.1, y[::3])
    passed = check_decoder(
        CellTypeDecoder,
        params={"use_rep": "X_emb", "classifier": classifier, "max_iter": 100},
        fit_args=(ref,),
        predict_args=(query,),
    )
    assert {"fit", "determinism", "save-load", "predict-shape"} <= set(passed)
