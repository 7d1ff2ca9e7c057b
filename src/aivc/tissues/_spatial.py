"""Spatial data in: the schema of a spatial dataset, its checks, and graphs built within sections.

A spatial dataset is an AnnData with each cell's coordinates in
``obsm["spatial"]`` (the scverse convention squidpy and spatialdata use) and
obs columns for the cell type, the section (or batch, library) and the
region; :class:`SpatialSchema` declares which. Neighbourhood graphs
(:func:`spatial_graph`: k nearest neighbours, a radius or a Delaunay
triangulation) are built section by section, so no edge ever joins cells of
two sections, whatever their coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import Delaunay, cKDTree

from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "GRAPH_METHODS",
    "SpatialSchema",
    "check_spatial",
    "neighbour_mean",
    "spatial_blocks",
    "spatial_graph",
]

GraphMethod = Literal["knn", "radius", "delaunay"]
GRAPH_METHODS: tuple[str, ...] = ("knn", "radius", "delaunay")

#: ``uns`` key where a dataset may declare its spatial schema.
UNS_KEY = "aivc_spatial"


@dataclass(frozen=True)
class SpatialSchema:
    """Which slots of a spatial AnnData hold what.

    Attributes
    ----------
    spatial_key
        ``obsm`` key of the coordinates (cells x 2 or 3).
    cell_type_key
        ``obs`` column with cell types (``None``: unlabelled).
    section_key
        ``obs`` column with the section, slide or library (``None``: one section).
    region_key
        ``obs`` column with an annotated region or domain (``None``: none).
    """

    spatial_key: str = "spatial"
    cell_type_key: str | None = "cell_type"
    section_key: str | None = None
    region_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpatialSchema:
        known = {
            k: d[k] for k in ("spatial_key", "cell_type_key", "section_key", "region_key") if k in d
        }
        return cls(**known)

    @classmethod
    def of(
        cls,
        adata: AnnData,
        *,
        cell_type_key: str | None = None,
        section_key: str | None = None,
        region_key: str | None = None,
        spatial_key: str | None = None,
    ) -> SpatialSchema:
        """The schema a dataset declares in ``uns["aivc_spatial"]``, overridden by the keys given."""
        declared = adata.uns.get(UNS_KEY, {})
        base = cls.from_dict(dict(declared)) if declared else cls()
        cell = cell_type_key or base.cell_type_key
        if cell is not None and cell not in adata.obs:
            cell = (
                None if cell_type_key is None else cell
            )  # a default that is absent means "unlabelled"
        return cls(
            spatial_key=spatial_key or base.spatial_key,
            cell_type_key=cell,
            section_key=section_key or base.section_key,
            region_key=region_key or base.region_key,
        )

    def sections(self, adata: AnnData) -> np.ndarray:
        """Each cell's section as strings (one section ``"0"`` without a section column)."""
        if self.section_key is None:
            return np.full(adata.n_obs, "0", dtype=object)
        return adata.obs[self.section_key].astype(str).to_numpy()


def check_spatial(adata: AnnData, schema: SpatialSchema, *, min_cells: int = 3) -> np.ndarray:
    """Check a spatial dataset against ``schema``; return its coordinates (float64, cells x d).

    Raises
    ------
    DataValidationError
        No coordinates, coordinates of the wrong shape or not finite, a declared
        obs column that is missing, or a section with fewer than ``min_cells`` cells.
    """
    if schema.spatial_key not in adata.obsm:
        msg = (
            f"No coordinates in obsm[{schema.spatial_key!r}] (obsm has {list(adata.obsm)}); "
            "store each cell's x, y there, e.g. adata.obsm['spatial'] = adata.obs[['x', 'y']].to_numpy()."
        )
        raise DataValidationError(msg)
    xy = np.asarray(adata.obsm[schema.spatial_key])
    if xy.ndim != 2 or xy.shape[0] != adata.n_obs or xy.shape[1] not in (2, 3):
        msg = f"obsm[{schema.spatial_key!r}] must be cells x 2 (or 3) coordinates; got shape {xy.shape}."
        raise DataValidationError(msg)
    try:
        xy = xy.astype(np.float64)
    except (TypeError, ValueError):
        msg = f"obsm[{schema.spatial_key!r}] must hold numbers; got dtype {xy.dtype}."
        raise DataValidationError(msg) from None
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        msg = (
            f"{int(bad.sum())} cells have missing or infinite coordinates in obsm[{schema.spatial_key!r}] "
            f"(first: {list(adata.obs_names[bad][:3])}); drop them first."
        )
        raise DataValidationError(msg)
    for role, key in (
        ("cell type", schema.cell_type_key),
        ("section", schema.section_key),
        ("region", schema.region_key),
    ):
        if key is not None and key not in adata.obs:
            msg = f"The {role} column obs[{key!r}] is missing (columns: {list(adata.obs.columns)})."
            raise DataValidationError(msg)
    counts = pd.Series(schema.sections(adata)).value_counts()
    small = counts[counts < min_cells]
    if len(small):
        msg = (
            f"Sections {small.index.tolist()[:5]} have fewer than {min_cells} cells; a neighbourhood "
            "graph needs more. Drop them or merge them into their slide."
        )
        raise DataValidationError(msg)
    return xy


