"""Cell representations (the cellular scale).

A gene-panel-agnostic cell encoder reads a cell as a weighted set of the genes
it expresses, through the gene representations of :mod:`aivc.genes`, so data
from different panels, technologies and species map into one space.
"""

from __future__ import annotations

__all__: list[str] = []
