"""Gene representations (the molecular scale): embeddings from data and knowledge."""

from __future__ import annotations

from aivc.genes._knowledge import (
    KNOWLEDGE_FOLDER,
    gene_aliases,
    gene_symbols,
    go_embedding,
    knowledge_path,
)
from aivc.genes._networks import NETWORKS, fused_embedding, network_embedding

__all__ = [
    "KNOWLEDGE_FOLDER",
    "NETWORKS",
    "fused_embedding",
    "gene_aliases",
    "gene_symbols",
    "go_embedding",
    "knowledge_path",
    "network_embedding",
]
