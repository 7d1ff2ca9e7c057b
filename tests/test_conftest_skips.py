"""The suite's rules for skipped tests: the data-folder summary line, and every skip failing in CI.

Each case runs pytest in a subprocess on a tiny test file beside a copy of
this suite's ``conftest.py``, with the environment chosen by the case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TINY = """
import pytest


def test_passes():
    pass


def test_needs_data(data_dir):
    pass


def test_needs_data_too(data_dir):
    pass


@pytest.mark.skip(reason="skipped for another reason")
def test_skipped_otherwise():
    pass
"""

_CONTROL = ("AIVC_DATA_DIR", "AIVC_REQUIRE_ALL_TESTS", "CI", "PYTEST_ADDOPTS")


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_tiny.py").write_text(TINY)
    return suite


def _pytest(suite: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in _CONTROL}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_without_data_the_data_tests_skip_with_one_summary_line(tiny_suite):
    r = _pytest(tiny_suite)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 3 skipped" in r.stdout
    lines = [line for line in r.stdout.splitlines() if "without the data folder" in line]
    assert lines == [
        "2 tests skipped without the data folder; set AIVC_DATA_DIR to the folder of the "
        "development datasets to run them."
    ]


@pytest.mark.parametrize("variable", ["AIVC_REQUIRE_ALL_TESTS=1", "CI=true"])
def test_any_skip_fails_the_run_when_every_test_is_required(tiny_suite, variable):
    name, value = variable.split("=")
    r = _pytest(tiny_suite, **{name: value})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"3 skipped test(s) fail this run ({variable} requires every test to run)" in r.stdout
    for test in ("test_needs_data", "test_needs_data_too", "test_skipped_otherwise"):
        assert f"test_tiny.py::{test}: " in r.stdout
    assert "skipped for another reason" in r.stdout


def test_with_the_data_folder_nothing_is_skipped_for_data(tiny_suite, tmp_path):
    (tmp_path / "data").mkdir()
    r = _pytest(tiny_suite, AIVC_DATA_DIR=str(tmp_path / "data"), AIVC_REQUIRE_ALL_TESTS="0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed, 1 skipped" in r.stdout
    assert "without the data folder" not in r.stdout


def test_a_data_dir_that_is_not_a_folder_is_a_usage_error(tiny_suite, tmp_path):
    r = _pytest(tiny_suite, AIVC_DATA_DIR=str(tmp_path / "missing"))
    assert r.returncode == pytest.ExitCode.USAGE_ERROR
    assert "is not a folder" in r.stderr


def test_a_failing_run_keeps_its_exit_status(tiny_suite):
    (tiny_suite / "test_fails.py").write_text("def test_fails():\n    assert False\n")
    r = _pytest(tiny_suite, AIVC_REQUIRE_ALL_TESTS="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed" in r.stdout and "fail this run" in r.stdout


def test_postgres_binaries_of_the_newest_installed_version_are_found(tmp_path, monkeypatch):
    import _postgres

    for version in ("9.6", "15", "17", "notaversion"):
        (tmp_path / version / "bin").mkdir(parents=True)
    for version in ("15", "17"):
        for name in ("initdb", "pg_ctl"):
            (tmp_path / version / "bin" / name).touch()
    monkeypatch.setattr(_postgres, "_DEBIAN_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    dirs = _postgres._bin_dirs()
    assert [d.parent.name for d in dirs[:4]] == ["17", "15", "9.6", "notaversion"]
    bins = tmp_path / "17" / "bin"
    assert _postgres._server_bins() == (str(bins / "initdb"), str(bins / "pg_ctl"))
    # both binaries come from one installation: without 17's pg_ctl, 15's pair
    (bins / "pg_ctl").unlink()
    bins = tmp_path / "15" / "bin"
    assert _postgres._server_bins() == (str(bins / "initdb"), str(bins / "pg_ctl"))


def test_postgres_binaries_on_path_are_found(tmp_path, monkeypatch):
    import _postgres

    path = tmp_path / "path"
    path.mkdir()
    for name in ("initdb", "pg_ctl"):
        (path / name).touch(mode=0o755)
    # no version folder (and not this machine's /usr/local/bin)
    monkeypatch.setattr(_postgres, "_bin_dirs", lambda: [])
    monkeypatch.setenv("PATH", str(path))
    assert _postgres._server_bins() == (str(path / "initdb"), str(path / "pg_ctl"))
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert _postgres._server_bins() is None


def test_a_module_skipped_at_import_fails_the_run_when_every_test_is_required(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_optional.py").write_text(
        'import pytest\n\npytest.importorskip("no_such_module")\n\n\ndef test_uses_it():\n    pass\n'
    )
    (suite / "test_plain.py").write_text("def test_passes():\n    pass\n")
    r = _pytest(suite, AIVC_REQUIRE_ALL_TESTS="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 skipped test(s) fail this run (AIVC_REQUIRE_ALL_TESTS=1" in r.stdout
    listed = [line for line in r.stdout.splitlines() if line.strip().startswith("test_optional.py")]
    assert len(listed) == 1 and "no_such_module" in listed[0], r.stdout
    # without the requirement the same run passes, the module skipped
    r = _pytest(suite)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout


def test_skips_that_name_the_data_folder_in_their_own_words_are_counted_in_the_summary(tmp_path):
    suite = tmp_path / "own_words"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_own.py").write_text(
        "import pytest\n\n\n"
        "def test_needs_tables():\n"
        "    pytest.skip('the gene tables are not in the data directory (set AIVC_DATA_DIR)')\n"
    )
    r = _pytest(suite)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 test skipped without the data folder" in r.stdout
