"""Cell representations (the cellular scale) and the decoders that read them.

A gene-panel-agnostic cell encoder reads a cell as a weighted set of the genes
it expresses, through the gene representations of :mod:`aivc.genes`, so data
from different panels, technologies and species map into one space. Decoders
read cells back out: cell-type labels transferred from a reference by a
classifier chosen on held-out reference batches (:class:`CellAnnotator`), cell type with calibrated probabilities and an "unknown"
answer (:class:`CellTypeDecoder`), expression (:meth:`CellEncoder.decode`) and
protein abundance from RNA (:class:`ProteinDecoder`). :func:`integrate` embeds
cells so that batches mix (Harmony on scaled components, the engine that measured best).
"""

from __future__ import annotations

from aivc.cells._annotate import CANDIDATES as ANNOTATOR_CANDIDATES
from aivc.cells._annotate import CellAnnotator, reference_panel
from aivc.cells._calibration import expected_calibration_error, fit_temperature
from aivc.cells._celltype import CellTypeDecoder
from aivc.cells._data import BackedCells, embed_file, iter_chunks, open_cells
from aivc.cells._encoder import (
    GENE_EMBEDDINGS,
    CellEncoder,
    heldout_reconstruction,
    map_species_genes,
)
from aivc.cells._integrate import INTEGRATION_METHODS, Integration, integrate
from aivc.cells._protein import (
    ANTIBODY_GENES,
    ProteinDecoder,
    canonical_protein,
    normalize_proteins,
    protein_matrix,
    rna_lognorm,
)

__all__: list[str] = [
    "ANNOTATOR_CANDIDATES",
    "ANTIBODY_GENES",
    "GENE_EMBEDDINGS",
    "INTEGRATION_METHODS",
    "BackedCells",
    "CellAnnotator",
    "CellEncoder",
    "CellTypeDecoder",
    "Integration",
    "ProteinDecoder",
    "canonical_protein",
    "embed_file",
    "expected_calibration_error",
    "fit_temperature",
    "heldout_reconstruction",
    "integrate",
    "iter_chunks",
    "map_species_genes",
    "normalize_proteins",
    "open_cells",
    "protein_matrix",
    "reference_panel",
    "rna_lognorm",
]
