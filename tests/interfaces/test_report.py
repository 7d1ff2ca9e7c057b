"""HTML reports of benchmark results and predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("plotly")

from aivc.interfaces.report import write_report


def _plots(page: str) -> int:
    return page.count("Plotly.newPlot(")


def _self_contained(page: str) -> bool:
    external = re.findall(r"<(?:script|link)[^>]+(?:src|href)=[\"']?(https?:)?//", page)
    return not external and "Plotly" in page and len(page) > 1_000_000  # plotly.js inlined


def _results(tmp_path: Path) -> Path:
    """A results directory in the format of docs/results-format.md."""
    out = tmp_path / "unseen-single"
    out.mkdir()
    models = {
        name: {
            "pearson_delta_de20": {"mean": m, "sd": 0.02, "n": 3},
            "mse_de20": {"mean": e, "sd": 0.01, "n": 3},
            "pearson_delta_de20_scaled": {"mean": 0.1, "sd": 0.0, "n": 3},
        }
        for name, m, e in [("control", None, 0.5), ("train-mean", 0.4, 0.3), ("linear", 0.45, 0.28)]
    }
    result = {
        "task": "unseen-single",
        "dataset": "papalexi2021",
        "split": {"kind": "leave-perturbations-out", "folds": 5, "seeds": [0, 1, 2]},
        "models": models,
        "replicate": {"pearson_delta_de20": {"mean": 0.8}},
        "metrics": {
            "pearson_delta_de20": {"higher_is_better": True},
            "mse_de20": {"higher_is_better": False},
        },
        "wall_seconds": {"control": 1.0, "train-mean": 2.0, "linear": 3.0},
        "peak_memory_mb": {"control": 1.0, "train-mean": 2.0, "linear": 5.0},
    }
    (out / "results.json").write_text(json.dumps(result))
    (out / "per_condition.csv").write_text(
        "model,seed,condition,pearson_delta_de20\n"
        + "\n".join(f"{m},0,G{i},{0.1 * i}" for m in ("train-mean", "linear") for i in range(4))
    )
    return out


def test_results_report(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    out = write_report(_results(tmp_path), tmp_path / "r" / "report.html")
    page = out.read_text()
    assert _self_contained(page)
    assert "aivc report: unseen-single on papalexi2021" in page
    # metric bars, per-condition boxes; scaled metrics are left to the table of results.json
    assert _plots(page) == 2
    assert "pearson_delta_de20 (higher is better)" in page and "mse_de20 (lower is better)" in page
    assert "pearson_delta_de20_scaled" not in page
    assert "replicate" in page  # the ceiling line
    assert re.search(r"<td>linear</td><td>0\.280</td><td>0\.450</td>", page)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left


def test_calibration_curves(tmp_path: Path) -> None:
    models = {
        "conformal:linear": {
            "coverage_80": {"mean": 0.78, "sd": 0.01},
            "coverage_90": {"mean": 0.88, "sd": 0.01},
        }
    }
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps({"task": "calibration", "results": {"unseen-single": {"models": models}}})
    )
    page = write_report(path, tmp_path / "cal.html").read_text()
    assert "interval coverage vs nominal level" in page
    assert _plots(page) == 2


def test_prediction_report_against_observed(tmp_path: Path, synthetic) -> None:
    from aivc.data import prepare
    from aivc.instruments import make_instrument

    adata, schema = synthetic
    prepared, pschema = prepare(adata, schema)
    labels = prepared.obs["perturbation"].astype(str)
    singles = sorted(p for p in set(labels) if p != "control" and "+" not in p)
    test = singles[:2]
    train = prepared[~labels.isin(test).to_numpy()].copy()
    model = make_instrument("additive").fit(train, pschema)
    pred = model.predict([*test, "GENE000+GENE001"], control=prepared, n_cells=20)
    pred_file = tmp_path / "pred.h5ad"
    pred.write_h5ad(pred_file)
    observed = tmp_path / "observed.h5ad"
    adata.write_h5ad(observed)

    page = write_report(pred_file, tmp_path / "pred.html", observed=observed).read_text()
    assert _self_contained(page)
    assert "predictions of additive (3 conditions)" in page
    # 3 bar charts, predicted vs observed, the cells
    assert _plots(page) == 5
    # the table reports the Pearson r of each measured condition, computed independently here
    delta = model.predict_delta(test)
    for i, cond in enumerate(test):
        obs = (
            np.asarray(prepared[labels == cond].X.mean(axis=0)).ravel()
            - np.asarray(prepared[labels == "control"].X.mean(axis=0)).ravel()
        )
        r = np.corrcoef(delta[i], obs)[0, 1]
        assert f"<td>{cond}</td><td>{r:.3f}</td>" in page
    assert "Not measured: GENE000+GENE001" in page


def test_report_cli_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    r = CliRunner().invoke(
        app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]
    )
    assert r.exit_code == 2 and "No such file" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no results.json" in r.output
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5")
    r = CliRunner().invoke(app, ["report", str(bad), "--out", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and not (tmp_path / "x.html").exists()


def test_report_out_needs_an_existing_folder_and_an_html_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    results = _results(tmp_path)
    missing = tmp_path / "nonexistent" / "r.html"
    r = CliRunner().invoke(app, ["report", str(results), "--out", str(missing)])
    assert r.exit_code == 2
    assert f"The folder {str(missing.parent)!r} of the report does not exist" in r.output
    assert f"mkdir -p {missing.parent}" in r.output
    assert not missing.parent.exists()
    r = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "r.csv")])
    assert r.exit_code == 2 and "must end in .html" in r.output
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"does not exist; create it first"):
        write_report(results, missing)


def test_report_pca_has_axis_titles_with_explained_variance(tmp_path: Path, synthetic) -> None:
    from sklearn.decomposition import PCA

    from aivc.data import prepare
    from aivc.instruments import make_instrument

    adata, schema = synthetic
    prepared, pschema = prepare(adata, schema)
    model = make_instrument("additive").fit(prepared, pschema)
    pred = model.predict(["GENE000", "GENE001"], control=prepared, n_cells=20)
    assert not any(str(k).startswith("X_") for k in pred.obsm)
    pred.write_h5ad(tmp_path / "pred.h5ad")
    page = write_report(tmp_path / "pred.h5ad", tmp_path / "pred.html").read_text()
    x = pred.X.toarray() if hasattr(pred.X, "toarray") else np.asarray(pred.X)
    ratios = PCA(n_components=2, random_state=0).fit(x).explained_variance_ratio_
    for i, ratio in enumerate(ratios):
        assert f'"title":{{"text":"PC{i + 1} ({ratio:.1%} of variance)"}}' in page
