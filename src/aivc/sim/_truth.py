"""The ground truth of a simulation, kept apart from the measured data.

Saved as one ``.npz`` file of plain arrays (strings as unicode arrays, the
parameters as a JSON string) and read back without unpickling anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aivc.sim._interventions import DrugLibrary
from aivc.sim._modules import FunctionalModules
from aivc.sim._network import GeneNetwork

__all__ = ["TRUTH_FORMAT_VERSION", "GroundTruth", "truth_path_for"]

TRUTH_FORMAT_VERSION = 1

_CONDITION_COLUMNS = ("perturbation", "cell_type", "dose", "time", "modality", "signal", "n_cells")
_NUMERIC = {"dose", "time"}


def truth_path_for(data_path: str | Path) -> Path:
    """Where the ground truth of a data file is written: ``<stem>.truth.npz`` beside it."""
    path = Path(data_path)
    name = path.name
    for suffix in (".h5ad", ".zarr"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".truth.npz")


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the simulator knows and a measurement does not show.

    Attributes
    ----------
    gene_names
        ``(n_genes,)`` gene symbols (the order of the columns of ``mean``).
    network
        The gene-regulatory network (edges as arrays: ``source``, ``target``,
        ``weight``; see :class:`GeneNetwork`).
    drugs
        The drug library (targets, potencies, features).
    cell_types
        Names of the cell types.
    master_levels
        ``(n_cell_types, n_master_regulators)`` master-regulator multipliers.
    conditions
        One row per simulated condition: ``perturbation``, ``cell_type``,
        ``dose``, ``time``, ``modality``, ``signal``, ``n_cells``.
    mean
        ``(n_conditions, n_genes)`` population mean of the true expression
        (molecules per cell, before measurement).
    steady_state
        ``(n_conditions, n_genes)`` noise-free state of each condition.
    count_scale
        Factor from true expression to expected counts at median capture.
    dispersion
        ``(n_genes,)`` negative-binomial dispersion of each gene.
    batches
        Names of the batches.
    batch_log_library, batch_log_gene_scale
        Technical effect of each batch (``(n_batches,)`` and ``(n_batches, n_genes)``).
    params
        The simulator's parameters.
    modules
        The functional modules (complexes, pathways) feeding regulators; empty
        when the simulator draws none.
    """

    gene_names: np.ndarray
    network: GeneNetwork
    drugs: DrugLibrary
    cell_types: tuple[str, ...]
    master_levels: np.ndarray
    conditions: pd.DataFrame
    mean: np.ndarray
    steady_state: np.ndarray
    count_scale: float
    dispersion: np.ndarray
    batches: tuple[str, ...] = ()
    batch_log_library: np.ndarray = field(default_factory=lambda: np.zeros(0))
    batch_log_gene_scale: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    params: dict[str, object] = field(default_factory=dict)
    modules: FunctionalModules = field(default_factory=FunctionalModules.empty)

    # ------------------------------------------------------------------ access
    def mean_frame(self) -> pd.DataFrame:
        """``mean`` as a DataFrame indexed like :attr:`conditions`, genes as columns."""
        return pd.DataFrame(self.mean, index=self.conditions.index, columns=self.gene_names)

    def condition_index(
        self,
        perturbation: str,
        *,
        cell_type: str | None = None,
        dose: float = 0.0,
        time: float = 0.0,
    ) -> int:
        """Row of a condition in :attr:`conditions` (first match)."""
        c = self.conditions
        cell_type = self.cell_types[0] if cell_type is None else cell_type
        hit = (
            (c["perturbation"] == perturbation)
            & (c["cell_type"] == cell_type)
            & np.isclose(c["dose"], dose)
            & np.isclose(c["time"], time)
        ).to_numpy()
        rows = np.flatnonzero(hit)
        if not len(rows):
            msg = (
                f"No simulated condition {perturbation!r} in {cell_type!r} at dose {dose:g}, time {time:g}; "
                "see GroundTruth.conditions for what was simulated."
            )
            raise KeyError(msg)
        return int(rows[0])

    def mean_of(
        self,
        perturbation: str,
        *,
        cell_type: str | None = None,
        dose: float = 0.0,
        time: float = 0.0,
    ) -> np.ndarray:
        """True mean expression ``(n_genes,)`` of one condition."""
        return self.mean[
            self.condition_index(perturbation, cell_type=cell_type, dose=dose, time=time)
        ]

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``; no pickles)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(TRUTH_FORMAT_VERSION),
            "gene_names": np.asarray(self.gene_names, dtype=str),
            "cell_types": np.asarray(self.cell_types, dtype=str),
            "master_levels": np.asarray(self.master_levels),
            "mean": np.asarray(self.mean),
            "steady_state": np.asarray(self.steady_state),
            "count_scale": np.asarray(self.count_scale),
            "dispersion": np.asarray(self.dispersion),
            "batches": np.asarray(self.batches, dtype=str),
            "batch_log_library": np.asarray(self.batch_log_library),
            "batch_log_gene_scale": np.asarray(self.batch_log_gene_scale),
            "params_json": np.asarray(json.dumps(self.params, sort_keys=True)),
            **self.network.to_arrays(),
            **self.drugs.to_arrays(),
            **self.modules.to_arrays(),
        }
        for col in _CONDITION_COLUMNS:
            values = self.conditions[col].to_numpy()
            arrays[f"conditions_{col}"] = (
                values.astype(np.float64) if col in _NUMERIC else values.astype(str)
            )
            if col == "n_cells":
                arrays[f"conditions_{col}"] = values.astype(np.int64)
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GroundTruth:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            msg = f"No ground-truth file at {str(path)!r}; simulations write it as <name>.truth.npz beside the data."
            raise FileNotFoundError(msg)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        version = int(arrays.pop("format_version"))
        if version != TRUTH_FORMAT_VERSION:
            msg = f"Unsupported ground-truth format version {version}; this aivc reads version {TRUTH_FORMAT_VERSION}."
            raise ValueError(msg)
        conditions = pd.DataFrame({col: arrays[f"conditions_{col}"] for col in _CONDITION_COLUMNS})
        return cls(
            gene_names=arrays["gene_names"],
            network=GeneNetwork.from_arrays(arrays),
            drugs=DrugLibrary.from_arrays(arrays),
            cell_types=tuple(str(x) for x in arrays["cell_types"]),
            master_levels=arrays["master_levels"],
            conditions=conditions,
            mean=arrays["mean"],
            steady_state=arrays["steady_state"],
            count_scale=float(arrays["count_scale"]),
            dispersion=arrays["dispersion"],
            batches=tuple(str(x) for x in arrays["batches"]),
            batch_log_library=arrays["batch_log_library"],
            batch_log_gene_scale=arrays["batch_log_gene_scale"],
            params=json.loads(str(arrays["params_json"])),
            modules=FunctionalModules.from_arrays(arrays),
        )
