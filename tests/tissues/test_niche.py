"""Spatial graphs, the niche model and the decoders that read a cell's neighbourhood."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

from aivc.data._validate import DataValidationError
from aivc.tissues import (
    GeneImputer,
    NicheCellTyper,
    NicheModel,
    SpatialSchema,
    TissueManipulator,
    check_spatial,
    expression_components,
    neighbour_mean,
    niche_domains,
    spatial_blocks,
    spatial_graph,
)
from aivc.tissues._decode import choose_simplest


def _zoned_tissue(n: int = 1600, seed: int = 0) -> ad.AnnData:
    """Cells of two kinds (A, B) on a square; the left half is mostly A, the right mostly B.

    The label is the kind plus the zone ("A-left" ...): a cell's own counts
    say its kind, only its neighbours say its zone.
    """
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    left = xy[:, 0] < 50
    kind = np.where(rng.random(n) < np.where(left, 0.8, 0.2), "A", "B")
    means = np.where(
        (kind == "A")[:, None], [8.0, 8.0, 1.0, 1.0, 3, 3, 3, 3], [1.0, 1.0, 8.0, 8.0, 3, 3, 3, 3]
    )
    counts = rng.poisson(means * rng.uniform(0.7, 1.3, (n, 1)))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(
                np.char.add(kind.astype(str), np.where(left, "-left", "-right"))
            ),
            "zone": pd.Categorical(np.where(left, "left", "right")),
            "section": pd.Categorical(np.where(xy[:, 1] < 50, "s1", "s2")),
        },
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32) * 3), obs=obs)
    a.var_names = [f"g{j}" for j in range(counts.shape[1])]
    a.obsm["spatial"] = xy
    return a


@pytest.mark.parametrize("method", ["knn", "radius", "delaunay"])
def test_graphs_never_join_sections(method) -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 10, (200, 2))
    both = np.vstack([xy, xy])  # two sections on the very same coordinates
    sections = np.repeat(["a", "b"], 200)
    g = spatial_graph(both, sections, method=method, n_neighbors=6, radius=1.5).tocoo()
    assert g.nnz > 0
    assert_array_equal(sections[g.row], sections[g.col])
    assert (g.row != g.col).all()
    assert (abs(g - g.T)).nnz == 0  # symmetric


def test_knn_graph_finds_the_nearest_cells() -> None:
    xy = np.array([[0.0, 0], [1, 0], [10, 0], [11, 0]])
    g = spatial_graph(xy, method="knn", n_neighbors=1).toarray()
    assert_array_equal(g, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    assert_array_equal(
        neighbour_mean(sp.csr_matrix(g), np.arange(4.0)[:, None]).ravel(), [1, 0, 3, 2]
    )


def test_spatial_checks_say_what_is_wrong() -> None:
    a = _zoned_tissue(50)
    schema = SpatialSchema(section_key="section")
    check_spatial(a, schema)
    bad = a.copy()
    del bad.obsm["spatial"]
    with pytest.raises(DataValidationError, match="obsm\\['spatial'\\]"):
        check_spatial(bad, schema)
    bad = a.copy()
    bad.obsm["spatial"][3, 0] = np.nan
    with pytest.raises(DataValidationError, match="missing or infinite"):
        check_spatial(bad, schema)
    with pytest.raises(DataValidationError, match="section column"):
        check_spatial(a, SpatialSchema(section_key="slide"))
    with pytest.raises(ValueError, match="radius > 0"):
        spatial_graph(a.obsm["spatial"], method="radius")


def test_blocks_are_sections_or_tiles() -> None:
    a = _zoned_tissue(400)
    xy = a.obsm["spatial"]
    by_section = spatial_blocks(xy, a.obs["section"].to_numpy())
    assert len(np.unique(by_section)) == 2
    tiles = spatial_blocks(xy, None, n_blocks=5)
    assert set(np.unique(tiles)) == set(range(5))


def test_neighbourhood_wins_where_the_label_is_the_neighbourhood() -> None:
    a = _zoned_tissue()
    xy, labels = a.obsm["spatial"], a.obs["cell_type"].astype(str).to_numpy()
    graph = spatial_graph(xy, method="knn", n_neighbors=10)
    own = expression_components(a.X, n_components=4)
    blocks = spatial_blocks(xy, None, n_blocks=4, seed=0)
    test = blocks == 0
    niche = NicheModel(n_components=4, steps=60, seed=0).fit(a).transform(a)
    only = NicheCellTyper(candidates=("expression-only",)).fit(
        own, graph, labels, ~test, blocks, niche=niche
    )
    assert only.chosen_ == "expression-only" and only.scores_ == {}  # nothing to choose
    typer = NicheCellTyper().fit(own, graph, labels, ~test, blocks, niche=niche)
    assert set(typer.scores_) == {"expression-only", "neighbour-mean", "niche", "neighbour-types"}
    acc_only = (only.predict(np.flatnonzero(test)) == labels[test]).mean()
    acc = (typer.predict(np.flatnonzero(test)) == labels[test]).mean()
    assert typer.chosen_ != "expression-only"
    assert acc > acc_only + 0.2


def test_the_typer_keeps_expression_alone_where_neighbours_say_nothing() -> None:
    rng = np.random.default_rng(3)
    a = _zoned_tissue()
    a.obsm["spatial"] = rng.permutation(a.obsm["spatial"])  # neighbours carry no information
    labels = np.where(a.X[:, 0].toarray().ravel() > a.X[:, 2].toarray().ravel(), "A", "B")
    xy = a.obsm["spatial"]
    graph = spatial_graph(xy, n_neighbors=10)
    own = expression_components(a.X, n_components=4)
    blocks = spatial_blocks(xy, None, n_blocks=4)
    typer = NicheCellTyper(
        candidates=("expression-only", "neighbour-mean", "neighbour-types"), unknown=True
    )
    typer.fit(own, graph, labels, blocks != 0, blocks)
    assert typer.chosen_ == "expression-only"
    assert 0 < typer.threshold_ < 1
    assert set(typer.predict()) <= {"A", "B", "unknown"}


def test_choose_simplest_needs_a_clear_gain() -> None:
    names = ("simple", "complex")
    assert (
        choose_simplest(names, {"simple": [0.80, 0.70, 0.75], "complex": [0.81, 0.69, 0.77]})
        == "simple"
    )
    assert (
        choose_simplest(names, {"simple": [0.60, 0.50, 0.55], "complex": [0.81, 0.70, 0.77]})
        == "complex"
    )


def test_niche_model_round_trip_gives_identical_embeddings(tmp_path) -> None:
    a = _zoned_tissue(400)
    schema = SpatialSchema(section_key="section")
    model = NicheModel(n_components=4, n_latent=3, steps=20, seed=1).fit(a, schema)
    z = model.embed(a, schema)
    assert z.shape == (400, 3)
    assert_array_equal(a.obsm["X_niche"], z)
    again = NicheModel.load(model.save(tmp_path / "niche"))
    assert_array_equal(again.transform(a, schema), z)
    # the same seed trains the same model
    assert_array_equal(
        NicheModel(n_components=4, n_latent=3, steps=20, seed=1)
        .fit(a, schema)
        .transform(a, schema),
        z,
    )


def test_chunked_embedding_equals_the_torch_geometric_pass() -> None:
    import torch

    a = _zoned_tissue(300)
    model = NicheModel(n_components=4, n_latent=3, steps=5).fit(a)
    x = model.features(a)
    graph = model.spatial_graph(a)
    coo = graph.tocoo()
    edges = torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))
    with torch.no_grad():
        full = model.module_.encode(torch.from_numpy(x), edges).numpy()
    np.testing.assert_allclose(model.module_.embed_chunked(x, graph, chunk=64), full, atol=1e-5)


def test_sampled_subgraph_training_runs(monkeypatch) -> None:
    import aivc.tissues._niche as niche

    monkeypatch.setattr(niche, "FULL_GRAPH_CELLS", 100)
    a = _zoned_tissue(400)
    model = NicheModel(n_components=4, n_latent=3, steps=5, batch_cells=64).fit(a)
    assert np.isfinite(model.training_loss_)


@pytest.mark.parametrize("sampled", [False, True])
def test_two_processes_train_the_niche_model_in_step(monkeypatch, sampled) -> None:
    import aivc.tissues._niche as niche

    if sampled:  # the parent decides whole graph or sampled subgraphs, and tells the ranks
        monkeypatch.setattr(niche, "FULL_GRAPH_CELLS", 100)
    a = _zoned_tissue(400)
    schema = SpatialSchema(section_key="section")
    params = {"n_components": 4, "n_latent": 3, "steps": 30, "batch_cells": 64, "seed": 2}
    one = NicheModel(**params).fit(a, schema)
    two = NicheModel(**params, n_processes=2).fit(a, schema)
    # the ranks ended with identical weights (checked after training), on gloo
    assert two.ddp_ == {"processes": 2, "backend": "gloo", "ranks_in_sync": True}
    assert one.ddp_ is None
    z1, z2 = one.transform(a, schema), two.transform(a, schema)
    assert z2.shape == z1.shape and np.isfinite(z2).all()
    assert not np.array_equal(z1, z2)  # each rank's half of the batch: not the same numbers
    # the same training, as well: the final loss of 2 processes within a third of one's
    assert abs(two.training_loss_ - one.training_loss_) < 0.34 * one.training_loss_
    with pytest.raises(ValueError, match="n_processes"):
        NicheModel(n_processes=0).fit(a, schema)


def test_domains_follow_the_zones() -> None:
    from sklearn.metrics import adjusted_rand_score

    a = _zoned_tissue()
    graph = spatial_graph(a.obsm["spatial"], n_neighbors=15)
    own = expression_components(a.X, n_components=4)
    zones = a.obs["zone"].to_numpy()
    smoothed = niche_domains(own, graph, 2, hops=3)
    alone = niche_domains(own, None, 2, hops=0)
    assert adjusted_rand_score(zones, smoothed) > adjusted_rand_score(zones, alone) + 0.2


def test_imputers_choose_on_training_data() -> None:
    rng = np.random.default_rng(0)
    n = 600
    z = rng.normal(size=(n, 3))
    x = z @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(n, 8))
    y = z @ rng.normal(size=(3, 2))
    xy = rng.uniform(0, 10, (n, 2))
    graph = spatial_graph(xy, n_neighbors=5)
    blocks = spatial_blocks(xy, None, n_blocks=4)
    imp = GeneImputer()
    pred = imp.within_panel(x, y, graph, blocks != 0, blocks)
    assert imp.chosen_ == "expression-only"  # neighbours add nothing here
    assert np.corrcoef(pred[blocks == 0, 0], y[blocks == 0, 0])[0, 1] > 0.9
    ref = GeneImputer(n_folds=2)
    out = ref.from_reference(x[:300], x[300:], y[300:], graph=None)
    assert out.shape == (300, 2)
    assert ref.chosen_ in ref.scores_


def test_manipulator_finds_the_neighbour_gene_that_acts() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    xy = rng.uniform(0, 100, (n, 2))
    types = np.where(rng.random(n) < 0.5, "sender", "receiver")
    sections = np.zeros(n, dtype=int)
    graph = spatial_graph(xy, n_neighbors=10)
    ligand = np.where(types == "sender", rng.gamma(4, 0.5, n), 0.0)
    x = rng.normal(0, 0.2, (n, 4)) + 2.0
    x[:, 0] = ligand
    x[:, 3] += np.where(
        types == "receiver", 1.5 * neighbour_mean(graph, ligand[:, None]).ravel(), 0.0
    )
    model = TissueManipulator(sizes=(10,)).fit(x, xy, sections, types)
    after = x.copy()
    after[:, 0] = 0.0
    change = model.predict_change(x, xy, sections, types, x_after=after)
    truth = np.where(
        types == "receiver", -1.5 * neighbour_mean(graph, ligand[:, None]).ravel(), 0.0
    )
    rec = types == "receiver"
    assert np.corrcoef(change[rec, 3], truth[rec])[0, 1] > 0.8
    # senders barely move, bar their own ligand column, which knocks out directly anyway
    assert np.abs(change[~rec, 1:]).max() < 0.1
    why = model.explain(
        x, after, xy, sections, types, ["L", "a", "b", "T"], np.flatnonzero(rec)[:3], top=1
    )
    assert (why["neighbour_gene"] == "L").all()
    edges = model.edge_scores(x, xy, sections, types)
    top = edges.nlargest(500, "score")
    assert (types[top["sender"]] == "sender").mean() > 0.9
    assert (types[top["receiver"]] == "receiver").mean() > 0.9
