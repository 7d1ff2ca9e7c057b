"""aivc: the AI virtual cell.

Representations of genes (:mod:`aivc.genes`), compounds (:mod:`aivc.chem`), cells (:mod:`aivc.cells`) and
tissues (:mod:`aivc.tissues`); virtual instruments that read and transform them
(:mod:`aivc.instruments`); in silico experiments (:mod:`aivc.experiments`);
evaluation that compares every model with the baselines that often win
(:mod:`aivc.evaluate`); a mechanistic simulator (:mod:`aivc.sim`); data
handling (:mod:`aivc.data`), imaging (:mod:`aivc.imaging`) and the interfaces on top (:mod:`aivc.interfaces`).

Submodules are imported lazily so that ``import aivc`` and ``aivc --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aivc._settings import settings
from aivc._version import __version__

_SUBMODULES = {
    "cells",
    "chem",
    "data",
    "evaluate",
    "experiments",
    "genes",
    "imaging",
    "instruments",
    "interfaces",
    "sim",
    "tissues",
}

__all__ = ["__version__", "settings", *sorted(_SUBMODULES)]

if TYPE_CHECKING:  # pragma: no cover
    from aivc import (  # noqa: F401
        cells,
        chem,
        data,
        evaluate,
        experiments,
        genes,
        imaging,
        instruments,
        sim,
        tissues,
    )


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"aivc.{name}")
    msg = f"module 'aivc' has no attribute {name!r}"
    raise AttributeError(msg)
