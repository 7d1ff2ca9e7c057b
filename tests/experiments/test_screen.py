from __future__ import annotations

from typing import ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from aivc.data import PerturbationSchema
from aivc.experiments._objectives import Objective
from aivc.experiments._screen import screen
from aivc.instruments import AdditiveModel, make_instrument

GENES = [f"g{i}" for i in range(8)]
# known effects on a flat control state (log-expression 1.0 everywhere)
EFFECTS = {
    "A": {"g0": -0.8},
    "B": {"g1": 0.9},
    "C": {"g2": 0.3, "g3": -0.2},
    "D": {"g1": 0.5},
}


def _known_data() -> tuple[ad.AnnData, PerturbationSchema]:
    rows, labels = [], []
    for label, eff in [("control", {}), *EFFECTS.items()]:
        x = np.ones(len(GENES))
        for g, v in eff.items():
            x[GENES.index(g)] += v
        rows += [x] * 4
        labels += [label] * 4
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(rows))]
    )
    adata = ad.AnnData(X=np.asarray(rows, dtype=np.float32), obs=obs, var=pd.DataFrame(index=GENES))
    return adata, PerturbationSchema(perturbation_key="perturbation", control_label="control")


class _IntervalModel(AdditiveModel):
    """The additive model with fixed, known interval half-widths per target (for the tests)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination", "uncertainty"})
    widths: ClassVar[dict[str, float]] = {"A": 0.1, "B": 2.0, "C": 0.1, "D": 0.05}

    def _predict_interval(self, perturbations, *, contexts, doses, control, level):
        delta = self.predict_delta(perturbations, contexts=contexts)
        w = np.asarray(
            [sum(self.widths[t] for t in self.schema_.targets(p)) for p in perturbations]
        )
        return delta, delta - w[:, None], delta + w[:, None]


@pytest.fixture
def known():
    adata, schema = _known_data()
    return AdditiveModel().fit(adata, schema)


def test_objectives_known_answer_singles(known):
    cands = ["A", "B", "C", "D"]
    up = screen(known, cands, objective="up:g1").table
    assert up["candidate"].tolist()[:2] == ["B", "D"]
    np.testing.assert_allclose(up.set_index("candidate").loc["B", "score"], 1.9, atol=1e-6)
    down = screen(known, cands, objective="down:g0").table
    assert down["candidate"].iloc[0] == "A"
    np.testing.assert_allclose(down["score"].iloc[0], -0.2, atol=1e-6)
    # gene set: mean of g2 and g3 is raised most by C (+0.05)
    gs = screen(known, cands, objective="up:g2,g3").table.set_index("candidate")
    np.testing.assert_allclose(gs.loc["C", "score"], 1.05, atol=1e-6)
    # towards a target state equal to B's profile: B reaches it exactly
    target = np.ones(len(GENES))
    target[1] += 0.9
    tw = screen(known, cands, objective=Objective.towards(target)).table
    assert tw["candidate"].iloc[0] == "B"
    np.testing.assert_allclose(tw["score"].iloc[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        tw.set_index("candidate").loc["D", "score"], -0.4 / np.sqrt(8), atol=1e-6
    )
    # effect size is the RMS predicted change
    np.testing.assert_allclose(
        up.set_index("candidate").loc["A", "effect_size"], 0.8 / np.sqrt(8), atol=1e-6
    )
    # a custom objective on mean profiles: the sum of g0 and g1
    cu = screen(known, cands, objective=lambda m: m[:, 0] + m[:, 1]).table.set_index("candidate")
    np.testing.assert_allclose(cu.loc[cands, "score"].to_numpy(), [1.2, 2.9, 2.0, 2.5], atol=1e-6)


def test_pairs_known_answer_and_vectorised_equals_model(known):
    target = np.ones(len(GENES))
    target[0] -= 0.8
    target[2] += 0.3
    target[3] -= 0.2
    res = screen(
        known, pairs_of=["A", "B", "C", "D"], objective=Objective.towards(target), chunk_size=2
    )
    assert res.pair_method == "composed"
    assert len(res.table) == 6
    assert res.table["candidate"].iloc[0] == "A+C"
    np.testing.assert_allclose(res.table["score"].iloc[0], 0.0, atol=1e-6)
    exact = screen(
        known, pairs_of=["A", "B", "C", "D"], objective=Objective.towards(target), pairs="exact"
    )
    assert exact.pair_method == "exact"
    pd.testing.assert_frame_equal(res.table, exact.table, atol=1e-6)


def test_uncertainty_ranking_differs_from_effect_ranking():
    adata, schema = _known_data()
    model = _IntervalModel().fit(adata, schema)
    res = screen(model, ["A", "B", "C", "D"], objective="up:g1")
    t = res.table.set_index("candidate")
    assert "lowest objective value" in res.uncertainty
    # B has the larger predicted effect but a wide interval; D is the safer bet
    assert t.loc["B", "rank_effect"] == 1
    assert t.loc["D", "rank_uncertainty"] == 1
    np.testing.assert_allclose(t.loc["B", "score_lower"], 1.9 - 2.0, atol=1e-6)
    np.testing.assert_allclose(t.loc["D", "score_lower"], 1.5 - 0.05, atol=1e-6)
    np.testing.assert_allclose(t.loc["D", "score_upper"], 1.5 + 0.05, atol=1e-6)
    assert res.top(1, by="uncertainty")["candidate"].tolist() == ["D"]
    # pairs: half-widths add up
    pairs = screen(model, pairs_of=["B", "D"], objective="up:g1").table.set_index("candidate")
    np.testing.assert_allclose(pairs.loc["B+D", "score_lower"], 1 + 1.4 - 2.05, atol=1e-6)
    # a model without intervals says so and leaves the ranking empty
    plain = screen(AdditiveModel().fit(adata, schema), ["A", "B"], objective="up:g1")
    assert plain.uncertainty.startswith("unavailable")
    assert plain.table["rank_uncertainty"].isna().all()
    with pytest.raises(ValueError, match="No uncertainty-aware ranking"):
        plain.top(1, by="uncertainty")


@pytest.fixture
def linear(prepared):
    adata, schema = prepared
    return make_instrument("linear").fit(adata, schema)


def test_checkpoint_resume_gives_identical_results(linear, tmp_path):
    panel = list(linear.genes_[:25])  # 300 pairs in 10 chunks of 32
    w = np.linspace(-1, 1, len(linear.genes_))

    def objective(mean):
        return mean @ w

    full = screen(
        linear, pairs_of=panel, objective=Objective.custom(objective, name="w"), chunk_size=32
    )
    calls = {"n": 0, "armed": True}

    class Interrupted(Exception):
        pass

    def flaky(mean):
        calls["n"] += 1
        if calls["n"] == 4 and calls["armed"]:
            raise Interrupted
        return objective(mean)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        screen(
            linear,
            pairs_of=panel,
            objective=Objective.custom(flaky, name="w"),
            chunk_size=32,
            checkpoint=ckpt,
        )
    assert len(list(ckpt.glob("chunk-*.npy"))) == 3
    calls.update(n=0, armed=False)
    resumed = screen(
        linear,
        pairs_of=panel,
        objective=Objective.custom(flaky, name="w"),
        chunk_size=32,
        checkpoint=ckpt,
    )
    assert resumed.chunks_resumed == 3
    assert resumed.chunks_total == 10
    assert calls["n"] == 7  # only the unfinished chunks were scored
    pd.testing.assert_frame_equal(resumed.table, full.table)
    # a second resume reads everything back
    again = screen(
        linear,
        pairs_of=panel,
        objective=Objective.custom(objective, name="w"),
        chunk_size=32,
        checkpoint=ckpt,
    )
    assert again.chunks_resumed == 10
    pd.testing.assert_frame_equal(again.table, full.table)
    # a different screen refuses the checkpoint
    with pytest.raises(ValueError, match="different screen"):
        screen(linear, pairs_of=panel, objective="up:GENE001", chunk_size=32, checkpoint=ckpt)
    assert not list(ckpt.glob("*.tmp*"))


def test_dask_equals_local(linear):
    distributed = pytest.importorskip("distributed")
    panel = list(linear.genes_[:20])
    local = screen(linear, pairs_of=panel, objective="up:GENE002", chunk_size=16)
    singles_local = screen(linear, panel, objective="down:GENE003", chunk_size=4)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = screen(
            linear, pairs_of=panel, objective="up:GENE002", chunk_size=16, client=client
        )
        singles_remote = screen(
            linear, panel, objective="down:GENE003", chunk_size=4, client=client
        )
    pd.testing.assert_frame_equal(remote.table, local.table)
    pd.testing.assert_frame_equal(singles_remote.table, singles_local.table)


def test_bad_input_gives_clear_errors(linear):
    genes = list(linear.genes_[:5])
    with pytest.raises(ValueError, match=r"Unknown gene 'GENE0O1' in the candidate list"):
        screen(linear, [*genes, "GENE0O1"], objective="up:GENE001")
    with pytest.raises(ValueError, match="more than once"):
        screen(linear, [genes[0], genes[0]], objective="up:GENE001")
    with pytest.raises(ValueError, match="Unknown objective gene 'NOPE'; expected one of the"):
        screen(linear, genes, objective="up:NOPE")
    with pytest.raises(ValueError, match="Unknown target state"):
        screen(linear, genes, objective="towards:liver")
    with pytest.raises(ValueError, match="either candidates"):
        screen(linear, genes, pairs_of=genes, objective="up:GENE001")
    with pytest.raises(ValueError, match="look like"):
        screen(linear, genes, objective="raise GENE001")


def test_towards_context_state():
    """Move cells of one context towards the control state of another the model knows."""
    from aivc.data import prepare
    from aivc.data._synthetic import synthetic_perturbation_data

    adata, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=6, n_doubles=0, n_contexts=2, seed=1
    )
    adata, schema = prepare(adata, schema)
    model = make_instrument("linear").fit(adata, schema)
    contexts = sorted(str(c) for c in model.control_mean_)
    res = screen(
        model, list(model.genes_[:10]), objective=f"towards:{contexts[1]}", context=contexts[0]
    )
    # the score is minus the RMS distance between the predicted profile and the other context's controls
    start, target = model.control_mean_[contexts[0]], model.control_mean_[contexts[1]]
    g = res.table["candidate"].iloc[0]
    pred = start + model.predict_delta([g], contexts=contexts[0])[0]
    np.testing.assert_allclose(
        res.table["score"].iloc[0], -np.sqrt(np.mean((pred - target) ** 2)), rtol=1e-9
    )
    with pytest.raises(ValueError, match="several contexts"):
        screen(model, ["GENE000"], objective="up:GENE001")


def test_screen_cli(linear, tmp_path):
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    linear.save(tmp_path / "model")
    (tmp_path / "panel.txt").write_text("\n".join(linear.genes_[:12]) + "\n")
    out = tmp_path / "ranked.csv"
    args = ["screen", str(tmp_path / "model"), "--pairs-of", str(tmp_path / "panel.txt")]
    args += ["--objective", "down:GENE004", "--out", str(out), "--chunk-size", "10"]
    r = CliRunner().invoke(app, [*args, "--checkpoint", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out)
    assert len(table) == 66
    assert table["rank_effect"].tolist() == list(range(1, 67))
    expected = screen(linear, pairs_of=list(linear.genes_[:12]), objective="down:GENE004").table
    np.testing.assert_allclose(table["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-12)
    r = CliRunner().invoke(app, [*args, "--checkpoint", str(tmp_path / "ck")])
    assert r.exit_code == 0
    assert "7 chunks resumed" in r.output
    # unknown gene in the panel: exit code 2, a clear message, no output written
    (tmp_path / "bad.txt").write_text("GENE001\nNOTAGENE\n")
    bad_out = tmp_path / "bad.csv"
    r = CliRunner().invoke(
        app,
        ["screen", str(tmp_path / "model"), "--genes", str(tmp_path / "bad.txt"),
         "--objective", "up:GENE001", "--out", str(bad_out)],
    )  # fmt: skip
    assert r.exit_code == 2
    assert "NOTAGENE" in r.output
    assert not bad_out.exists()


@pytest.mark.parametrize("objective", ["up:g1", "down:g0", "towards", "custom"])
def test_vectorised_pairs_with_intervals_equal_model_pairs(objective):
    """The composed pair path (Gram matrices, per-single terms) equals the model's own pair intervals."""
    adata, schema = _known_data()
    model = _IntervalModel().fit(adata, schema)
    if objective == "towards":
        target = np.linspace(0.5, 1.5, len(GENES))
        objective = Objective.towards(target)
    elif objective == "custom":
        objective = Objective.custom(lambda m: np.sin(m).sum(axis=1), name="sin")
    composed = screen(model, pairs_of=["A", "B", "C", "D"], objective=objective)
    exact = screen(model, pairs_of=["A", "B", "C", "D"], objective=objective, pairs="exact")
    assert (composed.pair_method, exact.pair_method) == ("composed", "exact")
    assert composed.table["score_lower"].notna().all()
    pd.testing.assert_frame_equal(composed.table, exact.table, atol=1e-6)


