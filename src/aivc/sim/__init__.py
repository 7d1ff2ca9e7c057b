"""Mechanistic simulator of single-cell perturbation experiments ("virtual cell 1.0").

A random but biologically shaped gene-regulatory network (:func:`random_network`)
drives Hill-type transcription kinetics (:class:`Kinetics`); cell types are
settings of master regulators; cells vary through extrinsic factors and a
cell-cycle program propagated through the network; CRISPR knockouts,
knockdowns, activations and multi-target drugs act on the dynamics; a
measurement model (:class:`MeasurementModel`) turns expression into counts with
library-size variation, overdispersion, dropout and batch effects.

:class:`VirtualCellSimulator` simulates designed experiments in memory and keeps
the :class:`GroundTruth` apart from the measured AnnData; functional modules
(complexes, pathways; :class:`FunctionalModules`) make knockouts of partners
share phenotypes, and :func:`simulated_knowledge` writes what noisy curated
knowledge would record about them; :class:`VirtualLab`
answers experiment requests with measurements only; :func:`write_simulation`
streams large simulations to ``.h5ad`` or ``.zarr``.

:class:`VirtualTissue` ("virtual tissue 1.0") lays cell types out in layered
tissue sections where they signal to their neighbours through ligand-receptor
:class:`SignallingPathway` objects that switch on target programs;
:func:`simulate_tissue` measures such a tissue, with its :class:`TissueTruth`
(true per-cell expression as a :class:`TissueState`, signalling edges) kept
apart.
"""

from __future__ import annotations

from aivc.sim._cells import CellVariation, cell_type_names, random_cell_types
from aivc.sim._dynamics import Kinetics, RateInputs, SteadyState
from aivc.sim._interventions import MODALITIES, DrugLibrary, drug_names, random_drugs
from aivc.sim._knowledge import (
    KNOWLEDGE_QUALITIES,
    KnowledgeQuality,
    simulated_knowledge,
    write_knowledge,
)
from aivc.sim._lab import LabCost, VirtualLab
from aivc.sim._measure import BatchEffect, MeasurementModel
from aivc.sim._modules import FunctionalModules, random_modules
from aivc.sim._network import GeneNetwork, gene_names, random_network
from aivc.sim._simulator import (
    CONTROL,
    NO_SIGNAL,
    SolvedConditions,
    VirtualCellSimulator,
    simulation_schema,
)
from aivc.sim._tissue import (
    SignallingPathway,
    TissueState,
    TissueTruth,
    VirtualTissue,
    simulate_tissue,
)
from aivc.sim._truth import GroundTruth, truth_path_for
from aivc.sim._worlds import WORLD_PRESETS, WorldPreset, write_world
from aivc.sim._write import (
    SimulationFiles,
    default_design,
    knowledge_path_for,
    write_simulation,
)

__all__ = [
    "CONTROL",
    "KNOWLEDGE_QUALITIES",
    "MODALITIES",
    "NO_SIGNAL",
    "WORLD_PRESETS",
    "BatchEffect",
    "CellVariation",
    "DrugLibrary",
    "FunctionalModules",
    "GeneNetwork",
    "GroundTruth",
    "Kinetics",
    "KnowledgeQuality",
    "LabCost",
    "MeasurementModel",
    "RateInputs",
    "SignallingPathway",
    "SimulationFiles",
    "SolvedConditions",
    "SteadyState",
    "TissueState",
    "TissueTruth",
    "VirtualCellSimulator",
    "VirtualLab",
    "VirtualTissue",
    "WorldPreset",
    "cell_type_names",
    "default_design",
    "drug_names",
    "gene_names",
    "knowledge_path_for",
    "random_cell_types",
    "random_drugs",
    "random_modules",
    "random_network",
    "simulate_tissue",
    "simulated_knowledge",
    "simulation_schema",
    "truth_path_for",
    "write_knowledge",
    "write_simulation",
    "write_world",
]
