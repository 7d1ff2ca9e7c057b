"""Registry of virtual instruments: name, description, capabilities."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "InstrumentInfo",
    "get_instrument_class",
    "list_instruments",
    "make_instrument",
    "register_instrument",
]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class InstrumentInfo:
    """A registered instrument."""

    name: str
    cls: type
    description: str
    capabilities: frozenset[str]
    kind: str


_INSTRUMENTS: dict[str, InstrumentInfo] = {}


def register_instrument(
    name: str, *, description: str, kind: str = "manipulator"
) -> Callable[[T], T]:
    """Class decorator adding an instrument to the registry under ``name``.

    A duplicate name raises; third-party instruments register the same way.
    """

    def deco(cls: T) -> T:
        if name in _INSTRUMENTS:
            msg = f"An instrument named {name!r} is already registered ({_INSTRUMENTS[name].cls.__name__})."
            raise ValueError(msg)
        cls.name = name  # type: ignore[attr-defined]
        caps = frozenset(getattr(cls, "capabilities", frozenset()))
        _INSTRUMENTS[name] = InstrumentInfo(name, cls, description, caps, kind)
        return cls

    return deco


def _ensure_builtin() -> None:
    import aivc.cells._celltype
    import aivc.cells._protein
    import aivc.instruments._baselines
    import aivc.instruments._conformal
    import aivc.instruments._gears
    import aivc.instruments._manipulator  # noqa: F401


def get_instrument_class(name: str) -> type:
    """The class registered as ``name`` (or with that class name)."""
    _ensure_builtin()
    if name in _INSTRUMENTS:
        return _INSTRUMENTS[name].cls
    for info in _INSTRUMENTS.values():
        if info.cls.__name__ == name:
            return info.cls
    msg = f"Unknown instrument {name!r}. Registered: {sorted(_INSTRUMENTS)}."
    raise KeyError(msg)


def make_instrument(name: str, **params: object) -> object:
    """Construct the instrument registered as ``name`` with keyword ``params``."""
    return get_instrument_class(name)(**params)


def list_instruments() -> Iterator[InstrumentInfo]:
    """Registered instruments, sorted by name."""
    _ensure_builtin()
    for name in sorted(_INSTRUMENTS):
        yield _INSTRUMENTS[name]
