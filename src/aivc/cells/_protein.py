"""RNA -> protein decoder: surface-protein abundance from a cell's transcriptome.

Trained on one CITE-seq dataset (RNA counts + antibody-derived tag counts),
applied to RNA of another dataset without retraining. The RNA is read through
the reference's gene axes with an explicit rule for genes the query lacks,
and each protein also sees the mRNA of the gene(s) that encode it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "ANTIBODY_GENES",
    "ProteinDecoder",
    "canonical_protein",
    "normalize_proteins",
    "protein_matrix",
    "rna_lognorm",
]

logger = logging.getLogger(__name__)

#: Canonical antibody target -> encoding gene symbols, for common PBMC panels
#: (TotalSeq, ECCITE-seq). Heterodimers and clone families list every gene;
#: isotype controls are absent (they have no target gene).
ANTIBODY_GENES: dict[str, tuple[str, ...]] = {
    "CD1a": ("CD1A",),
    "CD2": ("CD2",),
    "CD3": ("CD3E", "CD3D", "CD3G"),
    "CD4": ("CD4",),
    "CD5": ("CD5",),
    "CD7": ("CD7",),
    "CD8": ("CD8A", "CD8B"),
    "CD11b": ("ITGAM",),
    "CD11c": ("ITGAX",),
    "CD14": ("CD14",),
    "CD15": ("FUT4",),
    "CD16": ("FCGR3A", "FCGR3B"),
    "CD19": ("CD19",),
    "CD20": ("MS4A1",),
    "CD24": ("CD24",),
    "CD25": ("IL2RA",),
    "CD26": ("DPP4",),
    "CD27": ("CD27",),
    "CD28": ("CD28",),
    "CD31": ("PECAM1",),
    "CD34": ("CD34",),
    "CD44": ("CD44",),
    "CD45": ("PTPRC",),
    "CD45R": ("PTPRC",),
    "CD45RA": ("PTPRC",),
    "CD45RO": ("PTPRC",),
    "CD56": ("NCAM1",),
    "CD62L": ("SELL",),
    "CD66b": ("CEACAM8",),
    "CD69": ("CD69",),
    "CD77": ("A4GALT",),
    "CD80": ("CD80",),
    "CD86": ("CD86",),
    "CD107a": ("LAMP1",),
    "CD117": ("KIT",),
    "CD127": ("IL7R",),
    "CD134": ("TNFRSF4",),
    "CD137": ("TNFRSF9",),
    "CD138": ("SDC1",),
    "CD152": ("CTLA4",),
    "CD197": ("CCR7",),
    "CD223": ("LAG3",),
    "CD274": ("CD274",),
    "CD278": ("ICOS",),
    "CD279": ("PDCD1",),
    "CD326": ("EPCAM",),
    "CD335": ("NCR1",),
    "CD366": ("HAVCR2",),
    "HLA-ABC": ("HLA-A", "HLA-B", "HLA-C"),
    "HLA-DR": ("HLA-DRA", "HLA-DRB1"),
    "Siglec-8": ("SIGLEC8",),
    "TCRb": ("TRBC1", "TRBC2"),
    "TCRg": ("TRGC1", "TRGC2"),
    "TIGIT": ("TIGIT",),
}

#: Other names of the canonical targets (lower case, without spaces).
_SYNONYMS = {
    "cd8a": "CD8",
    "pd-1": "CD279",
    "pd1": "CD279",
    "pd-l1": "CD274",
    "b7-h1": "CD274",
    "ccr7": "CD197",
    "il7ralpha": "CD127",
    "il7r": "CD127",
    "mhcii": "HLA-DR",
    "hla-a,b,c": "HLA-ABC",
    "b220": "CD45R",
    "c-kit": "CD117",
    "lag3": "CD223",
    "tim3": "CD366",
    "ox40": "CD134",
    "pecam": "CD31",
    "epcam": "CD326",
    "ctla4": "CD152",
    "lamp1": "CD107a",
    "icos": "CD278",
    "nkp46": "CD335",
    "4-1bb": "CD137",
}
_LOOKUP = {k.lower(): k for k in ANTIBODY_GENES} | _SYNONYMS


def canonical_protein(name: str) -> str:
    """Canonical target name of an antibody, e.g. ``"PD-1 (CD279)"`` -> ``"CD279"``.

    Every part of the name (the text and anything in parentheses) is looked
    up, case-insensitively, among :data:`ANTIBODY_GENES` and known synonyms
    (``"IL7Ralpha (CD127)"`` -> ``"CD127"``, ``"CD8a"`` -> ``"CD8"``). Names
    that match nothing (e.g. isotype controls) are returned unchanged.
    """
    parts = [name, *re.findall(r"\(([^)]*)\)", name), re.sub(r"\s*\([^)]*\)", "", name)]
    for part in parts:
        key = part.strip().lower().replace(" ", "")
        if key in _LOOKUP:
            return _LOOKUP[key]
    return name


def protein_matrix(adata: AnnData, *, protein_key: str = "protein_counts") -> pd.DataFrame:
    """The protein counts of ``adata.obsm[protein_key]`` as a cells x proteins DataFrame."""
    if protein_key not in adata.obsm:
        msg = (
            f"No protein counts in obsm[{protein_key!r}]; available obsm keys: "
            f"{sorted(adata.obsm)}. Put the antibody-derived tag counts there as a "
            "DataFrame (columns = antibody names)."
        )
        raise DataValidationError(msg)
    table = adata.obsm[protein_key]
    if not isinstance(table, pd.DataFrame):
        msg = (
            f"obsm[{protein_key!r}] must be a DataFrame with antibody names as columns. "
            f"Got {type(table).__name__} instead."
        )
        raise DataValidationError(msg)
    values = table.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        msg = f"obsm[{protein_key!r}] must hold finite non-negative counts."
        raise DataValidationError(msg)
    return pd.DataFrame(values, index=adata.obs_names, columns=table.columns.astype(str))


def normalize_proteins(counts: pd.DataFrame) -> pd.DataFrame:
    """Log-normalised protein abundance: centred log counts per protein across cells.

    ``log1p(count)`` minus its mean over the cells of the dataset, i.e. the
    log of the count (+1) relative to its geometric mean across cells (the
    across-cells CLR of Seurat's ``margin=2``). Unlike a per-cell CLR it does
    not depend on which other antibodies are in the panel, so it compares
    across panels; the centring removes the antibody-lot- and
    depth-specific offset that differs between experiments.
    """
    logged = np.log1p(counts.to_numpy(dtype=np.float64))
    return pd.DataFrame(logged - logged.mean(axis=0), index=counts.index, columns=counts.columns)


def _official_symbols(names: pd.Index) -> pd.Index:
    """Gene symbols with unambiguous aliases replaced by the official symbol (when known)."""
    from aivc.genes import gene_aliases

    try:
        aliases = gene_aliases()
    except FileNotFoundError:
        return names
    present = set(names)
    return pd.Index(
        [aliases[g] if g in aliases and aliases[g] not in present else g for g in names]
    )


def rna_lognorm(
    adata: AnnData, *, layer: str | None = None, target_sum: float = 1e4
) -> tuple[sp.csr_matrix, pd.Index]:
    """``log1p`` of counts scaled to ``target_sum`` per cell, and the (alias-resolved) genes.

    The RNA must be raw counts (in ``X`` or ``layer``); duplicate gene
    symbols after alias resolution keep their first column.
    """
    from aivc.data import log_normalize

    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} not found; available layers: {sorted(adata.layers)}."
        raise DataValidationError(msg)
    x = sp.csr_matrix(adata.layers[layer] if layer is not None else adata.X, dtype=np.float64)
    if x.nnz and (x.data.min() < 0 or not np.isfinite(x.data).all()):
        msg = "RNA counts must be finite and non-negative; pass raw UMI counts (X or layer=...)."
        raise DataValidationError(msg)
    if x.nnz and np.abs(x.data - np.round(x.data)).max() > 1e-6:
        logger.warning("RNA values are not integers; rna_lognorm expects raw counts.")
    genes = _official_symbols(pd.Index(adata.var_names.astype(str)))
    keep = ~genes.duplicated()
    if not keep.all():
        x = x[:, np.flatnonzero(keep)]
        genes = genes[keep]
    x, _ = log_normalize(x, target_sum=target_sum, dtype=np.float64)
    return x, genes


# The registry imports this module through its entry point in the "aivc.instruments" group
# (pyproject.toml); aivc.instruments never imports aivc.cells itself.
@register_instrument(
    "rna-to-protein",
    kind="decoder",
    description=(
        "Surface-protein abundance from RNA: ridge regression on the reference's principal gene axes "
        "(query genes missing from the panel handled by least-squares projection) plus each "
        "protein's own-gene mRNA, raw and neighbour-smoothed."
    ),
)
class ProteinDecoder(Instrument):
    """Decode surface-protein abundance from RNA, across datasets and panels.

    Fit on a CITE-seq reference (raw RNA counts and antibody-derived tag
    counts); predict the reference's proteins for cells of any other dataset
    from their RNA alone, without retraining.

    Representation. RNA is ``log1p`` of counts per 10,000 (:func:`rna_lognorm`,
    gene aliases resolved to official symbols). The ``n_genes`` most variable
    reference genes are standardised with the reference's mean and standard
    deviation and projected on ``n_components`` principal axes. A query cell
    is projected by least squares on the axes restricted to the genes it has
    (with all genes present this is the ordinary projection), so genes
    missing from a query panel are neither imputed nor silently zero: they
    drop out of the projection, and their number is logged. Each protein's
    own-gene mRNA (the genes in :data:`ANTIBODY_GENES`, or ``protein_genes``)
    enters raw and averaged over the cell's ``n_neighbors`` nearest cells of
    its own dataset in the principal-axis space (sparse mRNA is noisy).

    Target. :func:`normalize_proteins` (centred ``log1p`` counts per protein).
    With ``align_query`` the query's features are centred on the query's own
    mean (the reference's are centred by construction), matching the
    per-dataset centring of the target and removing a constant batch shift.

    Model. Multi-output ridge regression, the penalty per protein chosen by
    efficient leave-one-out cross-validation on the reference only (``alpha=None``).

    Parameters
    ----------
    n_genes
        Most variable reference genes used for the principal axes.
    n_components
        Principal axes.
    n_neighbors
        Neighbours for smoothing the own-gene mRNA (0: no smoothed feature).
    alpha
        Ridge penalty; ``None`` chooses one per protein from a grid by
        leave-one-out error on the reference.
    align_query
        Centre query features on the query's own mean.
    min_gene_fraction
        Below this fraction of the reference genes present in a query, a
        warning is logged (prediction still runs; none present is an error).
    protein_genes
        Extra or overriding antibody -> gene symbols (JSON-serialisable dict).
    protein_key
        ``obsm`` key of the protein counts DataFrame.
    layer
        Layer with raw RNA counts (``None``: ``X``).
    random_state
        Seed of the randomised principal-axis solver.

    Fitted attributes
    -----------------
    proteins_
        Protein (antibody) names the decoder predicts, as in the reference.
    genes_
        Reference genes of the principal axes.
    own_genes_
        Protein -> own genes found in the reference.
    """

    def __init__(
        self,
        *,
        n_genes: int = 2000,
        n_components: int = 30,
        n_neighbors: int = 15,
        alpha: float | None = None,
        align_query: bool = True,
        min_gene_fraction: float = 0.5,
        protein_genes: dict[str, list[str]] | None = None,
        protein_key: str = "protein_counts",
        layer: str | None = None,
        random_state: int = 0,
    ) -> None:
        self.n_genes = n_genes
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.alpha = alpha
        self.align_query = align_query
        self.min_gene_fraction = min_gene_fraction
        self.protein_genes = protein_genes
        self.protein_key = protein_key
        self.layer = layer
        self.random_state = random_state

    #: Ridge penalties tried when ``alpha`` is None.
    ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 1e4)

    # -------------------------------------------------------------- validation
    def _check_params(self) -> None:
        checks = [
            ("n_genes", self.n_genes, isinstance(self.n_genes, int) and self.n_genes >= 2),
            (
                "n_components",
                self.n_components,
                isinstance(self.n_components, int) and self.n_components >= 1,
            ),
            (
                "n_neighbors",
                self.n_neighbors,
                isinstance(self.n_neighbors, int) and self.n_neighbors >= 0,
            ),
            ("alpha", self.alpha, self.alpha is None or float(self.alpha) > 0),
            ("min_gene_fraction", self.min_gene_fraction, 0 <= self.min_gene_fraction <= 1),
        ]
        for name, value, ok in checks:
            if not ok:
                msg = f"The {name!r} parameter of ProteinDecoder is out of range. Got {value!r} instead."
                raise ValueError(msg)

    def _gene_map(self, proteins: Sequence[str]) -> dict[str, list[str]]:
        extra: Mapping[str, Sequence[str]] = self.protein_genes or {}
        out = {}
        for p in proteins:
            if p in extra:
                out[p] = list(extra[p])
            else:
                out[p] = list(ANTIBODY_GENES.get(canonical_protein(p), ()))
        return out

    # -------------------------------------------------------------- features
    def _own_mrna(self, lognorm: sp.csr_matrix, genes: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """Own-gene log mRNA per protein (cells x proteins) and whether any own gene was present."""
        pos = {g: i for i, g in enumerate(genes)}
        lin = lognorm.copy()
        lin.data = np.expm1(lin.data)
        out = np.zeros((lognorm.shape[0], len(self.proteins_)))
        present = np.zeros(len(self.proteins_), dtype=bool)
        for j, p in enumerate(self.proteins_):
            cols = [pos[g] for g in self.own_genes_[p] if g in pos]
            if cols:
                present[j] = True
                out[:, j] = np.log1p(np.asarray(lin[:, cols].sum(axis=1)).ravel())
        return out, present

    def _smooth(self, scores: np.ndarray, values: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        k = min(self.n_neighbors, scores.shape[0])
        if k < 1:
            return values.copy()
        nn = NearestNeighbors(n_neighbors=k).fit(scores)
        idx = nn.kneighbors(scores, return_distance=False)
        return values[idx].mean(axis=1)

    def _features(self, scores: np.ndarray, own: np.ndarray) -> np.ndarray:
        blocks = [scores, (own - self.own_mean_) / self.own_sd_]
        if self.n_neighbors > 0:
            blocks.append((self._smooth(scores, own) - self.smooth_mean_) / self.smooth_sd_)
        return np.hstack(blocks)

    # -------------------------------------------------------------- fit
    def fit(self, adata: AnnData) -> Self:
        """Fit on a CITE-seq reference: raw RNA counts (``X`` or ``layer``) and
        protein counts in ``obsm[protein_key]``."""
        from sklearn.decomposition import PCA
        from sklearn.linear_model import RidgeCV

        self._check_params()
        proteins = protein_matrix(adata, protein_key=self.protein_key)
        if adata.n_obs < 10:
            msg = f"ProteinDecoder needs at least 10 reference cells. Got {adata.n_obs} instead."
            raise DataValidationError(msg)
        if proteins.shape[1] == 0:
            msg = f"obsm[{self.protein_key!r}] has no protein columns."
            raise DataValidationError(msg)
        y = normalize_proteins(proteins).to_numpy()
        lognorm, genes = rna_lognorm(adata, layer=self.layer)
        mean = np.asarray(lognorm.mean(axis=0)).ravel()
        sq = np.asarray(lognorm.multiply(lognorm).mean(axis=0)).ravel()
        var = np.maximum(sq - mean**2, 0.0)
        n_genes = min(self.n_genes, int((var > 0).sum()))
        top = np.sort(np.argsort(var)[::-1][:n_genes])
        self.genes_ = pd.Index(genes[top])
        self.gene_mean_ = mean[top]
        self.gene_sd_ = np.sqrt(var[top]) + 1e-3
        z = self._standardise(lognorm[:, top].toarray())
        k = max(1, min(self.n_components, z.shape[0] - 1, z.shape[1] - 1))
        pca = PCA(n_components=k, svd_solver="randomized", random_state=self.random_state)
        scores = pca.fit_transform(z)
        self.loadings_ = pca.components_.T.copy()
        self.proteins_ = list(proteins.columns)
        gene_map = self._gene_map(self.proteins_)
        present = set(genes)
        self.own_genes_ = {p: [g for g in gs if g in present] for p, gs in gene_map.items()}
        own, _ = self._own_mrna(lognorm, genes)
        self.own_mean_ = own.mean(axis=0)
        self.own_sd_ = own.std(axis=0) + 1e-3
        if self.n_neighbors > 0:
            smooth = self._smooth(scores, own)
            self.smooth_mean_ = smooth.mean(axis=0)
            self.smooth_sd_ = smooth.std(axis=0) + 1e-3
        else:
            self.smooth_mean_ = np.zeros(len(self.proteins_))
            self.smooth_sd_ = np.ones(len(self.proteins_))
        features = self._features(scores, own)
        alphas = self.ALPHAS if self.alpha is None else (float(self.alpha),)
        ridge = RidgeCV(alphas=alphas, alpha_per_target=True).fit(features, y)
        self.coef_ = np.atleast_2d(ridge.coef_).T.copy()  # features x proteins
        self.intercept_ = np.atleast_1d(ridge.intercept_).astype(np.float64)
        self.alpha_ = np.broadcast_to(
            np.asarray(ridge.alpha_, dtype=np.float64), (len(self.proteins_),)
        ).copy()
        missing = [p for p, gs in self.own_genes_.items() if not gs]
        if missing:
            logger.info(
                "ProteinDecoder: %d of %d proteins have no own gene in the reference (%s); "
                "they are predicted from the principal axes only",
                len(missing),
                len(self.proteins_),
                missing[:10],
            )
        self.fitted_ = True
        return self

    def _standardise(self, dense: np.ndarray) -> np.ndarray:
        return np.clip((dense - self.gene_mean_) / self.gene_sd_, -10.0, 10.0)

    # -------------------------------------------------------------- predict
    def gene_overlap(self, adata: AnnData) -> pd.DataFrame:
        """Which reference genes a query has: index = reference genes, column ``present``."""
        self._check_fitted()
        genes = _official_symbols(pd.Index(adata.var_names.astype(str)))
        return pd.DataFrame({"present": self.genes_.isin(genes)}, index=self.genes_)

    def predict(self, adata: AnnData) -> pd.DataFrame:
        """Predicted log-normalised protein abundance of the query cells.

        Parameters
        ----------
        adata
            Query cells with raw RNA counts (``X`` or ``layer``); protein
            counts are not needed (and not used).

        Returns
        -------
        Cells x ``proteins_`` DataFrame on the scale of
        :func:`normalize_proteins` (index = ``adata.obs_names``).
        """
        self._check_fitted()
        lognorm, genes = rna_lognorm(adata, layer=self.layer)
        idx = genes.get_indexer(self.genes_)
        have = idx >= 0
        if not have.any():
            msg = (
                f"The query shares none of the decoder's {len(self.genes_)} reference genes "
                f"(e.g. {list(self.genes_[:5])}); query genes look like {list(genes[:5])}. "
                "Use gene symbols of the same species (map mouse genes with aivc.genes.map_orthologs)."
            )
            raise DataValidationError(msg)
        frac = float(have.mean())
        if frac < self.min_gene_fraction:
            logger.warning(
                "ProteinDecoder: the query has only %d of %d reference genes (%.0f%%); "
                "predictions rest on the remaining genes",
                int(have.sum()),
                len(self.genes_),
                100 * frac,
            )
        elif not have.all():
            logger.info(
                "ProteinDecoder: %d of %d reference genes are missing in the query and "
                "drop out of the projection",
                int((~have).sum()),
                len(self.genes_),
            )
        z = np.clip(
            (lognorm[:, idx[have]].toarray() - self.gene_mean_[have]) / self.gene_sd_[have],
            -10.0,
            10.0,
        )
        basis = self.loadings_[have]
        gram = basis.T @ basis + 1e-6 * np.eye(basis.shape[1])
        scores = np.linalg.solve(gram, basis.T @ z.T).T
        own, own_present = self._own_mrna(lognorm, genes)
        lost = [
            p
            for p, ok in zip(self.proteins_, own_present, strict=True)
            if self.own_genes_[p] and not ok
        ]
        if lost:
            logger.warning(
                "ProteinDecoder: the query lacks the own genes of %d proteins (%s); "
                "their own-gene features are set to the reference mean",
                len(lost),
                lost[:10],
            )
            own[:, ~own_present] = self.own_mean_[~own_present]
        if self.align_query and adata.n_obs > 1:
            scores = scores - scores.mean(axis=0)
        features = self._features(scores, own)
        if self.align_query and adata.n_obs > 1:
            features[:, scores.shape[1] :] -= features[:, scores.shape[1] :].mean(axis=0)
        pred = features @ self.coef_ + self.intercept_
        return pd.DataFrame(pred, index=adata.obs_names.astype(str), columns=self.proteins_)

    # -------------------------------------------------------------- persistence
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "gene_mean": self.gene_mean_,
            "gene_sd": self.gene_sd_,
            "loadings": self.loadings_,
            "own_mean": self.own_mean_,
            "own_sd": self.own_sd_,
            "smooth_mean": self.smooth_mean_,
            "smooth_sd": self.smooth_sd_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "alpha": self.alpha_,
        }
        meta = {
            "genes": list(map(str, self.genes_)),
            "proteins": list(self.proteins_),
            "own_genes": {p: list(g) for p, g in self.own_genes_.items()},
        }
        return {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.genes_ = pd.Index(meta["genes"])
        self.proteins_ = list(meta["proteins"])
        self.own_genes_ = {p: list(g) for p, g in meta["own_genes"].items()}
        for key in (
            "gene_mean",
            "gene_sd",
            "loadings",
            "own_mean",
            "own_sd",
            "smooth_mean",
            "smooth_sd",
            "coef",
            "intercept",
            "alpha",
        ):
            setattr(self, f"{key}_", arrays[key])