def _knn_edges(xy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(xy) - 1)
    _, nn = cKDTree(xy).query(xy, k=k + 1)
    rows = np.repeat(np.arange(len(xy)), k)
    cols = nn[:, 1:].ravel()  # the first neighbour of a cell is itself (distinct coordinates)
    keep = cols != rows
    return rows[keep], cols[keep]


def _radius_edges(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    pairs = cKDTree(xy).query_pairs(r=radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]


def _delaunay_edges(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(xy) < xy.shape[1] + 2:
        return _knn_edges(xy, len(xy) - 1)
    tri = Delaunay(xy)
    indptr, indices = tri.vertex_neighbor_vertices
    rows = np.repeat(np.arange(len(xy)), np.diff(indptr))
    return rows, indices.astype(np.int64)


def spatial_graph(
    coordinates: np.ndarray,
    sections: Sequence[object] | np.ndarray | None = None,
    *,
    method: GraphMethod = "knn",
    n_neighbors: int = 10,
    radius: float | None = None,
) -> sp.csr_matrix:
    """A cells x cells 0/1 neighbourhood graph, built within each section.

    Parameters
    ----------
    coordinates
        Cells x 2 (or 3) positions.
    sections
        Each cell's section; cells of different sections are never joined.
        ``None``: one section.
    method
        ``"knn"`` (each cell's ``n_neighbors`` nearest cells, made symmetric),
        ``"radius"`` (cells within ``radius``) or ``"delaunay"`` (the
        triangulation's edges).
    n_neighbors, radius
        The size of the neighbourhood for ``"knn"`` and ``"radius"``.

    Returns
    -------
    Symmetric CSR matrix (float32 ones) without self-loops.
    """
    xy = np.asarray(coordinates, dtype=np.float64)
    n = len(xy)
    if method not in GRAPH_METHODS:
        msg = f"The 'method' parameter must be one of {GRAPH_METHODS}; got {method!r} instead."
        raise ValueError(msg)
    if method == "radius" and (radius is None or radius <= 0):
        msg = f"A radius graph needs radius > 0; got {radius!r}."
        raise ValueError(msg)
    if method == "knn" and n_neighbors < 1:
        msg = f"n_neighbors must be at least 1; got {n_neighbors}."
        raise ValueError(msg)
    labels = np.zeros(n, np.int64) if sections is None else pd.factorize(np.asarray(sections))[0]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        if len(idx) < 2:
            continue
        if method == "knn":
            r, c = _knn_edges(xy[idx], n_neighbors)
        elif method == "radius":
            r, c = _radius_edges(xy[idx], float(radius))  # type: ignore[arg-type]
        else:
            r, c = _delaunay_edges(xy[idx])
        rows.append(idx[r])
        cols.append(idx[c])
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    g = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, n))
    g = ((g + g.T) > 0).astype(np.float32)
    g.setdiag(0)
    g.eliminate_zeros()
    return sp.csr_matrix(g)


def neighbour_mean(graph: sp.spmatrix, values: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Each cell's mean of ``values`` over its graph neighbours (zero for a cell without any)."""
    g = sp.csr_matrix(graph, dtype=np.float32)
    degree = np.asarray(g.sum(axis=1)).ravel()
    inv = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    out = sp.diags(inv) @ (g @ values)
    return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)


def spatial_blocks(
    coordinates: np.ndarray,
    sections: Sequence[object] | np.ndarray | None = None,
    *,
    n_blocks: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Fold labels for spatially blocked cross-validation.

    With several sections, each section is a block (the folds hold out whole
    sections). With one, the section is cut into a grid of square tiles
    (about four per fold) assigned to ``n_blocks`` folds at random, so a
    held-out fold is spread over the tissue instead of one band of it.
    """
    xy = np.asarray(coordinates, dtype=np.float64)
    labels = None if sections is None else pd.factorize(np.asarray(sections))[0]
    if labels is not None and len(np.unique(labels)) >= 2:
        return labels.astype(np.int64)
    side = max(2, int(np.ceil(np.sqrt(4 * n_blocks))))
    lo, hi = xy[:, :2].min(0), xy[:, :2].max(0)
    cell = (xy[:, :2] - lo) / np.maximum(hi - lo, 1e-12) * side
    tile = np.minimum(cell.astype(np.int64), side - 1)
    tile_id = tile[:, 0] * side + tile[:, 1]
    order = np.random.default_rng([seed, 31]).permutation(side * side)
    return (order[tile_id] % n_blocks).astype(np.int64)
