"""The lab-loop benchmark: screen loaders, hits, the no-essential filter and campaigns."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from aivc.data._validate import DataValidationError
from aivc.evaluate.tasks.lab_loop import lab_loop_markdown, simulate_screen_campaign
from aivc.experiments._screens_data import (
    SCREEN_FOLDER,
    essential_machinery_genes,
    load_screen,
    read_mageck_summary,
    screen_hits,
)

MAGECK_COLS = [
    "id",
    "num",
    "neg|score",
    "neg|p-value",
    "neg|fdr",
    "neg|rank",
    "neg|goodsgrna",
    "neg|lfc",
    "pos|score",
    "pos|p-value",
    "pos|fdr",
    "pos|rank",
    "pos|goodsgrna",
    "pos|lfc",
]


def _write_mageck(path, genes, lfc, drop=None):
    table = pd.DataFrame({c: 1.0 for c in MAGECK_COLS if c != "id"}, index=range(len(genes)))
    table.insert(0, "id", genes)
    table["neg|lfc"] = lfc
    table["pos|lfc"] = lfc
    if drop:
        table = table.drop(columns=drop)
    with gzip.open(path, "wt") as fh:
        table.to_csv(fh, sep="\t", index=False)


# ------------------------------------------------------------------ loaders
def test_mageck_reader_and_donor_average(tmp_path):
    folder = tmp_path / SCREEN_FOLDER
    folder.mkdir()
    _write_mageck(folder / "schmidt_ifng_d1.gene_summary.txt.gz", ["A", "B", "C"], [1.0, -2.0, 0.0])
    _write_mageck(folder / "schmidt_ifng_d2.gene_summary.txt.gz", ["C", "B", "A"], [2.0, 0.0, 3.0])
    scores = load_screen("schmidt2022-ifng", data_dir=tmp_path)
    assert scores.to_dict() == {"A": 2.0, "B": -1.0, "C": 1.0}


def test_mageck_reader_rejects_missing_column(tmp_path):
    path = tmp_path / "bad.txt.gz"
    _write_mageck(path, ["A", "B"], [1.0, 2.0], drop=["neg|lfc"])
    with pytest.raises(DataValidationError, match=r"lacks columns \['neg\|lfc'\]"):
        read_mageck_summary(path)


def test_mageck_reader_rejects_nan_and_duplicates(tmp_path):
    path = tmp_path / "nan.txt.gz"
    _write_mageck(path, ["A", "B", "C"], [1.0, np.nan, 2.0])
    with pytest.raises(
        DataValidationError, match=r"1 missing or non-numeric values \(genes \['B'\]\)"
    ):
        read_mageck_summary(path)
    path = tmp_path / "dup.txt.gz"
    _write_mageck(path, ["A", "A"], [1.0, 2.0])
    with pytest.raises(DataValidationError, match="more than once"):
        read_mageck_summary(path)


def test_unknown_screen_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="Unknown screen"):
        load_screen("nope")
    with pytest.raises(FileNotFoundError, match="AIVC_DATA_DIR"):
        load_screen("schmidt2022-il2", data_dir=tmp_path)


# --------------------------------------------------------------------- hits
def test_screen_hits_top_fraction_of_absolute_scores():
    scores = np.array([0.1, -5.0, 3.0, 0.2, -0.3, 4.0, 0.0, 0.05, -0.01, 0.02])
    hits = screen_hits(scores, fraction=0.3)
    np.testing.assert_array_equal(np.flatnonzero(hits), [1, 2, 5])
    # ceil: 1% of 150 genes is 2 hits
    assert screen_hits(np.arange(150.0), fraction=0.01).sum() == 2
    # ties at the threshold: exactly ceil(fraction * n), first by position
    tied = screen_hits(np.array([1.0, 1.0, 1.0, 0.0]), fraction=0.5)
    np.testing.assert_array_equal(tied, [True, True, False, False])


@pytest.mark.parametrize(
    ("scores", "fraction", "match"),
    [
        (np.array([1.0, np.nan]), 0.5, "finite"),
        (np.ones((2, 2)), 0.5, "1-d"),
        (np.ones(4), 0.0, "fraction"),
    ],
)
def test_screen_hits_validation(scores, fraction, match):
    with pytest.raises(ValueError, match=match):
        screen_hits(scores, fraction=fraction)


# -------------------------------------------------------- no-essential filter
def test_essential_filter_follows_is_a_and_part_of_only(tmp_path):
    genes = tmp_path / "genes"
    genes.mkdir()
    parents = pd.DataFrame(
        {
            "child": ["GO:2", "GO:3", "GO:4", "GO:5"],
            "parent": ["GO:1", "GO:2", "GO:1", "GO:1"],
            "relationship_type": ["isa", "part of", "regulates", "isa"],
            "ontology": "CC",
        }
    )
    parents.to_csv(genes / "go_term_parents.tsv.gz", sep="\t", index=False)
    ann = pd.DataFrame(
        {
            "symbol": ["RPL1", "RPL2", "REG1", "OTHER", "RPL3"],
            "entrez_id": ["1", "2", "3", "4", "5"],
            "go_id": ["GO:1", "GO:3", "GO:4", "GO:9", "GO:5"],
            "evidence": "IDA",
            "aspect": "C",
            "go_term": "x",
        }
    )
    ann.to_csv(genes / "human_go_annotations.tsv.gz", sep="\t", index=False)
    out = essential_machinery_genes(terms=["GO:1"], data_dir=tmp_path)
    assert out == {"GO:1": frozenset({"RPL1", "RPL2", "RPL3"})}


# ---------------------------------------------------------------- campaigns
def _synthetic_screen(n=3000, seed=0):
    """Genes in 100 gene sets (one-hot membership plus noise, like GO-set features); the hits are
    one set, which a noisy prior favours."""
    rng = np.random.default_rng(seed)
    module = rng.integers(0, 100, size=n)
    x = np.eye(100)[module] + 0.1 * rng.normal(size=(n, 100))
    strong = module == 0
    scores = rng.normal(scale=0.2, size=n) + strong * rng.normal(2.0, 0.3, size=n)
    prior = strong * 1.0 + rng.normal(size=n)
    return x, scores, prior


def test_genedisco_protocol_informative_prior_beats_random():
    from aivc.evaluate.tasks.lab_loop import AIVC_DESIGN_PARAMS

    x, scores, prior = _synthetic_screen()
    hits = screen_hits(scores, fraction=0.01)
    kw = {"features": x, "values": scores, "hits": hits, "n_rounds": 3, "batch_size": 60}
    finals = {}
    for name in ("random", "degree-prior", "aivc-design"):
        params = AIVC_DESIGN_PARAMS if name == "aivc-design" else {}
        ratios = [
            simulate_screen_campaign(name, seed=s, prior=prior, **params, **kw)["hit_ratio"]
            for s in (0, 1)
        ]
        for r in ratios:
            assert len(r) == 3 and all(a <= b for a, b in itertools.pairwise(r))
        finals[name] = float(np.mean([r[-1] for r in ratios]))
    assert finals["random"] < 0.15
    assert finals["degree-prior"] > finals["random"]
    # learning from the revealed scores finds the rest of the gene set
    assert finals["aivc-design"] > finals["degree-prior"] + 0.5


def test_campaign_reproducible_by_seed():
    x, scores, _prior = _synthetic_screen(n=600)
    hits = screen_hits(scores, fraction=0.02)
    kw = {"features": x, "values": scores, "hits": hits, "n_rounds": 2, "batch_size": 20}
    a = simulate_screen_campaign("gp-ucb", seed=3, **kw)
    b = simulate_screen_campaign("gp-ucb", seed=3, **kw)
    assert a == b
    chosen = np.concatenate(a["rounds"])
    assert np.unique(chosen).size == chosen.size == 40


def _campaign_by_hand(
    strategy, *, features, values, hits, n_rounds, batch_size, seed, prior, **params
):
    """The campaign from acquisition alone: one generator, ``|values|`` fed back, the strategy itself
    from the first round."""
    from aivc.experiments import propose

    rng = np.random.default_rng(seed)
    measured = np.empty(0, dtype=int)
    rounds, ratios = [], []
    for _ in range(n_rounds):
        batch = propose(
            strategy,
            features=features,
            measured_idx=measured,
            measured_y=np.abs(values)[measured],
            batch_size=batch_size,
            rng=rng,
            prior=prior,
            **params,
        )
        measured = np.concatenate([measured, batch])
        rounds.append(batch.tolist())
        ratios.append(float(hits[measured].sum() / hits.sum()))
    return {"rounds": rounds, "hit_ratio": ratios}


@pytest.mark.parametrize(
    "strategy", ["random", "uncertainty", "gp-ucb", "degree-prior", "aivc-design"]
)
def test_screen_campaign_through_the_loop_matches_acquisition_alone(strategy):
    from aivc.evaluate.tasks.lab_loop import AIVC_DESIGN_PARAMS

    x, scores, prior = _synthetic_screen(n=400, seed=2)
    hits = screen_hits(scores, fraction=0.02)
    params = dict(AIVC_DESIGN_PARAMS) if strategy == "aivc-design" else {}
    kw = {
        "features": x,
        "values": scores,
        "hits": hits,
        "n_rounds": 3,
        "batch_size": 15,
        "seed": 4,
        "prior": prior if strategy in ("degree-prior", "aivc-design") else None,
    }
    assert simulate_screen_campaign(strategy, **kw, **params) == _campaign_by_hand(
        strategy, **kw, **params
    )


def test_screen_campaign_rounds_are_in_the_ledger(tmp_path):
    from aivc.evaluate.tasks.lab_loop import AIVC_DESIGN_PARAMS
    from aivc.experiments import Ledger
    from aivc.experiments._ledger import COMPLETE, FINISHED

    x, scores, prior = _synthetic_screen(n=300)
    genes = [f"S{i:03d}" for i in range(300)]
    out = simulate_screen_campaign(
        "aivc-design",
        features=x,
        values=scores,
        hits=screen_hits(scores, fraction=0.02),
        n_rounds=3,
        batch_size=10,
        seed=1,
        prior=prior,
        genes=genes,
        ledger=tmp_path / "ledger.db",
        project="toy",
        **AIVC_DESIGN_PARAMS,
    )
    with Ledger(tmp_path / "ledger.db") as led:
        assert led.state("toy") == {"round": 3, "status": FINISHED}
        rounds = led.rounds("toy")
        # one round per batch, every chosen gene proposed and measured
        assert rounds["round"].tolist() == [1, 2, 3]
        assert rounds["status"].tolist() == [COMPLETE] * 3
        assert rounds["strategy"].tolist() == ["aivc-design"] * 3
        assert rounds["n_proposals"].tolist() == rounds["n_results"].tolist() == [10] * 3
        props = led.proposals("toy")
        for r, chosen in enumerate(out["rounds"], start=1):
            assert props.loc[props["round"] == r, "candidate"].tolist() == [
                genes[i] for i in chosen
            ]
        res = led.results("toy")
        idx = [genes.index(c) for c in res["candidate"]]
        np.testing.assert_array_equal(res["value"], np.abs(scores)[idx])
        config = led.project_config("toy")
        assert config["model"] is None
        assert config["lab"]["kind"] == "screen-scores"
        assert config["strategy_params"] == AIVC_DESIGN_PARAMS


def test_markdown_table():
    result = {
        "dataset": "toy",
        "variant": "no-essential",
        "description": "d",
        "protocol": {"n_rounds": 2, "batch_size": 3},
        "seeds": [0, 1],
        "models": {
            "random": {
                "hit_ratio": [{"mean": 0.1, "sd": 0.0}, {"mean": 0.2, "sd": 0.0}],
                "hit_ratio_final": {"mean": 0.2, "sd": 0.05},
            }
        },
        "wall_seconds": {"random": 1.0},
        "peak_memory_mb": {"random": 2.0},
        "machine": {"cpus": 2, "python": "3", "aivc": "0"},
    }
    text = lab_loop_markdown(result)
    assert "lab-loop on toy (variant no-essential)" in text
    assert "| random | 0.100 | 0.200 | 0.200 ± 0.050 |" in text


@pytest.mark.slow
def test_simulator_loop_end_to_end(tmp_path, monkeypatch):
    from aivc.evaluate.tasks import _lab_loop_cells
    from aivc.evaluate.tasks.lab_loop import run_lab_loop

    small = {
        "n_genes": 120,
        "n_pool": 40,
        "n_test": 10,
        "n_rounds": 2,
        "batch_size": 6,
        "hit_fraction": 0.1,
        "cells_per_perturbation": 15,
        "control_cells_per_round": 30,
        "initial_control_cells": 120,
        "n_components": 4,
    }
    monkeypatch.setitem(_lab_loop_cells.CELL_PROTOCOLS, "simulator", small)
    result = run_lab_loop(
        tmp_path, models=["random", "aivc-design"], seeds=[0], variant="coexpression"
    )
    assert result["variant"] == "coexpression"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == {"random", "aivc-design"}
    for entry in saved["models"].values():
        assert len(entry["hit_ratio"]) == 2
        assert entry["error_auc"]["mean"] > 0
        assert 0.0 <= entry["hit_ratio_final"]["mean"] <= 1.0
        # the no-change reference is the same for every strategy (it depends on the world only)
        assert entry["no_change_error"] == saved["models"]["random"]["no_change_error"]
        assert entry["no_change_error"]["mean"] > 0
        assert entry["pool_mean_error"] == saved["models"]["random"]["pool_mean_error"]
        assert entry["pool_mean_error"]["mean"] > 0
        # the oracle's ridges include the infinite one (no change)
        assert 0 < entry["pool_oracle_error"]["mean"] <= entry["no_change_error"]["mean"]
    md = (tmp_path / "results.md").read_text()
    assert "error_auc" in md and "true mean change of the whole pool" in md
    assert result["pool"]["n_hits"] == 4
    with pytest.raises(ValueError, match="has variants \\['knowledge', 'coexpression'\\]"):
        run_lab_loop(tmp_path, variant="no-essential")
    for entry in saved["models"].values():  # each world's error over its own no-change error
        rel = np.asarray(entry["per_seed_error"])[:, -1] / entry["per_seed_no_change_error"]
        assert entry["final_error_rel"]["mean"] == pytest.approx(rel.mean())

    # the default: a world with modules, features from its simulated knowledge base
    knowing = run_lab_loop(tmp_path / "knowledge", models=["random"], seeds=[0])
    assert knowing["variant"] == "knowledge" and knowing["protocol"]["knowledge"] == "good"
    assert "knowledge embedding" in knowing["features"]["all"]
    assert (
        knowing["models"]["random"]["no_change_error"]
        != saved["models"]["random"]["no_change_error"]
    )
    assert 0 < knowing["models"]["random"]["pool_oracle_error_rel"]["mean"] <= 1.0

    # the same campaigns kept in a ledger: one round per batch, and the same numbers
    from aivc.experiments import Ledger

    ledger = tmp_path / "ledger" / "lab-loop.db"
    kept = _lab_loop_cells.run_cell_loop(
        "simulator",
        models=["random", "aivc-design"],
        seeds=[0],
        ledger=ledger,
        variant="coexpression",
    )
    with Ledger(ledger) as led:
        assert [p["name"] for p in led.list_projects()] == [
            "simulator:aivc-design:seed0",
            "simulator:random:seed0",
        ]
        for name, entry in saved["models"].items():
            assert kept["models"][name]["per_seed_error"] == entry["per_seed_error"]
            assert kept["models"][name]["per_seed_hit_ratio"] == entry["per_seed_hit_ratio"]
            project = f"simulator:{name}:seed0"
            props = led.proposals(project)
            chosen = [props.loc[props["round"] == r, "candidate"].tolist() for r in (1, 2)]
            assert chosen == entry["chosen"][0]
            rounds = led.rounds(project)
            assert rounds["n_proposals"].tolist() == rounds["n_results"].tolist() == [6, 6]
            # the noise-aware effect was fed back, the loop's own model refitted each round
            assert np.isfinite(led.results(project)["value"].dropna()).all()
            assert len(led.model_versions(project)) == 2
            assert led.project_config(project)["lab"]["series"]["first_experiment"] == 2


def _batched_changes(seed, common=0.0, signal=1.0, batch_noise=3.0):
    rng = np.random.default_rng(seed)
    n_batches, per_batch, n_feat, n_genes = 4, 30, 6, 40
    w = rng.normal(size=(n_feat, n_genes)) * signal
    x = rng.normal(size=(n_batches * per_batch, n_feat))
    x_new = rng.normal(size=(50, n_feat))
    offsets = rng.normal(scale=batch_noise, size=(n_batches, n_genes))
    batches = np.repeat([f"b{i}" for i in range(n_batches)], per_batch)
    truth = x @ w + common
    measured = truth + offsets[np.repeat(np.arange(n_batches), per_batch)]
    measured += rng.normal(scale=0.1, size=measured.shape)
    return x, measured, batches, x_new, x_new @ w + common


def test_batch_aware_ridge_does_not_learn_the_rounds_shared_control_noise():
    from aivc.evaluate.tasks._lab_loop_cells import batch_aware_ridge

    x, y, batches, x_new, truth = _batched_changes(0)
    pred, chosen = batch_aware_ridge(x, y, batches, x_new)
    # every condition of a round shares its offset: held out by round, the mean change does not
    # transfer, so it is left out, and the slope is still learned
    assert chosen["intercept_share"] <= 0.25 and np.isfinite(chosen["ridge"])
    no_change = np.mean(truth**2)
    with_mean = np.mean((pred + (1 - chosen["intercept_share"]) * y.mean(axis=0) - truth) ** 2)
    assert np.mean((pred - truth) ** 2) < 0.1 * no_change < with_mean

    # a change every knockout shares is kept
    x, y, batches, x_new, truth = _batched_changes(1, common=3.0, batch_noise=0.3)
    pred, chosen = batch_aware_ridge(x, y, batches, x_new)
    assert chosen["intercept_share"] == 1.0
    assert np.mean((pred - truth) ** 2) < 0.05 * np.mean(truth**2)

    # nothing learnable: exactly no change
    x, y, batches, x_new, _ = _batched_changes(2, signal=0.0)
    pred, chosen = batch_aware_ridge(x, y, batches, x_new)
    assert chosen == {"ridge": np.inf, "intercept_share": 0.0}
    assert not pred.any()

    # one round: its offset cannot be told from a shared change, so no intercept
    one = batches == "b0"
    _, chosen = batch_aware_ridge(x[one], y[one] + 5.0, batches[one], x_new)
    assert chosen["intercept_share"] == 0.0


def test_denoised_changes_shrink_each_change_by_its_signal_to_noise():
    from aivc.evaluate.tasks._lab_loop_cells import denoised_changes

    rng = np.random.default_rng(0)
    z = np.vstack([rng.normal(size=500) * 0.9, rng.normal(size=500) * 10.0])
    delta = z * 0.1
    out = denoised_changes(delta, z)
    assert not out[0].any()  # noise-sized z-scores: no change
    factor = out[1] / delta[1]
    assert np.allclose(factor, 1.0 - 1.0 / np.mean(z[1] ** 2))
    assert 0.98 < factor[0] < 1.0


# ------------------------------------------------------------------ real data
@pytest.mark.slow
def test_real_schmidt_screens(data_dir):
    ifng = load_screen("schmidt2022-ifng")
    il2 = load_screen("schmidt2022-il2")
    assert len(ifng) == len(il2) == 18_899
    assert screen_hits(ifng.to_numpy()).sum() == 189
    top = ifng.abs().sort_values(ascending=False).index[:30]
    assert {"CD3G", "LCP2"} <= set(top)
    ess = essential_machinery_genes()
    removed = set().union(*ess.values())
    assert {"RPL4", "PSMC2", "MCM2"} <= removed
    assert "CD3G" not in removed
    assert 500 < len(removed & set(ifng.index)) < 800


# ------------------------------------------------------- mechanistic prior
def test_knockout_regression_effects_follow_control_cell_regressions():
    from aivc.evaluate.tasks._lab_loop_cells import knockout_prior, knockout_regression_effects

    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 0.5, size=5000)
    b = 1.0 + 0.8 * a + rng.normal(scale=0.1, size=5000)
    c = rng.normal(1.0, 0.5, size=5000)
    d = np.full(5000, 3.0)  # no variance: no prediction either way
    effects = knockout_regression_effects(np.column_stack([a, b, c, d]))
    assert effects.shape == (4, 4)
    np.testing.assert_allclose(np.diag(effects), 0.0)
    # removing A (mean 2) moves B by -2 * 0.8
    assert effects[0, 1] == pytest.approx(-1.6, abs=0.05)
    assert abs(effects[0, 2]) < 0.05
    np.testing.assert_allclose(effects[3], 0.0)
    assert effects[0, 3] == 0.0
    # B regressed on A's direction: removing B (mean ~2.6) lowers A
    assert effects[1, 0] < -2.0
    prior = knockout_prior(np.column_stack([a, b, c, d]), np.array([0, 2]))
    assert prior[0] > prior[1]


@pytest.mark.slow
def test_knockout_prior_ranks_simulated_knockouts_without_measuring_them():
    from scipy.stats import spearmanr

    from aivc.evaluate.tasks._lab_loop_cells import _log_norm, coexpression_features, knockout_prior
    from aivc.sim import CONTROL, VirtualCellSimulator, VirtualLab

    sim = VirtualCellSimulator(n_genes=150, n_cell_types=1, seed=1)
    lab = VirtualLab(simulator=sim, seed=1)
    cell_type = lab.cell_types[0]
    genes = list(lab.genes)
    truth = sim.true_means([CONTROL, *genes], cell_type=cell_type).to_numpy(dtype=float)
    logm = np.log1p(truth / truth.sum(axis=1, keepdims=True) * 1e4)
    delta = logm[1:] - logm[0]
    np.fill_diagonal(delta, 0.0)
    effect = np.linalg.norm(delta, axis=1)
    x = _log_norm(lab.run([CONTROL], n_cells=400, cell_type=cell_type).X)
    prior = knockout_prior(x, np.arange(len(genes)))
    _, degree = coexpression_features(x, genes, n_components=4)
    rho_prior = spearmanr(prior, effect)[0]
    assert rho_prior > 0.7
    assert rho_prior > spearmanr(degree, effect)[0] + 0.2
