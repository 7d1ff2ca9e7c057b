"""Compounds: chemical structures as features for the chemical manipulator.

:func:`canonical_smiles` and :func:`featurize` read SMILES with RDKit
(fingerprints and descriptors, cached); :func:`tanimoto` compares fingerprints;
:class:`CompoundLibrary` maps a dataset's compound names to structures, with a
clear error for a name without one (:class:`MissingStructureError`) and for a
structure RDKit cannot read (:class:`InvalidSmilesError`).
"""

from __future__ import annotations

from aivc.chem._compounds import (
    FINGERPRINTS,
    CompoundLibrary,
    InvalidSmilesError,
    MissingStructureError,
    canonical_smiles,
    featurize,
    tanimoto,
)

__all__ = [
    "FINGERPRINTS",
    "CompoundLibrary",
    "InvalidSmilesError",
    "MissingStructureError",
    "canonical_smiles",
    "featurize",
    "tanimoto",
]
