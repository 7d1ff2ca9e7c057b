"""Gene representations (the molecular scale): embeddings from data and knowledge."""

from __future__ import annotations

from aivc.genes._knowledge import (
    KNOWLEDGE_FOLDER,
    gene_aliases,
    gene_symbols,
    go_embedding,
    knowledge_path,
)

__all__ = ["KNOWLEDGE_FOLDER", "gene_aliases", "gene_symbols", "go_embedding", "knowledge_path"]
