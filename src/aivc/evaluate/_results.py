"""One way to summarise, format and write benchmark results.

Every task reports a metric as ``{"mean", "sd", "n"}`` over seeds or folds
(:func:`summarize`), writes ``results.json`` as strict JSON (NaN and infinity
become ``null``) and ``results.md`` beside it, both atomically
(:func:`write_results`), and records the machine it ran on (:func:`machine_info`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivc._io import write_json_atomic, write_text_atomic

__all__ = [
    "fmt",
    "fmt_summary",
    "machine_info",
    "summarize",
    "write_results",
]


def summarize(values: Sequence[float] | np.ndarray, *, keep_values: bool = False) -> dict[str, Any]:
    """Mean, sample sd (ddof=1; 0 for one value) and count of the finite ``values``.

    With no finite value the mean and sd are NaN (``null`` in ``results.json``).
    ``keep_values=True`` also lists every value, non-finite ones included.
    """
    raw = np.asarray(values, dtype=float).ravel()
    v = raw[np.isfinite(raw)]
    out: dict[str, Any] = {
        "mean": float(v.mean()) if v.size else float("nan"),
        "sd": (float(v.std(ddof=1)) if v.size > 1 else 0.0) if v.size else float("nan"),
        "n": int(v.size),
    }
    if keep_values:
        out["values"] = [float(x) for x in raw]
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a results table (``n/a`` for missing or non-finite values)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_summary(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± sd`` of a :func:`summarize` entry (``n/a`` when it has no finite mean)."""
    if not summary:
        return "n/a"
    mean, sd = summary.get("mean"), summary.get("sd")
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if sd is None or not np.isfinite(sd):
        return fmt(mean, digits)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: CPUs, Python and aivc versions."""
    from aivc._version import __version__

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aivc": __version__,
        "platform": platform.platform(),
    }


def write_results(out: str | Path, result: dict[str, Any], markdown: str) -> Path:
    """Write ``out/results.json`` (strict JSON) and ``out/results.md`` atomically; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "results.md", markdown)
    return out
