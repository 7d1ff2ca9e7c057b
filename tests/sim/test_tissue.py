"""The spatial mode of the simulator (virtual tissue)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.sim import SignallingPathway, TissueState, TissueTruth, VirtualTissue, simulate_tissue

ATOL = 1e-10


@pytest.fixture(scope="module")
def tissue() -> VirtualTissue:
    return VirtualTissue(n_genes=150, seed=0).build()


@pytest.fixture(scope="module")
def layout(tissue: VirtualTissue) -> pd.DataFrame:
    return tissue.layout(2000, seed=0)


def _brute_signals(tissue: VirtualTissue, layout: pd.DataFrame) -> np.ndarray:
    lig = tissue.ligand_levels_.loc[layout["cell_type"].astype(str)].to_numpy()
    rec = tissue.receptor_levels_.loc[layout["cell_type"].astype(str)].to_numpy()
    if "knockout" in layout.columns:
        for i, p in enumerate(tissue.pathways_):
            lig[(layout["knockout"] == p.ligand).to_numpy(), i] = 0.0
            rec[(layout["knockout"] == p.receptor).to_numpy(), i] = 0.0
    xy = layout[["x", "y"]].to_numpy()
    dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    sec = layout["section"].to_numpy()
    near = (dist <= tissue.radius) & (sec[:, None] == sec[None]) & ~np.eye(len(xy), dtype=bool)
    mean = near @ lig / np.maximum(near.sum(1), 1)[:, None]
    return rec * mean


def _had_neighbour(tissue: VirtualTissue, layout: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Whether each cell has a cell of ``mask`` within the radius in its section."""
    xy = layout[["x", "y"]].to_numpy()
    sec = layout["section"].to_numpy()
    out = np.zeros(len(layout), dtype=bool)
    for j in np.flatnonzero(mask):
        near = np.hypot(*(xy - xy[j]).T) <= tissue.radius
        out |= near & (sec == sec[j])
    return out


def test_pathways_are_ligand_receptor_pairs_acting_on_regulators(tissue: VirtualTissue) -> None:
    sim = tissue.simulator_
    net = sim.network_
    genes = sim.genes
    assert len(tissue.pathways_) == 3
    for p in tissue.pathways_:
        assert isinstance(p, SignallingPathway)
        for g in (p.ligand, p.receptor):
            assert genes.index(g) not in set(net.regulators.tolist())
        t = genes.index(p.target)
        assert t in set(net.regulators.tolist()) and t not in set(net.master_regulators.tolist())
        assert len(net.targets_of(p.target)) >= 3
        assert set(p.senders) == set(
            tissue.ligand_levels_.index[tissue.ligand_levels_[p.name] > 0.5]
        )
        assert set(p.receivers) == set(
            tissue.receptor_levels_.index[tissue.receptor_levels_[p.name] > 0.5]
        )
        assert p.strength > 0


def test_layout_sections_bands_and_compositions(tissue: VirtualTissue, layout) -> None:
    assert list(layout.columns) == ["section", "x", "y", "region", "cell_type"]
    assert layout.index[0] == "cell_0000001" and layout.index.is_unique
    assert list(layout["section"].cat.categories) == ["S1", "S2"]
    assert layout["section"].value_counts().tolist() == [1000, 1000]
    side = np.sqrt(1000 / tissue.density)
    assert layout[["x", "y"]].to_numpy().min() >= 0 and layout[["x", "y"]].to_numpy().max() < side
    # regions are horizontal bands of equal height
    band = np.floor(layout["y"] / side * tissue.n_layers).astype(int) + 1
    assert (layout["region"].astype(str) == "layer_" + band.astype(str)).all()
    comp = tissue.layer_composition_
    assert comp.shape == (4, 5) and np.allclose(comp.sum(1), 1.0)
    observed = pd.crosstab(layout["region"], layout["cell_type"], normalize="index")
    observed = observed.reindex(index=comp.index, columns=comp.columns, fill_value=0.0)
    n = layout["region"].value_counts().reindex(comp.index).to_numpy()[:, None]
    tol = 4 * np.sqrt(comp * (1 - comp) / n) + 0.01
    assert (np.abs(observed - comp) <= tol).all().all()
    assert (observed.to_numpy().argmax(1) == comp.to_numpy().argmax(1)).all()
    # deterministic in the seed
    pd.testing.assert_frame_equal(tissue.layout(2000, seed=0), layout)
    assert not np.array_equal(tissue.layout(2000, seed=1)["x"], layout["x"])


