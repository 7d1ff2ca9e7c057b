"""Spatial mode of the simulator ("virtual tissue 1.0").

A :class:`VirtualTissue` places the cell types of a :class:`VirtualCellSimulator`
in square tissue sections cut into horizontal layers, each layer dominated by
one or two cell types. Cells talk through a few :class:`SignallingPathway`
objects: sender types express a ligand gene, receiver types a receptor gene,
and the signal a cell receives,

    s_ip = R_ip * mean_{j in N(i)} L_jp,

(``N(i)``: the other cells of its section within ``radius``; ``L`` and ``R``
the relative ligand and receptor levels of a cell's type, 0 where the gene is
knocked out) switches on transcription of the pathway's target regulator and,
through the network, its downstream program. Signals are quantised into
:data:`N_LEVELS` levels, so a tissue is simulated as one steady-state condition
per distinct (cell type, knockout, signal levels) combination.

The ground truth (:class:`TissueTruth`: true expression of every cell, the
signalling edges, the pathways, the layout) is kept apart from the measured
AnnData and saved as one ``.npz`` file of plain arrays.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from aivc._io import atomic_path
from aivc._labels import check_known
from aivc.sim._measure import MeasurementModel
from aivc.sim._simulator import CONTROL, SolvedConditions, VirtualCellSimulator

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "N_LEVELS",
    "SignallingPathway",
    "TissueState",
    "TissueTruth",
    "VirtualTissue",
    "simulate_tissue",
]

logger = logging.getLogger(__name__)

TISSUE_FORMAT_VERSION = 1
#: Signal levels: 0 (no signal) and equal steps up to the largest possible signal, 1.
N_LEVELS = 8
#: Floor (molecules per cell) of true means before the log, for knocked-out genes.
MIN_MEAN = 1e-6
#: Columns of a layout (:meth:`VirtualTissue.layout`).
LAYOUT_COLUMNS = ("section", "x", "y", "region", "cell_type")


@dataclass(frozen=True)
class SignallingPathway:
    """A ligand-receptor pathway between cell types.

    Attributes
    ----------
    name
        ``P1``, ``P2``, ...
    ligand
        Non-regulator gene expressed by the sender types.
    receptor
        Non-regulator gene expressed by the receiver types.
    target
        Regulator (not a master regulator) whose transcription the signal switches on.
    senders
        Cell types whose ligand level is above half its largest level.
    receivers
        Cell types whose receptor level is above half its largest level.
    strength
        Transcription added to the target at the largest signal, in units of its maximal rate.
    """

    name: str
    ligand: str
    receptor: str
    target: str
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    strength: float


def _positions(index: pd.Index, cells: pd.Index) -> np.ndarray:
    """Positions of the labels ``cells`` in ``index`` (an error for unknown ones)."""
    pos = index.get_indexer(cells)
    if (pos < 0).any():
        msg = f"{int((pos < 0).sum())} cells are not in the layout (e.g. {cells[pos < 0][0]!r})."
        raise KeyError(msg)
    return pos


@dataclass(frozen=True, eq=False)
class TissueState:
    """True expression of the cells of a layout.

    Attributes
    ----------
    condition
        ``(n_cells,)`` row of :attr:`conditions` of each cell.
    conditions
        One row per distinct ``cell_type``, ``knockout`` (``""``: none) and
        signal level (0 to ``N_LEVELS - 1``) of each pathway (a column per pathway).
    log_mean
        ``(n_conditions, n_genes)`` log of the true population mean expression
        (molecules per cell; knocked-out genes at ``log(MIN_MEAN)``).
    signals
        Cells x pathways signal received (:meth:`VirtualTissue.signals`); its
        index names the cells.
    gene_names
        Gene symbols (the columns of ``log_mean``).
    """

    condition: np.ndarray
    conditions: pd.DataFrame
    log_mean: np.ndarray
    signals: pd.DataFrame
    gene_names: tuple[str, ...] = ()

    def cell_log_mean(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``(cells, n_genes)`` true log mean of the cells at positions ``rows`` (default all)."""
        cond = self.condition if rows is None else self.condition[rows]
        return self.log_mean[cond]

    def effect(self, other: TissueState | TissueTruth) -> pd.DataFrame:
        """Change of true log mean from this state to ``other``, for the cells in both.

        Cells are matched by label and kept in this state's order.
        """
        other = other.state if isinstance(other, TissueTruth) else other
        mine, theirs = self.signals.index, other.signals.index
        common = mine[mine.isin(theirs)]
        diff = other.cell_log_mean(_positions(theirs, common)) - self.cell_log_mean(
            _positions(mine, common)
        )
        return pd.DataFrame(diff, index=common, columns=list(self.gene_names))


