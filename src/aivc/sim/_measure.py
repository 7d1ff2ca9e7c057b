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
    dispersion: float = 0.2
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
        """Draw negative-binomial counts for cells with log expected counts ``log_mu``.

        Most entries of a count matrix are zero, so the sampler first decides
        zero or not with one uniform number per entry against the
        negative-binomial zero probability ``(1 + phi mu)^(-1/phi)``, and then
        finds the value of the non-zero entries by inverting the distribution
        function with the same uniform number (``P(k) = P(k-1) mu (1 + (k-1)
        phi) / ((1 + phi mu) k)``): a few steps for all non-zero entries at
        once, then on the shrinking set of larger values. Entries the inversion
        does not settle in :data:`_MAX_INVERSION` steps (large means) are drawn
        as gamma-Poisson mixtures conditioned on exceeding the last step. The
        matrix is built sparse from the start.

        Parameters
        ----------
        log_mu
            ``(n_cells, n_genes)`` log expected counts (capture and batch
            included; ``-inf`` where a gene is not expressed).
        dispersion
            ``(n_genes,)`` negative-binomial dispersions (0: Poisson).
        rng
            Random generator.

        Returns
        -------
        ``(n_cells, n_genes)`` int32 CSR counts.
        """
        n, g = log_mu.shape
        # Poisson genes get a negligible dispersion so one formula serves all
        phi = np.maximum(np.asarray(dispersion, dtype=np.float64), 1e-8)
        mu = np.exp(log_mu, dtype=np.float32)
        p0 = np.exp(np.log1p(mu * phi.astype(np.float32)) * (-1.0 / phi).astype(np.float32))
        u = rng.random((n, g), dtype=np.float32)
        rows, cols = np.nonzero(u >= p0)
        mu_nz = mu[rows, cols].astype(np.float64)
        counts = np.ones(len(rows), dtype=np.int64)
        big = mu_nz > _INVERSION_MAX_MEAN
        sel = ~big
        mu_s = mu_nz[sel]
        u_s = u[rows[sel], cols[sel]].astype(np.float64)
        p = p0[rows[sel], cols[sel]].astype(np.float64)
        del u, p0
        phi_s = phi[cols[sel]]
        counts[sel] = _invert(mu_s, phi_s, u_s, p)
        if big.any():
            counts[big] = _positive_gamma_poisson(mu_nz[big], phi[cols[big]], rng)
        if self.dropout > 0 and len(counts):
            lost = rng.random(len(counts), dtype=np.float32) < self.dropout * np.exp(-mu_nz)
            counts[lost] = 0
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        out = sp.csr_matrix((counts.astype(np.int32), cols.astype(np.int32), indptr), shape=(n, g))
        out.eliminate_zeros()
        return out


#: Largest mean sampled by inversion (larger ones by gamma-Poisson draws).
_INVERSION_MAX_MEAN = 10.0
#: Inversion steps done on all non-zero entries at once.
_DENSE_STEPS = 3
#: Inversion steps after which a value is accepted as is (its tail
#: probability is below 1e-12 for means up to :data:`_INVERSION_MAX_MEAN`).
_MAX_INVERSION = 1000


def _invert(mu: np.ndarray, phi: np.ndarray, u: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Smallest ``k >= 1`` with ``F(k) > u`` for negative-binomial entries known to be non-zero."""
    ratio = mu / (1.0 + phi * mu)
    pk = p0 * ratio
    cdf = p0 + pk
    counts = np.ones(len(mu), dtype=np.int64)
    for k in range(2, _DENSE_STEPS + 2):  # count = 1 + #{k: F(k) <= u}
        counts += u >= cdf
        pk *= ratio * (1.0 + (k - 1) * phi) / k
        cdf += pk
    # the few larger values: continue on a shrinking set
    idx = np.flatnonzero(u >= cdf - pk)
    r, f, uu, pk, cdf = ratio[idx], phi[idx], u[idx], pk[idx], cdf[idx]
    k = _DENSE_STEPS + 1
    while len(idx) and k < _MAX_INVERSION:
        done = uu < cdf
        counts[idx[done]] = k
        left = ~done
        idx, r, f, uu, pk, cdf = idx[left], r[left], f[left], uu[left], pk[left], cdf[left]
        k += 1
        pk *= r * (1.0 + (k - 1) * f) / k
        cdf += pk
    counts[idx] = k
    return counts


def _positive_gamma_poisson(
    mu: np.ndarray, phi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Negative-binomial draws conditioned on being positive (rejection of zeros)."""
    out = np.zeros(len(mu), dtype=np.int64)
    todo = np.arange(len(mu))
    while len(todo):
        m, f = mu[todo], phi[todo]
        lam = m.copy()
        mixed = f > 0
        if mixed.any():
            shape = 1.0 / f[mixed]
            lam[mixed] = m[mixed] * rng.standard_gamma(shape) / shape
        draw = rng.poisson(lam)
        ok = draw > 0
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out
