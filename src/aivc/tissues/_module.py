"""The niche encoder's torch module: a masked graph autoencoder on a spatial graph.

Pure numerics; data handling lives in :mod:`aivc.tissues._niche`. Two
GraphSAGE layers (torch-geometric's ``SAGEConv``, mean aggregation) turn each
cell's features and those of its neighbours into a niche embedding. Training
hides the features of a random share of cells behind a learned mask token and
asks the embedding to reconstruct them, so a masked cell's embedding must
come from its neighbourhood (a GraphMAE-style objective).

:meth:`NicheGNN.embed_chunked` runs the same layers over a scipy sparse
graph one block of rows at a time (layer by layer, as the exact full-graph
answer), so a million-cell tissue is embedded without building its edge
messages at once.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

__all__ = ["NicheGNN"]


class NicheGNN(nn.Module):
    """Masked graph autoencoder over cell features.

    Parameters
    ----------
    n_input
        Features per cell.
    n_hidden
        Width of the first layer.
    n_latent
        Size of the niche embedding.
    """

    def __init__(self, n_input: int, n_hidden: int = 64, n_latent: int = 16) -> None:
        from torch_geometric.nn import SAGEConv

        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(n_input))
        self.conv1 = SAGEConv(n_input, n_hidden, aggr="mean")
        self.conv2 = SAGEConv(n_hidden, n_latent, aggr="mean")
        self.decoder = nn.Linear(n_latent, n_input)

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Niche embedding of every node of a (sub)graph."""
        h = torch.relu(self.conv1(x, edge_index))
        return self.conv2(h, edge_index)

    def loss(self, x: torch.Tensor, edge_index: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error of the masked nodes' features."""
        x_in = torch.where(masked[:, None], self.mask_token.expand_as(x), x)
        z = self.encode(x_in, edge_index)
        return ((self.decoder(z[masked]) - x[masked]) ** 2).mean()

    @staticmethod
    def _sage(
        conv: nn.Module, h: np.ndarray, mean_graph: sp.csr_matrix, rows: slice
    ) -> torch.Tensor:
        agg = torch.from_numpy(np.asarray(mean_graph[rows] @ h, dtype=np.float32))
        own = torch.from_numpy(np.ascontiguousarray(h[rows], dtype=np.float32))
        return conv.lin_l(agg) + conv.lin_r(own)

    @torch.no_grad()
    def embed_chunked(
        self, x: np.ndarray, graph: sp.csr_matrix, *, chunk: int = 65536
    ) -> np.ndarray:
        """:meth:`encode` over the whole graph, ``chunk`` rows at a time (float32, cells x n_latent)."""
        degree = np.asarray(graph.sum(axis=1)).ravel()
        inv = np.divide(1.0, degree, out=np.zeros_like(degree, dtype=np.float64), where=degree > 0)
        mean_graph = sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ graph, dtype=np.float32)
        n = x.shape[0]
        hidden = np.empty((n, self.conv1.out_channels), dtype=np.float32)
        for s in range(0, n, chunk):
            rows = slice(s, min(s + chunk, n))
            hidden[rows] = torch.relu(self._sage(self.conv1, x, mean_graph, rows)).numpy()
        out = np.empty((n, self.conv2.out_channels), dtype=np.float32)
        for s in range(0, n, chunk):
            rows = slice(s, min(s + chunk, n))
            out[rows] = self._sage(self.conv2, hidden, mean_graph, rows).numpy()
        return out
