"""Tests of the mechanistic simulator (aivc.sim)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import aivc.data
from aivc.sim import (
    CONTROL,
    DrugLibrary,
    GroundTruth,
    Kinetics,
    MeasurementModel,
    VirtualCellSimulator,
    VirtualLab,
    default_design,
    random_network,
    simulation_schema,
    write_simulation,
)


@pytest.fixture(scope="module")
def sim() -> VirtualCellSimulator:
    return VirtualCellSimulator(n_genes=300, seed=7).build()


def _lfc(means: pd.DataFrame, label: str) -> np.ndarray:
    return np.log(means.loc[label].to_numpy() + 1e-9) - np.log(means.loc[CONTROL].to_numpy() + 1e-9)


# ------------------------------------------------------------------- network
def test_network_shape() -> None:
    net = random_network(n_genes=2000, seed=3)
    out_deg = net.out_degree()
    in_deg = net.in_degree()
    assert 0.02 < len(net.regulators) / net.n_genes < 0.2
    assert set(np.flatnonzero(out_deg)) <= set(net.regulators.tolist())
    assert in_deg.max() <= 8
    # heavy tail: the largest hub regulates far more genes than the median regulator
    assert out_deg[net.regulators].max() > 8 * np.median(out_deg[net.regulators])
    assert (net.sign > 0).any() and (net.sign < 0).any()
    assert net.feedback.sum() >= 2
    assert np.all(net.source != net.target)


def test_network_is_seeded() -> None:
    a, b, c = (
        random_network(n_genes=200, seed=1),
        random_network(n_genes=200, seed=1),
        random_network(n_genes=200, seed=2),
    )
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.n_edges != c.n_edges or not np.array_equal(a.source, c.source)


def test_steady_state_is_a_fixed_point(sim: VirtualCellSimulator) -> None:
    kin = Kinetics(sim.network_)
    inputs = kin.neutral_inputs(2)
    inputs.scale[:, sim.network_.master_regulators] = sim.master_levels_
    ss = kin.steady_state(inputs)
    assert ss.converged.all()
    np.testing.assert_allclose(kin.derivative(ss.x, inputs), 0.0, atol=1e-6 * ss.x.max())
    # cell types differ
    assert np.abs(np.log(ss.x[0] + 1e-9) - np.log(ss.x[1] + 1e-9)).max() > 1.0


def test_noise_propagation_matches_finite_differences(sim: VirtualCellSimulator) -> None:
    kin = sim.kinetics_
    inputs = kin.neutral_inputs(1)
    inputs.scale[:, sim.network_.master_regulators] = sim.master_levels_[0]
    x = kin.steady_state(inputs, x0=sim.control_states_[:1]).x
    loadings = sim.variation_.loadings
    sens = kin.propagate(x, inputs, loadings)[0]
    eps = 1e-5
    for j in range(loadings.shape[0]):
        factor = np.exp(eps * loadings[j])
        shifted = kin.neutral_inputs(1)
        shifted.scale[:] = inputs.scale * factor
        shifted.add[:] = inputs.add * factor
        x2 = kin.steady_state(shifted, x0=x, tol=1e-13).x
        numeric = (np.log(x2) - np.log(x))[0] / eps
        np.testing.assert_allclose(sens[j], numeric, atol=2e-3 * max(1.0, np.abs(numeric).max()))


# -------------------------------------------------------------- interventions
def test_knockout_of_gene_without_targets_changes_only_itself(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    leaf = next(g for g in np.flatnonzero(net.out_degree() == 0) if sim.control_states_[0, g] > 1.0)
    name = str(net.gene_names[leaf])
    means = sim.true_means([CONTROL, name], cell_type="type_A")
    lfc = _lfc(means, name)
    assert means.loc[name].iloc[leaf] == 0.0
    others = np.delete(np.arange(net.n_genes), leaf)
    np.testing.assert_allclose(
        means.loc[name].to_numpy()[others], means.loc[CONTROL].to_numpy()[others], rtol=1e-7
    )
    assert np.abs(lfc[others]).max() < 1e-6


def test_knockout_of_hub_moves_targets_along_edge_signs(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    hub = int(net.regulators[np.argmax(net.out_degree()[net.regulators])])
    name = str(net.gene_names[hub])
    means = sim.true_means([CONTROL, name], cell_type="type_A")
    lfc = _lfc(means, name)
    edges = net.source == hub
    targets, signs = net.target[edges], net.sign[edges]
    moved = np.abs(lfc[targets]) > 1e-3
    assert moved.mean() > 0.8
    # losing an activator lowers its targets; losing a repressor raises them
    agree = np.sign(lfc[targets][moved]) == -signs[moved]
    assert agree.mean() > 0.85
    assert len(targets) >= 10


def test_context_dependence(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    hub = str(net.gene_names[net.regulators[np.argmax(net.out_degree()[net.regulators])]])
    a = _lfc(sim.true_means([CONTROL, hub], cell_type="type_A"), hub)
    b = _lfc(sim.true_means([CONTROL, hub], cell_type="type_B"), hub)
    assert np.abs(a - b).max() > 0.1


def test_knockdown_is_partial_and_activation_raises(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    leaf = next(g for g in np.flatnonzero(net.out_degree() == 0) if sim.control_states_[0, g] > 1.0)
    name = str(net.gene_names[leaf])
    ko = sim.true_means([CONTROL, name], modality="knockout").loc[name].iloc[leaf]
    kd = sim.true_means([CONTROL, name], modality="knockdown")
    act = sim.true_means([CONTROL, name], modality="activation")
    ctrl = kd.loc[CONTROL].iloc[leaf]
    assert ko == 0.0
    np.testing.assert_allclose(
        kd.loc[name].iloc[leaf] / ctrl, 1 - sim.knockdown_efficiency, rtol=1e-6
    )
    assert act.loc[name].iloc[leaf] > 2 * ctrl


def test_doubles_are_not_additive(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    regs = net.regulators[np.argsort(-net.out_degree()[net.regulators])][:6]
    names = [str(net.gene_names[r]) for r in regs]
    pairs = [f"{a}+{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    means = sim.true_means([CONTROL, *names, *pairs], cell_type="type_A")
    deviations = []
    for p in pairs:
        a, b = p.split("+")
        dev = _lfc(means, p) - (_lfc(means, a) + _lfc(means, b))
        deviations.append(np.abs(dev[np.isfinite(dev)]).max())
    assert np.max(deviations) > 0.1
    assert np.mean(np.asarray(deviations) > 1e-3) > 0.5


def test_drug_dose_response_is_monotone(sim: VirtualCellSimulator) -> None:
    net = sim.network_
    reg_pos = net.regulator_index()
    # a gene regulated by exactly one regulator responds monotonically to a drug on that regulator
    single = np.flatnonzero((net.in_degree() == 1) & ~net.is_regulator)
    regulator = net.source[np.isin(net.target, single)][0]
    readouts = net.target[(net.source == regulator) & np.isin(net.target, single)]
    lib = DrugLibrary(
        names=np.asarray(["D001"]),
        drug=np.asarray([0]),
        gene=np.asarray([regulator]),
        effect=np.asarray([-0.9]),
        ec50=np.asarray([1.0]),
        primary=np.asarray([True]),
        hill=np.asarray([1.5]),
        features=np.zeros((1, 3)),
        feature_names=np.asarray(["a", "b", "c"]),
    )
    doses = np.asarray([0.0, 0.01, 0.1, 1.0, 10.0, 100.0])
    activity = lib.activity([(0,)] * len(doses), doses, reg_pos, len(net.regulators))[
        :, reg_pos[regulator]
    ]
    assert np.all(np.diff(activity) < 0)
    assert activity[0] == 1.0
    test_sim = VirtualCellSimulator(n_genes=300, seed=7).build()
    object.__setattr__(test_sim, "drugs_", lib)
    test_sim._drug_index = {"D001": 0}
    design = pd.DataFrame({"perturbation": ["D001"] * len(doses), "dose": doses})
    means = test_sim.solve(design).mean[:, readouts]
    steps = np.diff(means, axis=0)
    for j in range(len(readouts)):
        assert np.all(steps[:, j] <= 1e-9) or np.all(steps[:, j] >= -1e-9)
    assert np.abs(np.log(means[-1] / means[0])).max() > 0.05


def test_default_drugs_have_features_and_respond(sim: VirtualCellSimulator) -> None:
    feats = sim.drugs_.features
    assert feats.shape[0] == len(sim.drugs) and feats.shape[1] > 8
    means = sim.true_means([CONTROL, "D001"], dose=10.0)
    assert np.abs(_lfc(means, "D001")).max() > 0.05


# ------------------------------------------------------------------ sampling
def _small_design(sim: VirtualCellSimulator) -> pd.DataFrame:
    g = sim.genes
    return pd.DataFrame(
        {
            "perturbation": [CONTROL, g[1], f"{g[1]}+{g[2]}", "D002", CONTROL],
            "cell_type": ["type_A", "type_A", "type_A", "type_A", "type_B"],
            "dose": [0.0, 0.0, 0.0, 1.0, 0.0],
            "n_cells": [60, 40, 40, 40, 60],
        }
    )


def test_simulate_output_follows_schema(sim: VirtualCellSimulator) -> None:
    adata, truth = sim.simulate(_small_design(sim), n_batches=2, seed=1)
    assert sp.issparse(adata.X) and adata.X.dtype == np.int32
    assert adata.shape == (240, 300)
    for col in ("perturbation", "cell_type", "batch", "dose", "time"):
        assert col in adata.obs
    schema = aivc.data.schema_of(adata)
    assert schema == simulation_schema()
    aivc.data.validate(adata, schema, known_genes=[*sim.genes, *sim.drugs])
    assert set(adata.obs.loc[adata.obs["perturbation"] != "D002", "dose"]) == {0.0}
    assert truth.mean.shape == (5, 300)
    assert "G0002+G0003" in set(adata.obs["perturbation"])


def test_same_seed_same_data_and_different_seed_different_data(sim: VirtualCellSimulator) -> None:
    design = _small_design(sim)
    a, _ = sim.simulate(design, n_batches=2, seed=1)
    b, _ = sim.simulate(design, n_batches=2, seed=1, chunk_size=1, n_jobs=2)
    c, _ = sim.simulate(design, n_batches=2, seed=2)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0
    other = VirtualCellSimulator(n_genes=300, seed=8).build()
    assert not np.array_equal(other.network_.source, sim.network_.source)


def test_measurement_noise_is_realistic(sim: VirtualCellSimulator) -> None:
    design = pd.DataFrame({"perturbation": [CONTROL], "n_cells": [2000]})
    adata, _ = sim.simulate(design, n_batches=1, seed=3)
    x = adata.X.toarray().astype(np.float64)
    lib = x.sum(axis=1)
    assert 0.3 < lib.std() / lib.mean() < 1.0
    assert (
        0.5 * sim.measurement_model.library_size
        < np.median(lib)
        < 2 * sim.measurement_model.library_size
    )
    m, v = x.mean(axis=0), x.var(axis=0)
    expressed = m > 1.0
    assert np.mean(v[expressed] > 1.5 * m[expressed]) > 0.8  # overdispersed
    assert 0.3 < np.mean(x == 0) < 0.95


@pytest.mark.parametrize(
    ("mu", "phi"), [(0.05, 0.3), (0.8, 0.25), (4.0, 1.0), (9.5, 0.1), (30.0, 0.5), (2.0, 0.0)]
)
def test_count_sampler_is_negative_binomial(mu: float, phi: float) -> None:
    n = 100_000
    model = MeasurementModel(dropout=0.0)
    counts = model.sample(
        np.full((n, 1), np.log(mu), dtype=np.float32), np.asarray([phi]), np.random.default_rng(0)
    )
    x = counts.toarray().ravel()
    p0 = (1 + phi * mu) ** (-1 / phi) if phi > 0 else np.exp(-mu)
    np.testing.assert_allclose(x.mean(), mu, rtol=0.02, atol=0.002)
    np.testing.assert_allclose(x.var(), mu + phi * mu**2, rtol=0.06)
    np.testing.assert_allclose(np.mean(x == 0), p0, atol=0.004)


def test_batches_scale_genes_differently(sim: VirtualCellSimulator) -> None:
    design = pd.DataFrame({"perturbation": [CONTROL], "n_cells": [3000]})
    adata, truth = sim.simulate(design, n_batches=2, seed=4)
    x = adata.X.toarray().astype(np.float64)
    x = x / x.sum(axis=1, keepdims=True)
    b = adata.obs["batch"].to_numpy()
    ratio = np.log(x[b == "batch_1"].mean(0) + 1e-6) - np.log(x[b == "batch_2"].mean(0) + 1e-6)
    true = truth.batch_log_gene_scale[0] - truth.batch_log_gene_scale[1]
    high = x.mean(0) > 1e-3
    assert np.corrcoef(ratio[high], true[high])[0, 1] > 0.5


def test_zero_noise_measurement_recovers_true_means() -> None:
    sim = VirtualCellSimulator(
        n_genes=100,
        seed=2,
        extrinsic_sd=0.0,
        module_sd=0.0,
        cycle_amplitude=0.0,
        measurement=MeasurementModel(
            library_size=20000,
            library_size_sd=0.0,
            dispersion=0.0,
            dropout=0.0,
            batch_gene_sd=0.0,
            batch_library_sd=0.0,
        ),
    ).build()
    adata, truth = sim.simulate(pd.DataFrame({"perturbation": [CONTROL], "n_cells": [400]}), seed=0)
    observed = np.asarray(adata.X.mean(axis=0)).ravel()
    np.testing.assert_allclose(observed, truth.mean[0] * truth.count_scale, rtol=0.2, atol=0.5)


def test_time_course_moves_towards_target_type(sim: VirtualCellSimulator) -> None:
    times = [0.0, 2.0, 12.0, 200.0]
    signal = ["none", "type_B", "type_B", "type_B"]
    design = pd.DataFrame(
        {"perturbation": CONTROL, "cell_type": "type_A", "time": times, "signal": signal}
    )
    solved = sim.solve(design)
    target = sim.true_means([CONTROL], cell_type="type_B").to_numpy()[0]
    dist = [np.abs(np.log(m + 1e-6) - np.log(target + 1e-6)).mean() for m in solved.mean]
    assert dist[0] > dist[1] > dist[2] > dist[3]
    assert dist[3] < 0.05 * dist[0]


def test_truth_round_trip(sim: VirtualCellSimulator, tmp_path) -> None:
    _, truth = sim.simulate(_small_design(sim), seed=1)
    path = truth.save(tmp_path / "t.truth.npz")
    back = GroundTruth.load(path)
    np.testing.assert_array_equal(back.mean, truth.mean)
    np.testing.assert_array_equal(back.network.source, truth.network.source)
    np.testing.assert_array_equal(back.drugs.ec50, truth.drugs.ec50)
    pd.testing.assert_frame_equal(back.conditions, truth.conditions, check_dtype=False)
    assert back.params["seed"] == 7


# ---------------------------------------------------------------------- lab
@pytest.fixture
def lab(sim: VirtualCellSimulator) -> VirtualLab:
    return VirtualLab(simulator=sim, seed=5)


def test_lab_hides_the_truth(lab: VirtualLab) -> None:
    g = lab.genes
    adata = lab.run([CONTROL, g[0], f"{g[0]}+{g[4]}"], n_cells=20, cell_type="type_A")
    forbidden = (
        "mean",
        "steady",
        "truth",
        "network",
        "edge",
        "weight",
        "dispersion",
        "phase",
        "capture",
        "seed",
    )

    def keys(d: object) -> list[str]:
        if isinstance(d, dict):
            return [*map(str, d), *(k for v in d.values() for k in keys(v))]
        return []

    names = [*adata.obs.columns, *adata.var.columns, *keys(dict(adata.uns))]
    assert not [n for n in names if any(f in n.lower() for f in forbidden)]
    assert not adata.obsm and not adata.varm and not adata.layers
    assert set(adata.obs.columns) >= {"perturbation", "cell_type", "batch", "dose", "time"}
    aivc.data.validate(adata, aivc.data.schema_of(adata))
    assert not hasattr(lab, "truth")


def test_lab_counts_cost_and_is_reproducible(sim: VirtualCellSimulator) -> None:
    a, b = VirtualLab(simulator=sim, seed=5), VirtualLab(simulator=sim, seed=5)
    g = a.genes
    xa = a.run([CONTROL, g[3]], n_cells=[30, 20], cell_type="type_B")
    xb = b.run([CONTROL, g[3]], n_cells=[30, 20], cell_type="type_B")
    assert (xa.X != xb.X).nnz == 0
    second = a.run(["D001"], n_cells=10, cell_type="type_A", dose=0.5)
    assert a.cost.n_experiments == 2 and a.cost.n_cells == 60 and a.cost.n_conditions == 3
    assert set(second.obs["batch"]) == {"exp0002"} and set(xa.obs["batch"]) == {"exp0001"}
    assert len(a.history) == 2


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (
            {"perturbations": ["G9999"], "n_cells": 5, "cell_type": "type_A"},
            r"Unknown perturbation target 'G9999'",
        ),
        (
            {"perturbations": ["G0001+NOPE"], "n_cells": 5, "cell_type": "type_A"},
            r"Unknown perturbation target 'NOPE' in 'G0001\+NOPE'.*one of the 300 genes",
        ),
        (
            {"perturbations": ["G0001"], "n_cells": 0, "cell_type": "type_A"},
            r"n_cells must be a positive integer.*got 0",
        ),
        ({"perturbations": ["G0001"], "n_cells": -3, "cell_type": "type_A"}, r"at least 1 cell"),
        (
            {"perturbations": ["G0001"], "n_cells": 5, "cell_type": "neuron"},
            r"Unknown cell type 'neuron'.*type_A",
        ),
        (
            {"perturbations": ["D001"], "n_cells": 5, "cell_type": "type_A", "dose": 1e4},
            r"out of range.*0 < dose <= 100",
        ),
        (
            {"perturbations": ["D001"], "n_cells": 5, "cell_type": "type_A", "dose": -1.0},
            r"out of range",
        ),
        ({"perturbations": ["D001"], "n_cells": 5, "cell_type": "type_A"}, r"Drugs need a dose"),
        (
            {"perturbations": ["G0001"], "n_cells": 5, "cell_type": "type_A", "dose": 1.0},
            r"no requested perturbation is a drug",
        ),
        ({"perturbations": [], "n_cells": 5, "cell_type": "type_A"}, r"No perturbations requested"),
        (
            {"perturbations": ["G0001", "G0001"], "n_cells": 5, "cell_type": "type_A"},
            r"more than once",
        ),
        (
            {"perturbations": ["G0001"], "n_cells": 5, "cell_type": "type_A", "modality": "prime"},
            r"Unknown modality",
        ),
        (
            {"perturbations": ["G0001"], "n_cells": 5, "cell_type": "type_A", "time": 3.0},
            r"without a differentiation signal",
        ),
    ],
)
def test_lab_refuses_invalid_requests(lab: VirtualLab, request_: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lab.run(**request_)
    assert lab.cost.n_experiments == 0


def test_lab_budget(sim: VirtualCellSimulator) -> None:
    lab = VirtualLab(simulator=sim, budget_cells=50, seed=0)
    lab.run([CONTROL], n_cells=40, cell_type="type_A")
    with pytest.raises(ValueError, match=r"only 10 of the budget of 50"):
        lab.run([CONTROL], n_cells=20, cell_type="type_A")


# -------------------------------------------------------------------- writer
def test_default_design_has_controls_singles_doubles_drugs(sim: VirtualCellSimulator) -> None:
    design = default_design(sim, n_cells=20000, seed=0)
    assert design["n_cells"].sum() == 20000
    labels = design["perturbation"]
    assert (labels == CONTROL).sum() == 2
    assert labels.str.contains(r"\+").any()
    assert labels.isin(sim.drugs).any() and (design.loc[labels.isin(sim.drugs), "dose"] > 0).all()
    assert set(design["cell_type"]) == {"type_A", "type_B"}
    small = default_design(sim, n_cells=300, seed=0)
    assert small["n_cells"].sum() == 300


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_write_simulation_streams_to_disk(tmp_path, suffix: str) -> None:
    import anndata as ad

    path = tmp_path / f"sim{suffix}"
    files = write_simulation(path, n_cells=3000, n_genes=120, seed=3, chunk_size=1000, n_jobs=2)
    adata = ad.read_zarr(path) if suffix == ".zarr" else ad.read_h5ad(path)
    assert adata.shape == (3000, 120)
    assert sp.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer)
    aivc.data.validate(adata, aivc.data.schema_of(adata))
    truth = GroundTruth.load(files.truth)
    assert files.truth.name == "sim.truth.npz"
    assert truth.mean.shape == (len(truth.conditions), 120)
    # streaming in other chunk sizes gives the same data
    again = write_simulation(
        tmp_path / "again.h5ad", n_cells=3000, n_genes=120, seed=3, chunk_size=2048, n_jobs=1
    )
    other = ad.read_h5ad(again.data)
    assert (sp.csr_matrix(adata.X) != other.X).nnz == 0
