"""Measurement: from true expression to UMI counts with technical noise.

The expected count of gene ``g`` in cell ``c`` of batch ``b`` is

    mu_cg = x_cg * scale * capture_c * batch_bg,

where ``x_cg`` is the cell's true expression, ``scale`` sets the median library
size of control cells, ``capture_c`` is a log-normal capture efficiency /
sequencing depth (shifted per batch) and ``batch_bg`` a log-normal,
gene-specific batch factor. Counts are gamma-Poisson (negative binomial) with
a gene-specific dispersion; a detected gene is lost with probability
``dropout * exp(-mu_cg)``, so dropout falls on weakly expressed genes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["BatchEffect", "MeasurementModel"]


@dataclass(frozen=True, eq=False)
class BatchEffect:
    """Technical effect of one batch.

    Attributes
    ----------
    log_library
        Shift of the log capture efficiency of all cells in the batch.
    log_gene_scale
        ``(n_genes,)`` gene-specific log detection factors.
    """

    log_library: float
    log_gene_scale: np.ndarray


@dataclass(frozen=True)
class MeasurementModel:
    """Technical noise of a droplet single-cell RNA-seq experiment.

    Parameters
    ----------
    library_size
        Median total count of control cells of the first cell type.
    library_size_sd
        Standard deviation of the log capture efficiency of cells in a batch.
    dispersion
        Median negative-binomial dispersion (``variance = mu + dispersion * mu^2``)
        across genes.
    dispersion_sd
        Standard deviation of the log dispersion across genes.
    dropout
        Largest probability that a gene expressed in a cell is not detected at
        all (reached for the weakest genes).
    batch_gene_sd
        Standard deviation of the gene-specific log factors of a batch.
    batch_library_sd
        Standard deviation of a batch's shift of log library size.
    """

    library_size: float = 1500.0
    library_size_sd: float = 0.5
    dispersion: float = 0.25
    dispersion_sd: float = 0.6
    dropout: float = 0.1
    batch_gene_sd: float = 0.15
    batch_library_sd: float = 0.15

    def __post_init__(self) -> None:
        checks = {
            "library_size": self.library_size > 0,
            "library_size_sd": self.library_size_sd >= 0,
            "dispersion": self.dispersion >= 0,
            "dispersion_sd": self.dispersion_sd >= 0,
            "dropout": 0 <= self.dropout < 1,
            "batch_gene_sd": self.batch_gene_sd >= 0,
            "batch_library_sd": self.batch_library_sd >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                bound = (
                    "in [0, 1)"
                    if name == "dropout"
                    else ("> 0" if name == "library_size" else ">= 0")
                )
                msg = f"The '{name}' parameter of MeasurementModel must be {bound}. Got {getattr(self, name)!r} instead."
                raise ValueError(msg)

    def to_dict(self) -> dict[str, float]:
        """The parameters as a JSON-friendly dict."""
        return {k: float(v) for k, v in asdict(self).items()}

    def gene_dispersion(self, n_genes: int, rng: np.random.Generator) -> np.ndarray:
        """``(n_genes,)`` negative-binomial dispersion of each gene."""
        if self.dispersion == 0:
            return np.zeros(n_genes)
        return self.dispersion * np.exp(rng.normal(0.0, self.dispersion_sd, n_genes))

    def batch_effect(self, n_genes: int, rng: np.random.Generator) -> BatchEffect:
        """Draw the technical effect of one batch."""
        return BatchEffect(
            log_library=float(rng.normal(0.0, self.batch_library_sd)),
            log_gene_scale=rng.normal(0.0, self.batch_gene_sd, n_genes),
        )

    def draw_capture(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n,)`` log capture efficiencies of ``n`` cells (before batch shifts)."""
        return rng.normal(0.0, self.library_size_sd, n)

    def sample(
        self,
        log_mu: np.ndarray,
        dispersion: np.ndarray,
        rng: np.random.Generator,
    ) -> sp.csr_matrix:
        """Draw counts for cells with log expected counts ``log_mu``.

        Parameters
        ----------
        log_mu
            ``(n_cells, n_genes)`` log expected counts (capture and batch
            included; ``-inf`` where a gene is not expressed).
        dispersion
            ``(n_genes,)`` negative-binomial dispersions.
        rng
            Random generator.

        Returns
        -------
        ``(n_cells, n_genes)`` int32 CSR counts.
        """
        mu = np.exp(log_mu, dtype=np.float32)
        lam = mu
        if np.any(dispersion > 0):
            shape = np.where(dispersion > 0, 1.0 / np.maximum(dispersion, 1e-12), 1e12).astype(
                np.float32
            )
            gamma = rng.standard_gamma(np.broadcast_to(shape, mu.shape), dtype=np.float32)
            lam = mu * (gamma / shape)
        counts = rng.poisson(lam)
        del lam
        out = sp.csr_matrix(counts, dtype=np.int32)
        del counts
        if self.dropout > 0 and out.nnz:
            rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
            p = self.dropout * np.exp(-mu[rows, out.indices])
            keep = rng.random(out.nnz, dtype=np.float32) >= p
            if not keep.all():
                out.data[~keep] = 0
                out.eliminate_zeros()
        return out
