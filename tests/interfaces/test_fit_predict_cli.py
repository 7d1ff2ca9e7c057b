from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from numpy.testing import assert_allclose
from safetensors.numpy import load_file
from typer.testing import CliRunner

from _celleval import run_cell_eval
from aivc.data import DataValidationError
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments._model_dir import load_model_dir, parse_param
from aivc.interfaces.cli import app

runner = CliRunner()

FIT_ARGS = [
    "--perturbation-key",
    "perturbation",
    "--control-label",
    "control",
    "--model",
    "conformal",
    "--param",
    "base=linear",
    "--param",
    "n_folds=3",
    "--param",
    'base_params={"ridge": 1.0}',
]


def _output(result) -> str:
    out = result.output
    try:
        out += result.stderr
    except ValueError:  # stderr not captured separately
        pass
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    raw, _ = synthetic_perturbation_data(
        n_genes=40, n_singles=10, n_doubles=3, cells_per_condition=20, n_control_cells=60, seed=0
    )
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    raw.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "m"
    result = runner.invoke(app, ["fit", "--data", str(tiny), *FIT_ARGS, "--out", str(out)])
    assert result.exit_code == 0, _output(result)
    return out


def test_fit_writes_self_describing_directory(model_dir, tiny):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == [
        "aivc-model.json",
        "config.json",
        "controls.safetensors",
        "genes.json",
        "schema.json",
        "weights.safetensors",
    ]
    manifest = json.loads((model_dir / "aivc-model.json").read_text())
    assert manifest["model_dir_version"] == 2 and manifest["class"] == "ConformalModel"
    assert manifest["params"]["base"] == "linear" and manifest["params"]["n_folds"] == 3
    assert manifest["params"]["base_params"] == {"ridge": 1.0}
    training = manifest["training"]
    assert training["data_file"] == "tiny.h5ad"
    assert training["data_sha256"] == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert training["n_cells"] == 60 + 13 * 20 and len(training["perturbations"]) == 13
    assert training["heldout_perturbations"] == [] and training["fit_seconds"] >= 0
    assert json.loads((model_dir / "genes.json").read_text())[:2] == ["GENE000", "GENE001"]
    assert json.loads((model_dir / "schema.json").read_text())["control_label"] == "control"
    md = load_model_dir(model_dir)
    assert md.controls is not None and md.controls.n_obs == 60


def test_fit_predict_round_trip(model_dir, tmp_path):
    out = tmp_path / "pred.h5ad"
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            "GENE001,GENE003+GENE010",
            "--n-cells",
            "25",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, _output(result)
    pred = ad.read_h5ad(out)
    counts = pred.obs["perturbation"].value_counts()
    assert counts["GENE001"] == 25 and counts["GENE003+GENE010"] == 25 and counts["control"] == 25
    uns = pred.uns["aivc"]
    assert list(uns["conditions"]) == ["GENE001", "GENE003+GENE010"]
    delta, lo, hi = uns["predicted_delta"], uns["delta_lower"], uns["delta_upper"]
    assert delta.shape == lo.shape == hi.shape == (2, 40)
    assert (lo <= delta + 1e-6).all() and (delta <= hi + 1e-6).all()
    assert uns["interval_level"] == 0.9
    # the same intervals as the model in Python
    md = load_model_dir(model_dir)
    _, lo2, _ = md.model.predict_interval(["GENE001", "GENE003+GENE010"], level=0.9).arrays()
    assert_allclose(lo, lo2, rtol=1e-5, atol=1e-5)
    de = uns["de"]
    assert set(de["condition"]) == {"GENE001", "GENE003+GENE010"}
    assert {"gene", "score", "pvals_adj", "call", "interval_call"} <= set(de.columns)
    assert set(de["call"]) <= {"up", "down", "ns"}
    # DE calls on the predicted cells agree in sign with the predicted mean change
    gpos = {g: i for i, g in enumerate(md.genes)}
    called = de[de["call"] != "ns"]
    assert len(called) > 0
    row = called["condition"].map({"GENE001": 0, "GENE003+GENE010": 1}).to_numpy()
    sign = np.sign(delta[row, called["gene"].map(gpos).to_numpy()])
    assert (sign == np.where(called["call"] == "up", 1, -1)).mean() > 0.9


