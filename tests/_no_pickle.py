"""A guard that makes every way of unpickling fail, for tests that load saved objects."""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
import sys
from collections.abc import Iterator

import numpy as np
import pytest

#: Whether the audit hook refuses unpickling right now (the hook itself cannot be removed).
_GUARD = {"on": False, "hooked": False}


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """Within the block, every path to unpickling raises ``AssertionError("... unpickled")``.

    ``pickle.load``, ``pickle.loads`` and ``pickle.Unpickler`` (which pandas' ``read_pickle``
    and numpy's object arrays go through), ``torch.load`` without ``weights_only=True``,
    ``np.load(allow_pickle=True)`` and ``joblib.load`` are replaced; and an audit hook refuses
    the ``pickle.find_class`` event, which every unpickler (C or Python) raises when it reads
    a class or function, so a reference bound before the block (``from pickle import loads``)
    is caught too.

    Only loading should run inside it: fitting may use libraries (numba's cache) that unpickle
    their own compiled code, which is not a file a user was sent.
    """
    import torch

    if not _GUARD["hooked"]:
        sys.addaudithook(_audit)
        _GUARD["hooked"] = True
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pickle, "load", _refuse)
        m.setattr(pickle, "loads", _refuse)
        m.setattr(pickle, "Unpickler", _refuse)
        m.setattr(torch, "load", _refuse_unsafe_torch(torch.load))
        m.setattr(np, "load", _refuse_pickled_numpy(np.load))
        if importlib.util.find_spec("joblib") is not None:
            import joblib

            m.setattr(joblib, "load", _refuse)
        _GUARD["on"] = True
        try:
            yield
        finally:
            _GUARD["on"] = False


def _audit(event: str, args: tuple) -> None:
    if _GUARD["on"] and event == "pickle.find_class":
        _refuse()


def _refuse(*args, **kwargs):
    raise AssertionError("a saved object was unpickled")


def _refuse_unsafe_torch(real):
    def load(*args, weights_only=None, **kwargs):
        if weights_only is not True:
            _refuse()
        return real(*args, weights_only=True, **kwargs)

    return load


def _refuse_pickled_numpy(real):
    def load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            _refuse()
        return real(*args, allow_pickle=False, **kwargs)

    return load
