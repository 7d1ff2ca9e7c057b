"""Compound representations from chemical structure (RDKit).

A compound enters aivc as a SMILES string. :func:`canonical_smiles` parses it
with RDKit and refuses anything RDKit cannot read (:class:`InvalidSmilesError`,
never a silent zero vector). :func:`featurize` turns canonical structures into
a fixed-length matrix of one of :data:`FINGERPRINTS`; vectors are cached in
memory and, when ``cache=True``, in ``<aivc cache>/compounds/<kind>.npz`` (plain
arrays, read with ``allow_pickle=False``). :func:`tanimoto` compares binary
fingerprints. :class:`CompoundLibrary` maps the compound names of a dataset to
their structures and says clearly when a name has no structure.

Which fingerprint the chemical manipulator uses is chosen by measurement on
the training compounds (:mod:`aivc.instruments._chemical`); ``morgan2`` is the
default because it is the community's common choice, not because it won.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from aivc._io import atomic_path
from aivc._labels import did_you_mean
from aivc._settings import settings

__all__ = [
    "FINGERPRINTS",
    "CompoundLibrary",
    "InvalidSmilesError",
    "MissingStructureError",
    "canonical_smiles",
    "featurize",
    "tanimoto",
]

logger = logging.getLogger(__name__)

#: Fingerprint kinds :func:`featurize` computes, with their length.
FINGERPRINTS: dict[str, int] = {
    "morgan2": 2048,  # ECFP4-like bits, radius 2
    "morgan2-counts": 2048,  # the same environments, counted (log1p)
    "maccs": 167,  # the 166 MACCS structural keys
    "rdkit-descriptors": 0,  # RDKit's 2D descriptors (standardised by the caller); length set by RDKit
}


class InvalidSmilesError(ValueError):
    """A SMILES string RDKit cannot parse."""


class MissingStructureError(KeyError):
    """A compound name that the library knows but that has no structure."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:  # pragma: no cover - rdkit is a dependency of the chem extra
        msg = "Compound structures need RDKit: pip install 'aivc[chem]' (or pip install rdkit)."
        raise ImportError(msg) from e
    RDLogger.DisableLog("rdApp.*")
    return Chem


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES of ``smiles``; :class:`InvalidSmilesError` if it does not parse."""
    if not isinstance(smiles, str) or not smiles.strip():
        msg = f"A compound structure must be a non-empty SMILES string; got {smiles!r}."
        raise InvalidSmilesError(msg)
    chem = _rdkit()
    mol = chem.MolFromSmiles(smiles.strip())
    if mol is None or mol.GetNumAtoms() == 0:
        msg = (
            f"RDKit cannot parse the SMILES {smiles!r} (check brackets, ring closures and atom "
            "valences); give a valid structure or leave the compound out."
        )
        raise InvalidSmilesError(msg)
    return chem.MolToSmiles(mol)


def _descriptor_names() -> list[str]:
    from rdkit.Chem import Descriptors

    return [name for name, _ in Descriptors._descList]


def _one(smiles: str, kind: str) -> np.ndarray:
    chem = _rdkit()
    mol = chem.MolFromSmiles(smiles)
    if kind in ("morgan2", "morgan2-counts"):
        from rdkit.Chem import rdFingerprintGenerator

        gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=FINGERPRINTS[kind])
        if kind == "morgan2":
            return gen.GetFingerprintAsNumPy(mol).astype(np.float32)
        return np.log1p(gen.GetCountFingerprintAsNumPy(mol).astype(np.float32))
    if kind == "maccs":
        from rdkit.Chem import MACCSkeys

        fp = MACCSkeys.GenMACCSKeys(mol)
        return np.array([fp.GetBit(i) for i in range(fp.GetNumBits())], dtype=np.float32)
    if kind == "rdkit-descriptors":
        from rdkit.Chem import Descriptors

        values = [fn(mol) for _, fn in Descriptors._descList]
        out = np.asarray(values, dtype=np.float64)
        out[~np.isfinite(out)] = 0.0  # a few descriptors overflow for large molecules
        return np.clip(out, -1e6, 1e6).astype(np.float32)
    msg = f"Unknown fingerprint {kind!r}; choose one of {sorted(FINGERPRINTS)}."
    raise ValueError(msg)


_MEMORY: dict[tuple[str, str], np.ndarray] = {}


def _cache_file(kind: str) -> Path:
    return settings.cache_dir / "compounds" / f"{kind}.npz"


def _read_cache(kind: str) -> dict[str, np.ndarray]:
    path = _cache_file(kind)
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, values = z["smiles"], z["values"]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("Ignoring an unreadable compound cache %s (%s)", path, e)
        return {}
    return {str(k): v for k, v in zip(keys, values, strict=True)}


def _write_cache(kind: str, table: Mapping[str, np.ndarray]) -> None:
    path = _cache_file(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(table)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, smiles=np.array(keys, dtype=str), values=np.stack([table[k] for k in keys]))


def featurize(
    smiles: Sequence[str] | str, kind: str = "morgan2", *, cache: bool = True
) -> np.ndarray:
    """Feature matrix (compounds x features, float32) of the structures ``smiles``.

    Every SMILES is canonicalised first (:func:`canonical_smiles`), so the
    same molecule written two ways gets one vector; an unparsable one raises
    :class:`InvalidSmilesError` naming it. ``kind`` is one of
    :data:`FINGERPRINTS`. With ``cache=True`` vectors are kept in the aivc
    cache folder between runs.
    """
    if kind not in FINGERPRINTS:
        msg = f"Unknown fingerprint {kind!r}; choose one of {sorted(FINGERPRINTS)}."
        raise ValueError(msg)
    single = isinstance(smiles, str)
    items = [smiles] if single else list(smiles)
    canon = [canonical_smiles(s) for s in items]
    missing = [s for s in dict.fromkeys(canon) if (kind, s) not in _MEMORY]
    if missing and cache:
        stored = _read_cache(kind)
        for s in missing:
            if s in stored:
                _MEMORY[(kind, s)] = stored[s]
        new = [s for s in missing if (kind, s) not in _MEMORY]
        if new:
            for s in new:
                _MEMORY[(kind, s)] = stored[s] = _one(s, kind)
            try:
                _write_cache(kind, stored)
            except OSError as e:  # a read-only cache folder is not an error
                logger.warning("Could not write the compound cache (%s)", e)
    else:
        for s in missing:
            _MEMORY[(kind, s)] = _one(s, kind)
    if not canon:
        width = FINGERPRINTS[kind] or len(_descriptor_names())
        return np.zeros((0, width), dtype=np.float32)
    out = np.stack([_MEMORY[(kind, s)] for s in canon])
    return out


def tanimoto(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Tanimoto similarity between the rows of binary fingerprints ``a`` and ``b`` (default ``a``).

    Two empty fingerprints have similarity 0 (nothing is shared).
    """
    a = np.asarray(a, dtype=np.float64) > 0
    b = a if b is None else np.asarray(b, dtype=np.float64) > 0
    inter = a.astype(np.float64) @ b.T.astype(np.float64)
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return sim