@dataclass(frozen=True, eq=False)
class TissueTruth:
    """What a tissue simulation knows and its measurement does not show.

    Attributes
    ----------
    state
        True expression of every cell.
    edges
        True signalling edges (:meth:`VirtualTissue.edges`).
    pathways
        The signalling pathways.
    layout
        The cells: section, position, region, cell type (and knockouts).
    params
        The tissue's parameters.
    """

    state: TissueState
    edges: pd.DataFrame
    pathways: tuple[SignallingPathway, ...]
    layout: pd.DataFrame
    params: dict[str, object] = field(default_factory=dict)

    def effect(self, other: TissueTruth | TissueState) -> pd.DataFrame:
        """Per-cell change of true log mean expression from this truth to ``other``.

        Returns
        -------
        Cells present in both x genes (``other - self``), in this truth's cell order.
        """
        return self.state.effect(other)

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as one ``.npz`` of plain arrays (no pickles); returns ``path``."""
        path = Path(path)
        s = self.state
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(TISSUE_FORMAT_VERSION),
            "params_json": np.asarray(json.dumps(self.params, sort_keys=True)),
            "pathways_json": np.asarray(json.dumps([_pathway_dict(p) for p in self.pathways])),
            "gene_names": np.asarray(s.gene_names, dtype=str),
            "condition": np.asarray(s.condition, dtype=np.int64),
            "log_mean": np.asarray(s.log_mean, dtype=np.float64),
            **_frame_arrays(s.conditions, "conditions_"),
            **_frame_arrays(s.signals, "signals_"),
            **_frame_arrays(self.edges, "edges_"),
            **_frame_arrays(self.layout, "layout_"),
        }
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TissueTruth:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            msg = f"No tissue truth at {str(path)!r}; tissue simulations write <name>.truth.npz beside the data."
            raise FileNotFoundError(msg)
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        version = int(a.get("format_version", -1))
        if version != TISSUE_FORMAT_VERSION or "pathways_json" not in a:
            msg = f"{str(path)!r} is not a tissue truth of format version {TISSUE_FORMAT_VERSION} (got {version})."
            raise ValueError(msg)
        pathways = tuple(
            SignallingPathway(
                **{**p, "senders": tuple(p["senders"]), "receivers": tuple(p["receivers"])}
            )
            for p in json.loads(str(a["pathways_json"]))
        )
        state = TissueState(
            condition=a["condition"],
            conditions=_frame_from_arrays(a, "conditions_"),
            log_mean=a["log_mean"],
            signals=_frame_from_arrays(a, "signals_"),
            gene_names=tuple(str(g) for g in a["gene_names"]),
        )
        return cls(
            state=state,
            edges=_frame_from_arrays(a, "edges_"),
            pathways=pathways,
            layout=_frame_from_arrays(a, "layout_"),
            params=json.loads(str(a["params_json"])),
        )


def _pathway_dict(p: SignallingPathway) -> dict[str, object]:
    return {
        "name": p.name,
        "ligand": p.ligand,
        "receptor": p.receptor,
        "target": p.target,
        "senders": list(p.senders),
        "receivers": list(p.receivers),
        "strength": p.strength,
    }


def _frame_arrays(frame: pd.DataFrame, prefix: str) -> dict[str, np.ndarray]:
    """A DataFrame as plain arrays: string index, categorical, numeric and string columns."""
    out = {f"{prefix}columns": np.asarray([str(c) for c in frame.columns], dtype=str)}
    if isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1:
        out[f"{prefix}range"] = np.asarray(len(frame))
    else:
        out[f"{prefix}index"] = frame.index.to_numpy().astype(str)
    for i, col in enumerate(frame.columns):
        v = frame[col]
        if isinstance(v.dtype, pd.CategoricalDtype):
            out[f"{prefix}{i}_codes"] = v.cat.codes.to_numpy()
            out[f"{prefix}{i}_categories"] = v.cat.categories.to_numpy().astype(str)
        elif pd.api.types.is_numeric_dtype(v.dtype) or pd.api.types.is_bool_dtype(v.dtype):
            out[f"{prefix}{i}_values"] = v.to_numpy()
        else:
            out[f"{prefix}{i}_strings"] = v.to_numpy().astype(str)
    return out


def _frame_from_arrays(a: dict[str, np.ndarray], prefix: str) -> pd.DataFrame:
    """Inverse of :func:`_frame_arrays`."""
    if f"{prefix}range" in a:
        index = pd.RangeIndex(int(a[f"{prefix}range"]))
    else:
        index = pd.Index(a[f"{prefix}index"].astype(object))
    data: dict[str, object] = {}
    for i, col in enumerate(a[f"{prefix}columns"].tolist()):
        if f"{prefix}{i}_codes" in a:
            cats = pd.Index(a[f"{prefix}{i}_categories"].astype(object))
            data[col] = pd.Categorical.from_codes(a[f"{prefix}{i}_codes"], categories=cats)
        elif f"{prefix}{i}_values" in a:
            data[col] = a[f"{prefix}{i}_values"]
        else:
            data[col] = a[f"{prefix}{i}_strings"].astype(object)
    return pd.DataFrame(data, index=index, columns=list(a[f"{prefix}columns"].tolist()))


def _knockouts(layout: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Code of each cell's ``knockout`` label (``""``: none) and the distinct labels."""
    if "knockout" not in layout.columns:
        return np.zeros(len(layout), dtype=np.int64), [""]
    codes, uniq = pd.factorize(layout["knockout"].fillna(""))
    return codes, [str(u) for u in uniq]


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        msg = f"The '{name}' parameter of VirtualTissue must be an integer >= {low}. Got {value!r} instead."
        raise ValueError(msg)


