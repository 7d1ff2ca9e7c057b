"""Fitted state declared once, and its persistence derived from the declaration.

Each stage of ``aivc-perturb`` keeps what it learned in a dataclass derived
from :class:`FittedState`: one typed field per fitted quantity. Saving and
loading are not written per stage: :func:`dump_state` and :func:`load_state`
read the field declarations and

- write every ``np.ndarray`` field into the model's safetensors weights under
  ``"<stage>.<field>"``;
- write every ``dict[str, np.ndarray]`` field as one array per entry under
  ``"<stage>.<field>.<name>"``, with the entry names (in order) in the JSON
  config;
- write a field holding an object with its own ``state()`` /
  ``from_state(arrays, meta)`` pair (the conformal calibrator) as its arrays
  under ``"<stage>.<field>.<key>"`` and its metadata in the JSON config;
- write every other field (numbers, strings, flags, lists, dicts of JSON
  values) into the JSON config, under ``state.<stage>.<field>``; non-finite
  floats are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.

On load a field that is missing from either file is an error that names the
field and the file; nothing falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

import numpy as np

from aivc.data import DataValidationError

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "FittedState", "dump_state", "load_state", "state_fields"]

#: Files of a model directory that hold the stages' arrays and their JSON fields.
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"

S = TypeVar("S", bound="FittedState")

_ARRAY, _ARRAYS, _NESTED, _FLOAT, _JSON = "array", "arrays", "nested", "float", "json"


@dataclasses.dataclass
class FittedState:
    """Base of a stage's fitted state: subclasses declare their fields and a ``stage`` name.

    The ``stage`` name prefixes the stage's arrays in the weights file and
    keys its entry in the JSON config, so it must be unique within a model.
    """

    stage: ClassVar[str] = ""

    def validate(self) -> None:
        """Check loaded values; raise :class:`aivc.data.DataValidationError` when they are corrupted."""


def _kind(annotation: Any) -> tuple[str, bool]:
    """How a field of this type is stored, and whether it may be ``None``."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if annotation is np.ndarray:
        return _ARRAY, optional
    if typing.get_origin(annotation) is dict and typing.get_args(annotation)[1:] == (np.ndarray,):
        return _ARRAYS, optional
    if isinstance(annotation, type) and hasattr(annotation, "from_state"):
        return _NESTED, optional
    if annotation is float:
        return _FLOAT, optional
    return _JSON, optional


def state_fields(cls: type[FittedState]) -> list[tuple[str, str, bool, Any]]:
    """``(name, storage kind, may be None, annotation)`` of every declared field of a state class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _kind(hints[f.name])
        if kind in {_ARRAY, _ARRAYS, _NESTED} and optional:
            msg = f"{cls.__name__}.{f.name}: array fields cannot be optional; declare an empty array instead."
            raise TypeError(msg)
        out.append((f.name, kind, optional, hints[f.name]))
    return out


def _float_out(value: float | None) -> float | str | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def dump_state(state: FittedState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every declared field of ``state``: arrays keyed ``"<stage>.<field>"`` and a JSON dict of the rest."""
    stage = type(state).stage
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, kind, _, _ in state_fields(type(state)):
        value = getattr(state, name)
        key = f"{stage}.{name}"
        if kind == _ARRAY:
            arrays[key] = np.asarray(value)
        elif kind == _ARRAYS:
            meta[name] = list(value)
            arrays.update({f"{key}.{entry}": np.asarray(a) for entry, a in value.items()})
        elif kind == _NESTED:
            nested_arrays, meta[name] = value.state()
            arrays.update({f"{key}.{k}": a for k, a in nested_arrays.items()})
        elif kind == _FLOAT:
            meta[name] = _float_out(value)
        else:
            meta[name] = value
    return arrays, meta


def _missing(cls: type[FittedState], field: str, file: str, what: str) -> DataValidationError:
    msg = (
        f"The model directory's {file} has no {what} (field {field!r} of the {cls.stage!r} stage); "
        "the directory is incomplete or damaged. Refit the model and save it again."
    )
    return DataValidationError(msg)


def _float_in(cls: type[FittedState], name: str, value: Any, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        value = None
    else:
        try:
            value = float(value)
        except ValueError:
            value = None
    if value is None:
        msg = (
            f"The model directory's {CONFIG_FILE} holds an invalid value for field {name!r} of the "
            f"{cls.stage!r} stage (expected a number); the directory is corrupted. Refit the model."
        )
        raise DataValidationError(msg)
    return value


def load_state(cls: type[S], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> S:
    """Rebuild a state written by :func:`dump_state`; every declared field must be present.

    Parameters
    ----------
    cls
        The state class.
    arrays
        All arrays of the weights file.
    meta
        The model's JSON state, holding one entry per stage.
    """
    stage = cls.stage
    if not isinstance(meta.get(stage), dict):
        msg = (
            f"The model directory's {CONFIG_FILE} has no entry state.{stage} (the fitted state of the "
            f"{stage!r} stage); the directory is incomplete or damaged. Refit the model and save it again."
        )
        raise DataValidationError(msg)
    entry = meta[stage]
    values: dict[str, Any] = {}
    for name, kind, optional, _ in state_fields(cls):
        key = f"{stage}.{name}"
        if kind == _ARRAY:
            if key not in arrays:
                raise _missing(cls, name, WEIGHTS_FILE, f"array {key!r}")
            values[name] = arrays[key]
            continue
        if name not in entry:
            raise _missing(cls, name, CONFIG_FILE, f"entry state.{key}")
        if kind == _ARRAYS:
            table = {}
            for part in entry[name]:
                if f"{key}.{part}" not in arrays:
                    raise _missing(cls, name, WEIGHTS_FILE, f"array {key}.{part!r}")
                table[str(part)] = arrays[f"{key}.{part}"]
            values[name] = table
        elif kind == _NESTED:
            prefix = f"{key}."
            nested = {k[len(prefix) :]: a for k, a in arrays.items() if k.startswith(prefix)}
            annotation = typing.get_type_hints(cls)[name]
            try:
                values[name] = annotation.from_state(nested, entry[name])
            except KeyError as e:
                raise _missing(cls, name, f"{WEIGHTS_FILE} or {CONFIG_FILE}", f"part {e}") from None
        elif kind == _FLOAT:
            values[name] = _float_in(cls, name, entry[name], optional)
        else:
            values[name] = entry[name]
    state = cls(**values)
    state.validate()
    return state