def test_towards_reference_cells_real_data(data_dir, tmp_path):
    """Real data: move control K562 cells towards the mean state of the KLF1-activated cells."""
    from typer.testing import CliRunner

    from aivc.data import load, prepare, schema_of
    from aivc.experiments._objectives import reference_states
    from aivc.interfaces.cli import app

    raw = load("norman2019_subset")
    adata, schema = prepare(raw, schema_of(raw))
    model = make_instrument("additive").fit(adata, schema)
    states = reference_states(adata, "perturbation", genes=list(model.genes_))
    singles = ["KLF1", "MAP2K6", "TGFBR2", "SGK1", "MAPK1", "CBL"]
    res = screen(model, singles, objective="towards:KLF1", states=states)
    # the additive model predicts KLF1 as its measured change, so it reaches the KLF1 state best
    assert res.table["candidate"].iloc[0] == "KLF1"
    assert res.table["score"].iloc[0] > res.table["score"].iloc[1]
    # the same through the command line, with the reference cells from a file (raw counts)
    model.save(tmp_path / "model")
    ref = raw[raw.obs["perturbation"].astype(str).isin(["KLF1", "control"])].copy()
    ref.X = ref.layers["counts"]
    ref.write_h5ad(tmp_path / "ref.h5ad")
    (tmp_path / "genes.txt").write_text("\n".join(singles))
    out = tmp_path / "ranked.csv"
    r = CliRunner().invoke(
        app,
        ["screen", str(tmp_path / "model"), "--genes", str(tmp_path / "genes.txt"),
         "--objective", "towards:KLF1", "--reference", str(tmp_path / "ref.h5ad"),
         "--reference-key", "perturbation", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out)["candidate"].iloc[0] == "KLF1"
