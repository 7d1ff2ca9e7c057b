from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from aivc.evaluate import (
    centroid_accuracy,
    direction_acc_de20,
    energy_distance,
    mse_de20,
    pearson_delta,
    pearson_delta_de20,
    scaled_score,
    systema_pearson_delta,
    top_de_mask,
)


def test_pearson_matches_numpy_and_excludes_targets():
    rng = np.random.default_rng(0)
    obs, pred = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    exclude = np.zeros((3, 50), dtype=bool)
    exclude[:, 0] = True
    r = pearson_delta(pred, obs, exclude)
    for i in range(3):
        assert_allclose(r[i], np.corrcoef(pred[i, 1:], obs[i, 1:])[0, 1], rtol=1e-10)
    assert np.isnan(pearson_delta(np.zeros((1, 5)), obs[:1, :5]))[0]


def test_de20_metrics_and_mask():
    obs = np.array([[3.0, -2.0, 0.1, 0.2, 5.0]])
    pred = np.array([[2.0, 1.0, 0.1, 0.2, 5.0]])
    exclude = np.array([[False, False, False, False, True]])
    mask = top_de_mask([[4, 0, 1, 2, 3]], 5, exclude, k=2)
    assert mask.tolist() == [[True, True, False, False, False]]
    assert_allclose(mse_de20(pred, obs, mask), [(1 + 9) / 2])
    assert_allclose(direction_acc_de20(pred, obs, mask), [0.5])
    assert_allclose(pearson_delta_de20(pred, obs, mask), [1.0])


def test_systema_removes_shared_response():
    rng = np.random.default_rng(1)
    shared = rng.normal(size=40)
    obs = shared + 0.3 * rng.normal(size=(5, 40))
    ref = obs.mean(0)
    pred_shared = np.tile(ref, (5, 1))
    assert pearson_delta(pred_shared, obs).mean() > 0.8
    assert np.all(np.isnan(systema_pearson_delta(pred_shared, obs, ref)))
    assert systema_pearson_delta(obs, obs, ref).mean() == pytest.approx(1.0)


def test_centroid_accuracy_and_energy():
    obs = np.eye(4)
    assert centroid_accuracy(obs + 0.01, obs).tolist() == [1.0] * 4
    assert centroid_accuracy(obs[::-1], obs).sum() == 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    assert abs(energy_distance(x[:100], x[100:])) < 0.1
    assert energy_distance(x, x + 3) > 2


def test_scaled_score():
    assert scaled_score(0.5, 0.3, 0.7) == pytest.approx(0.5)
    assert scaled_score(0.1, 0.3, 0.7) == pytest.approx(-0.5)
    assert np.isnan(scaled_score(0.1, 0.3, 0.3))


def test_agrees_with_cell_eval(prepared):
    """aivc's pearson_delta and MAE agree with cell-eval's on the same predicted/real cells."""
    pytest.importorskip("cell_eval")
    from aivc.evaluate import cell_eval_metrics
    from aivc.instruments import LinearModel

    adata, schema = prepared
    model = LinearModel().fit(adata, schema)
    ctrl = adata[adata.obs["perturbation"] == "control"].copy()
    perts = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    pred = model.predict(perts, control=ctrl, n_cells=20, seed=1)
    table, _ = cell_eval_metrics(pred, adata, schema, metrics=("pearson_delta", "mae"))

    def means(a):
        lab = a.obs["perturbation"].astype(str).to_numpy()
        x = a.X.toarray()
        return {p: x[lab == p].mean(0) for p in [*perts, "control"]}

    mp, mr = means(pred), means(adata)
    for p in perts:
        dp, dr = mp[p] - mp["control"], mr[p] - mr["control"]
        ours = pearson_delta(dp[None], dr[None])[0]
        assert_allclose(ours, table.loc[p, "pearson_delta"], rtol=1e-4, atol=1e-5)
        assert_allclose(np.abs(mp[p] - mr[p]).mean(), table.loc[p, "mae"], rtol=1e-4, atol=1e-6)
