"""Default experimental design and streaming of large simulations to disk."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aivc._progress import progress
from aivc.sim._interventions import MODALITIES
from aivc.sim._knowledge import (
    KNOWLEDGE_QUALITIES,
    KnowledgeQuality,
    simulated_knowledge,
    write_knowledge,
)
from aivc.sim._network import GeneNetwork
from aivc.sim._simulator import BLOCK, CONTROL, VirtualCellSimulator, measured_uns
from aivc.sim._truth import truth_path_for

__all__ = ["SimulationFiles", "default_design", "knowledge_path_for", "write_simulation"]

logger = logging.getLogger(__name__)

#: Drug concentrations (µM) of the default design.
DEFAULT_DOSES = (0.01, 0.1, 1.0, 10.0)


def default_design(
    simulator: VirtualCellSimulator,
    *,
    n_cells: int,
    max_singles: int = 200,
    double_fraction: float = 0.25,
    pathway_fraction: float = 0.67,
    n_design_drugs: int = 4,
    doses: tuple[float, ...] = DEFAULT_DOSES,
    control_weight: float = 5.0,
    min_cells_per_condition: int = 50,
    modality: str = "knockout",
    seed: int = 0,
) -> pd.DataFrame:
    """A Perturb-seq-like design: controls, many singles, some doubles, drugs at doses.

    Every cell type of the simulator gets the same conditions. Singles target
    regulators first (about 60%) and other genes; doubles pair perturbed
    regulators whose singles are in the design, so their interactions can be
    measured. The number of conditions shrinks for small ``n_cells`` so that a
    condition has about ``min_cells_per_condition`` cells or more; cell numbers
    vary a little between conditions, as guide representation does.

    Parameters
    ----------
    simulator
        The simulator (for gene, drug and cell-type names).
    n_cells
        Total cells.
    max_singles
        Most single perturbations per cell type.
    double_fraction
        Doubles per single.
    pathway_fraction
        Fraction of doubles whose two genes are in one pathway (one regulates
        the other or they share a target), as screens pick pairs likely to
        interact; the rest are random pairs.
    n_design_drugs
        Drugs in the design, each at every dose in ``doses``.
    doses
        Drug concentrations (µM).
    control_weight
        Control cells relative to a perturbation's.
    min_cells_per_condition
        Target smallest number of cells per condition.
    modality
        Genetic modality of the singles and doubles.
    seed
        Seed of the choice of targets and of the cell numbers.

    Returns
    -------
    A design table for :meth:`VirtualCellSimulator.simulate` and :func:`write_simulation`.
    """
    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        msg = f"The 'n_cells' parameter must be a positive integer. Got {n_cells!r} instead."
        raise ValueError(msg)
    if modality not in MODALITIES:
        msg = (
            f"The 'modality' parameter must be one of {list(MODALITIES)}. Got {modality!r} instead."
        )
        raise ValueError(msg)
    simulator._ensure_built()
    net = simulator.network_
    rng = np.random.default_rng([seed, 41])
    types = simulator.cell_types
    slots = max(8, n_cells // (len(types) * min_cells_per_condition)) - int(control_weight)
    n_drugs = min(n_design_drugs, simulator.drugs_.n_drugs)
    n_drug_conditions = min(n_drugs * len(doses), max(0, slots // 8))
    n_drugs = n_drug_conditions // len(doses) if doses else 0
    remaining = max(2, slots - n_drugs * len(doses))
    n_singles = int(min(max_singles, net.n_genes, max(1, round(remaining * 0.8))))
    n_doubles = int(min(round(n_singles * double_fraction), max(0, remaining - n_singles)))

    regs = rng.permutation(net.regulators)
    others = rng.permutation(np.setdiff1d(np.arange(net.n_genes), net.regulators))
    n_reg = min(len(regs), round(0.6 * n_singles))
    singles = np.concatenate([regs[:n_reg], others[: n_singles - n_reg]])
    names = net.gene_names
    single_labels = [str(names[g]) for g in np.sort(singles)]
    pool = np.sort(regs[:n_reg]) if n_reg >= 2 else np.sort(singles)
    pairs = _choose_pairs(net, pool, n_doubles, pathway_fraction, rng)
    double_labels = [f"{names[a]}+{names[b]}" for a, b in sorted(pairs)]
    drug_labels = simulator.drugs[:n_drugs]

    rows: list[dict[str, object]] = []
    for ct in types:
        rows.append(
            {"perturbation": CONTROL, "cell_type": ct, "dose": 0.0, "weight": control_weight}
        )
        rows += [
            {"perturbation": p, "cell_type": ct, "dose": 0.0, "weight": 1.0}
            for p in single_labels + double_labels
        ]
        rows += [
            {"perturbation": d, "cell_type": ct, "dose": float(c), "weight": 1.0}
            for d in drug_labels
            for c in doses
        ]
    design = pd.DataFrame(rows)
    weight = design.pop("weight").to_numpy() * np.exp(rng.normal(0.0, 0.25, len(design)))
    share = weight / weight.sum() * n_cells
    n = np.floor(share).astype(np.int64)
    rest = n_cells - int(n.sum())
    n[np.argsort(-(share - n), kind="stable")[:rest]] += 1
    design["n_cells"] = n
    design["modality"] = modality
    design = design[design["n_cells"] > 0].reset_index(drop=True)
    logger.info(
        "Default design: %d conditions per cell type (%d singles, %d doubles, %d drug doses) x %d cell types.",
        1 + len(single_labels) + len(double_labels) + n_drugs * len(doses),
        len(single_labels),
        len(double_labels),
        n_drugs * len(doses),
        len(types),
    )
    return design


def _choose_pairs(
    net: GeneNetwork,
    pool: np.ndarray,
    n_pairs: int,
    pathway_fraction: float,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """Distinct unordered pairs of genes from ``pool``, a share of them in one pathway."""
    if len(pool) < 2 or n_pairs <= 0:
        return []
    adj = net.adjacency().tocsr()
    adj.data[:] = 1.0
    sub = adj[pool]
    related = (sub @ sub.T).toarray() > 0
    linked = sub[:, pool].toarray() > 0
    related |= linked | linked.T
    iu = np.triu_indices(len(pool), 1)
    is_path = related[iu]
    all_pairs = np.column_stack([pool[iu[0]], pool[iu[1]]])
    n_path = min(round(pathway_fraction * n_pairs), int(is_path.sum()))
    chosen = list(rng.permutation(np.flatnonzero(is_path))[:n_path])
    rest = rng.permutation(np.setdiff1d(np.arange(len(all_pairs)), chosen))
    chosen += list(rest[: n_pairs - n_path])
    return sorted((int(all_pairs[i, 0]), int(all_pairs[i, 1])) for i in chosen)


@dataclass(frozen=True)
class SimulationFiles:
    """What :func:`write_simulation` wrote.

    Attributes
    ----------
    data
        The measured data (``.h5ad`` or ``.zarr``).
    truth
        The ground truth (``.truth.npz`` beside the data).
    n_cells, n_genes, n_conditions
        Size of the simulation.
    seconds
        Wall time.
    knowledge
        The simulated knowledge base (``<name>.knowledge/``, with its tables
        under ``genes/``; pass it as ``data_dir`` to :mod:`aivc.genes`), or
        ``None`` when none was asked for.
    """

    data: Path
    truth: Path
    n_cells: int
    n_genes: int
    n_conditions: int
    seconds: float
    knowledge: Path | None = None


def knowledge_path_for(data_path: str | Path) -> Path:
    """Where the simulated knowledge base of a data file goes: ``<stem>.knowledge/`` beside it."""
    truth = truth_path_for(data_path)
    return truth.with_name(truth.name.removesuffix(".truth.npz") + ".knowledge")


def write_simulation(
    path: str | Path,
    *,
    n_cells: int,
    n_genes: int,
    seed: int = 0,
    chunk_size: int = 16 * BLOCK,
    n_cell_types: int = 2,
    n_batches: int = 3,
    modality: str = "knockout",
    design: pd.DataFrame | None = None,
    n_jobs: int | None = None,
    overwrite: bool = True,
    simulator: dict[str, object] | None = None,
    knowledge: str | KnowledgeQuality | None = None,
    design_options: dict[str, object] | None = None,
) -> SimulationFiles:
    """Simulate an experiment and stream it to ``.h5ad`` (or ``.zarr``) chunk by chunk.

    Cells are drawn in blocks of 1,024, each from its own random stream, so
    memory stays bounded by ``chunk_size`` times the number of genes (times a
    small factor per worker thread) however many cells are written, and the
    result depends only on the parameters and the seed (not on ``chunk_size``
    or ``n_jobs``). The data are written to ``<path>.partial`` and renamed when
    complete. The ground truth goes to ``<name>.truth.npz`` beside the data.
    Zarr output uses the Zarr v2 format.

    Parameters
    ----------
    path
        Output file; a name ending in ``.zarr`` writes a Zarr store, anything
        else an HDF5 ``.h5ad`` file.
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    seed
        Seed of the simulated biology and of the measurement.
    chunk_size
        Cells generated and written at once.
    n_cell_types
        Number of cell types.
    n_batches
        Number of technical batches the cells are spread over.
    modality
        ``"knockout"``, ``"knockdown"`` or ``"activation"`` for the genetic perturbations.
    design
        Conditions with ``n_cells`` (see :meth:`VirtualCellSimulator.normalize_design`);
        default :func:`default_design` (its cell numbers then sum to ``n_cells``).
    n_jobs
        Worker threads; default ``aivc.settings.n_jobs``.
    overwrite
        Replace existing output; otherwise an existing output is an error.
    simulator
        Further :class:`VirtualCellSimulator` parameters (e.g. ``module_fraction``).
    knowledge
        Also write a simulated knowledge base of this quality (a name of
        :data:`aivc.sim.KNOWLEDGE_QUALITIES` or a :class:`KnowledgeQuality`)
        to ``<name>.knowledge/`` beside the data.
    design_options
        Further :func:`default_design` parameters (e.g. ``max_singles``), used
        when ``design`` is not given.

    Returns
    -------
    :class:`SimulationFiles` with the paths written.
    """
    import anndata as ad
    from anndata.io import sparse_dataset, write_elem

    t0 = time.perf_counter()
    path = Path(path)
    for name, value, low in (
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 50),
        ("chunk_size", chunk_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            msg = f"The '{name}' parameter must be an integer >= {low}. Got {value!r} instead."
            raise ValueError(msg)
    truth_path = truth_path_for(path)
    if not overwrite and (path.exists() or truth_path.exists()):
        msg = f"{str(path)!r} already exists; choose another path or pass overwrite=True."
        raise FileExistsError(msg)
    if not path.parent.exists():
        msg = f"The folder {str(path.parent)!r} does not exist; create it first."
        raise FileNotFoundError(msg)

    extra = dict(simulator or {})
    clash = sorted({"n_genes", "n_cell_types", "seed"} & set(extra))
    if clash:
        msg = f"Pass {clash} as write_simulation arguments, not in 'simulator'."
        raise ValueError(msg)
    try:
        sim = VirtualCellSimulator(
            n_genes=int(n_genes), n_cell_types=n_cell_types, seed=seed, **extra
        ).build()
    except TypeError as e:
        msg = f"Unknown simulator parameter in {sorted(extra)}: {e}"
        raise ValueError(msg) from None
    if isinstance(knowledge, str) and knowledge not in KNOWLEDGE_QUALITIES:
        msg = (
            f"Unknown knowledge quality {knowledge!r}; expected one of {list(KNOWLEDGE_QUALITIES)}."
        )
        raise ValueError(msg)
    user_design = design is not None
    if design is None:
        design = default_design(
            sim, n_cells=int(n_cells), modality=modality, seed=seed, **(design_options or {})
        )
    rng = np.random.default_rng([seed, 21])
    cond, cell_condition, cell_batch, names = sim.cell_plan(design, n_batches=n_batches, rng=rng)
    total = len(cell_condition)
    if user_design and total != n_cells:
        logger.info(
            "The design holds %d cells (n_cells=%d asked); writing %d.", total, n_cells, total
        )
    solved = sim.solve(cond)
    effects = sim.batch_effects(names, key=[seed])
    skeleton = ad.AnnData(
        obs=sim.obs_frame(cond, cell_condition, cell_batch, names), var=sim.var_frame()
    )
    skeleton.uns["aivc"] = measured_uns()

    zarr_out = path.name.endswith(".zarr")
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    chunks = sim.iter_counts(
        solved,
        cell_condition,
        cell_batch,
        effects,
        key=[seed, 22],
        chunk_size=chunk_size,
        n_jobs=n_jobs,
    )
    n_chunks = -(-total // max(BLOCK, -(-int(chunk_size) // BLOCK) * BLOCK))
    if zarr_out:
        import zarr

        store = zarr.open_group(str(partial), mode="w", zarr_format=2)
        kwargs: dict[str, object] = {"chunks": (1 << 20,)}
    else:
        import h5py

        store = h5py.File(partial, "w")
        kwargs = {"chunks": (1 << 18,)}
    try:
        write_elem(store, "/", skeleton)
        del skeleton
        written = 0
        for x in progress(chunks, desc="simulating cells", total=n_chunks, unit="chunk"):
            if written == 0:
                write_elem(store, "X", x, dataset_kwargs=kwargs)
            else:
                sparse_dataset(store["X"]).append(x)
            written += x.shape[0]
    finally:
        if not zarr_out:
            store.close()
    _remove(path)
    partial.rename(path)
    sim.ground_truth(solved, batch_names=names, batch_effects=effects).save(truth_path)
    knowledge_dir = None
    if knowledge is not None:
        knowledge_dir = knowledge_path_for(path)
        _remove(knowledge_dir)
        write_knowledge(
            knowledge_dir, simulated_knowledge(sim.network_, sim.modules_, knowledge, seed=seed)
        )
    seconds = time.perf_counter() - t0
    logger.info("Wrote %d cells x %d genes to %s in %.1f s.", total, n_genes, path, seconds)
    return SimulationFiles(
        data=path,
        truth=truth_path,
        n_cells=total,
        n_genes=int(n_genes),
        n_conditions=len(cond),
        seconds=seconds,
        knowledge=knowledge_dir,
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
