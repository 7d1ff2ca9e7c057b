"""Morphology (and other well-level) profiles of compound treatments in aivc's AnnData layout.

A profile dataset is an AnnData of wells (or cells) x features: the features
(CellProfiler / Cell Painting measurements, or any readout) are ``var``; the
treatment is described in ``obs`` by the columns a :class:`ProfileSchema`
names: compound, dose (with its unit), plate, and optionally the SMILES and
mechanism-of-action columns.

- :func:`read_profiles` reads a community profile table (CSV, optionally
  gzipped; ``Metadata_*`` columns become ``obs``, the others features), as
  pycytominer writes them.
- :func:`normalize_profiles` normalises each feature within each plate the
  pycytominer way (``mad_robustize``: subtract the median, divide by
  1.4826 x MAD; or ``standardize``), using the vehicle wells or all wells
  as the reference.
- :func:`response_table` gives one row per (compound, dose) condition: the
  mean change of its wells from the vehicle wells of the same plate.

Doses are stored in micromolar inside aivc; :data:`DOSE_UNITS` converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "DOSE_UNITS",
    "PROFILE_SCHEMAS",
    "ProfileSchema",
    "ResponseTable",
    "load_profiles",
    "normalize_profiles",
    "read_profiles",
    "response_table",
    "to_micromolar",
]

#: Dose units aivc reads, as multiples of one micromolar.
DOSE_UNITS: dict[str, float] = {
    "pM": 1e-6,
    "nM": 1e-3,
    "uM": 1.0,
    "µM": 1.0,
    "mM": 1e3,
    "M": 1e6,
}


def to_micromolar(dose: float | Sequence[float] | np.ndarray, unit: str) -> np.ndarray:
    """Doses in ``unit`` converted to micromolar; an unknown unit raises naming the known ones."""
    if unit not in DOSE_UNITS:
        msg = f"Unknown dose unit {unit!r}; use one of {list(DOSE_UNITS)}."
        raise ValueError(msg)
    return np.asarray(dose, dtype=np.float64) * DOSE_UNITS[unit]


@dataclass(frozen=True)
class ProfileSchema:
    """Where a profile dataset keeps its treatment annotations.

    Attributes
    ----------
    compound_key
        ``obs`` column with the compound of each well (name or identifier).
    control_label
        The vehicle wells' value of ``compound_key`` (e.g. ``"DMSO"``).
    dose_key
        ``obs`` column with the dose; the vehicle's dose is ignored.
    dose_unit
        Unit of ``dose_key`` (a key of :data:`DOSE_UNITS`).
    plate_key
        ``obs`` column with the plate; vehicles are matched within plates.
        ``None`` treats all wells as one plate.
    smiles_keys
        ``obs`` columns with SMILES, in order of preference (the first
        non-empty value of a compound is used).
    moa_key
        ``obs`` column with the mechanism of action (several joined by ``|``).
    exclude_key
        Optional boolean ``obs`` column of wells to leave out (e.g. plate controls).
    """

    compound_key: str = "compound_name"
    control_label: str = "DMSO"
    dose_key: str = "dose_um"
    dose_unit: str = "uM"
    plate_key: str | None = "plate"
    smiles_keys: tuple[str, ...] = field(default_factory=lambda: ("smiles",))
    moa_key: str | None = "moa"
    exclude_key: str | None = None

    def __post_init__(self) -> None:
        if self.dose_unit not in DOSE_UNITS:
            msg = f"Unknown dose unit {self.dose_unit!r}; use one of {list(DOSE_UNITS)}."
            raise ValueError(msg)
        if isinstance(self.smiles_keys, str):
            object.__setattr__(
                self, "smiles_keys", tuple(k for k in self.smiles_keys.split(",") if k)
            )

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable form."""
        return {
            "compound_key": self.compound_key,
            "control_label": self.control_label,
            "dose_key": self.dose_key,
            "dose_unit": self.dose_unit,
            "plate_key": self.plate_key,
            "smiles_keys": list(self.smiles_keys),
            "moa_key": self.moa_key,
            "exclude_key": self.exclude_key,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ProfileSchema:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["smiles_keys"] = tuple(d.get("smiles_keys") or ())  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]

    def check(self, adata: AnnData) -> None:
        """Raise :class:`DataValidationError` naming every declared column ``adata.obs`` lacks."""
        declared = {
            "compound_key": self.compound_key,
            "dose_key": self.dose_key,
            "plate_key": self.plate_key,
            "moa_key": self.moa_key,
            "exclude_key": self.exclude_key,
        }
        missing = [
            f"{k}={v!r}" for k, v in declared.items() if v is not None and v not in adata.obs
        ]
        missing += [f"smiles_keys={k!r}" for k in self.smiles_keys if k not in adata.obs]
        if missing:
            msg = (
                f"The profile table lacks the declared obs column(s) {', '.join(missing)}; it has "
                f"{sorted(map(str, adata.obs.columns))[:20]}. Declare the right columns "
                "(e.g. --compound-key, --dose-key, --smiles-key) or set a key to None when the data has none."
            )
            raise DataValidationError(msg)
        compounds = adata.obs[self.compound_key].astype(str)
        if not (compounds == self.control_label).any():
            msg = (
                f"No vehicle wells: no {self.compound_key!r} equals {self.control_label!r}. Changes are "
                "measured against the vehicle; declare its label (--control-label)."
            )
            raise DataValidationError(msg)
        dose = pd.to_numeric(adata.obs[self.dose_key], errors="coerce").to_numpy()
        treated = (compounds != self.control_label).to_numpy()
        bad = treated & ~(np.isfinite(dose) & (dose > 0))
        if bad.any():
            examples = adata.obs_names[bad][:3].tolist()
            msg = (
                f"{int(bad.sum())} treated well(s) have a missing, zero or negative dose in "
                f"{self.dose_key!r} (e.g. {examples}); every treated well needs a positive dose."
            )
            raise DataValidationError(msg)
        X = adata.X
        values = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
        if not np.isfinite(values).all():
            msg = (
                "The profiles contain NaN or infinite values; impute or drop those features first."
            )
            raise DataValidationError(msg)


