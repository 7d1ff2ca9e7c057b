"""`aivc fit` / `aivc predict` for the chemical and temporal manipulators, on small files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aivc.interfaces.cli import app

runner = CliRunner()


def test_fit_and_predict_a_compound_dose_response(tmp_path: Path) -> None:
    pytest.importorskip("rdkit")
    from _profiles import plate

    data = plate(n_features=10)
    data.obs = data.obs.rename(columns={"compound_name": "drug", "smiles": "structure"})
    path = tmp_path / "plate.h5ad"
    data.write_h5ad(path)
    model = tmp_path / "chem"
    args = ["fit", "--model", "aivc-chem", "--data", str(path), "--compound-key", "drug"]
    r = runner.invoke(
        app, [*args, "--smiles-key", "structure", "--dose-key", "dose_um", "--out", str(model)]
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "curve.csv"
    r = runner.invoke(
        app,
        [
            "predict",
            str(model),
            "--compound",
            "CCOC(=O)c1ccccc1O",
            "--doses",
            "100,1000",
            "--dose-unit",
            "nM",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out)
    assert len(table) == 2 * 10 and (table["lower"] <= table["upper"]).all()
    r = runner.invoke(
        app,
        [
            "predict",
            str(model),
            "--compound",
            "aspirin",
            "--dose",
            "-1",
            "--out",
            str(tmp_path / "x.csv"),
        ],
    )
    assert r.exit_code != 0 and "positive" in r.output
    r = runner.invoke(
        app,
        [
            "predict",
            str(model),
            "--compound",
            "aspirin",
            "--dose",
            "1",
            "--out",
            str(tmp_path / "x.h5ad"),
        ],
    )
    assert r.exit_code != 0 and ".csv" in r.output


def test_fit_and_forecast_a_time_course(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    from _timecourses import drifting

    data = drifting(n=40)
    data.obs["day"] = data.obs.pop("time").map(
        lambda t: f"D{t:g}"
    )  # text times are read with a warning
    path = tmp_path / "course.h5ad"
    data.write_h5ad(path)
    model = tmp_path / "time"
    r = runner.invoke(
        app,
        [
            "fit",
            "--model",
            "aivc-time",
            "--data",
            str(path),
            "--time-key",
            "day",
            "--expression",
            "log",
            "--out",
            str(model),
        ],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "cells.h5ad"
    r = runner.invoke(
        app, ["predict", str(model), "--time", "2.5,6", "--n-cells", "30", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    cells = ad.read_h5ad(out)
    assert cells.n_obs == 60 and sorted(set(cells.obs["time"])) == [2.5, 6.0]
    assert cells.obsm["X_aivc_time"].shape[0] == 60 and np.isfinite(cells.X).all()
    r = runner.invoke(
        app, ["predict", str(model), "--time", "soon", "--out", str(tmp_path / "y.h5ad")]
    )
    assert r.exit_code != 0 and "numbers" in r.output


def test_fates_command_writes_them_like_cellrank(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    from _timecourses import drifting

    data = drifting(n=40)
    # at the last time, the cells below the median of the first gene are one state, the rest another
    last = (data.obs["time"] == 4.0).to_numpy()
    first_gene = data.X[:, 0]
    data.obs["state"] = np.where(first_gene < np.median(first_gene[last]), "low", "high")
    path = tmp_path / "course.h5ad"
    data.write_h5ad(path)
    model = tmp_path / "time"
    fit = [
        "fit",
        "--model",
        "aivc-time",
        "--data",
        str(path),
        "--time-key",
        "time",
        "--expression",
        "log",
        "--out",
        str(model),
    ]
    assert runner.invoke(app, fit).exit_code == 0
    out = tmp_path / "fates.h5ad"
    args = ["fates", str(model), "--data", str(path), "--time-key", "time", "--label-key", "state"]
    r = runner.invoke(app, [*args, "--from", "3", "--to", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    fates = ad.read_h5ad(out).obsm["aivc_fates"]
    early = (data.obs["time"] == 3.0).to_numpy()
    assert (
        np.allclose(fates.to_numpy()[early].sum(1), 1.0)
        and np.isnan(fates.to_numpy()[~early]).all()
    )
    # a translation keeps each cell's rank: cells low in the first gene at 3 end low at 4
    low = first_gene[early] < np.median(first_gene[early])
    assert fates["low"].to_numpy()[early][low].mean() > 0.7
    r = runner.invoke(app, [*args, "--from", "4", "--to", "3", "--out", str(tmp_path / "x.h5ad")])
    assert r.exit_code != 0 and "later" in r.output