def test_signals_match_brute_force_within_sections(tissue: VirtualTissue) -> None:
    small = tissue.knock_out(
        tissue.layout(300, seed=3), tissue.pathways_[0].ligand, np.arange(300) < 60
    )
    s = tissue.signals(small)
    assert list(s.columns) == ["P1", "P2", "P3"] and s.index.equals(small.index)
    np.testing.assert_allclose(s.to_numpy(), _brute_signals(tissue, small), rtol=0, atol=1e-12)
    assert s.to_numpy().min() >= 0 and s.to_numpy().max() <= 1
    # the edges add up to the signals
    e = tissue.edges(small)
    assert (e["weight"] > 0).all() and (e["sender"] != e["receiver"]).all()
    total = e.groupby(["receiver", "pathway"], observed=False)["weight"].sum().unstack()
    np.testing.assert_allclose(total.reindex(small.index).to_numpy(), s.to_numpy(), atol=1e-12)
    # two sections on the same coordinates do not talk to each other
    twin = tissue.layout(400, seed=4)
    s2 = twin["section"] == "S2"
    twin.loc[s2, ["x", "y"]] = twin.loc[~s2, ["x", "y"]].to_numpy()
    twin.loc[s2, "cell_type"] = tissue.pathways_[0].senders[0]
    alone = tissue.signals(twin.loc[~s2])
    pd.testing.assert_frame_equal(tissue.signals(twin).loc[~s2], alone)


def test_ligand_knockout_changes_only_receiving_cells(tissue: VirtualTissue, layout) -> None:
    p = tissue.pathways_[0]
    # cells without the receptor receive nothing and must not change
    base = tissue.knock_out(layout, p.receptor, np.arange(len(layout)) % 3 == 0)
    before = tissue.true_state(base)
    senders = base["cell_type"].isin(p.senders).to_numpy()
    after = tissue.true_state(tissue.knock_out(base, p.ligand, senders))
    received = (before.signals[p.name] > 0).to_numpy()
    assert 0 < received.sum() < len(base)
    assert (after.signals[p.name].to_numpy() <= before.signals[p.name].to_numpy() + 1e-12).all()
    a, b = before.cell_log_mean(), after.cell_log_mean()
    ligand = list(before.gene_names).index(p.ligand)
    other = np.arange(a.shape[1]) != ligand
    changed = ~np.isclose(a[:, other], b[:, other], rtol=0, atol=ATOL).all(1)
    assert changed.any()
    assert not (changed & ~received).any()
    # the knocked-out cells lose the ligand, nobody else's ligand changes
    lig_changed = ~np.isclose(a[:, ligand], b[:, ligand], rtol=0, atol=ATOL)
    assert (lig_changed[senders]).all() and not (lig_changed & ~senders & ~received).any()
    # cells whose signal level is unchanged keep their state
    lvl = before.conditions[p.name].to_numpy()[before.condition]
    same = lvl == after.conditions[p.name].to_numpy()[after.condition]
    np.testing.assert_allclose(a[same][:, other], b[same][:, other], rtol=0, atol=ATOL)


def test_removing_a_cell_type_changes_only_its_neighbours(tissue: VirtualTissue, layout) -> None:
    region = "layer_3"
    cell_type = tissue.layer_composition_.loc[region].idxmax()
    fewer = tissue.remove_cells(layout, cell_type, region)
    gone = ((layout["cell_type"] == cell_type) & (layout["region"] == region)).to_numpy()
    assert gone.sum() > 50 and len(fewer) == len(layout) - gone.sum()
    assert not fewer.index.isin(layout.index[gone]).any()
    truth = TissueTruth(
        state=tissue.true_state(layout), edges=pd.DataFrame(), pathways=(), layout=layout
    )
    effect = truth.effect(tissue.true_state(fewer))
    assert effect.index.equals(fewer.index) and effect.shape[1] == tissue.n_genes
    changed = (np.abs(effect.to_numpy()) > ATOL).any(1)
    near = _had_neighbour(tissue, layout, gone)[~gone]
    assert changed.any() and not (changed & ~near).any()


def test_signals_shift_the_target_programs(tissue: VirtualTissue, layout) -> None:
    state = tissue.true_state(layout)
    genes = list(state.gene_names)
    programs = []
    for p in tissue.pathways_:
        level = state.conditions[p.name].to_numpy()[state.condition]
        receivers = layout["cell_type"].isin(p.receivers).to_numpy()
        top = receivers & (level >= level[receivers].max() - 1)
        silenced = tissue.true_state(tissue.knock_out(layout, p.receptor))
        assert (silenced.signals[p.name] == 0).all()
        effect = state.effect(silenced).to_numpy()[top]
        assert np.median(effect[:, genes.index(p.target)]) < -0.1
        programs.append(np.median((np.abs(effect) > 0.1).sum(1)))
    assert max(programs) >= 4


