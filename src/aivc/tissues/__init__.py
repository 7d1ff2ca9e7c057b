"""Tissue representations (the multicellular scale): niches on spatial graphs.

- :mod:`~aivc.tissues._spatial`: the spatial schema (:class:`SpatialSchema`),
  checks (:func:`check_spatial`) and neighbourhood graphs built within each
  section (:func:`spatial_graph`), neighbour means and spatial blocks for
  cross-validation.
- :class:`NicheModel` (``aivc-niche``): each cell embedded with its
  neighbourhood by a masked graph autoencoder (torch-geometric) over the
  spatial graph.
- Decoders that read the neighbourhood, each choosing among simple variants
  on training data only: :class:`NicheCellTyper` (cell types),
  :func:`niche_domains` (spatial domains), :class:`GeneImputer` (genes a
  panel lacks, from a reference or from the panel itself).
- :class:`TissueManipulator`: how a cell changes when its neighbourhood
  changes, with the neighbour genes and cells that carry the change.
"""

from __future__ import annotations

from aivc.tissues._decode import (
    CELLTYPE_CANDIDATES,
    GeneImputer,
    NicheCellTyper,
    niche_domains,
    per_gene_pearson,
)
from aivc.tissues._manipulator import TissueManipulator
from aivc.tissues._niche import NicheModel, expression_components
from aivc.tissues._spatial import (
    GRAPH_METHODS,
    SpatialSchema,
    check_spatial,
    neighbour_mean,
    spatial_blocks,
    spatial_graph,
)

__all__ = [
    "CELLTYPE_CANDIDATES",
    "GRAPH_METHODS",
    "GeneImputer",
    "NicheCellTyper",
    "NicheModel",
    "SpatialSchema",
    "TissueManipulator",
    "check_spatial",
    "expression_components",
    "neighbour_mean",
    "niche_domains",
    "per_gene_pearson",
    "spatial_blocks",
    "spatial_graph",
]
