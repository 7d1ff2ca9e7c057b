"""Named, reproducible simulated worlds.

A *world* is everything a simulation draws from one seed: the regulatory
network, its functional modules, cell types, drugs, the measured experiment
(a Perturb-seq-like design) and the knowledge base a curator would have
written about it. ``aivc simulate --world N --preset NAME`` (or
:func:`write_world`) writes world ``N`` of a preset; the same world number
and preset always give the same files.

Presets
-------
``small``
    400 genes, 3 cell types, 80 knockouts, 15,000 cells: a quick world for
    tests and many-world suites.
``medium``
    2,000 genes, 2 cell types, 500 knockouts, 100,000 cells.
``replogle``
    Genome-wide-screen scale: 8,000 genes, one cell type, 2,000 knockouts,
    1,000,000 cells (written chunk by chunk; minutes and about a gigabyte).

Every preset puts 20 % of the genes in functional modules and writes a
``good`` knowledge base (:data:`aivc.sim.KNOWLEDGE_QUALITIES`). These are
starting values: the share of knockouts with an effect and the phenotype
correlation of interaction partners are compared with real screens by
``benchmarks/sim_realism.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aivc.sim._knowledge import KnowledgeQuality
from aivc.sim._write import SimulationFiles, write_simulation

__all__ = ["WORLD_PRESETS", "WorldPreset", "write_world"]


@dataclass(frozen=True)
class WorldPreset:
    """The size and make-up of a family of simulated worlds (one per seed)."""

    name: str
    description: str
    n_genes: int
    n_cell_types: int
    n_cells: int
    max_singles: int
    double_fraction: float = 0.0
    n_design_drugs: int = 0
    min_cells_per_condition: int = 40
    n_batches: int = 2
    module_fraction: float = 0.2
    knowledge: str = "good"


#: The named presets.
WORLD_PRESETS: dict[str, WorldPreset] = {
    p.name: p
    for p in (
        WorldPreset("small", "400 genes, 3 cell types, 80 knockouts, 15,000 cells", 400, 3, 15_000, 80),
        WorldPreset(
            "medium", "2,000 genes, 2 cell types, 500 knockouts, 100,000 cells", 2_000, 2, 100_000, 500
        ),
        WorldPreset(
            "replogle",
            "8,000 genes, 1 cell type, 2,000 knockouts, 1,000,000 cells (genome-wide-screen scale)",
            8_000, 1, 1_000_000, 2_000, min_cells_per_condition=100,
        ),
    )
}  # fmt: skip


def write_world(
    path: str | Path,
    world: int,
    *,
    preset: str = "small",
    n_cells: int | None = None,
    n_genes: int | None = None,
    n_cell_types: int | None = None,
    knowledge: str | KnowledgeQuality | None = None,
    n_jobs: int | None = None,
    overwrite: bool = True,
) -> SimulationFiles:
    """Write world number ``world`` of a preset: data, ground truth and knowledge base.

    Parameters
    ----------
    path
        Output ``.h5ad`` file (or ``.zarr`` store); the truth and the knowledge
        base go beside it (``<name>.truth.npz``, ``<name>.knowledge/``).
    world
        The world's number (the simulator's seed).
    preset
        A name of :data:`WORLD_PRESETS`.
    n_cells, n_genes, n_cell_types
        Override the preset's size.
    knowledge
        Override the preset's knowledge quality.
    n_jobs
        Worker threads.
    overwrite
        Replace existing output.
    """
    if preset not in WORLD_PRESETS:
        msg = f"Unknown world preset {preset!r}; expected one of {list(WORLD_PRESETS)}."
        raise ValueError(msg)
    if isinstance(world, bool) or not isinstance(world, int) or world < 0:
        msg = f"A world is numbered by a non-negative integer; got {world!r}."
        raise ValueError(msg)
    p = WORLD_PRESETS[preset]
    return write_simulation(
        path,
        n_cells=p.n_cells if n_cells is None else n_cells,
        n_genes=p.n_genes if n_genes is None else n_genes,
        seed=world,
        n_cell_types=p.n_cell_types if n_cell_types is None else n_cell_types,
        n_batches=p.n_batches,
        n_jobs=n_jobs,
        overwrite=overwrite,
        simulator={"module_fraction": p.module_fraction},
        knowledge=p.knowledge if knowledge is None else knowledge,
        design_options={
            "max_singles": p.max_singles,
            "double_fraction": p.double_fraction,
            "n_design_drugs": p.n_design_drugs,
            "min_cells_per_condition": p.min_cells_per_condition,
        },
    )