def test_simulate_is_deterministic_and_measured_only(tissue: VirtualTissue, layout) -> None:
    adata, truth = tissue.simulate(layout=layout, seed=1)
    again, _ = VirtualTissue(n_genes=150, seed=0).build().simulate(layout=layout, seed=1)
    other, _ = tissue.simulate(layout=layout, seed=2)
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != again.X).nnz == 0 and (adata.X != other.X).nnz > 0
    assert np.array_equal(adata.X.data, np.round(adata.X.data)) and adata.X.data.min() > 0
    assert adata.obsm["spatial"].shape == (2000, 2) and adata.obsm["spatial"].dtype == np.float64
    assert list(adata.obs.columns) == ["section", "region", "cell_type"]
    assert adata.uns["aivc_spatial"]["section_key"] == "section"
    assert list(adata.var_names) == tissue.simulator_.genes
    assert not {"log_mean", "truth"} & set(adata.uns)
    assert truth.state.cell_log_mean().shape == (2000, tissue.n_genes)
    assert len(truth.edges) and truth.pathways == tissue.pathways_
    # a gene panel and knockouts
    panel = tissue.simulator_.genes[:40]
    ko = tissue.knock_out(layout, panel[0], layout.index[:10])
    sub, _ = tissue.simulate(layout=ko, seed=1, genes=panel)
    assert sub.shape == (2000, 40) and sub.obs["knockout"].iloc[0] == panel[0]
    assert sub[:10, panel[0]].X.sum() == 0
    with pytest.raises(ValueError, match="Unknown gene"):
        tissue.simulate(layout=layout, genes=["G0001", "NOPE"])
    small, small_truth = simulate_tissue(300, n_genes=60, n_pathways=2, seed=3)
    assert small.shape == (300, 60) and len(small_truth.pathways) == 2


def test_bad_input_is_refused(tissue: VirtualTissue, layout) -> None:
    with pytest.raises(ValueError, match="Unknown gene 'G9999'"):
        tissue.knock_out(layout, "G9999")
    with pytest.raises(ValueError, match="Unknown cell type"):
        tissue.remove_cells(layout, "type_Z")
    with pytest.raises(ValueError, match="columns"):
        tissue.signals(layout.drop(columns="region"))
    with pytest.raises(ValueError, match="n_cells"):
        tissue.layout(0)
    with pytest.raises(ValueError, match="radius"):
        VirtualTissue(n_genes=60, radius=0).build()
    ko = tissue.knock_out(tissue.knock_out(layout, "G0001", layout.index[:2]), "G0002")
    assert ko["knockout"].iloc[0] == "G0001+G0002" and ko["knockout"].iloc[5] == "G0002"
    assert "knockout" not in layout.columns


def test_truth_round_trips(tissue: VirtualTissue, tmp_path) -> None:
    lay = tissue.knock_out(tissue.layout(400, seed=5), "G0003", np.arange(400) < 7)
    _, truth = tissue.simulate(layout=lay, seed=0)
    path = truth.save(tmp_path / "t.truth.npz")
    back = TissueTruth.load(path)
    assert isinstance(back.state, TissueState)
    assert back.pathways == truth.pathways and back.params == truth.params
    assert np.array_equal(back.state.condition, truth.state.condition)
    assert np.array_equal(back.state.log_mean, truth.state.log_mean)
    assert back.state.gene_names == truth.state.gene_names
    for name in ("conditions", "signals"):
        pd.testing.assert_frame_equal(getattr(back.state, name), getattr(truth.state, name))
    pd.testing.assert_frame_equal(back.edges, truth.edges)
    pd.testing.assert_frame_equal(back.layout, truth.layout)
    assert (truth.effect(back).to_numpy() == 0).all()
    with pytest.raises(FileNotFoundError):
        TissueTruth.load(tmp_path / "missing.npz")


def test_cli_writes_a_spatial_simulation(tmp_path) -> None:
    import anndata as ad
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    out = tmp_path / "x.h5ad"
    res = CliRunner().invoke(
        app, ["simulate", "--spatial", "--cells", "2000", "--genes", "150", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "sections" in res.output and "x.truth.npz" in res.output
    adata = ad.read_h5ad(out)
    assert adata.shape == (2000, 150) and adata.obsm["spatial"].shape == (2000, 2)
    truth = TissueTruth.load(tmp_path / "x.truth.npz")
    assert truth.layout.index.equals(adata.obs_names)
    bad = CliRunner().invoke(app, ["simulate", "--spatial", "--out", str(tmp_path / "x.zarr")])
    assert bad.exit_code != 0 and ".h5ad" in bad.output
