"""Pure torch module of the gene-panel-agnostic cell encoder.

A cell is read as a weighted set of the genes it expresses. Every gene gets an
input token built from a fixed knowledge embedding (projected), an explicit
"no knowledge" vector for genes without one, and a learned per-gene vector for
genes seen in training. A gene-wise MLP turns tokens into features; a cell's
representation is the expression-weighted mean of its genes' features passed
through an MLP (a deep-sets encoder). The variational decoder maps the latent
and the batch to a distribution over any list of genes through gene output
tokens built the same way, with a negative-binomial likelihood on raw counts.

Nothing here knows about AnnData; :class:`aivc.cells.CellEncoder` owns the data
handling and persistence.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GeneTokens", "SetEncoderModule", "nb_log_likelihood"]


class GeneTokens(nn.Module):
    """Per-gene vectors from knowledge embeddings plus learned reference-gene vectors.

    Parameters
    ----------
    n_ref
        Number of reference (training) genes with a learned vector.
    n_knowledge
        Width of the knowledge embedding (0: no knowledge is used).
    n_hidden
        Width of the tokens.
    """

    def __init__(self, *, n_ref: int, n_knowledge: int, n_hidden: int) -> None:
        super().__init__()
        self.n_knowledge = n_knowledge
        self.project = nn.Linear(n_knowledge, n_hidden, bias=False) if n_knowledge else None
        self.no_knowledge = nn.Parameter(torch.zeros(n_hidden))
        self.learned = nn.Parameter(torch.randn(n_ref, n_hidden) * 0.1)

    def forward(
        self,
        ref_index: torch.Tensor,
        knowledge: torch.Tensor,
        has_knowledge: torch.Tensor,
        learned_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens of a gene list.

        Parameters
        ----------
        ref_index
            Index of each gene among the reference genes, -1 for genes never seen in training.
        knowledge
            Genes x ``n_knowledge`` knowledge rows (zeros where absent).
        has_knowledge
            Boolean per gene.
        learned_mask
            Optional 0/1 per gene multiplying the learned vectors (token dropout in training).
        """
        hk = has_knowledge.to(self.no_knowledge.dtype).unsqueeze(1)
        tok = (1.0 - hk) * self.no_knowledge
        if self.project is not None:
            tok = tok + hk * self.project(knowledge)
        seen = (ref_index >= 0).to(tok.dtype).unsqueeze(1)
        if learned_mask is not None:
            seen = seen * learned_mask.unsqueeze(1)
        learned = self.learned[ref_index.clamp(min=0)]
        return tok + seen * learned


class SetEncoderModule(nn.Module):
    """Deep-sets variational encoder with a gene-token decoder.

    Parameters
    ----------
    n_ref
        Number of reference genes.
    n_knowledge
        Width of the knowledge embedding (0 for none).
    n_hidden
        Width of gene tokens and hidden layers.
    n_latent
        Width of the cell representation.
    n_batches
        Number of batches the decoder is conditioned on (0 or 1: none).
    """

    def __init__(
        self, *, n_ref: int, n_knowledge: int, n_hidden: int, n_latent: int, n_batches: int
    ) -> None:
        super().__init__()
        self.n_batches = max(int(n_batches), 1)
        self.in_tokens = GeneTokens(n_ref=n_ref, n_knowledge=n_knowledge, n_hidden=n_hidden)
        self.out_tokens = GeneTokens(n_ref=n_ref, n_knowledge=n_knowledge, n_hidden=n_hidden)
        self.gene_mlp = nn.Sequential(
            nn.GELU(), nn.Linear(n_hidden, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_hidden)
        )
        self.cell_mlp = nn.Sequential(
            nn.LayerNorm(n_hidden),
            nn.Linear(n_hidden, n_hidden),
            nn.GELU(),
            nn.Linear(n_hidden, 2 * n_latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(n_latent + self.n_batches, n_hidden),
            nn.LayerNorm(n_hidden),
            nn.GELU(),
            nn.Linear(n_hidden, n_hidden),
        )
        self.gene_bias = nn.Parameter(torch.zeros(n_ref))
        self.log_theta = nn.Parameter(torch.full((n_ref,), 1.0))
        self.adversary: nn.Module | None = None

    def add_adversary(self, n_latent: int, n_hidden: int) -> None:
        """A batch classifier on the latent, trained through a reversed gradient."""
        self.adversary = nn.Sequential(
            nn.Linear(n_latent, n_hidden), nn.GELU(), nn.Linear(n_hidden, self.n_batches)
        )

    # encoder -------------------------------------------------------------------------
    def gene_features(
        self,
        ref_index: torch.Tensor,
        knowledge: torch.Tensor,
        has_knowledge: torch.Tensor,
        learned_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Genes x hidden features that cells pool over."""
        tok = self.in_tokens(ref_index, knowledge, has_knowledge, learned_mask)
        return tok + self.gene_mlp(tok)

    def encode_pooled(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the latent from pooled gene features."""
        mu, logvar = self.cell_mlp(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)

    @staticmethod
    def pool(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Expression-weighted mean of gene features (cells x genes @ genes x hidden)."""
        total = weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
        return (weights @ features) / total

    # decoder -------------------------------------------------------------------------
    def decode_logits(
        self,
        z: torch.Tensor,
        batch_onehot: torch.Tensor,
        ref_index: torch.Tensor,
        knowledge: torch.Tensor,
        has_knowledge: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells x genes logits of expression proportions and per-gene log dispersion."""
        h = self.decoder(torch.cat([z, batch_onehot], dim=1))
        out = self.out_tokens(ref_index, knowledge, has_knowledge)
        seen = ref_index >= 0
        idx = ref_index.clamp(min=0)
        bias = torch.where(seen, self.gene_bias[idx], self.gene_bias.mean())
        log_theta = torch.where(seen, self.log_theta[idx], self.log_theta.mean())
        return h @ out.T + bias, log_theta


def nb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, log_theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Negative-binomial log-likelihood (mean ``mu``, inverse dispersion ``exp(log_theta)``), elementwise."""
    theta = log_theta.exp()
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (log_theta - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, exp(logvar)) from N(0, 1), summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward."""
    return _ReverseGradient.apply(x, scale)