def test_predict_is_deterministic_by_seed(model_dir, tmp_path, tiny):
    paths = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths.append(tmp_path / f"{name}.h5ad")
        result = runner.invoke(
            app,
            [
                "predict",
                str(model_dir),
                "--perturbations",
                "GENE001",
                "--n-cells",
                "10",
                "--seed",
                str(seed),
                "--out",
                str(paths[-1]),
            ],
        )
        assert result.exit_code == 0, _output(result)
    a, b, c = (ad.read_h5ad(p).X.toarray() for p in paths)
    assert_allclose(a, b)
    assert not np.allclose(a, c)
    # fitting again with the same seed gives the same weights
    again = tmp_path / "m2"
    result = runner.invoke(app, ["fit", "--data", str(tiny), *FIT_ARGS, "--out", str(again)])
    assert result.exit_code == 0, _output(result)
    w1 = load_file(str(model_dir / "weights.safetensors"))
    w2 = load_file(str(again / "weights.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert_allclose(w1[k], w2[k])


def test_unknown_gene_is_a_clear_error(model_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            "GENE001,NOTAGENE+GENE002",
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert result.exit_code == 2
    assert "Unknown gene 'NOTAGENE'" in _output(result)
    assert not (tmp_path / "p.h5ad").exists()


def test_mismatched_control_panel_is_refused(model_dir, tiny, tmp_path):
    raw = ad.read_h5ad(tiny)
    half = raw[raw.obs["perturbation"] == "control", :20].copy()
    half.write_h5ad(tmp_path / "ctrl.h5ad")
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            "GENE001",
            "--control",
            str(tmp_path / "ctrl.h5ad"),
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert result.exit_code == 2
    assert "gene panel does not match" in _output(result)
    # the full panel (raw counts) is accepted and log-normalised like the training data
    full = raw[raw.obs["perturbation"] == "control"].copy()
    full.write_h5ad(tmp_path / "ctrl_full.h5ad")
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            "GENE001",
            "--control",
            str(tmp_path / "ctrl_full.h5ad"),
            "--n-cells",
            "5",
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert result.exit_code == 0, _output(result)
    assert ad.read_h5ad(tmp_path / "p.h5ad").X.max() < 14


def test_load_checks_genes_and_class(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    genes = json.loads((broken / "genes.json").read_text())
    (broken / "genes.json").write_text(json.dumps(genes[::-1]))
    with pytest.raises(DataValidationError, match=r"does not match the model's genes"):
        load_model_dir(broken)
    (broken / "genes.json").write_text(json.dumps(genes))
    manifest = json.loads((broken / "aivc-model.json").read_text())
    manifest["class"] = "LinearModel"
    (broken / "aivc-model.json").write_text(json.dumps(manifest))
    with pytest.raises(DataValidationError, match=r"manifest names class 'LinearModel'"):
        load_model_dir(broken)
    manifest["class"], manifest["model_dir_version"] = "ConformalModel", 99
    (broken / "aivc-model.json").write_text(json.dumps(manifest))
    with pytest.raises(DataValidationError, match=r"version 99"):
        load_model_dir(broken)


def test_fit_option_errors(tiny, tmp_path):
    result = runner.invoke(
        app,
        ["fit", "--data", str(tiny), *FIT_ARGS, "--param", "depth=3", "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2 and "no parameter(s) ['depth']" in _output(result)
    bare = ad.read_h5ad(tiny)
    del bare.uns["aivc"]
    bare.write_h5ad(tmp_path / "bare.h5ad")
    result = runner.invoke(
        app, ["fit", "--data", str(tmp_path / "bare.h5ad"), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "carries no aivc schema" in _output(result)
    result = runner.invoke(
        app,
        [
            "fit",
            "--data",
            str(tiny),
            "--perturbation-key",
            "perturbation",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2 and "--control-label" in _output(result)
    assert parse_param("n=3") == ("n", 3) and parse_param("e=go") == ("e", "go")
    with pytest.raises(ValueError, match=r"key=value"):
        parse_param("oops")


@pytest.mark.slow
def test_prediction_accepted_by_cell_eval_run(model_dir, tiny, tmp_path):
    """The predicted h5ad goes to `cell-eval run` as is, against the real cells."""
    labels = sorted(set(ad.read_h5ad(tiny).obs["perturbation"].astype(str)) - {"control"})
    perts = [next(p for p in labels if "+" not in p), next(p for p in labels if "+" in p)]
    pred_path = tmp_path / "pred.h5ad"
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            ",".join(perts),
            "--n-cells",
            "20",
            "--out",
            str(pred_path),
        ],
    )
    assert result.exit_code == 0, _output(result)
    from aivc.data import prepare, schema_of
    from aivc.data._synthetic import synthetic_perturbation_data as synth

    raw, schema = synth(
        n_genes=40, n_singles=10, n_doubles=3, cells_per_condition=20, n_control_cells=60, seed=0
    )
    real, _ = prepare(raw, schema)
    real = real[real.obs["perturbation"].isin([*perts, "control"])].copy()
    real.obs["perturbation"] = real.obs["perturbation"].cat.remove_unused_categories()
    real.layers = {}
    real.write_h5ad(tmp_path / "real.h5ad")
    assert schema_of(real).perturbation_key == "perturbation"
    run_cell_eval(pred_path, tmp_path / "real.h5ad", tmp_path / "ce")


@pytest.mark.slow
def test_fit_predict_registered_dataset(data_dir, tmp_path):
    """aivc fit --dataset on real data (Norman CRISPRa doubles), then predict a double with intervals."""
    out = tmp_path / "norman"
    result = runner.invoke(
        app,
        [
            "fit",
            "--dataset",
            "norman2019_subset",
            "--model",
            "conformal",
            "--param",
            "base=additive",
            "--param",
            "n_folds=3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, _output(result)
    md = load_model_dir(out)
    assert md.manifest["training"]["dataset"] == "norman2019_subset"
    assert len(md.manifest["training"]["data_sha256"]) == 64
    double = next(p for p in md.manifest["training"]["perturbations"] if "+" in p)
    result = runner.invoke(
        app,
        [
            "predict",
            str(out),
            "--perturbations",
            double,
            "--n-cells",
            "20",
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert result.exit_code == 0, _output(result)
    uns = ad.read_h5ad(tmp_path / "p.h5ad").uns["aivc"]
    assert np.isfinite(uns["delta_lower"]).all() and (uns["delta_upper"] > uns["delta_lower"]).all()


def test_contexts_and_models_without_intervals(tmp_path):
    raw, _ = synthetic_perturbation_data(
        n_genes=30, n_singles=4, n_doubles=0, n_contexts=2, cells_per_condition=15, seed=1
    )
    del raw.uns["aivc"]
    raw.write_h5ad(tmp_path / "ctx.h5ad")
    out = tmp_path / "m"
    result = runner.invoke(
        app,
        [
            "fit",
            "--data",
            str(tmp_path / "ctx.h5ad"),
            "--perturbation-key",
            "perturbation",
            "--control-label",
            "control",
            "--context-key",
            "cell_type",
            "--model",
            "train-mean",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, _output(result)
    md = load_model_dir(out)
    assert md.manifest["training"]["contexts"] == ["type0", "type1"]
    assert sorted(set(md.controls.obs["cell_type"])) == ["type0", "type1"]
    target = md.manifest["training"]["perturbations"][0]
    args = ["predict", str(out), "--perturbations", target, "--n-cells", "5"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p.h5ad")])
    assert result.exit_code == 2 and "pass --context, one of ['type0', 'type1']" in _output(result)
    result = runner.invoke(app, [*args, "--context", "type1", "--out", str(tmp_path / "p.h5ad")])
    assert result.exit_code == 0, _output(result)
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert set(pred.obs["cell_type"]) == {"type1"}
    from aivc.data import CONDITION_SEP

    assert list(pred.uns["aivc"]["conditions"]) == [f"{target}{CONDITION_SEP}type1"]
    assert set(pred.uns["aivc"]["de"]["condition"]) == {f"{target}{CONDITION_SEP}type1"}
    assert "delta_lower" not in pred.uns["aivc"]  # train-mean gives no intervals
    assert "interval_call" not in pred.uns["aivc"]["de"].columns


def test_predict_logfoldchange_is_bounded_for_genes_at_zero_in_controls(model_dir, tmp_path):
    # scanpy's logfoldchange is log2 of a ratio against 1e-9 there: 20-30 for any expression
    md = load_model_dir(model_dir)
    delta = md.model.predict_delta(["GENE001"])[0]
    gene = int(np.argmax(delta))
    assert delta[gene] > 0.05  # the predicted cells express the gene the controls lack
    ctrl = md.controls.copy()
    x = ctrl.X.toarray()
    x[:, gene] = 0.0
    ctrl.X = x
    assert x.max() < 14  # log-normalised, used as is
    ctrl.write_h5ad(tmp_path / "ctrl.h5ad")
    out = tmp_path / "pred.h5ad"
    args = ["predict", str(model_dir), "--perturbations", "GENE001", "--n-cells", "30"]
    result = runner.invoke(
        app, [*args, "--control", str(tmp_path / "ctrl.h5ad"), "--out", str(out)]
    )
    assert result.exit_code == 0, _output(result)
    pred = ad.read_h5ad(out)
    de = pred.uns["aivc"]["de"].set_index("gene")
    labels = pred.obs["perturbation"].astype(str).to_numpy()
    xp = pred.X.toarray() if hasattr(pred.X, "toarray") else np.asarray(pred.X)
    mean_change = xp[labels == "GENE001"].mean(axis=0) - xp[labels == "control"].mean(axis=0)
    name = md.genes[gene]
    assert xp[labels == "control", gene].max() == 0
    assert 0 < de.loc[name, "logfoldchange"] < 5
    # every gene: the difference of mean log-normalised expression
    gpos = {g: i for i, g in enumerate(md.genes)}
    assert_allclose(
        de["logfoldchange"].to_numpy(),
        mean_change[de.index.map(gpos).to_numpy()],
        rtol=1e-5,
        atol=1e-6,
    )
    # the call keeps its rule: significant and in the direction of the change
    called = de[de["call"] != "ns"]
    assert (np.sign(called["logfoldchange"]) == np.where(called["call"] == "up", 1, -1)).all()


def test_fit_shows_progress_instead_of_silence(tiny, tmp_path, caplog):
    caplog.set_level("INFO", logger="aivc")
    out = tmp_path / "m"
    result = runner.invoke(app, ["fit", "--data", str(tiny), *FIT_ARGS, "--out", str(out)])
    assert result.exit_code == 0, _output(result)
    said = [r.getMessage() for r in caplog.records if r.name == "aivc.interfaces.cli"]
    assert said[0].startswith("Fitting conformal on ") and "loading, preparing, fitting" in said[0]
    assert said[-1].startswith("done fitting conformal on ")
    caplog.clear()
    pred = tmp_path / "p.h5ad"
    args = ["predict", str(out), "--perturbations", "GENE001", "--n-cells", "5"]
    result = runner.invoke(app, [*args, "--out", str(pred)])
    assert result.exit_code == 0, _output(result)
    said = [r.getMessage() for r in caplog.records if r.name == "aivc.interfaces.cli"]
    assert said[0].startswith("Predicting 1 perturbation(s) with ")
    assert said[-1].startswith("done predicting")


def test_working_says_a_long_step_is_still_running(caplog):
    import time

    from aivc.interfaces._cli_common import working

    caplog.set_level("INFO", logger="aivc")
    with working("fitting a slow model", every=0.02):
        time.sleep(0.15)
    said = [r.getMessage() for r in caplog.records if r.name == "aivc.interfaces.cli"]
    assert said[0] == "Fitting a slow model ..."
    assert any(m.startswith("still fitting a slow model (") for m in said[1:-1])
    assert said[-1].startswith("done fitting a slow model in ")


def test_param_of_wrong_type_names_the_parameter_and_its_type(tiny, tmp_path):
    args = ["fit", "--data", str(tiny), "--perturbation-key", "perturbation"]
    args += ["--control-label", "control", "--model", "linear", "--out", str(tmp_path / "x")]
    result = runner.invoke(app, [*args, "--param", "ridge=abc"])
    out = _output(result)
    assert result.exit_code == 2
    assert "'ridge' parameter of 'linear' must be a number or null" in out
    assert "LinearModel" in out and "ridge=abc" in out
    assert not (tmp_path / "x").exists()
    result = runner.invoke(app, [*args, "--param", "n_components=2.5"])
    assert result.exit_code == 2
    assert "'n_components' parameter of 'linear' must be an integer" in _output(result)
    from aivc.interfaces._cli_models import check_param_types

    # a text parameter keeps the text even where it reads as JSON; a fitting value passes
    params = {"perturbation_embedding": 5, "ridge": 1, "n_components": 3}
    raw = {"perturbation_embedding": "5", "ridge": "1", "n_components": "3"}
    checked = check_param_types("linear", params, raw)
    assert checked == {"perturbation_embedding": "5", "ridge": 1, "n_components": 3}


@pytest.fixture(scope="module")
def mouse_file(data_dir, tmp_path_factory) -> Path:
    """Synthetic counts whose genes and targets carry mouse symbols (one-to-one orthologs)."""
    from aivc.genes import ortholog_table

    table = ortholog_table()
    pairs = table[table["homology_type"] == "ortholog_one2one"].sort_values("mouse_symbol")
    mouse = [m for m in pairs["mouse_symbol"] if m[:1].isupper() and m[1:].islower()][:40]
    raw, _ = synthetic_perturbation_data(
        n_genes=40, n_singles=5, n_doubles=1, cells_per_condition=20, n_control_cells=40, seed=4
    )
    rename = {f"GENE{i:03d}": m for i, m in enumerate(mouse)}
    raw.var_names = [rename[g] for g in raw.var_names]
    raw.obs["perturbation"] = [
        "+".join(rename[t] for t in p.split("+")) if p != "control" else p
        for p in raw.obs["perturbation"].astype(str)
    ]
    path = tmp_path_factory.mktemp("mouse") / "mouse.h5ad"
    raw.write_h5ad(path)
    return path


def test_fit_on_mouse_symbols_is_refused_and_names_the_ortholog_fix(mouse_file, tmp_path):
    """`aivc fit --data` with mouse symbols fitted without any gene knowledge, saying so at INFO."""
    out = tmp_path / "m"
    args = ["fit", "--data", str(mouse_file), "--model", "additive", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, _output(result)
    text = " ".join(_output(result).split())
    assert "look like mouse symbols" in text and "no gene knowledge" in text
    assert "aivc orthologs" in text and "--keep-symbols" in text
    assert not out.exists()
    # on purpose, the symbols as they are
    result = runner.invoke(app, [*args, "--keep-symbols"])
    assert result.exit_code == 0, _output(result)


def test_orthologs_command_maps_genes_and_targets_so_knowledge_is_used(mouse_file, tmp_path):
    from aivc.genes import genes_with_knowledge

    human = tmp_path / "human.h5ad"
    result = runner.invoke(app, ["orthologs", str(mouse_file), "--out", str(human)])
    assert result.exit_code == 0, _output(result)
    assert "40 of 40 genes renamed to human orthologs" in _output(result)
    mapped = ad.read_h5ad(human)
    original = ad.read_h5ad(mouse_file)
    assert list(mapped.var["source_symbol"]) == list(original.var_names)
    assert list(mapped.obs["perturbation_mouse"]) == list(original.obs["perturbation"])
    targets = set(mapped.obs["perturbation"]) - {"control"}
    assert all(t.isupper() for label in targets for t in label.split("+"))
    # the renamed file fits without complaint, and its genes have knowledge
    out = tmp_path / "m"
    result = runner.invoke(
        app, ["fit", "--data", str(human), "--model", "additive", "--out", str(out)]
    )
    assert result.exit_code == 0, _output(result)
    genes = json.loads((out / "genes.json").read_text())
    assert len(genes_with_knowledge(genes)) > 30
    # an existing --out is kept
    again = runner.invoke(app, ["orthologs", str(mouse_file), "--out", str(human)])
    assert again.exit_code == 2 and "--overwrite" in _output(again)


@pytest.mark.parametrize(
    ("perturbations", "wrong", "meant"),
    [("gene001", "gene001", "GENE001"), ("GENE003+gene010", "gene010", "GENE010")],
)
def test_predict_with_a_case_mistake_suggests_the_gene(
    model_dir, tmp_path, perturbations, wrong, meant
):
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--perturbations",
            perturbations,
            "--out",
            str(tmp_path / "p.h5ad"),
        ],
    )
    assert result.exit_code == 2
    out = " ".join(_output(result).split())  # the console may wrap long lines
    assert f"Unknown gene '{wrong}'" in out
    assert f"Did you mean '{meant}'" in out
    assert not (tmp_path / "p.h5ad").exists()
