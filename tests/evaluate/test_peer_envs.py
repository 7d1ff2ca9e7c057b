"""Peer environments: the registry, the errors and the file protocol, without a real environment.

No test here creates a virtual environment or reaches the network: a "ready"
environment is faked in ``tmp_path`` with a ``bin/python`` that runs the
current interpreter, and the shipped ``probe`` script stands in for a peer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from aivc._settings import settings
from aivc.evaluate import _peer_envs as pe
from aivc.evaluate._spatial_peers import cellcharter_domains, novae_domains, tangram_impute


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty aivc cache directory; the peer environments go in its ``peers`` folder."""
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    return tmp_path / "cache"


def _fake_env(cache: Path, name: str) -> Path:
    """A ready environment for peer ``name`` whose python is the interpreter running the tests."""
    env = cache / "peers" / name
    (env / "bin").mkdir(parents=True)
    python = env / "bin" / "python"
    # a wrapper, not a symlink: a symlinked interpreter outside its venv loses the venv's packages
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    ready = {
        "format": 1,
        "python": "3.11.7",
        "versions": {"tangram-sc": "1.0.4", "torch": "2.13.0"},
    }
    (env / pe.READY_FILE).write_text(json.dumps(ready))
    return env


def test_the_registry_names_each_peer_once_with_what_it_needs() -> None:
    assert {"tangram", "cellcharter", "novae"} <= set(pe.PEERS)
    for name, peer in pe.PEERS.items():
        assert peer.name == name
        assert peer.packages and peer.module and peer.description
    with pytest.raises(ValueError, match="already registered"):
        pe._register(pe.PEERS["tangram"])
    with pytest.raises(ValueError, match="at least one pip package"):
        pe.PeerEnv(name="x", packages=(), module="x", description="x")


def test_an_unknown_peer_is_named_with_the_close_ones(cache) -> None:
    with pytest.raises(
        pe.UnknownPeerError, match=r"Unknown peer 'tangrm'.*Did you mean 'tangram'\?"
    ):
        pe.get_peer("tangrm")
    for call in (pe.install_peer, pe.peer_status):
        with pytest.raises(pe.UnknownPeerError, match="aivc peers list"):
            call("cellcharta")
    with pytest.raises(pe.UnknownPeerError, match="Did you mean 'tangram'"):
        pe.run_peer("Tangram", "probe", [])
    assert not cache.exists()  # nothing was created


def test_every_pip_call_holds_torch_to_the_cpu_build() -> None:
    assert pe.TORCH_REQUIREMENT == "torch==2.13.0"
    lines = [s for s in pe.constraints_text().splitlines() if s and not s.startswith("#")]
    assert lines == ["torch==2.13.0"]


def test_peer_root_is_in_the_cache_directory(cache) -> None:
    assert pe.peer_root() == cache / "peers"


def test_a_missing_or_unfinished_environment_is_not_installed(cache) -> None:
    assert not pe.peer_status("tangram").installed
    # an install that stopped before its marker: the folder and python exist, no ready.json
    env = _fake_env(cache, "tangram")
    (env / pe.READY_FILE).unlink()
    status = pe.peer_status("tangram")
    assert not status.installed and status.versions == {} and status.path == env
    with pytest.raises(pe.PeerNotInstalledError, match="Run `aivc peers install tangram`"):
        pe.run_peer("tangram", "probe", ["--out", "x.json"])


def test_run_peer_passes_files_in_and_out(cache, tmp_path) -> None:
    _fake_env(cache, "tangram")
    out = tmp_path / "versions.json"
    proc = pe.run_peer("tangram", "probe", ["--import", "numpy", "--out", str(out)], timeout=60)
    assert proc.returncode == 0
    result = json.loads(out.read_text())
    assert result["modules"] == {"numpy": np.__version__}
    assert result["distributions"]["numpy"] == np.__version__

    status = {s.peer.name: s for s in pe.list_peers()}
    assert status["tangram"].installed
    assert status["tangram"].versions == {"tangram-sc": "1.0.4", "torch": "2.13.0"}
    assert not status["cellcharter"].installed


