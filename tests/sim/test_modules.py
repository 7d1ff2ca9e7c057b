"""Functional modules (complexes, pathways) and the simulated knowledge base."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aivc.sim import (
    GroundTruth,
    KnowledgeQuality,
    VirtualCellSimulator,
    simulated_knowledge,
    write_knowledge,
    write_simulation,
)


@pytest.fixture(scope="module")
def world() -> VirtualCellSimulator:
    return VirtualCellSimulator(n_genes=300, module_fraction=0.15, seed=1).build()


def _effects(sim: VirtualCellSimulator, genes: list[str], modality: str = "knockout") -> np.ndarray:
    design = pd.DataFrame(
        {
            "perturbation": ["control", *genes],
            "cell_type": sim.cell_types[0],
            "modality": modality,
            "n_cells": 1,
        }
    )
    log_mean = np.log1p(sim.solve(sim.normalize_design(design)).mean)
    return log_mean[1:] - log_mean[0]


def test_a_complex_members_knockout_gives_the_complexs_phenotype(world) -> None:
    m = world.modules_
    assert m.n_modules >= 3 and set(m.kind) == {"complex", "pathway"}
    genes = world.genes
    for k in range(m.n_modules):
        members = [genes[i] for i in m.members(k)]
        out = genes[m.output[k]]
        d = _effects(world, [out, *members])
        others = np.ones(len(genes), dtype=bool)
        others[m.module_genes(k)] = False  # each knockout also removes its own gene
        assert np.abs(d[0][others]).sum() > 0.1  # the module's output acts on its targets
        for row in d[1:]:
            # any member's loss removes the output's activity: the same phenotype elsewhere
            np.testing.assert_allclose(row[others], d[0][others], atol=1e-6)


def test_complexes_buffer_knockdowns_and_pathways_pass_them_on(world) -> None:
    m = world.modules_
    genes = world.genes
    shares = {}
    for kind in ("complex", "pathway"):
        k = int(np.flatnonzero(m.kind == kind)[0])
        member = genes[m.members(k)[0]]
        d_ko = _effects(world, [member])[0]
        d_kd = _effects(world, [member], modality="knockdown")[0]
        others = np.ones(len(genes), dtype=bool)
        others[m.module_genes(k)] = False
        shares[kind] = np.abs(d_kd[others]).sum() / np.abs(d_ko[others]).sum()
    # a 70 % knockdown of a subunit leaves most of a complex; a pathway loses more of its signal
    assert shares["complex"] < shares["pathway"]
    assert shares["complex"] < 0.5


def test_modules_are_off_by_default_and_seeded() -> None:
    plain = VirtualCellSimulator(n_genes=200, seed=3).build()
    assert plain.modules_.n_modules == 0
    a = VirtualCellSimulator(n_genes=200, module_fraction=0.2, seed=3).build()
    b = VirtualCellSimulator(n_genes=200, module_fraction=0.2, seed=3).build()
    np.testing.assert_array_equal(a.modules_.member_gene, b.modules_.member_gene)
    np.testing.assert_array_equal(a.modules_.output, b.modules_.output)
    # members are transcribed constitutively: no regulator acts on them
    assert not np.isin(a.network_.target, a.modules_.member_gene).any()
    assert not np.isin(a.modules_.member_gene, a.network_.regulators).any()
    assert len(set(a.modules_.output.tolist())) == a.modules_.n_modules
    with pytest.raises(ValueError, match="module_fraction"):
        VirtualCellSimulator(n_genes=200, module_fraction=1.5).build()


@pytest.mark.parametrize("fn, fp", [(0.3, 0.2), (0.6, 0.1)])
def test_knowledge_noise_rates_are_what_was_asked(world, fn: float, fp: float) -> None:
    tables = simulated_knowledge(world.network_, world.modules_, KnowledgeQuality(fn, fp, 0.0))
    records = tables["truth_records.tsv.gz"]
    summary = records.attrs["summary"]
    for kind, n_true in (
        ("annotation", summary["true_annotations"]),
        ("string", summary["true_string_pairs"]),
    ):
        rows = records[records["kind"] == kind]
        missed = 1.0 - rows["true"].sum() / n_true
        spurious = 1.0 - rows["true"].mean()
        # binomial sampling error (3 sd); duplicates of spurious records are dropped, so
        # the spurious share may fall a little below what was asked
        assert abs(missed - fn) < 3 * np.sqrt(fn * (1 - fn) / n_true) + 0.01
        assert fp - 0.04 < spurious < fp + 3 * np.sqrt(fp * (1 - fp) / len(rows)) + 0.01
    perfect = simulated_knowledge(world.network_, world.modules_, "perfect")
    assert perfect["truth_records.tsv.gz"]["true"].all()


def test_study_bias_favours_hubs(world) -> None:
    tables = simulated_knowledge(world.network_, world.modules_, KnowledgeQuality(0.5, 0.3, 2.0))
    ann = tables["human_go_annotations.tsv.gz"]
    hubs = world.network_.gene_names[world.network_.regulators]
    per_gene = ann.groupby("symbol").size()
    assert per_gene.reindex(hubs).fillna(0).mean() > per_gene.mean()


def test_same_seed_same_knowledge_and_genes_embeds_it(world, tmp_path, monkeypatch) -> None:
    from aivc.genes import go_embedding
    from aivc.genes._networks import network_embedding

    a = simulated_knowledge(world.network_, world.modules_, "good", seed=4)
    b = simulated_knowledge(world.network_, world.modules_, "good", seed=4)
    c = simulated_knowledge(world.network_, world.modules_, "good", seed=5)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["human_go_annotations.tsv.gz"].equals(c["human_go_annotations.tsv.gz"])
    folder = write_knowledge(tmp_path / "kb", a)
    monkeypatch.setenv("AIVC_CACHE_DIR", str(tmp_path / "cache"))
    go = go_embedding(data_dir=folder, n_components=8, cache=False)
    string = network_embedding("string", data_dir=folder, n_components=8, cache=False)
    assert go.shape[1] == 8 and len(go) > 100
    assert set(string.index) <= set(world.genes)
    # partners sit together: module members are closer to each other than to random genes
    m = world.modules_
    z = go.to_numpy()
    pos = {g: i for i, g in enumerate(go.index)}
    within, between = [], []
    rng = np.random.default_rng(0)
    for k in range(m.n_modules):
        genes = [world.genes[i] for i in m.module_genes(k) if world.genes[i] in pos]
        for i, g in enumerate(genes):
            for h in genes[i + 1 :]:
                within.append(z[pos[g]] @ z[pos[h]])
                between.append(z[pos[g]] @ z[rng.integers(len(z))])
    assert np.mean(within) > np.mean(between) + 0.2


def test_simulate_writes_truth_with_modules_and_the_knowledge_base(tmp_path) -> None:
    files = write_simulation(
        tmp_path / "w.h5ad",
        n_cells=500,
        n_genes=120,
        seed=2,
        simulator={"module_fraction": 0.2},
        knowledge="typical",
    )
    truth = GroundTruth.load(files.truth)
    assert truth.modules.n_modules > 0
    assert truth.params["module_fraction"] == 0.2
    assert files.knowledge == tmp_path / "w.knowledge"
    assert (files.knowledge / "genes" / "human_go_annotations.tsv.gz").exists()
    with pytest.raises(ValueError, match="knowledge quality"):
        write_simulation(tmp_path / "x.h5ad", n_cells=100, n_genes=60, knowledge="great")
    with pytest.raises(ValueError, match="simulator parameter"):
        write_simulation(tmp_path / "y.h5ad", n_cells=100, n_genes=60, simulator={"bogus": 1})


def test_same_world_same_files_and_other_worlds_differ(tmp_path) -> None:
    import anndata as ad

    from aivc.sim import WORLD_PRESETS, write_world

    a = write_world(tmp_path / "a.h5ad", 7, n_cells=600, n_genes=150)
    b = write_world(tmp_path / "b.h5ad", 7, n_cells=600, n_genes=150)
    c = write_world(tmp_path / "c.h5ad", 8, n_cells=600, n_genes=150)
    xa, xb, xc = (ad.read_h5ad(f.data).X for f in (a, b, c))
    assert (xa != xb).nnz == 0
    assert xa.shape != xc.shape or (xa != xc).nnz > 0
    for name in ("human_go_annotations.tsv.gz", "string_v12_human_notextmining_700_top3.tsv.gz"):
        ka = pd.read_csv(a.knowledge / "genes" / name, sep="\t")
        kb = pd.read_csv(b.knowledge / "genes" / name, sep="\t")
        pd.testing.assert_frame_equal(ka, kb)
    truth = GroundTruth.load(a.truth)
    small = WORLD_PRESETS["small"]
    assert truth.params["module_fraction"] == small.module_fraction
    assert truth.params["seed"] == 7 and len(truth.cell_types) == small.n_cell_types
    with pytest.raises(ValueError, match="preset"):
        write_world(tmp_path / "d.h5ad", 1, preset="huge")


def test_cli_writes_a_world(tmp_path) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    out = tmp_path / "w.h5ad"
    res = CliRunner().invoke(
        app, ["simulate", "--world", "2", "--cells", "500", "--genes", "100", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "knowledge base" in res.output
    assert (tmp_path / "w.knowledge" / "genes" / "go_terms.tsv.gz").exists()
    bad = CliRunner().invoke(
        app, ["simulate", "--world", "2", "--preset", "nope", "--out", str(out)]
    )
    assert bad.exit_code != 0 and "preset" in bad.output


def test_string_records_only_its_share_of_regulatory_pairs(world) -> None:
    net, mods = world.network_, world.modules_
    n_reg = len(
        {tuple(sorted(p)) for p in zip(net.source, net.target, strict=True) if p[0] != p[1]}
    )

    def true_pairs(share: float) -> int:
        tables = simulated_knowledge(net, mods, "perfect", regulatory_share=share)
        return int(tables["truth_records.tsv.gz"].attrs["summary"]["true_string_pairs"])

    everything, physical_only, tenth = true_pairs(1.0), true_pairs(0.0), true_pairs(0.1)
    assert everything - physical_only == pytest.approx(n_reg, abs=n_reg * 0.05 + 2)
    expected = physical_only + 0.1 * (everything - physical_only)
    assert abs(tenth - expected) < 4 * np.sqrt(0.1 * 0.9 * (everything - physical_only)) + 1
    with pytest.raises(ValueError, match="regulatory_share"):
        simulated_knowledge(net, mods, "good", regulatory_share=1.5)
