from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc._io import (
    atomic_path,
    json_safe,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)


class _Boom(RuntimeError):
    pass


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert tmp.exists() and tmp.stat().st_size == 0
        assert not target.exists()  # nothing visible until the block ends
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("existing", [None, b"old content"])
def test_failed_write_leaves_old_file_or_nothing(tmp_path, existing):
    target = tmp_path / "out.bin"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(_Boom), atomic_path(target) as tmp:
        with tmp.open("wb") as fh:
            fh.write(b"half of the ")
            raise _Boom
    if existing is None:
        assert not target.exists()
        assert _listing(tmp_path) == []
    else:
        assert target.read_bytes() == existing
        assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_text_atomic(p, "after"),
        lambda p: write_bytes_atomic(p, b"after"),
        lambda p: write_json_atomic(p, {"a": 1}),
        lambda p: write_csv_atomic(pd.DataFrame({"a": [1]}), p),
    ],
    ids=["text", "bytes", "json", "csv"],
)
def test_failing_writer_in_every_helper(tmp_path, monkeypatch, write):
    target = tmp_path / "x.txt"
    target.write_text("before")

    def broken_write(self, *args, **kwargs):
        with open(self, "w") as fh:
            fh.write("partial")
        raise _Boom

    monkeypatch.setattr(Path, "write_text", broken_write)
    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(_Boom):
        write(target)
    monkeypatch.undo()
    assert target.read_text() == "before"
    assert _listing(tmp_path) == ["x.txt"]


def test_unserialisable_json_writes_nothing(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert _listing(tmp_path) == []


def test_writers_create_parents_and_round_trip(tmp_path):
    deep = tmp_path / "a" / "b"
    assert write_text_atomic(deep / "t.md", "héllo\n") == deep / "t.md"
    assert (deep / "t.md").read_text(encoding="utf-8") == "héllo\n"
    assert write_bytes_atomic(tmp_path / "c" / "b.bin", b"\x00\x01") == tmp_path / "c" / "b.bin"
    assert (tmp_path / "c" / "b.bin").read_bytes() == b"\x00\x01"
    table = pd.DataFrame({"gene": ["A", "B"], "score": [0.5, -1.0]})
    write_csv_atomic(table, tmp_path / "d" / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d" / "t.csv"), table)
    write_csv_atomic(table.set_index("gene"), tmp_path / "d" / "i.csv", index=True)
    assert (tmp_path / "d" / "i.csv").read_text().splitlines()[0] == "gene,score"
    with atomic_path(tmp_path / "e" / "arr.npy") as tmp, tmp.open("wb") as fh:
        np.save(fh, np.arange(3.0))
    np.testing.assert_array_equal(np.load(tmp_path / "e" / "arr.npy"), np.arange(3.0))
    for folder in ("a/b", "c", "d", "e"):
        assert not [p for p in (tmp_path / folder).iterdir() if p.name.startswith(".")]


def test_json_is_strict_nan_and_infinity_are_null(tmp_path):
    obj = {
        "mean": float("nan"),
        "sd": np.float64("inf"),
        "low": -math.inf,
        "n": 3,
        "values": [1.5, float("nan"), (2.0, float("-inf"))],
        "ok": True,
        "name": "x",
        "none": None,
    }
    path = write_json_atomic(tmp_path / "out" / "results.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "mean": None,
        "sd": None,
        "low": None,
        "n": 3,
        "values": [1.5, None, [2.0, None]],
        "ok": True,
        "name": "x",
        "none": None,
    }
    # indented, keys in the given order unless sorting is asked for
    assert text.startswith('{\n  "mean": null')
    write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}'
    assert json_safe({"k": [float("nan"), 1.0]}) == {"k": [None, 1.0]}


def test_written_files_have_the_usual_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "t.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