def test_a_failing_peer_script_is_reported_with_its_last_lines(cache, tmp_path) -> None:
    _fake_env(cache, "tangram")
    args = ["--import", "no_such_module_anywhere", "--out", str(tmp_path / "v.json")]
    with pytest.raises(pe.PeerRunError, match=r"(?s)failed.*ModuleNotFoundError"):
        pe.run_peer("tangram", "probe", args)
    with pytest.raises(ValueError, match=r"Unknown peer script 'prob'.*Did you mean 'probe'"):
        pe.run_peer("tangram", "prob", [])


def test_a_failed_pip_install_quotes_pip_and_keeps_its_log(tmp_path) -> None:
    log = tmp_path / "install.log"
    missing = tmp_path / "missing-1.0-py3-none-any.whl"  # a local file: pip needs no network
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(pe.constraints_text())
    with pytest.raises(pe.PeerInstallError, match=r"(?s)not marked ready.*install\.log") as e:
        pe._pip_install(Path(sys.executable), [str(missing)], constraints, log)
    assert "missing-1.0-py3-none-any.whl" in str(e.value)
    assert log.read_text().startswith("$ ")
    assert f"-c {constraints}" in log.read_text()


def _counts(n_obs: int, genes: list[str], seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    a = ad.AnnData(
        X=rng.poisson(2.0, (n_obs, len(genes))).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=genes),
    )
    a.obsm["spatial"] = rng.uniform(0, 100, (n_obs, 2))
    return a


def test_the_spatial_peers_check_their_inputs_before_running(cache) -> None:
    spatial = _counts(20, ["A", "B", "C"], 0)
    reference = _counts(30, ["A", "B", "C", "Stat1"], 1)
    with pytest.raises(ValueError, match=r"Unknown target gene 'STAT1'.*Did you mean 'Stat1'\?"):
        tangram_impute(spatial, reference, ["STAT1"])
    logged = reference.copy()
    logged.X = np.log1p(logged.X) + 0.5
    with pytest.raises(ValueError, match="must hold raw counts"):
        tangram_impute(spatial, logged, ["Stat1"])
    with pytest.raises(pe.PeerNotInstalledError, match="aivc peers install tangram"):
        tangram_impute(spatial, reference, ["Stat1"])
    with pytest.raises(ValueError, match="obs column"):
        cellcharter_domains(spatial, 2, section_key="slide")
    with pytest.raises(pe.PeerNotInstalledError, match="aivc peers install cellcharter"):
        cellcharter_domains(spatial, 2)
    with pytest.raises(ValueError, match="obs column"):
        novae_domains(spatial, 2, section_key="slide")
    with pytest.raises(ValueError, match="'epochs' parameter of novae_domains"):
        novae_domains(spatial, 2, epochs=2)
    with pytest.raises(pe.PeerNotInstalledError, match="aivc peers install novae"):
        novae_domains(spatial, 2)


def test_the_peers_commands_list_and_refuse_unknown_names(cache) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    _fake_env(cache, "tangram")
    runner = CliRunner()
    result = runner.invoke(app, ["peers", "list"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.splitlines()]
    assert rows[0] == ["name", "installed", "versions", "licence", "description", "note"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["tangram"][1:3] == ["yes", "tangram-sc 1.0.4, torch 2.13.0"]
    assert by_name["cellcharter"][1:3] == ["no", "-"]

    result = runner.invoke(app, ["peers", "install", "tangrm"])
    assert result.exit_code == 2
    assert "Did you mean 'tangram'?" in result.output
    # a ready environment is kept unless --force
    result = runner.invoke(app, ["peers", "install", "tangram", "--verbosity", "warning"])
    assert result.exit_code == 0, result.output
    assert f"ready: {cache / 'peers' / 'tangram'}" in result.output
