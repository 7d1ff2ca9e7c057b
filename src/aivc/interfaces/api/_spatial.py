"""Spatial tissues in a workspace: cells at their coordinates, coloured by cell type, niche or region.

The REST API, the MCP server and the web page's Tissue panel reach them
through :class:`SpatialMaps`. The simulator's virtual tissue
(:class:`aivc.sim.VirtualTissue`) is always offered; the registered spatial
datasets when the data folder holds them. Colouring by niche fits a small
:class:`~aivc.tissues.NicheModel` on the whole dataset and clusters its
embedding with :func:`~aivc.tissues.niche_domains` into as many domains as
the dataset has cell types; the domains are kept in memory, so each dataset
is fitted once per workspace.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from aivc.interfaces.api._errors import NotFoundError, WorkspaceValidationError

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.tissues import SpatialSchema

__all__ = ["COLORS", "MAX_CELLS", "VIRTUAL_TISSUE", "Color", "SpatialMaps"]

logger = logging.getLogger(__name__)

#: Name of the simulated tissue, offered without a data folder.
VIRTUAL_TISSUE = "virtual-tissue"
#: Cells, seed and parameters of the simulated tissue.
VIRTUAL_TISSUE_CELLS = 3000
VIRTUAL_TISSUE_SEED = 0
VIRTUAL_TISSUE_PARAMS = {"n_genes": 300, "n_cell_types": 5, "n_layers": 4, "n_sections": 2}
#: What cells can be coloured by.
Color = Literal["cell_type", "niche", "region"]
COLORS: tuple[str, ...] = get_args(Color)
#: Most cells a map returns.
MAX_CELLS = 20000
#: Training steps of the niche model behind ``color="niche"`` (a quick fit).
NICHE_STEPS = 100
#: Niche domains of a dataset without cell types.
DEFAULT_DOMAINS = 6
#: Seed of the niche model, the domains and the subsample of cells.
SEED = 0
#: Cells listed in a summary (:meth:`SpatialMaps.summary`).
FIRST_ROWS = 10


@dataclass
class _Niches:
    """Niche domains of every cell of a tissue, and how they were found."""

    labels: np.ndarray
    categories: list[str]
    params: dict[str, Any]


@dataclass
class _Tissue:
    name: str
    adata: AnnData
    schema: SpatialSchema
    xy: np.ndarray  # cells x 2
    sections: np.ndarray  # each cell's section, as strings
    niches: _Niches | None = None


def _labels_of(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each cell's label as a string, and the labels present (a categorical's order, else sorted)."""
    labels = column.astype(str).to_numpy()
    present = set(labels)
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [str(c) for c in column.cat.categories]
        return labels, [c for c in order if c in present] + sorted(present - set(order))
    return labels, sorted(present)


def _sample(n: int, max_cells: int) -> np.ndarray:
    """Rows of a seeded subsample of ``max_cells`` of ``n`` cells (all of them when fewer), in order."""
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(n, max_cells, replace=False))


def _rounded(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.round(values, 3)]


