"""Shared fixtures, and how the suite treats tests that need the development datasets.

Tests that need the larger development datasets or the gene-knowledge tables
take the ``data_dir`` fixture: without ``AIVC_DATA_DIR`` they are skipped, and
the run ends with one line saying how many were skipped and how to run them.
Tests of papalexi2021 alone use the ``papalexi2021`` fixture, which reads the
copy that ships with aivc when no data folder is set. With ``CI=true`` or
``AIVC_REQUIRE_ALL_TESTS=1`` a run in which any test was skipped fails, and
the skipped tests are listed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aivc import settings

#: Reason of every skip for want of the data folder (the summary line counts these).
NO_DATA_REASON = "needs the development datasets (AIVC_DATA_DIR is not set)"
_TRUE = {"1", "true", "yes", "on"}


def _data_dir() -> Path | None:
    env = os.environ.get("AIVC_DATA_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    return None


def _require_all_tests() -> str | None:
    """The variable that makes every skip a failure, or None when none is set."""
    for name in ("AIVC_REQUIRE_ALL_TESTS", "CI"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class _SkipLedger:
    """Records skipped tests; reports those skipped for want of data, fails skips in CI."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append((report.nodeid, _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if (
            self.skipped
            and _require_all_tests()
            and not session.config.option.collectonly
            and session.exitstatus == pytest.ExitCode.OK
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        n_data = sum("AIVC_DATA_DIR" in reason for _, reason in self.skipped)
        if n_data:
            terminalreporter.write_line(
                f"{n_data} test{'s' if n_data != 1 else ''} skipped without the data folder; "
                "set AIVC_DATA_DIR to the folder of the development datasets to run them.",
                yellow=True,
            )
        why = _require_all_tests()
        if self.skipped and why and not terminalreporter.config.option.collectonly:
            terminalreporter.write_line(
                f"{len(self.skipped)} skipped test(s) fail this run ({why} requires every test "
                "to run):",
                red=True,
                bold=True,
            )
            for nodeid, reason in self.skipped:
                terminalreporter.write_line(f"  {nodeid}: {reason}", red=True)


def pytest_configure(config: pytest.Config) -> None:
    env = os.environ.get("AIVC_DATA_DIR")
    if env and not Path(env).expanduser().is_dir():
        msg = (
            f"AIVC_DATA_DIR is set to {env!r}, which is not a folder. Point it at the folder "
            "of the development datasets, or unset it to skip the tests that need them."
        )
        raise pytest.UsageError(msg)
    config.pluginmanager.register(_SkipLedger(), "aivc-skip-ledger")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The development data folder (``AIVC_DATA_DIR``); skips the test when it is not set."""
    d = _data_dir()
    if d is None:
        pytest.skip(NO_DATA_REASON)
    settings.data_dir = d
    return d


@pytest.fixture
def papalexi2021():
    """The raw papalexi2021 AnnData: the data folder's copy, else the one that ships with aivc."""
    from aivc.data import load

    return load("papalexi2021")


@pytest.fixture
def synthetic():
    from aivc.data._synthetic import synthetic_perturbation_data

    return synthetic_perturbation_data(
        n_genes=60, n_singles=8, n_doubles=3, cells_per_condition=20, n_control_cells=40
    )


@pytest.fixture
def prepared(synthetic):
    from aivc.data import prepare

    adata, schema = synthetic
    return prepare(adata, schema)


@pytest.fixture(scope="module")
def held_out_singles():
    """Synthetic knockouts (each lowers its own gene) with four targets held out of training.

    Returns ``(train, schema, held, observed)``: the training AnnData, its schema, the held-out
    targets and their observed changes against the control mean.
    """
    import numpy as np

    from aivc.data import prepare
    from aivc.data._synthetic import synthetic_perturbation_data

    raw, schema = synthetic_perturbation_data(
        n_genes=60, n_singles=14, n_doubles=0, cells_per_condition=20, n_control_cells=80, seed=5
    )
    adata, schema = prepare(raw, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    singles = sorted(set(labels) - {schema.control_label})
    held = singles[:4]
    train = adata[~labels.isin(held).to_numpy()].copy()
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    ctrl = x[(labels == schema.control_label).to_numpy()].mean(axis=0)
    observed = np.stack([x[(labels == h).to_numpy()].mean(axis=0) - ctrl for h in held])
    return train, schema, held, observed
