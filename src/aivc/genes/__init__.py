"""Gene representations (the molecular scale): embeddings from data and knowledge.

Sources: Gene Ontology annotations propagated up the term hierarchy
(:func:`go_embedding`), STRING and HuRI networks (:func:`network_embedding`),
gene descriptions embedded with a sentence encoder (:func:`text_embedding`),
and co-expression within a dataset (:func:`coexpression_embedding`).
:func:`fused_embedding` concatenates any subset with per-source coverage,
:func:`embed_genes` returns vectors for a requested gene list with an explicit
fallback for unknown genes, :func:`genes_with_knowledge` says which genes any
knowledge source covers, and :func:`map_orthologs` moves mouse genes to
human (and back).
"""

from __future__ import annotations

from aivc.genes._coexpression import coexpression_embedding
from aivc.genes._fused import (
    FALLBACKS,
    GENE_SOURCES,
    KNOWLEDGE_SOURCES,
    embed_genes,
    fused_embedding,
    genes_with_knowledge,
    source_embedding,
)
from aivc.genes._knowledge import (
    KNOWLEDGE_FOLDER,
    gene_aliases,
    gene_symbols,
    go_ancestor_closure,
    go_embedding,
    knowledge_path,
)
from aivc.genes._networks import NETWORKS, network_embedding
from aivc.genes._orthologs import (
    OrthologMap,
    map_orthologs,
    mouse_style_share,
    ortholog_table,
    orthologs_to_adata,
)
from aivc.genes._text import encode_texts, gene_descriptions, text_embedding

__all__ = [
    "FALLBACKS",
    "GENE_SOURCES",
    "KNOWLEDGE_FOLDER",
    "KNOWLEDGE_SOURCES",
    "NETWORKS",
    "OrthologMap",
    "coexpression_embedding",
    "embed_genes",
    "encode_texts",
    "fused_embedding",
    "gene_aliases",
    "gene_descriptions",
    "gene_symbols",
    "genes_with_knowledge",
    "go_ancestor_closure",
    "go_embedding",
    "knowledge_path",
    "map_orthologs",
    "mouse_style_share",
    "network_embedding",
    "ortholog_table",
    "orthologs_to_adata",
    "source_embedding",
    "text_embedding",
]