def read_profiles(path: str | Path, *, metadata_prefix: str = "Metadata_") -> AnnData:
    """An AnnData of wells x features from a profile table (CSV / CSV.GZ / TSV / Parquet).

    Columns starting with ``metadata_prefix`` go to ``obs`` (with the prefix
    removed); every other column must be numeric and becomes a feature.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        msg = f"No profile table at {str(path)!r}."
        raise FileNotFoundError(msg)
    name = path.name.lower()
    if name.endswith(".parquet"):
        table = pd.read_parquet(path)
    else:
        sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
        table = pd.read_csv(path, sep=sep)
    meta_cols = [c for c in table.columns if str(c).startswith(metadata_prefix)]
    feat_cols = [c for c in table.columns if c not in meta_cols]
    if not feat_cols:
        msg = (
            f"{str(path)!r} has no feature columns (every column starts with {metadata_prefix!r})."
        )
        raise DataValidationError(msg)
    non_numeric = [c for c in feat_cols if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        msg = (
            f"Feature columns must be numeric; {non_numeric[:5]} are not. Metadata columns must start "
            f"with {metadata_prefix!r}."
        )
        raise DataValidationError(msg)
    obs = table[meta_cols].copy()
    obs.columns = [str(c)[len(metadata_prefix) :] for c in meta_cols]
    obs.index = pd.Index([f"well{i}" for i in range(len(table))])
    return ad.AnnData(
        X=table[feat_cols].to_numpy(dtype=np.float64),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(c) for c in feat_cols])),
    )


def _plates(adata: AnnData, schema: ProfileSchema) -> np.ndarray:
    if schema.plate_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    if schema.plate_key not in adata.obs:
        msg = (
            f"The profile table has no plate column {schema.plate_key!r}; profiles are normalised and "
            "compared with vehicles within plates. Declare the plate column, or plate_key=None if all "
            "wells come from one plate."
        )
        raise DataValidationError(msg)
    return pd.factorize(adata.obs[schema.plate_key].astype(str))[0]


def normalize_profiles(
    adata: AnnData,
    schema: ProfileSchema,
    *,
    method: str = "mad_robustize",
    reference: str = "controls",
    epsilon: float = 1e-18,
) -> AnnData:
    """A copy of ``adata`` with every feature normalised within each plate.

    ``method="mad_robustize"`` subtracts the reference wells' median and
    divides by 1.4826 x their median absolute deviation (+ ``epsilon``);
    ``"standardize"`` uses their mean and standard deviation. ``reference``
    is ``"controls"`` (the vehicle wells of the plate) or ``"all"`` (every
    well of the plate), as pycytominer's ``samples`` argument.
    """
    if method not in ("mad_robustize", "standardize"):
        msg = f"Unknown normalisation {method!r}; use 'mad_robustize' or 'standardize'."
        raise ValueError(msg)
    if reference not in ("controls", "all"):
        msg = f"reference must be 'controls' or 'all'; got {reference!r}."
        raise ValueError(msg)
    plates = _plates(adata, schema)
    X = np.asarray(adata.X, dtype=np.float64).copy()
    is_control = (adata.obs[schema.compound_key].astype(str) == schema.control_label).to_numpy()
    for p in np.unique(plates):
        rows = plates == p
        ref = rows & is_control if reference == "controls" else rows
        if ref.sum() < 2:
            msg = f"Plate {p} has fewer than 2 reference wells; cannot normalise it."
            raise DataValidationError(msg)
        block = X[ref]
        if method == "mad_robustize":
            center = np.median(block, axis=0)
            scale = 1.4826 * np.median(np.abs(block - center), axis=0)
        else:
            center, scale = block.mean(0), block.std(0)
        X[rows] = (X[rows] - center) / (scale + epsilon)
    out = adata.copy()
    out.X = X
    return out


@dataclass
class ResponseTable:
    """Mean change from vehicle of every (compound, dose) condition.

    Attributes
    ----------
    compounds, doses
        One entry per condition (doses in micromolar).
    delta
        Conditions x features: mean over the condition's wells of (well − mean
        of the vehicle wells of its plate).
    n_wells
        Wells behind each condition.
    features
        Feature names.
    vehicle_sd
        Per-feature standard deviation of the vehicle wells around their
        plate's mean (the well-to-well noise of one measurement).
    smiles
        ``{compound: SMILES or None}`` from the schema's SMILES columns.
    moa
        ``{compound: mechanism-of-action string or None}``.
    vehicle
        The vehicle wells, each minus its plate's vehicle mean (wells x
        features), for models that learn from the vehicle population; ``None``
        when the table was built without them (e.g. restored from a saved model).
    """

    compounds: np.ndarray
    doses: np.ndarray
    delta: np.ndarray
    n_wells: np.ndarray
    features: list[str]
    vehicle_sd: np.ndarray
    smiles: dict[str, str | None]
    moa: dict[str, str | None]
    vehicle: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> ResponseTable:
        """The conditions ``rows`` (a boolean mask or indices)."""
        idx = np.arange(len(self.compounds))[rows]
        return ResponseTable(
            compounds=self.compounds[idx],
            doses=self.doses[idx],
            delta=self.delta[idx],
            n_wells=self.n_wells[idx],
            features=self.features,
            vehicle_sd=self.vehicle_sd,
            smiles=self.smiles,
            moa=self.moa,
            vehicle=self.vehicle,
        )

    @property
    def labels(self) -> list[str]:
        """``compound@dose`` label of each condition."""
        return [f"{c}@{d:g}uM" for c, d in zip(self.compounds, self.doses, strict=True)]


def _first_text(values: pd.Series) -> str | None:
    for v in values:
        if isinstance(v, str) and v.strip() and v.strip().lower() not in ("nan", "none"):
            return v.strip()
    return None


def response_table(adata: AnnData, schema: ProfileSchema) -> ResponseTable:
    """One row per treated (compound, dose): the mean change of its wells from their plate's vehicle."""
    schema.check(adata)
    plates = _plates(adata, schema)
    obs = adata.obs
    X = np.asarray(adata.X, dtype=np.float64)
    compounds = obs[schema.compound_key].astype(str).to_numpy()
    keep = np.ones(adata.n_obs, dtype=bool)
    if schema.exclude_key is not None:
        keep &= ~obs[schema.exclude_key].astype(bool).to_numpy()
    is_control = compounds == schema.control_label
    delta_wells = np.empty_like(X)
    noise = []
    for p in np.unique(plates):
        rows = plates == p
        ref = rows & is_control
        if not ref.any():
            msg = f"Plate {p} has no vehicle ({schema.control_label!r}) wells; its changes cannot be measured."
            raise DataValidationError(msg)
        center = X[ref].mean(0)
        delta_wells[rows] = X[rows] - center
        noise.append(X[ref] - center)
    resid = np.vstack(noise)
    vehicle_sd = resid.std(0, ddof=1) if len(resid) > 1 else np.ones(X.shape[1])
    dose = to_micromolar(
        pd.to_numeric(obs[schema.dose_key], errors="coerce").to_numpy(), schema.dose_unit
    )
    treated = keep & ~is_control
    frame = pd.DataFrame({"compound": compounds[treated], "dose": np.round(dose[treated], 9)})
    groups = frame.groupby(["compound", "dose"], sort=True).indices
    keys = list(groups)
    rows_t = np.flatnonzero(treated)
    delta = (
        np.vstack([delta_wells[rows_t[groups[k]]].mean(0) for k in keys])
        if keys
        else np.zeros((0, X.shape[1]))
    )
    smiles: dict[str, str | None] = {}
    moa: dict[str, str | None] = {}
    by_compound = obs.groupby(schema.compound_key, observed=True, sort=False)
    for name, block in by_compound:
        name = str(name)
        if name == schema.control_label:
            continue
        found = None
        for key in schema.smiles_keys:
            found = found or _first_text(block[key])
        smiles[name] = found
        moa[name] = _first_text(block[schema.moa_key]) if schema.moa_key else None
    return ResponseTable(
        compounds=np.array([k[0] for k in keys], dtype=object),
        doses=np.array([k[1] for k in keys], dtype=np.float64),
        delta=delta,
        n_wells=np.array([len(groups[k]) for k in keys], dtype=np.int64),
        features=[str(f) for f in adata.var_names],
        vehicle_sd=vehicle_sd,
        smiles=smiles,
        moa=moa,
        vehicle=resid,
    )