class VirtualTissue:
    """Cells of a :class:`VirtualCellSimulator` arranged in space and signalling to their neighbours.

    The constructor only stores parameters; :meth:`build` draws the simulator,
    the pathways and the layers' cell-type compositions from ``seed``.

    Parameters
    ----------
    n_genes, n_cell_types
        Size of the simulated biology (see :class:`VirtualCellSimulator`).
    n_pathways
        Ligand-receptor pathways (``P1`` ...).
    n_layers
        Horizontal layers (``layer_1`` at the bottom ...), each dominated by one or two cell types.
    n_sections
        Tissue sections (``S1`` ...); cells only signal within their section.
    radius
        Distance within which cells signal to each other.
    density
        Cells per square unit (sets the size of the sections).
    signal_strength
        Typical transcription added to a target at the largest signal (units of
        its maximal rate); each pathway's strength is drawn around it.
    library_size
        Median counts of a cell (``library_size`` of :class:`MeasurementModel`);
        ``None``: the simulator's default (1,500). The default, 50, is the depth
        of a targeted spatial panel: cell types stay distinguishable from
        expression alone, but not every cell (about 90% with 300 genes).
    seed
        Random seed of the biology, the pathways and the compositions.
    """

    def __init__(
        self,
        *,
        n_genes: int = 300,
        n_cell_types: int = 5,
        n_pathways: int = 3,
        n_layers: int = 4,
        n_sections: int = 2,
        radius: float = 30.0,
        density: float = 0.01,
        signal_strength: float = 1.0,
        library_size: float | None = 50.0,
        seed: int = 0,
    ) -> None:
        self.n_genes = n_genes
        self.n_cell_types = n_cell_types
        self.n_pathways = n_pathways
        self.n_layers = n_layers
        self.n_sections = n_sections
        self.radius = radius
        self.density = density
        self.signal_strength = signal_strength
        self.library_size = library_size
        self.seed = seed

    def get_params(self) -> dict[str, object]:
        """Constructor parameters, JSON-friendly."""
        return {n: getattr(self, n) for n in inspect.signature(type(self)).parameters}

    # ------------------------------------------------------------------- build
    def build(self) -> VirtualTissue:
        """Draw the biology, pathways and compositions. Sets the attributes ending in ``_``."""
        _check_int("n_pathways", self.n_pathways, 0)
        _check_int("n_layers", self.n_layers, 1)
        _check_int("n_sections", self.n_sections, 1)
        _check_int("seed", self.seed, 0)
        for name in ("radius", "density"):
            if not float(getattr(self, name)) > 0:
                msg = f"The '{name}' parameter of VirtualTissue must be positive. Got {getattr(self, name)!r} instead."
                raise ValueError(msg)
        if not float(self.signal_strength) >= 0:
            msg = f"The 'signal_strength' parameter of VirtualTissue must be >= 0. Got {self.signal_strength!r} instead."
            raise ValueError(msg)
        measurement = (
            None if self.library_size is None else MeasurementModel(library_size=self.library_size)
        )
        sim = VirtualCellSimulator(
            n_genes=self.n_genes,
            n_cell_types=self.n_cell_types,
            measurement=measurement,
            seed=self.seed,
        ).build()
        self.simulator_: VirtualCellSimulator = sim
        self.pathways_: tuple[SignallingPathway, ...] = self._pick_pathways(
            sim, np.random.default_rng([self.seed, 71])
        )
        self.layer_composition_: pd.DataFrame = self._compositions(
            np.random.default_rng([self.seed, 72])
        )
        rel = sim.control_states_ / np.maximum(sim.control_states_.max(axis=0), 1e-300)
        gene = {g: i for i, g in enumerate(sim.genes)}
        names = [p.name for p in self.pathways_]
        types = list(sim.cell_types_)
        self.ligand_levels_: pd.DataFrame = pd.DataFrame(
            rel[:, [gene[p.ligand] for p in self.pathways_]], index=types, columns=names
        )
        self.receptor_levels_: pd.DataFrame = pd.DataFrame(
            rel[:, [gene[p.receptor] for p in self.pathways_]], index=types, columns=names
        )
        return self

    def _ensure_built(self) -> None:
        if not hasattr(self, "simulator_"):
            self.build()

    def _pick_pathways(
        self, sim: VirtualCellSimulator, rng: np.random.Generator
    ) -> tuple[SignallingPathway, ...]:
        net = sim.network_
        x = sim.control_states_
        rel = x / np.maximum(x.max(axis=0), 1e-300)
        n_types = rel.shape[0]
        high = rel > 0.5
        n_high = high.sum(axis=0)
        low_max = np.where(high, 0.0, rel).max(axis=0)
        contrast = np.where(high, rel, 1.0).min(axis=0) - low_max
        markers = np.setdiff1d(np.arange(net.n_genes), net.regulators)
        # markers of one or a few (not all) types, sharpest first
        few = markers[(n_high[markers] <= max(1, n_types // 2)) & (x.max(axis=0)[markers] > 0)]
        few = few[np.argsort(-contrast[few], kind="stable")]
        out_degree = net.out_degree()
        regulators = np.setdiff1d(net.regulators, net.master_regulators)
        regulators = regulators[out_degree[regulators] > 0]
        targets = regulators[out_degree[regulators] >= 3]
        used: set[int] = set()
        pathways = []
        for p in range(self.n_pathways):
            free = [g for g in few.tolist() if g not in used]
            if not len(targets):  # share targets once each has a pathway
                targets = regulators
            if len(free) < 2 or not len(targets):
                msg = (
                    f"The virtual cell has too few marker genes or regulators for {self.n_pathways} "
                    "pathways; use more genes or fewer pathways."
                )
                raise ValueError(msg)
            ligand = int(rng.choice(free[:5]))
            used.add(ligand)
            # receivers that are not all senders, so that signals cross between types
            cross = [g for g in free if g != ligand and (high[:, g] & ~high[:, ligand]).any()]
            receptor = int(rng.choice((cross or [g for g in free if g != ligand])[:5]))
            used.add(receptor)
            # a target low in the receivers (the signal shows) with a large program
            recv = high[:, receptor]
            score = (1.0 - rel[recv][:, targets].mean(axis=0)) * np.log1p(out_degree[targets])
            target = int(targets[np.argmax(score)])
            targets = targets[targets != target]
            names = net.gene_names
            pathways.append(
                SignallingPathway(
                    name=f"P{p + 1}",
                    ligand=str(names[ligand]),
                    receptor=str(names[receptor]),
                    target=str(names[target]),
                    senders=tuple(
                        t for t, h in zip(sim.cell_types_, high[:, ligand], strict=True) if h
                    ),
                    receivers=tuple(t for t, h in zip(sim.cell_types_, recv, strict=True) if h),
                    strength=float(self.signal_strength * rng.uniform(0.75, 1.25)),
                )
            )
        return tuple(pathways)

    def _compositions(self, rng: np.random.Generator) -> pd.DataFrame:
        n_types = self.n_cell_types
        order = rng.permutation(n_types)
        comp = np.empty((self.n_layers, n_types))
        for layer in range(self.n_layers):
            alpha = np.full(n_types, 0.3)
            alpha[order[layer % n_types]] += 12.0
            if n_types > 1 and rng.random() < 0.5:
                alpha[order[(layer + 1) % n_types]] += 5.0
            comp[layer] = rng.dirichlet(alpha)
        return pd.DataFrame(comp, index=self._regions(), columns=list(self.simulator_.cell_types_))

    def _regions(self) -> list[str]:
        return [f"layer_{i + 1}" for i in range(self.n_layers)]

    # ------------------------------------------------------------------ layout
    def layout(self, n_cells: int, *, seed: int = 0) -> pd.DataFrame:
        """Place ``n_cells`` cells in the tissue sections.

        Cells are spread evenly over the sections; a section is a square of
        side ``sqrt(cells / density)`` cut into ``n_layers`` horizontal bands
        of equal height (``layer_1`` at the bottom); positions are uniform and
        each cell's type is drawn from its layer's composition.

        Returns
        -------
        Cells (``cell_0000001`` ...) with ``section``, ``x``, ``y``, ``region`` and ``cell_type``.
        """
        self._ensure_built()
        _check_int("n_cells", n_cells, 1)
        rng = np.random.default_rng([self.seed, 73, seed])
        k = self.n_sections
        per = np.full(k, n_cells // k)
        per[: n_cells % k] += 1
        section = np.repeat(np.arange(k), per)
        side = np.sqrt(per / self.density)[section]
        x = rng.uniform(0.0, 1.0, n_cells) * side
        y = rng.uniform(0.0, 1.0, n_cells) * side
        layer = np.minimum((y / side * self.n_layers).astype(np.int64), self.n_layers - 1)
        cum = np.cumsum(self.layer_composition_.to_numpy(), axis=1)
        u = rng.random(n_cells)
        types = np.empty(n_cells, dtype=np.int64)
        for i in range(self.n_layers):
            rows = np.flatnonzero(layer == i)
            types[rows] = np.minimum(
                np.searchsorted(cum[i], u[rows], side="right"), cum.shape[1] - 1
            )
        width = max(7, len(str(n_cells)))
        return pd.DataFrame(
            {
                "section": pd.Categorical.from_codes(
                    section, categories=[f"S{i + 1}" for i in range(k)]
                ),
                "x": x,
                "y": y,
                "region": pd.Categorical.from_codes(layer, categories=self._regions()),
                "cell_type": pd.Categorical.from_codes(
                    types, categories=list(self.simulator_.cell_types_)
                ),
            },
            index=pd.Index([f"cell_{i:0{width}d}" for i in range(1, n_cells + 1)]),
        )

    def _check_layout(self, layout: pd.DataFrame) -> None:
        self._ensure_built()
        missing = [c for c in LAYOUT_COLUMNS if c not in layout.columns]
        if missing:
            msg = f"A layout needs the columns {list(LAYOUT_COLUMNS)}; {missing} are missing. Make one with VirtualTissue.layout()."
            raise ValueError(msg)
        if not layout.index.is_unique:
            msg = "The cells of a layout must have unique labels (its index)."
            raise ValueError(msg)
        check_known(
            [str(t) for t in pd.unique(layout["cell_type"])],
            self.simulator_.cell_types_,
            what="cell type",
            where=" in the layout",
        )

    def knock_out(
        self,
        layout: pd.DataFrame,
        gene: str,
        cells: np.ndarray | pd.Series | Sequence[str] | pd.Index | None = None,
    ) -> pd.DataFrame:
        """A copy of ``layout`` with ``gene`` knocked out in some cells.

        Parameters
        ----------
        layout
            Cells (:meth:`layout`).
        gene
            Gene symbol.
        cells
            Boolean mask over the cells, or cell labels; ``None``: all cells.

        Returns
        -------
        The layout with a ``knockout`` column (``""``: none; several genes joined by ``+``).
        """
        self._check_layout(layout)
        check_known([gene], self.simulator_.genes, what="gene")
        if cells is None:
            mask = np.ones(len(layout), dtype=bool)
        else:
            arr = np.asarray(cells)
            if arr.dtype == bool:
                if arr.shape != (len(layout),):
                    msg = f"A boolean 'cells' mask needs one value per cell ({len(layout)}); got shape {arr.shape}."
                    raise ValueError(msg)
                mask = arr
            else:
                mask = np.zeros(len(layout), dtype=bool)
                mask[_positions(layout.index, pd.Index(arr))] = True
        out = layout.copy()
        codes, labels = _knockouts(out)
        joined = [u if gene in u.split("+") else f"{u}+{gene}".lstrip("+") for u in labels]
        ko = np.asarray(labels, dtype=object)[codes]
        ko[mask] = np.asarray(joined, dtype=object)[codes[mask]]
        out["knockout"] = ko
        return out

    def remove_cells(
        self, layout: pd.DataFrame, cell_type: str, region: str | None = None
    ) -> pd.DataFrame:
        """A copy of ``layout`` without the cells of ``cell_type`` (in ``region`` only, if given)."""
        self._check_layout(layout)
        check_known([cell_type], self.simulator_.cell_types_, what="cell type")
        drop = (layout["cell_type"].astype(str) == cell_type).to_numpy()
        if region is not None:
            check_known([region], self._regions(), what="region")
            drop &= (layout["region"].astype(str) == region).to_numpy()
        return layout.loc[~drop].copy()

    # ----------------------------------------------------------------- signals
    def _levels(self, layout: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(n_cells, n_pathways)`` relative ligand and receptor levels of each cell."""
        codes = self._type_codes(layout)
        lig = self.ligand_levels_.to_numpy()[codes]
        rec = self.receptor_levels_.to_numpy()[codes]
        ko_codes, labels = _knockouts(layout)
        sets = [set(u.split("+")) for u in labels]
        lig_ko = np.asarray([[p.ligand in s for p in self.pathways_] for s in sets], dtype=bool)
        rec_ko = np.asarray([[p.receptor in s for p in self.pathways_] for s in sets], dtype=bool)
        lig = np.where(lig_ko.reshape(len(sets), -1)[ko_codes], 0.0, lig)
        rec = np.where(rec_ko.reshape(len(sets), -1)[ko_codes], 0.0, rec)
        return lig, rec

    def _neighbourhood(self, layout: pd.DataFrame) -> tuple[np.ndarray, ...]:
        """Ligand and receptor levels, neighbour pairs and (at least 1) neighbour counts."""
        self._check_layout(layout)
        lig, rec = self._levels(layout)
        a, b = self._pairs(layout)
        n = len(layout)
        count = np.maximum(np.bincount(a, minlength=n) + np.bincount(b, minlength=n), 1)
        return lig, rec, a, b, count

    def _type_codes(self, layout: pd.DataFrame) -> np.ndarray:
        return pd.Categorical(layout["cell_type"], categories=self.simulator_.cell_types_).codes

    def _pairs(self, layout: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(a, b)``, ``a < b``, of the cell pairs within ``radius`` in one section."""
        section = pd.factorize(layout["section"])[0]
        xy = layout[["x", "y"]].to_numpy(dtype=np.float64)
        a, b = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for s in np.unique(section):
            idx = np.flatnonzero(section == s)
            pairs = cKDTree(xy[idx]).query_pairs(float(self.radius), output_type="ndarray")
            a.append(idx[pairs[:, 0]])
            b.append(idx[pairs[:, 1]])
        return np.concatenate(a), np.concatenate(b)

    def signals(self, layout: pd.DataFrame) -> pd.DataFrame:
        """Signal each cell receives on each pathway.

        ``s_ip = R_ip * mean_j L_jp`` over the other cells ``j`` of the same
        section within ``radius`` (0 without neighbours); ``L`` and ``R`` are
        the ligand and receptor levels of a cell's type relative to the
        highest type (:attr:`ligand_levels_`, :attr:`receptor_levels_`), 0
        where the gene is knocked out. Signals lie in ``[0, 1]``.

        Returns
        -------
        Cells x pathways.
        """
        lig, rec, a, b, count = self._neighbourhood(layout)
        n = len(layout)
        total = np.zeros((n, len(self.pathways_)))
        for p in range(len(self.pathways_)):
            total[:, p] = np.bincount(a, weights=lig[b, p], minlength=n) + np.bincount(
                b, weights=lig[a, p], minlength=n
            )
        s = rec * total / count[:, None]
        return pd.DataFrame(s, index=layout.index, columns=[p.name for p in self.pathways_])

    def edges(self, layout: pd.DataFrame) -> pd.DataFrame:
        """The true signalling edges between cells.

        Returns
        -------
        One row per sender, receiver and pathway with a positive contribution:
        ``sender`` and ``receiver`` (cell labels, categorical), ``pathway`` and
        ``weight`` (``L_sender * R_receiver / neighbours of the receiver``; a
        receiver's weights on a pathway sum to its signal).
        """
        lig, rec, a, b, count = self._neighbourhood(layout)
        send, recv = np.concatenate([b, a]), np.concatenate([a, b])
        empty = np.zeros(0, dtype=np.int64)
        parts = [(empty, empty, empty, np.zeros(0))]
        for p in range(len(self.pathways_)):
            w = lig[send, p] * rec[recv, p] / count[recv]
            keep = w > 0
            parts.append((send[keep], recv[keep], np.full(keep.sum(), p), w[keep]))
        s, r, pw, w = (np.concatenate([q[i] for q in parts]) for i in range(4))
        order = np.lexsort((s, r, pw))
        cells = layout.index
        return pd.DataFrame(
            {
                "sender": pd.Categorical.from_codes(s[order], categories=cells),
                "receiver": pd.Categorical.from_codes(r[order], categories=cells),
                "pathway": pd.Categorical.from_codes(
                    pw[order], categories=[p.name for p in self.pathways_]
                ),
                "weight": w[order],
            }
        )

    # ------------------------------------------------------------------- truth
    def _solve(self, layout: pd.DataFrame) -> tuple[TissueState, SolvedConditions]:
        sim = self.simulator_
        signals = self.signals(layout)
        k = N_LEVELS - 1
        levels = np.clip(np.rint(signals.to_numpy() * k), 0, k).astype(np.int64)
        types = self._type_codes(layout)
        ko_codes, labels = _knockouts(layout)
        canon = np.asarray(
            ["+".join(sorted(set(u.split("+")) - {""})) for u in labels], dtype=object
        )
        ko_codes, ko_uniq = pd.factorize(canon[ko_codes])
        # one condition per distinct (type, knockout, levels), in lexicographic order
        key = types.astype(np.int64)
        for col, size in [
            (ko_codes, len(ko_uniq)),
            *((levels[:, p], N_LEVELS) for p in range(levels.shape[1])),
        ]:
            key = np.unique(key * size + col, return_inverse=True)[1].reshape(-1)
        _, first, condition = np.unique(key, return_index=True, return_inverse=True)
        conditions = pd.DataFrame(
            {
                "cell_type": np.asarray(sim.cell_types_)[types[first]],
                "knockout": np.asarray(ko_uniq, dtype=object)[ko_codes[first]],
                **{p.name: levels[first, i] for i, p in enumerate(self.pathways_)},
            }
        )
        design = pd.DataFrame(
            {
                "perturbation": conditions["knockout"].replace("", CONTROL),
                "cell_type": conditions["cell_type"],
            }
        )
        extra = np.zeros((len(conditions), sim.n_genes))
        gene = {g: i for i, g in enumerate(sim.genes)}
        for i, p in enumerate(self.pathways_):
            lv = levels[first, i]
            extra[:, gene[p.target]] += p.strength * lv / k
        solved = sim.solve(design, extra_add=extra)
        state = TissueState(
            condition=condition.reshape(-1).astype(np.int64),
            conditions=conditions,
            log_mean=np.log(np.maximum(solved.mean, MIN_MEAN)),
            signals=signals,
            gene_names=tuple(sim.genes),
        )
        return state, solved

    def true_state(self, layout: pd.DataFrame) -> TissueState:
        """True expression of every cell of ``layout``.

        Each signal is rounded to the nearest of :data:`N_LEVELS` equally
        spaced levels ``l / (N_LEVELS - 1)`` from 0 (no signal, or one weaker
        than half a step) to 1; level ``l`` of pathway ``p`` adds
        ``p.strength * l / (N_LEVELS - 1)`` to the transcription of its target
        (regulator-independent, in units of its maximal rate).
        Knockouts act as the simulator's knockouts. Each distinct cell type,
        knockout and set of levels is one simulator condition, solved to its
        steady state from the cell type's control state.
        """
        return self._solve(layout)[0]

    # ---------------------------------------------------------------- simulate
    def simulate(
        self,
        n_cells: int | None = None,
        *,
        layout: pd.DataFrame | None = None,
        seed: int = 0,
        genes: Sequence[str] | None = None,
    ) -> tuple[AnnData, TissueTruth]:
        """Simulate a spatial measurement of the tissue.

        Parameters
        ----------
        n_cells
            Cells of a new :meth:`layout` (drawn with ``seed``).
        layout
            Cells to measure instead (e.g. after :meth:`knock_out` or :meth:`remove_cells`).
        seed
            Seed of the layout, the counts and the sections' batch effects.
        genes
            Gene panel to measure (default: all genes).

        Returns
        -------
        adata
            Counts in ``X`` (CSR float32 integers); ``obs`` holds ``section``,
            ``region``, ``cell_type`` (and ``knockout`` when the layout has it);
            ``obsm["spatial"]`` the positions; ``uns["aivc_spatial"]`` the obs keys.
            Each section is its own batch.
        truth
            The :class:`TissueTruth` of all genes (kept out of ``adata``).
        """
        import anndata as ad

        self._ensure_built()
        if layout is None:
            if n_cells is None:
                msg = "Pass 'n_cells' (a new layout) or 'layout' (cells to measure)."
                raise ValueError(msg)
            layout = self.layout(n_cells, seed=seed)
        elif n_cells is not None and n_cells != len(layout):
            msg = f"'n_cells' ({n_cells}) differs from the layout's {len(layout)} cells; pass one of them."
            raise ValueError(msg)
        sim = self.simulator_
        state, solved = self._solve(layout)
        section = pd.Categorical(layout["section"])
        names = [str(c) for c in section.categories]
        effects = sim.batch_effects(names, key=[self.seed, seed, 74])
        chunks = list(
            sim.iter_counts(
                solved, state.condition, section.codes, effects, key=[self.seed, seed, 75]
            )
        )
        x = sp.vstack(chunks, format="csr").astype(np.float32)
        var = sim.var_frame()
        if genes is not None:
            genes = [str(g) for g in genes]
            check_known(genes, sim.genes, what="gene", where=" in the panel")
            cols = var.index.get_indexer(genes)
            x, var = x[:, cols], var.iloc[cols]
        keys = ["section", "region", "cell_type"] + (
            ["knockout"] if "knockout" in layout.columns else []
        )
        obs = layout[keys].copy()
        if "knockout" in obs.columns:
            obs["knockout"] = obs["knockout"].fillna("").astype(str).astype("category")
        adata = ad.AnnData(X=x, obs=obs, var=var)
        adata.obsm["spatial"] = layout[["x", "y"]].to_numpy(dtype=np.float64)
        adata.uns["aivc_spatial"] = {
            "cell_type_key": "cell_type",
            "section_key": "section",
            "region_key": "region",
        }
        truth = TissueTruth(
            state=state,
            edges=self.edges(layout),
            pathways=self.pathways_,
            layout=layout.copy(),
            params=self.get_params(),
        )
        return adata, truth


def simulate_tissue(
    n_cells: int,
    *,
    seed: int = 0,
    **params: object,
) -> tuple[AnnData, TissueTruth]:
    """Build a :class:`VirtualTissue` (``seed`` and ``params``) and simulate ``n_cells`` cells."""
    return VirtualTissue(seed=seed, **params).build().simulate(n_cells, seed=seed)
