"""Inverse design and explanations."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from aivc.data import DataValidationError
from aivc.experiments._design import _distance_with_interval, as_state, inverse_design
from aivc.experiments._explain import edge_precision, explain, gene_set_enrichment
from aivc.instruments import AdditiveModel


@pytest.fixture
def fitted(prepared):
    adata, schema = prepared
    return adata, schema, AdditiveModel().fit(adata, schema)


def _mean_of(adata, schema, label):
    cells = adata[adata.obs[schema.perturbation_key].astype(str) == label]
    return np.asarray(cells.X.mean(axis=0)).ravel()


def test_design_finds_the_perturbation_that_made_the_target(fitted):
    adata, schema, model = fitted
    single = next(p for p in model.train_perturbations_ if "+" not in p)
    target = adata[adata.obs[schema.perturbation_key].astype(str) == single]
    result = inverse_design(model, target=target, top_singles=5)
    assert result.best == single
    assert result.table["distance"].is_monotonic_increasing
    assert result.table["improvement"].iloc[0] > 0
    assert np.isclose(
        result.start_distance,
        np.linalg.norm(model.control_mean_[None] - _mean_of(adata, schema, single)),
    )
    # The path starts at the controls and ends at the best design.
    assert result.path["perturbation"].iloc[0] == schema.control_label
    assert result.path["perturbation"].iloc[-1] == single
    assert np.isnan(result.table["distance_low"]).all()  # additive gives no intervals


def test_design_finds_a_pair_and_its_path(fitted):
    _, _, model = fitted
    double = next(p for p in model.train_perturbations_ if "+" in p)
    a, b = double.split("+")
    # A target the additive model can reach exactly: the sum of the two single effects.
    target = model.predict_mean([f"{a}+{b}"])[0]
    result = inverse_design(model, target=target, candidates=[a, b, *model.genes_[:10]])
    assert set(result.best.split("+")) == {a, b}
    assert result.path.shape[0] == 3
    assert result.path["distance"].iloc[-1] <= result.path["distance"].iloc[0]


def test_design_rejects_bad_input(fitted):
    adata, _, model = fitted
    with pytest.raises(DataValidationError, match="expected one per model gene"):
        inverse_design(model, target=np.zeros(3))
    with pytest.raises(DataValidationError, match="NaN"):
        inverse_design(model, target=np.full(adata.n_vars, np.nan))
    with pytest.raises(DataValidationError, match="NOTAGENE"):
        inverse_design(model, target=np.zeros(adata.n_vars), candidates=["NOTAGENE"])
    with pytest.raises(ValueError, match="level"):
        inverse_design(model, target=np.zeros(adata.n_vars), level=1.5)
    with pytest.raises(DataValidationError, match="lacks"):
        as_state(pd.Series({"GENE000": 1.0}), list(adata.var_names))


def test_distance_interval_matches_monte_carlo():
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 1, (3, 200))
    scale = rng.uniform(0.1, 0.5, (3, 200))
    mean, low, high = _distance_with_interval(offset, scale, 0.9)
    draws = np.linalg.norm(
        offset[:, None, :] + scale[:, None, :] * rng.normal(size=(3, 4000, 200)), axis=2
    )
    assert np.allclose(mean, np.sqrt(np.mean(draws**2, axis=1)), rtol=0.01)
    inside = ((draws >= low[:, None]) & (draws <= high[:, None])).mean(axis=1)
    assert np.all(np.abs(inside - 0.9) < 0.03)


class _UncertainAdditive(AdditiveModel):
    """Additive predictions with a fixed per-gene spread, to exercise the interval path."""

    capabilities: ClassVar[frozenset[str]] = AdditiveModel.capabilities | {"uncertainty"}

    def _predict_interval(self, perturbations, *, contexts, doses, control, level):
        delta = self.predict_delta(perturbations, contexts=contexts, doses=doses, control=control)
        half = stats.norm.ppf(0.5 + level / 2) * 0.2
        return delta, delta - half, delta + half


def test_design_uses_model_intervals(prepared):
    adata, schema = prepared
    model = _UncertainAdditive().fit(adata, schema)
    single = next(p for p in model.train_perturbations_ if "+" not in p)
    result = inverse_design(model, target=_mean_of(adata, schema, single), pairs=False)
    row = result.table.iloc[0]
    assert row["distance_low"] <= row["distance"] <= row["distance_high"]
    assert np.isfinite(result.table["distance_high"]).all()


def test_gene_set_enrichment_matches_hypergeometric():
    universe = [f"G{i}" for i in range(100)]
    sets = [
        ("T1", "hit set", frozenset(universe[:10])),
        ("T2", "other", frozenset(universe[50:70])),
        ("T3", "outside", frozenset(["X1", "X2", "X3"])),
    ]
    table = gene_set_enrichment(universe[:8], universe, gene_sets=sets, min_overlap=1)
    assert list(table["term"]) == ["T1"]
    expected = stats.hypergeom.sf(8 - 1, 100, 10, 8)
    assert np.isclose(table["p_value"].iloc[0], expected)
    assert table["q_value"].iloc[0] >= table["p_value"].iloc[0]
    assert table["genes"].iloc[0] == ",".join(sorted(universe[:8]))


def test_edge_precision_perfect_and_random():
    n = 50
    targets = [np.array([1, 2, 3]), np.array([10, 11])]
    deltas = np.zeros((2, n))
    deltas[0, [1, 2, 3]] = [3.0, -2.0, 1.0]
    deltas[1, [10, 11]] = 1.0
    res = edge_precision(deltas, [0, 5], targets, k=2)
    assert res["precision"] == 1.0
    assert res["random_precision"] == pytest.approx((3 / 49 + 2 / 49) / 2)
    assert res["enrichment"] == pytest.approx(1 / res["random_precision"])
    with pytest.raises(ValueError, match="true target"):
        edge_precision(deltas[:1], [0], [np.array([0])])


@pytest.mark.slow
def test_explain_on_real_data(data_dir):
    from aivc.data import load, prepare, schema_of

    raw = load("papalexi2021")
    adata, schema = prepare(raw, schema_of(raw))
    model = AdditiveModel().fit(adata, schema)
    ex = explain(model, "IRF1", n_top=20)
    assert len(ex.top_genes) == 20
    assert ex.top_genes["delta"].abs().is_monotonic_decreasing
    assert "STAT1" in set(ex.neighbours["gene"])  # IRF1 and STAT1 interact in STRING
    assert set(ex.attribution["source"]) == {"go", "string", "huri"}
    assert {"term", "q_value"} <= set(ex.pathways.columns)
    assert ex.to_dict()["perturbation"] == "IRF1"
    with pytest.raises(DataValidationError, match="NOTAGENE"):
        explain(model, "NOTAGENE")


def test_design_and_explain_commands(fitted, tmp_path):
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    adata, schema, model = fitted
    model.save(tmp_path / "model")
    single = next(p for p in model.train_perturbations_ if "+" not in p)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "design",
            str(tmp_path / "model"),
            "--target",
            str(tmp_path / "cells.h5ad"),
            "--target-obs",
            f"{schema.perturbation_key}={single}",
            "--out",
            str(tmp_path / "design.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "design.csv")
    assert table["perturbation"].iloc[0] == single
    assert (tmp_path / "design_path.csv").exists()
    res = runner.invoke(
        app,
        [
            "design",
            str(tmp_path / "model"),
            "--target",
            str(tmp_path / "cells.h5ad"),
            "--target-obs",
            "nocolumn=1",
        ],
    )
    assert res.exit_code == 2
    assert "COLUMN=VALUE" in res.output