#: Declared columns of the registered profile datasets.
PROFILE_SCHEMAS: dict[str, ProfileSchema] = {
    "lincs_cellpainting_a549": ProfileSchema(
        compound_key="compound_name",
        control_label="DMSO",
        dose_key="dose_um",
        dose_unit="uM",
        plate_key="plate",
        smiles_keys=("smiles_repurposing_hub", "smiles"),
        moa_key="moa",
    )
}


def load_profiles(
    dataset: str,
    *,
    compound_key: str | None = None,
    dose_key: str | None = None,
    smiles_key: str | None = None,
    control_label: str | None = None,
    plate_key: str | None = None,
    moa_key: str | None = None,
    dose_unit: str | None = None,
) -> tuple[AnnData, ProfileSchema, str]:
    """A profile dataset, its schema and a short name, from a registered name or a file.

    A registered profile dataset (:data:`PROFILE_SCHEMAS`) comes with its
    columns; declared keys override them. A file (``.h5ad``, or a CSV / TSV /
    Parquet profile table read by :func:`read_profiles`) takes the declared
    keys, with ``plate``, ``moa`` and ``smiles`` used when such columns exist.
    ``smiles_key`` may list several columns, comma-separated.
    """
    from aivc.data._registry import _REGISTRY, load

    declared: dict[str, object] = {
        k: v
        for k, v in {
            "compound_key": compound_key,
            "dose_key": dose_key,
            "control_label": control_label,
            "plate_key": plate_key,
            "moa_key": moa_key,
            "dose_unit": dose_unit,
        }.items()
        if v is not None
    }
    if smiles_key is not None:
        declared["smiles_keys"] = tuple(k for k in str(smiles_key).split(",") if k)
    if dataset in _REGISTRY:
        if dataset not in PROFILE_SCHEMAS:
            msg = f"Dataset {dataset!r} is not a profile dataset; profile datasets are {sorted(PROFILE_SCHEMAS)}, or give a file."
            raise ValueError(msg)
        base = PROFILE_SCHEMAS[dataset]
        return load(dataset), ProfileSchema(**{**base.__dict__, **declared}), dataset
    path = Path(dataset)
    if not path.exists():
        msg = f"{dataset!r} is neither a registered dataset nor a file; see `aivc datasets list`."
        raise FileNotFoundError(msg)
    if path.suffix == ".h5ad":
        from aivc.data._validate import read_h5ad

        adata = read_h5ad(path)
    else:
        adata = read_profiles(path)
    defaults: dict[str, object] = {
        "plate_key": "plate" if "plate" in adata.obs else None,
        "moa_key": "moa" if "moa" in adata.obs else None,
        "smiles_keys": ("smiles",) if "smiles" in adata.obs else (),
    }
    return adata, ProfileSchema(**{**defaults, **declared}), path.name
