"""`aivc design` and the context checks of the commands that take --context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aivc.data._synthetic import synthetic_perturbation_data
from aivc.interfaces.cli import app

runner = CliRunner()


def _output(result) -> str:
    out = result.output
    try:
        out += result.stderr
    except ValueError:  # stderr not captured separately
        pass
    return out


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory) -> Path:
    """Raw counts in X, with the aivc schema in uns."""
    raw, _ = synthetic_perturbation_data(
        n_genes=40, n_singles=6, n_doubles=0, cells_per_condition=30, n_control_cells=60, seed=2
    )
    path = tmp_path_factory.mktemp("data") / "counts.h5ad"
    raw.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model_dir(counts_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "additive"
    result = runner.invoke(
        app, ["fit", "--data", str(counts_file), "--model", "additive", "--out", str(out)]
    )
    assert result.exit_code == 0, _output(result)
    return out


def _single(counts_file: Path) -> str:
    import anndata as ad

    labels = ad.read_h5ad(counts_file).obs["perturbation"].astype(str)
    return sorted(set(labels) - {"control"})[0]


def test_design_target_of_raw_counts_is_log_normalised_and_said(
    model_dir: Path, counts_file: Path, tmp_path: Path
) -> None:
    """A target file of raw counts was read as log-expression, giving a nonsense design."""
    import anndata as ad

    from aivc.data import prepare, schema_of

    target = _single(counts_file)
    args = ["design", str(model_dir), "--target-obs", f"perturbation={target}", "--no-pairs"]
    result = runner.invoke(
        app, [*args, "--target", str(counts_file), "--out", str(tmp_path / "a.csv")]
    )
    assert result.exit_code == 0, _output(result)
    out = _output(result)
    assert "note: the --target cells of" in out and "hold raw counts" in out
    assert "log-normalised as the model's training data were (library size to 10000" in out
    from_counts = pd.read_csv(tmp_path / "a.csv")
    assert from_counts["perturbation"].iloc[0] == target

    # the same design as for the log-normalised cells, which get no note
    raw = ad.read_h5ad(counts_file)
    prepared, _ = prepare(raw, schema_of(raw))
    log_file = tmp_path / "log.h5ad"
    prepared.write_h5ad(log_file)
    result = runner.invoke(
        app, [*args, "--target", str(log_file), "--out", str(tmp_path / "b.csv")]
    )
    assert result.exit_code == 0, _output(result)
    assert "raw counts" not in _output(result)
    from_log = pd.read_csv(tmp_path / "b.csv")
    assert list(from_log["perturbation"]) == list(from_counts["perturbation"])
    np.testing.assert_allclose(from_log["distance"], from_counts["distance"], rtol=1e-4)


def test_design_says_what_its_default_candidates_are(
    model_dir: Path, counts_file: Path, tmp_path: Path
) -> None:
    target = _single(counts_file)
    result = runner.invoke(
        app,
        [
            "design",
            str(model_dir),
            "--target",
            str(counts_file),
            "--target-obs",
            f"perturbation={target}",
            "--no-pairs",
            "--out",
            str(tmp_path / "d.csv"),
        ],
    )
    assert result.exit_code == 0, _output(result)
    assert "candidates: 6 measured targets + " in _output(result)


@pytest.mark.parametrize("command", ["predict", "design", "explain", "screen"])
def test_unknown_context_for_a_model_without_contexts_is_an_error(
    command: str, model_dir: Path, counts_file: Path, tmp_path: Path
) -> None:
    """--context for a model trained without contexts was ignored and a file written."""
    target = _single(counts_file)
    out = tmp_path / "out"
    args = {
        "predict": ["--perturbations", target, "--out", str(out)],
        "design": [
            "--target",
            str(counts_file),
            "--target-obs",
            f"perturbation={target}",
            "--out",
            str(out),
        ],
        "explain": [target, "--out", str(out)],
        "screen": ["--objective", "down:GENE010", "--out", str(out)],
    }[command]
    result = runner.invoke(app, [command, str(model_dir), *args, "--context", "liver"])
    assert result.exit_code == 2, _output(result)
    text = _output(result)
    assert "Unknown context 'liver'" in text and "trained without contexts" in text
    assert not out.exists()


def test_screen_without_a_gene_list_screens_the_default_candidates(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "screen.csv"
    result = runner.invoke(
        app, ["screen", str(model_dir), "--objective", "down:GENE010", "--out", str(out)]
    )
    assert result.exit_code == 0, _output(result)
    assert "candidates: 6 measured targets + " in _output(result)
    from aivc.experiments import default_candidates
    from aivc.instruments._model_dir import load_model_dir

    expected = default_candidates(load_model_dir(model_dir).model).labels
    assert sorted(pd.read_csv(out)["candidate"]) == sorted(expected)
