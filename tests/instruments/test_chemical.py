"""The chemical manipulator and its baselines on a small simulated plate with real structures."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rdkit")

from _profiles import DOSES, SCHEMA, STRUCTURES, plate
from aivc.data import DataValidationError, ProfileSchema, normalize_profiles, response_table
from aivc.instruments import Instrument
from aivc.instruments._chemical import CHEMICAL_MODELS, ChemicalManipulator
from aivc.instruments._scores import condition_scores


@pytest.fixture(scope="module")
def fitted():
    return ChemicalManipulator(seed=0).fit(plate(), SCHEMA)


def test_response_table_is_the_change_from_each_plates_vehicle():
    data = plate()
    data.X[data.obs["plate"].to_numpy() == "P2"] += (
        5.0  # a plate effect vanishes against its own vehicle
    )
    table = response_table(data, SCHEMA)
    assert len(table.compounds) == len(STRUCTURES) * len(DOSES)
    assert (table.n_wells == 2).all()
    assert np.abs(table.delta[table.doses == 0.04]).mean() < 0.5
    assert table.smiles["unnamed"] is None and table.moa["aspirin"] == "cox inhibitor"


def test_missing_plate_column_and_bad_doses_are_refused():
    data = plate()
    with pytest.raises(DataValidationError, match="plate"):
        response_table(data[:, :].copy(), ProfileSchema(plate_key="plate_id"))
    bad = data.copy()
    bad.obs.loc[bad.obs.index[20], "dose_um"] = -1.0
    with pytest.raises(DataValidationError, match="positive dose"):
        response_table(bad, SCHEMA)
    with pytest.raises(ValueError, match="dose unit"):
        ProfileSchema(dose_unit="furlongs")


def test_normalisation_centres_the_vehicle_wells_per_plate():
    data = plate()
    normed = normalize_profiles(data, SCHEMA, reference="controls")
    ctrl = (normed.obs["compound_name"] == "DMSO").to_numpy()
    for p in ("P1", "P2"):
        rows = ctrl & (normed.obs["plate"] == p).to_numpy()
        assert np.allclose(np.median(normed.X[rows], axis=0), 0, atol=1e-9)


def test_unseen_structure_is_predicted_from_its_family(fitted):
    # a new salicylate ester, never measured, at a high dose
    pred = fitted.predict_delta("CCOC(=O)c1ccccc1O", 10.0)
    table = fitted.table_
    aspirin = table.delta[(table.compounds == "aspirin") & (table.doses == 10.0)][0]
    caffeine = table.delta[(table.compounds == "caffeine") & (table.doses == 10.0)][0]
    p = pred.to_numpy()[0]
    assert np.corrcoef(p, aspirin)[0, 1] > np.corrcoef(p, caffeine)[0, 1]
    assert fitted.selection_["unseen"]["chosen"] in fitted.selection_["unseen"]["scores"]


def test_doses_units_and_zero(fitted):
    a = fitted.predict_delta(["caffeine"], [1.0]).to_numpy()
    b = fitted.predict_delta(["caffeine"], [1000.0], dose_unit="nM").to_numpy()
    assert np.allclose(a, b)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="positive"):
            fitted.predict_delta(["caffeine"], [bad])
    with pytest.raises(ValueError, match="dose unit"):
        fitted.predict_delta(["caffeine"], [1.0], dose_unit="gallons")


def test_names_without_structure_and_invalid_smiles(fitted):
    assert np.isfinite(
        fitted.predict_delta("unnamed", 1.0).to_numpy()
    ).all()  # measured: by its doses
    with pytest.raises(KeyError, match="neither a compound"):
        fitted.predict_delta("C1CC(", 1.0)


def test_intervals_cover_held_out_doses_of_a_new_plate(fitted):
    other = response_table(plate(seed=1), SCHEMA)
    rows = other.doses == 0.37
    interval = fitted.predict_interval(other.compounds[rows].tolist(), other.doses[rows], level=0.9)
    delta, lo, hi = interval.arrays()
    assert (lo <= delta).all() and (delta <= hi).all()
    assert interval.level == 0.9


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    path = fitted.save(tmp_path / "chem")
    again = Instrument.load(path)
    assert isinstance(again, ChemicalManipulator)
    query = (["aspirin", "CCOC(=O)c1ccccc1O"], [0.5, 2.0])
    assert fitted.predict_delta(*query).equals(again.predict_delta(*query))
    a, b = fitted.predict_interval(*query), again.predict_interval(*query)
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))


def test_baselines_predict_what_they_say():
    table = response_table(plate(), SCHEMA)
    keep = ~((table.compounds == "caffeine") & (table.doses == 1.1))
    train = table.subset(keep)
    interp = CHEMICAL_MODELS["dose-interpolation"]().fit(train)
    got = interp.predict_delta(["caffeine"], [1.1]).to_numpy()[0]
    lo = train.delta[(train.compounds == "caffeine") & (train.doses == 0.37)][0]
    hi = train.delta[(train.compounds == "caffeine") & (train.doses == 3.3)][0]
    t = (np.log10(1.1) - np.log10(0.37)) / (np.log10(3.3) - np.log10(0.37))
    assert np.allclose(got, (1 - t) * lo + t * hi)
    with pytest.raises(ValueError, match="measured compounds only"):
        interp.predict_delta(["CCOC(=O)c1ccccc1O"], [1.0])
    assert (
        not CHEMICAL_MODELS["vehicle"]()
        .fit(train)
        .predict_delta(["aspirin"], [1.0])
        .to_numpy()
        .any()
    )
    nearest = CHEMICAL_MODELS["nearest-compound"]().fit(
        train.subset(train.compounds != "theobromine")
    )
    got = nearest.predict_delta([STRUCTURES["theobromine"][0]], [10.0]).to_numpy()[0]
    same_family = train.delta[(train.compounds == "caffeine") & (train.doses == 10.0)][0]
    assert np.allclose(got, same_family) or np.allclose(
        got, train.delta[(train.compounds == "theophylline") & (train.doses == 10.0)][0]
    )


def test_condition_scores_use_the_most_changed_features():
    obs = np.array([[5.0, -4.0, 0.1, 0.0] + [0.0] * 30])
    s = condition_scores(obs, obs * 2, top=2)
    assert s["pearson_delta_top20"][0] == pytest.approx(1.0)
    assert s["mse_top20"][0] == pytest.approx((25 + 16) / 2)
    assert condition_scores(obs, np.zeros_like(obs))["pearson_delta"][0] == 0.0


def test_profile_tables_are_read_and_a_missing_plate_column_is_named(tmp_path):
    from aivc.data import load_profiles, read_profiles

    data = plate(n_features=5)
    table = data.obs.add_prefix("Metadata_").reset_index(drop=True)
    table[list(data.var_names)] = data.X
    path = tmp_path / "profiles.csv.gz"
    table.to_csv(path, index=False)
    back = read_profiles(path)
    assert back.shape == data.shape and np.allclose(back.X, data.X)
    assert list(back.var_names) == list(data.var_names)
    _, schema, name = load_profiles(str(path), compound_key="compound_name")
    assert schema.plate_key == "plate" and name == "profiles.csv.gz"
    table.drop(columns="Metadata_plate").to_csv(path, index=False)
    adata, schema, _ = load_profiles(str(path), compound_key="compound_name", plate_key="plate")
    with pytest.raises(DataValidationError, match="plate"):
        response_table(adata, schema)


def test_the_lincs_source_table_reads_as_the_registered_dataset(data_dir):
    from aivc.data import load, read_profiles

    folder = data_dir / "lincs_cellpainting_a549_compounds"
    raw = read_profiles(folder / "SQ00015054_normalized_feature_select.csv.gz")
    registered = load("lincs_cellpainting_a549")
    assert raw.shape == registered.shape == (384, 454)
    assert np.allclose(raw[:, registered.var_names].X, registered.X)