class CompoundLibrary:
    """Compound names mapped to their structures.

    Parameters
    ----------
    structures
        ``{name: SMILES}``; a missing, empty or NaN SMILES marks a compound
        known by name only.

    A SMILES string is always accepted as a compound of its own
    (:meth:`smiles_of` returns it canonicalised), so users can ask for a
    structure that no dataset holds.
    """

    def __init__(self, structures: Mapping[str, str | float | None]) -> None:
        self.structures: dict[str, str | None] = {}
        for name, s in structures.items():
            ok = isinstance(s, str) and s.strip() != ""
            self.structures[str(name)] = canonical_smiles(s) if ok else None

    @classmethod
    def from_table(
        cls, names: Iterable[str], smiles: Iterable[str | float | None]
    ) -> CompoundLibrary:
        """A library from parallel columns (e.g. a dataset's ``obs``); the first structure of a name wins."""
        table: dict[str, str | float | None] = {}
        for n, s in zip(names, smiles, strict=True):
            if not (isinstance(table.get(str(n)), str) and table[str(n)]):
                table[str(n)] = s
        return cls(table)

    def __contains__(self, name: object) -> bool:
        return name in self.structures

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def with_structure(self) -> list[str]:
        """Names that have a structure."""
        return [n for n, s in self.structures.items() if s is not None]

    def smiles_of(self, compound: str) -> str:
        """Canonical SMILES of a library compound or of a SMILES string itself."""
        if compound in self.structures:
            s = self.structures[compound]
            if s is None:
                msg = (
                    f"Compound {compound!r} has no structure in this dataset, so its response cannot be "
                    "predicted from structure; pass its SMILES instead of its name."
                )
                raise MissingStructureError(msg)
            return s
        try:
            return canonical_smiles(compound)
        except InvalidSmilesError:
            hint = did_you_mean(compound, self.structures)
            parts = [
                f"{compound!r} is neither a compound of this dataset nor a valid SMILES.",
                hint,
                "Give a known compound name or a structure as SMILES.",
            ]
            msg = " ".join(p for p in parts if p)
            raise KeyError(msg) from None
