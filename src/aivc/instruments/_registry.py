"""Registry of virtual instruments: name, description, capabilities.

Instruments register themselves with :func:`register_instrument` when their
module is imported. The registry imports those modules on first use: the
instruments of this package directly, then every module named in the
``aivc.instruments`` entry-point group, which is how aivc's higher layers
(the cell decoders and encoder) and third-party packages add theirs without
this package importing them::

    # pyproject.toml of a third-party package
    [project.entry-points."aivc.instruments"]
    my-model = "my_package.instruments"
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from aivc.instruments._base import Instrument

__all__ = [
    "ENTRY_POINT_GROUP",
    "InstrumentInfo",
    "get_instrument_class",
    "list_instruments",
    "make_instrument",
    "register_instrument",
]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type[Instrument])

#: Entry-point group whose modules register instruments when imported.
ENTRY_POINT_GROUP = "aivc.instruments"

#: Modules of this package that register instruments (imported without entry points, so the
#: built-in instruments are there even when the package metadata is missing or stale).
_OWN_MODULES = (
    "aivc.instruments._baselines",
    "aivc.instruments._conformal",
    "aivc.instruments._gears",
    "aivc.instruments._manipulator",
    "aivc.instruments._chemical",
    "aivc.instruments._temporal",
)


@dataclass(frozen=True)
class InstrumentInfo:
    """A registered instrument."""

    name: str
    cls: type[Instrument]
    description: str
    capabilities: frozenset[str]
    kind: str


_INSTRUMENTS: dict[str, InstrumentInfo] = {}
_loaded = False
_loading = False


def register_instrument(
    name: str, *, description: str, kind: str = "manipulator"
) -> Callable[[T], T]:
    """Class decorator adding an instrument to the registry under ``name``.

    A duplicate name raises; third-party instruments register the same way
    (and name their module in the ``aivc.instruments`` entry-point group so
    that the registry imports it).
    """

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Instrument)):
            msg = (
                f"register_instrument({name!r}) was given {cls!r}; an instrument must be a class "
                "derived from aivc.instruments.Instrument."
            )
            raise TypeError(msg)
        if name in _INSTRUMENTS:
            msg = f"An instrument named {name!r} is already registered ({_INSTRUMENTS[name].cls.__name__})."
            raise ValueError(msg)
        cls.name = name
        caps = frozenset(getattr(cls, "capabilities", frozenset()))
        _INSTRUMENTS[name] = InstrumentInfo(name, cls, description, caps, kind)
        return cls

    return deco


def _entry_points() -> list[EntryPoint]:
    """The entry points of :data:`ENTRY_POINT_GROUP`, one per module, in a stable order."""
    seen: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        seen.setdefault(ep.value, ep)
    return list(seen.values())


def _is_own(ep: EntryPoint) -> bool:
    """Whether ``ep`` names one of aivc's own modules."""
    return ep.module.partition(".")[0] == "aivc"


def _load_entry_point(ep: EntryPoint) -> None:
    """Import the module of ``ep``; a failing third-party module is logged and skipped.

    A module of aivc itself that fails to import is a broken installation, so
    its error is raised (with a note naming the entry point).
    """
    try:
        ep.load()
    except Exception as e:
        if _is_own(ep):
            e.add_note(f"(while loading the instruments of entry point {ep.name!r} = {ep.value!r})")
            raise
        owner = getattr(ep, "dist", None)
        dist = f" of {owner.name}" if owner is not None else ""
        logger.warning(
            "Skipped instrument entry point %r = %r%s in group %r: %s: %s",
            ep.name,
            ep.value,
            dist,
            ENTRY_POINT_GROUP,
            type(e).__name__,
            e,
        )


def _ensure_builtin() -> None:
    """Import every module that registers instruments (once)."""
    global _loaded, _loading
    if _loaded or _loading:
        # a module being loaded may itself ask the registry; it sees what is registered so far
        return
    _loading = True
    try:
        for module in _OWN_MODULES:
            importlib.import_module(module)
        for ep in _entry_points():
            _load_entry_point(ep)
        _loaded = True
    finally:
        _loading = False


def get_instrument_class(name: str) -> type[Instrument]:
    """The class registered as ``name`` (or with that class name).

    Raises
    ------
    KeyError
        No instrument is registered under ``name``.
    """
    _ensure_builtin()
    if name in _INSTRUMENTS:
        return _INSTRUMENTS[name].cls
    for info in _INSTRUMENTS.values():
        if info.cls.__name__ == name:
            return info.cls
    msg = f"Unknown instrument {name!r}. Registered: {sorted(_INSTRUMENTS)}."
    raise KeyError(msg)


def make_instrument(name: str, **params: object) -> Instrument:
    """Construct the instrument registered as ``name`` with keyword ``params``."""
    return get_instrument_class(name)(**params)


def list_instruments() -> Iterator[InstrumentInfo]:
    """Registered instruments, sorted by name."""
    _ensure_builtin()
    for name in sorted(_INSTRUMENTS):
        yield _INSTRUMENTS[name]
