"""Command-line outputs: where files go, and lists read by people or by scripts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from aivc.interfaces.cli import app

runner = CliRunner()


def _output(result) -> str:
    out = result.output
    try:
        out += result.stderr
    except ValueError:  # stderr not captured separately
        pass
    return out


def test_simulate_out_needs_an_existing_folder_and_an_h5ad_name(tmp_path: Path) -> None:
    small = ["simulate", "--cells", "50", "--genes", "50"]
    missing = tmp_path / "nonexistent" / "dir" / "x.h5ad"
    result = runner.invoke(app, [*small, "--out", str(missing)])
    out = _output(result)
    assert result.exit_code == 2
    assert "Traceback" not in out
    assert f"The folder {str(missing.parent)!r} of --out does not exist" in out
    assert f"mkdir -p {missing.parent}" in out
    assert not (tmp_path / "nonexistent").exists()
    # an HDF5 file is not written under another format's name
    result = runner.invoke(app, [*small, "--out", str(tmp_path / "sim.csv")])
    assert result.exit_code == 2
    assert "--out must name an .h5ad file" in _output(result)
    assert "sim.h5ad" in _output(result)
    assert list(tmp_path.iterdir()) == []
    result = runner.invoke(app, [*small, "--out", str(tmp_path / "sim.h5ad")])
    assert result.exit_code == 0, _output(result)
    assert (tmp_path / "sim.h5ad").exists()


def test_datasets_list_prints_full_names_when_not_a_terminal() -> None:
    from aivc.data import list_datasets

    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, _output(result)
    lines = result.output.splitlines()
    rows = [line.split("\t") for line in lines]
    assert rows[0] == ["name", "kind", "local", "embedded", "download", "description"]
    assert all(len(r) == 6 for r in rows)
    entries = list(list_datasets())
    assert [r[0] for r in rows[1:]] == [e.name for e in entries]
    assert [r[5] for r in rows[1:]] == [" ".join(e.description.split()) for e in entries]
    assert "…" not in result.output


def test_datasets_list_is_a_table_on_a_terminal(monkeypatch) -> None:
    import aivc.interfaces.cli as cli

    monkeypatch.setattr(cli, "_stdout_is_terminal", lambda: True)
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, _output(result)
    assert "aivc datasets" in result.output and "\t" not in result.output
