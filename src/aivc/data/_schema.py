"""The declared schema of a perturbation dataset.

A :class:`PerturbationSchema` names the columns and layers that hold the
experimental design. It is declared once per dataset, stored with every model
and result, and reused for query data, so no other module needs to know a
column name or a control label.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

__all__ = ["SCHEMA_VERSION", "PerturbationSchema"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PerturbationSchema:
    """Where a perturbation dataset keeps its design.

    Parameters
    ----------
    perturbation_key
        ``obs`` column with the perturbation label of each cell: a gene symbol,
        several joined by ``combination_separator`` (``"A+B"``), a compound
        name, or the control label.
    control_label
        Value of ``perturbation_key`` that marks control cells
        (non-targeting guides, vehicle).
    combination_separator
        Separator between the targets of a combinatorial perturbation.
    context_key
        Optional ``obs`` column with the cellular context (cell type, cell line, donor).
    batch_key
        Optional ``obs`` column with the technical batch.
    dose_key
        Optional ``obs`` column with the dose (numeric).
    time_key
        Optional ``obs`` column with the time point (numeric).
    counts_layer
        Layer with raw integer counts; ``None`` means ``adata.X`` holds them.
    """

    perturbation_key: str
    control_label: str
    combination_separator: str = "+"
    context_key: str | None = None
    batch_key: str | None = None
    dose_key: str | None = None
    time_key: str | None = None
    counts_layer: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            required = f.name in {"perturbation_key", "control_label", "combination_separator"}
            if value is None and not required:
                continue
            if not isinstance(value, str) or not value:
                msg = (
                    f"The '{f.name}' field of PerturbationSchema must be a non-empty string"
                    f"{'' if required else ' or None'}. Got {value!r} instead."
                )
                raise ValueError(msg)
        if self.combination_separator in self.control_label:
            msg = (
                f"The control label {self.control_label!r} contains the combination separator "
                f"{self.combination_separator!r}; choose another separator."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------ labels
    def targets(self, label: str) -> tuple[str, ...]:
        """The targets named by a perturbation label (empty for the control)."""
        if label == self.control_label:
            return ()
        parts = tuple(p.strip() for p in str(label).split(self.combination_separator))
        if any(not p for p in parts):
            msg = (
                f"The perturbation label {label!r} has an empty target; expected targets joined by "
                f"{self.combination_separator!r}, e.g. 'A{self.combination_separator}B'."
            )
            raise ValueError(msg)
        return parts

    def join(self, targets: Sequence[str]) -> str:
        """The label of a combination of ``targets`` (the control label if empty)."""
        if len(targets) == 0:
            return self.control_label
        return self.combination_separator.join(targets)

    def order(self, label: str) -> int:
        """How many targets a label names (0 for the control)."""
        return len(self.targets(label))

    def is_control(self, labels: Iterable[str]) -> np.ndarray:
        """Boolean mask of control labels."""
        return np.asarray([str(x) == self.control_label for x in labels], dtype=bool)

    def obs_keys(self) -> dict[str, str]:
        """The declared ``obs`` columns, by role."""
        roles = {
            "perturbation": self.perturbation_key,
            "context": self.context_key,
            "batch": self.batch_key,
            "dose": self.dose_key,
            "time": self.time_key,
        }
        return {k: v for k, v in roles.items() if v is not None}

    # --------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, object]:
        """Plain dict of the declared fields (unset optional fields are left out, so the
        dict can be stored in ``AnnData.uns`` and written to h5ad)."""
        return {
            "schema_version": SCHEMA_VERSION,
            **{k: v for k, v in asdict(self).items() if v is not None},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PerturbationSchema:
        d = dict(d)
        version = d.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            msg = (
                f"Unsupported schema version {version!r}; this aivc reads version {SCHEMA_VERSION}."
            )
            raise ValueError(msg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            msg = f"Unknown PerturbationSchema fields {unknown}; expected a subset of {sorted(known)}."
            raise ValueError(msg)
        return cls(**d)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str) -> PerturbationSchema:
        return cls.from_dict(json.loads(text))