class SpatialMaps:
    """The spatial tissues of a workspace and the colourings of their cells.

    Parameters
    ----------
    errors
        Context manager factory turning library errors into the workspace's.
    """

    def __init__(self, *, errors: Callable[[], Any]) -> None:
        self._errors = errors
        self._tissues: dict[str, _Tissue] = {}
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ datasets
    @staticmethod
    def _registered() -> dict[str, tuple[str | None, str | None, str | None]]:
        """Registered spatial datasets present in the data folder: their cell type, section and region keys."""
        from aivc.data import dataset_entry
        from aivc.evaluate.tasks.spatial import SPATIAL_DATASETS

        return {
            name: keys
            for name, keys in sorted(SPATIAL_DATASETS.items())
            if dataset_entry(name).path().exists()
        }

    def names(self) -> list[str]:
        """Names of the tissues offered here, the virtual tissue first."""
        return [VIRTUAL_TISSUE, *self._registered()]

    def datasets(self) -> list[dict[str, Any]]:
        """Tissues offered here, each with the colourings it has."""
        from aivc.data import dataset_entry

        p = VIRTUAL_TISSUE_PARAMS
        out = [
            {
                "name": VIRTUAL_TISSUE,
                "description": (
                    f"Simulated tissue (aivc.sim.VirtualTissue, seed {VIRTUAL_TISSUE_SEED}): "
                    f"{VIRTUAL_TISSUE_CELLS:,} cells of {p['n_cell_types']} cell types in "
                    f"{p['n_layers']} layers over {p['n_sections']} sections, "
                    f"{p['n_genes']} genes"
                ),
                "citation": "",
                "colors": list(COLORS),
            }
        ]
        for name, (cell_type, _, region) in self._registered().items():
            entry = dataset_entry(name)
            colors = [c for c in COLORS if c != "region" or region is not None]
            if cell_type is None:
                colors.remove("cell_type")
            out.append(
                {
                    "name": name,
                    "description": entry.description,
                    "citation": entry.citation,
                    "colors": colors,
                }
            )
        return out

    def _tissue(self, name: str) -> _Tissue:
        with self._lock:
            if name in self._tissues:
                return self._tissues[name]
            known = self.names()
            if name not in known:
                msg = f"Unknown spatial dataset {name!r}; available here: {known}."
                raise NotFoundError(msg)
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per dataset, other datasets are not held up
            if name not in self._tissues:
                with self._errors():
                    tissue = self._load(name)
                with self._lock:
                    self._tissues[name] = tissue
            return self._tissues[name]

    @staticmethod
    def _load(name: str) -> _Tissue:
        from aivc.tissues import SpatialSchema, check_spatial

        if name == VIRTUAL_TISSUE:
            from aivc.sim import VirtualTissue

            tissue = VirtualTissue(**VIRTUAL_TISSUE_PARAMS, seed=VIRTUAL_TISSUE_SEED).build()
            adata, _ = tissue.simulate(VIRTUAL_TISSUE_CELLS, seed=VIRTUAL_TISSUE_SEED)
            schema = SpatialSchema.of(adata)
        else:
            from aivc.evaluate.tasks.spatial import load_spatial

            adata, schema, _, _ = load_spatial(name)
        xy = check_spatial(adata, schema)[:, :2]
        return _Tissue(
            name=name, adata=adata, schema=schema, xy=xy, sections=schema.sections(adata)
        )

    # ------------------------------------------------------------------ colours
    def _colouring(self, name: str, color: str) -> tuple[_Tissue, np.ndarray, list[str]]:
        """The tissue, each cell's label under ``color`` and the labels in legend order."""
        if color not in COLORS:
            self._tissue(name)  # an unknown dataset is reported first
            msg = f"Unknown colour {color!r}; choose one of {list(COLORS)}."
            raise WorkspaceValidationError(msg)
        tissue = self._tissue(name)
        if color == "niche":
            niches = self._niches(tissue)
            return tissue, niches.labels, niches.categories
        key = tissue.schema.cell_type_key if color == "cell_type" else tissue.schema.region_key
        if key is None:
            what = "cell types" if color == "cell_type" else "annotated regions"
            msg = f"Dataset {name!r} has no {what}; colour it by 'niche' instead."
            raise WorkspaceValidationError(msg)
        labels, categories = _labels_of(tissue.adata.obs[key])
        return tissue, labels, categories

    def _niches(self, tissue: _Tissue) -> _Niches:
        with self._locks[tissue.name]:  # one fit per dataset; a second request waits for it
            if tissue.niches is None:
                tissue.niches = self._fit_niches(tissue)
            return tissue.niches

    def _fit_niches(self, tissue: _Tissue) -> _Niches:
        from aivc.tissues import NicheModel, niche_domains

        adata, schema = tissue.adata, tissue.schema
        n_domains = (
            adata.obs[schema.cell_type_key].nunique()
            if schema.cell_type_key is not None
            else DEFAULT_DOMAINS
        )
        n_domains = int(min(n_domains, adata.n_obs))
        start = time.perf_counter()
        with self._errors():
            model = NicheModel(steps=NICHE_STEPS, seed=SEED).fit(adata, schema)
            embedding = model.transform(adata, schema)
            codes = niche_domains(
                embedding, model.spatial_graph(adata, schema), n_domains, seed=SEED
            )
        seconds = time.perf_counter() - start
        logger.info("niche domains of %s in %.1f s", tissue.name, seconds)
        # niche_1 is the largest domain, niche_2 the next...
        sizes = np.bincount(codes, minlength=n_domains)
        rank = np.empty(n_domains, dtype=int)
        rank[np.argsort(-sizes, kind="stable")] = np.arange(n_domains)
        names = np.array([f"niche_{r + 1}" for r in range(n_domains)], dtype=object)
        return _Niches(
            labels=names[rank[codes]],
            categories=[str(n) for n in names[: int((sizes > 0).sum())]],
            params={
                "instrument": "aivc-niche",
                "steps": NICHE_STEPS,
                "n_latent": model.n_latent,
                "n_domains": n_domains,
                "seed": SEED,
                "fit_seconds": round(seconds, 2),
            },
        )

    # ------------------------------------------------------------------ answers
    def map(self, name: str, *, color: str = "cell_type", max_cells: int = 5000) -> dict[str, Any]:
        """Cells at their coordinates with their labels under ``color``.

        A seeded subsample of ``max_cells`` cells (1 to :data:`MAX_CELLS`) when
        the tissue has more; the same cells whatever the colour.
        """
        if not 1 <= max_cells <= MAX_CELLS:
            msg = f"max_cells must be between 1 and {MAX_CELLS}. Got {max_cells} instead."
            raise WorkspaceValidationError(msg)
        tissue, labels, categories = self._colouring(name, color)
        take = _sample(len(labels), max_cells)
        niches = tissue.niches if color == "niche" else None
        return {
            "dataset": name,
            "color": color,
            "n_cells": len(labels),
            "n_shown": len(take),
            "x": _rounded(tissue.xy[take, 0]),
            "y": _rounded(tissue.xy[take, 1]),
            "section": [str(s) for s in tissue.sections[take]],
            "labels": [str(v) for v in labels[take]],
            "categories": categories,
            "sections": sorted(set(tissue.sections)),
            "niche_model": None if niches is None else niches.params,
        }

    def summary(self, name: str, *, color: str = "cell_type") -> dict[str, Any]:
        """Cells per label and section, the extent of the coordinates and the first cells."""
        tissue, labels, categories = self._colouring(name, color)
        table = pd.crosstab(pd.Series(tissue.sections, name="section"), pd.Series(labels))
        counts = {
            str(section): {c: int(row.get(c, 0)) for c in categories if row.get(c, 0) > 0}
            for section, row in table.iterrows()
        }
        niches = tissue.niches if color == "niche" else None
        return {
            "dataset": name,
            "color": color,
            "n_cells": len(labels),
            "categories": categories,
            "sections": sorted(counts),
            "counts": counts,
            "extent": {
                "x": _rounded(np.array([tissue.xy[:, 0].min(), tissue.xy[:, 0].max()])),
                "y": _rounded(np.array([tissue.xy[:, 1].min(), tissue.xy[:, 1].max()])),
            },
            "first_rows": [
                {
                    "cell": str(tissue.adata.obs_names[i]),
                    "x": round(float(tissue.xy[i, 0]), 3),
                    "y": round(float(tissue.xy[i, 1]), 3),
                    "section": str(tissue.sections[i]),
                    "label": str(labels[i]),
                }
                for i in range(min(FIRST_ROWS, len(labels)))
            ],
            "niche_model": None if niches is None else niches.params,
        }
