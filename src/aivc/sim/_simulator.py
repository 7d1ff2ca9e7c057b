"""The mechanistic simulator ("virtual cell 1.0").

:class:`VirtualCellSimulator` ties together a random gene-regulatory network,
its kinetics, cell types, cell-to-cell variation, interventions and a
measurement model. It solves every requested condition once (steady state, or
a time course after a differentiation signal), propagates extrinsic noise
through the network to first order, and then draws cells in chunks, so that
millions of cells can be streamed with bounded memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._labels import check_known
from aivc._settings import settings
from aivc.data._schema import PerturbationSchema
from aivc.sim._cells import CellVariation, cell_type_names, random_cell_types
from aivc.sim._dynamics import Kinetics, RateInputs
from aivc.sim._interventions import MODALITIES, DrugLibrary, random_drugs
from aivc.sim._measure import BatchEffect, MeasurementModel
from aivc.sim._modules import FunctionalModules, random_modules
from aivc.sim._network import GeneNetwork, random_network
from aivc.sim._truth import GroundTruth

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CONTROL", "NO_SIGNAL", "VirtualCellSimulator", "simulation_schema"]

logger = logging.getLogger(__name__)

#: Perturbation label of control cells.
CONTROL = "control"
#: ``signal`` value of conditions without a differentiation signal.
NO_SIGNAL = "none"
#: Cells per random-number block: results do not depend on the chunk size.
BLOCK = 1024

_DESIGN_DEFAULTS: dict[str, object] = {
    "dose": 0.0,
    "time": 0.0,
    "modality": "knockout",
    "signal": NO_SIGNAL,
}


def simulation_schema() -> PerturbationSchema:
    """The :class:`~aivc.data.PerturbationSchema` of simulated data."""
    return PerturbationSchema(
        perturbation_key="perturbation",
        control_label=CONTROL,
        context_key="cell_type",
        batch_key="batch",
        dose_key="dose",
        time_key="time",
    )


@dataclass(frozen=True, eq=False)
class SolvedConditions:
    """Per-condition quantities needed to draw cells.

    Attributes
    ----------
    conditions
        The condition table.
    state
        ``(C, n_genes)`` noise-free states.
    mean
        ``(C, n_genes)`` population means.
    sensitivity
        ``(C, k, n_genes)`` float32 propagated sensitivities to the extrinsic factors.
    """

    conditions: pd.DataFrame
    state: np.ndarray
    mean: np.ndarray
    sensitivity: np.ndarray

    def log_state(self) -> np.ndarray:
        """``log`` of the states (``-inf`` for genes switched off), float32."""
        with np.errstate(divide="ignore"):
            return np.log(self.state).astype(np.float32)


class VirtualCellSimulator:
    """Mechanistic single-cell perturbation simulator.

    The constructor only stores parameters; :meth:`build` (called on first
    use) draws the network, cell types, drugs, cell-to-cell variation and
    gene dispersions from ``seed``.

    Parameters
    ----------
    n_genes
        Number of genes (``G0001`` ...).
    n_cell_types
        Number of cell types (``type_A`` ...), defined by master-regulator levels.
    regulator_fraction
        Fraction of genes that are regulators.
    n_master_regulators
        Master regulators that cell types switch on or off.
    mean_in_degree
        Mean number of regulators of a regulated gene.
    max_in_degree
        Largest number of regulators of a gene.
    hub_exponent
        Power-law exponent of regulator popularity (larger: bigger hubs).
    activation_fraction
        Fraction of activating edges.
    n_feedback_loops
        Feedback edges; ``None`` scales with the number of regulators.
    n_drugs
        Number of drugs (``D001`` ...).
    knockdown_efficiency
        Fraction of transcription removed by a knockdown.
    activation_strength
        Transcription added by CRISPR activation, in units of the gene's maximal rate.
    extrinsic_sd
        Cell-to-cell standard deviation of global transcriptional capacity (log scale).
    n_modules
        Number of pathway modules varying from cell to cell.
    module_sd
        Typical effect of a module on its regulators' log transcription.
    cycle_fraction
        Fraction of genes driven by the cell cycle.
    cycle_amplitude
        Largest log amplitude of a cycling gene.
    max_dose
        Largest drug concentration (µM) accepted.
    module_fraction
        Fraction of genes that are members of functional modules (complexes
        and pathways feeding regulators; :mod:`aivc.sim._modules`); 0: none.
    complex_share
        Fraction of those modules that are complexes (the rest are pathways).
    module_size
        Mean number of members of a functional module.
    measurement
        Technical noise model; ``None`` uses :class:`MeasurementModel` defaults.
    seed
        Random seed of the simulated biology (network, cell types, drugs).
    """

    def __init__(
        self,
        *,
        n_genes: int = 1000,
        n_cell_types: int = 2,
        regulator_fraction: float = 0.08,
        n_master_regulators: int = 6,
        mean_in_degree: float = 2.5,
        max_in_degree: int = 8,
        hub_exponent: float = 1.0,
        activation_fraction: float = 0.6,
        n_feedback_loops: int | None = None,
        n_drugs: int = 10,
        knockdown_efficiency: float = 0.7,
        activation_strength: float = 3.0,
        extrinsic_sd: float = 0.1,
        n_modules: int = 4,
        module_sd: float = 0.25,
        cycle_fraction: float = 0.05,
        cycle_amplitude: float = 0.7,
        max_dose: float = 100.0,
        module_fraction: float = 0.0,
        complex_share: float = 0.5,
        module_size: float = 4.0,
        measurement: MeasurementModel | None = None,
        seed: int = 0,
    ) -> None:
        self.n_genes = n_genes
        self.n_cell_types = n_cell_types
        self.regulator_fraction = regulator_fraction
        self.n_master_regulators = n_master_regulators
        self.mean_in_degree = mean_in_degree
        self.max_in_degree = max_in_degree
        self.hub_exponent = hub_exponent
        self.activation_fraction = activation_fraction
        self.n_feedback_loops = n_feedback_loops
        self.n_drugs = n_drugs
        self.knockdown_efficiency = knockdown_efficiency
        self.activation_strength = activation_strength
        self.extrinsic_sd = extrinsic_sd
        self.n_modules = n_modules
        self.module_sd = module_sd
        self.cycle_fraction = cycle_fraction
        self.cycle_amplitude = cycle_amplitude
        self.max_dose = max_dose
        self.module_fraction = module_fraction
        self.complex_share = complex_share
        self.module_size = module_size
        self.measurement = measurement
        self.seed = seed

    # ------------------------------------------------------------------ params
    def get_params(self) -> dict[str, object]:
        """Constructor parameters (``measurement`` as a dict), JSON-friendly."""
        names = (
            "n_genes",
            "n_cell_types",
            "regulator_fraction",
            "n_master_regulators",
            "mean_in_degree",
            "max_in_degree",
            "hub_exponent",
            "activation_fraction",
            "n_feedback_loops",
            "n_drugs",
            "knockdown_efficiency",
            "activation_strength",
            "extrinsic_sd",
            "n_modules",
            "module_sd",
            "cycle_fraction",
            "cycle_amplitude",
            "max_dose",
            "module_fraction",
            "complex_share",
            "module_size",
            "seed",
        )
        params: dict[str, object] = {n: getattr(self, n) for n in names}
        params["measurement"] = self.measurement_model.to_dict()
        return params

    @property
    def measurement_model(self) -> MeasurementModel:
        """The measurement model in use."""
        return self.measurement if self.measurement is not None else MeasurementModel()

    def _check_params(self) -> None:
        for name in ("n_genes", "n_cell_types", "n_drugs"):
            value = getattr(self, name)
            low = 0 if name == "n_drugs" else 1
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
                msg = f"The '{name}' parameter of VirtualCellSimulator must be an integer >= {low}. Got {value!r} instead."
                raise ValueError(msg)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or self.seed < 0
        ):
            msg = f"The 'seed' parameter of VirtualCellSimulator must be a non-negative integer. Got {self.seed!r} instead."
            raise ValueError(msg)
        if self.n_genes < 50:
            msg = f"The 'n_genes' parameter of VirtualCellSimulator must be >= 50. Got {self.n_genes!r} instead."
            raise ValueError(msg)
        if not 0.0 < self.knockdown_efficiency < 1.0:
            msg = (
                "The 'knockdown_efficiency' parameter must be in (0, 1) (use a knockout for 1). "
                f"Got {self.knockdown_efficiency!r} instead."
            )
            raise ValueError(msg)
        if not self.activation_strength > 0 or not self.max_dose > 0:
            msg = "The 'activation_strength' and 'max_dose' parameters must be positive."
            raise ValueError(msg)

    # ------------------------------------------------------------------- build
    def build(self) -> VirtualCellSimulator:
        """Draw the simulated biology. Sets the attributes ending in ``_``; returns ``self``."""
        self._check_params()
        measurement = self.measurement_model
        network = random_network(
            n_genes=self.n_genes,
            regulator_fraction=self.regulator_fraction,
            n_master_regulators=self.n_master_regulators,
            mean_in_degree=self.mean_in_degree,
            max_in_degree=self.max_in_degree,
            hub_exponent=self.hub_exponent,
            activation_fraction=self.activation_fraction,
            n_feedback_loops=self.n_feedback_loops,
            seed=self.seed,
        )
        modules, network = random_modules(
            network,
            np.random.default_rng([self.seed, 6]),
            module_fraction=self.module_fraction,
            complex_share=self.complex_share,
            mean_size=self.module_size,
        )
        master_levels = random_cell_types(
            network, self.n_cell_types, np.random.default_rng([self.seed, 1])
        )
        # put every regulator in its sensitive range: thresholds at its typical level
        jitter = np.exp(
            np.random.default_rng([self.seed, 2]).normal(0.0, 0.3, len(network.regulators))
        )
        kinetics = Kinetics(network)
        states = None
        for _ in range(2):
            inputs = self._type_inputs(kinetics, network, master_levels)
            states = kinetics.steady_state(inputs, x0=states).x
            typical = np.exp(np.mean(np.log(states[:, network.regulators] + 1e-12), axis=0))
            network = network.with_threshold(typical * jitter)
            kinetics = Kinetics(network)
        # cell types are steady states: damp feedback loops that would oscillate
        for _ in range(8):
            check = kinetics.steady_state(
                self._type_inputs(kinetics, network, master_levels), x0=states, fallback=False
            )
            if check.converged.all():
                break
            logger.info(
                "A feedback loop keeps a cell type from settling; weakening feedback edges."
            )
            network = replace(
                network, weight=np.where(network.feedback, 0.5 * network.weight, network.weight)
            )
            kinetics = Kinetics(network)
            states = check.x
        self.network_: GeneNetwork = network
        self.modules_: FunctionalModules = modules
        self.kinetics_: Kinetics = kinetics
        self.master_levels_: np.ndarray = master_levels
        self.cell_types_: tuple[str, ...] = tuple(cell_type_names(self.n_cell_types))
        self.control_states_: np.ndarray = kinetics.steady_state(
            self._type_inputs(kinetics, network, master_levels), x0=states
        ).x
        self.drugs_: DrugLibrary = random_drugs(
            network, np.random.default_rng([self.seed, 3]), n_drugs=self.n_drugs
        )
        self.variation_: CellVariation = CellVariation.random(
            network,
            np.random.default_rng([self.seed, 4]),
            extrinsic_sd=self.extrinsic_sd,
            n_modules=self.n_modules,
            module_sd=self.module_sd,
            cycle_fraction=self.cycle_fraction,
            cycle_amplitude=self.cycle_amplitude,
        )
        self.dispersion_: np.ndarray = measurement.gene_dispersion(
            self.n_genes, np.random.default_rng([self.seed, 5])
        )
        self._gene_index = {g: i for i, g in enumerate(network.gene_names.tolist())}
        self._drug_index = {d: i for i, d in enumerate(self.drugs_.names.tolist())}
        ctrl = self.solve(
            pd.DataFrame({"perturbation": [CONTROL], "cell_type": [self.cell_types_[0]]})
        )
        self.count_scale_: float = float(measurement.library_size / ctrl.mean[0].sum())
        logger.info(
            "Built a virtual cell: %d genes, %d regulators, %d edges, %d cell types, %d drugs.",
            network.n_genes,
            len(network.regulators),
            network.n_edges,
            self.n_cell_types,
            self.n_drugs,
        )
        return self

    def _ensure_built(self) -> None:
        if not hasattr(self, "network_"):
            self.build()

    @staticmethod
    def _type_inputs(
        kinetics: Kinetics, network: GeneNetwork, master_levels: np.ndarray
    ) -> RateInputs:
        inputs = kinetics.neutral_inputs(len(master_levels))
        inputs.scale[:, network.master_regulators] = master_levels
        return inputs

    # ------------------------------------------------------------------- names
    @property
    def genes(self) -> list[str]:
        """Gene symbols."""
        self._ensure_built()
        return self.network_.gene_names.tolist()

    @property
    def drugs(self) -> list[str]:
        """Drug names."""
        self._ensure_built()
        return self.drugs_.names.tolist()

    @property
    def cell_types(self) -> list[str]:
        """Cell-type names."""
        self._ensure_built()
        return list(self.cell_types_)

    def parse(self, label: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Gene and drug indices named by a perturbation label.

        Raises
        ------
        ValueError
            If a target is neither a gene nor a drug, or is repeated.
        """
        self._ensure_built()
        label = str(label)
        if label == CONTROL:
            return (), ()
        schema = simulation_schema()
        parts = schema.targets(label)
        genes: list[int] = []
        drugs: list[int] = []
        for p in parts:
            if p in self._gene_index:
                genes.append(self._gene_index[p])
            elif p in self._drug_index:
                drugs.append(self._drug_index[p])
            else:
                g = self.network_.gene_names
                drugs = (
                    f" ({self.drugs_.names[0]} ... {self.drugs_.names[-1]})"
                    if self.drugs_.n_drugs
                    else ""
                )
                check_known(
                    [p],
                    [*self._gene_index, *self._drug_index],
                    what="perturbation target",
                    known_as="genes and drugs",
                    where=f" in {label!r}",
                    advice=(
                        f"A target is one of the {len(g)} genes ({g[0]} ... {g[-1]}) or of the "
                        f"{self.drugs_.n_drugs} drugs{drugs}; use {CONTROL!r} for control cells "
                        "and join combinations with '+'."
                    ),
                    error=ValueError,
                )
        if len(set(parts)) != len(parts):
            msg = f"The perturbation {label!r} names a target twice; list each target of a combination once."
            raise ValueError(msg)
        return tuple(genes), tuple(drugs)

    # ------------------------------------------------------------------ design
    def normalize_design(self, design: pd.DataFrame) -> pd.DataFrame:
        """Fill defaults of a design table and check its values.

        A design has one row per condition with ``perturbation`` and
        ``n_cells`` and optionally ``cell_type`` (default: the first),
        ``dose`` (µM, drugs only), ``time`` (hours after a differentiation
        signal), ``modality`` (``knockout``, ``knockdown``, ``activation``),
        ``signal`` (target cell type of a differentiation signal, or ``none``)
        and ``batch``.
        """
        self._ensure_built()
        if "perturbation" not in design.columns:
            msg = f"A design needs a 'perturbation' column; got columns {list(design.columns)}."
            raise ValueError(msg)
        d = design.copy().reset_index(drop=True)
        d["perturbation"] = d["perturbation"].astype(str)
        if "cell_type" not in d.columns:
            d["cell_type"] = self.cell_types_[0]
        for col, default in _DESIGN_DEFAULTS.items():
            if col not in d.columns:
                d[col] = default
        d["cell_type"] = d["cell_type"].astype(str)
        d["modality"] = d["modality"].astype(str)
        d["signal"] = d["signal"].astype(str)
        d["dose"] = pd.to_numeric(d["dose"], errors="coerce").astype(np.float64)
        d["time"] = pd.to_numeric(d["time"], errors="coerce").astype(np.float64)
        unknown = sorted(set(d["cell_type"]) - set(self.cell_types_))
        if unknown:
            msg = f"Unknown cell type(s) {unknown}; the simulator has cell types {list(self.cell_types_)}."
            raise ValueError(msg)
        bad_mod = sorted(set(d["modality"]) - set(MODALITIES))
        if bad_mod:
            msg = f"Unknown modality {bad_mod}; expected one of {list(MODALITIES)}."
            raise ValueError(msg)
        bad_signal = sorted(set(d["signal"]) - {*self.cell_types_, NO_SIGNAL})
        if bad_signal:
            msg = f"Unknown signal {bad_signal}; a signal names the target cell type ({list(self.cell_types_)}) or is {NO_SIGNAL!r}."
            raise ValueError(msg)
        if d["dose"].isna().any() or (d["dose"] < 0).any() or (d["dose"] > self.max_dose).any():
            msg = f"Doses must be numbers in [0, {self.max_dose:g}] µM; got {sorted(d['dose'].unique())[:5]}."
            raise ValueError(msg)
        if d["time"].isna().any() or (d["time"] < 0).any():
            msg = "Times must be non-negative numbers of hours."
            raise ValueError(msg)
        needs_signal = (d["time"] > 0) & (d["signal"] == NO_SIGNAL)
        if needs_signal.any():
            msg = (
                "Rows with time > 0 need a differentiation 'signal' (the cell type the cells are sent towards); "
                "time counts the hours since that signal. Use time 0 for steady-state conditions."
            )
            raise ValueError(msg)
        for label in d["perturbation"].unique():
            self.parse(label)
        if "n_cells" in d.columns:
            n = pd.to_numeric(d["n_cells"], errors="coerce")
            if n.isna().any() or (n < 0).any() or (n != np.round(n)).any():
                msg = "The 'n_cells' column of a design must hold non-negative integers."
                raise ValueError(msg)
            d["n_cells"] = n.astype(np.int64)
        return d

    # ----------------------------------------------------------------- solving
    def _inputs(
        self,
        conditions: pd.DataFrame,
        *,
        use_signal: bool,
        extra_add: np.ndarray | None = None,
    ) -> RateInputs:
        net = self.network_
        kin = self.kinetics_
        b = len(conditions)
        inputs = kin.neutral_inputs(b)
        if extra_add is not None:
            inputs.add[:] += extra_add
        type_pos = {t: i for i, t in enumerate(self.cell_types_)}
        types = conditions["cell_type"].to_numpy()
        if use_signal:
            signal = conditions["signal"].to_numpy()
            types = np.where(signal == NO_SIGNAL, types, signal)
        t_idx = np.asarray([type_pos[t] for t in types], dtype=np.int64)
        inputs.scale[:, net.master_regulators] = self.master_levels_[t_idx]
        drugs: list[tuple[int, ...]] = []
        for row, (label, modality) in enumerate(
            zip(conditions["perturbation"], conditions["modality"], strict=True)
        ):
            genes, ds = self.parse(label)
            drugs.append(ds)
            if not genes:
                continue
            g = np.asarray(genes)
            if modality == "knockout":
                inputs.scale[row, g] = 0.0
                inputs.add[row, g] = 0.0  # a deleted gene is not transcribed at all
            elif modality == "knockdown":
                inputs.scale[row, g] *= 1.0 - self.knockdown_efficiency
            else:
                inputs.add[row, g] += self.activation_strength
        if any(drugs):
            inputs.activity[:] = self.drugs_.activity(
                drugs, conditions["dose"].to_numpy(), net.regulator_index(), len(net.regulators)
            )
        if self.modules_.n_modules:
            inputs.activity[:] *= self.modules_.activity_factor(inputs.scale, inputs.add, net)
        return inputs

    def solve(
        self,
        conditions: pd.DataFrame,
        *,
        batch_size: int | None = None,
        extra_add: np.ndarray | None = None,
    ) -> SolvedConditions:
        """Solve conditions: states, population means and noise sensitivities.

        Steady-state conditions start from their cell type's control state, so a
        perturbation reaches the attractor the unperturbed cells move into.
        Conditions with ``time > 0`` start from the steady state under the
        intervention in the starting cell type and are integrated for ``time``
        hours under the master-regulator levels of the ``signal`` cell type;
        their cells are taken to vary around the trajectory as they would
        around a steady state with the inputs acting at that time.

        Parameters
        ----------
        conditions
            Condition table (see :meth:`normalize_design`; ``n_cells`` is not needed).
        batch_size
            Conditions propagated at once (bounds memory); default: as many as
            keep the temporary arrays near 100 MB.
        extra_add
            Optional ``(n_conditions, n_genes)`` non-negative transcription added to
            each condition's regulator-independent input (:attr:`RateInputs.add`,
            in units of the gene's maximal rate), e.g. a signal received from
            neighbouring cells; it acts before and after a differentiation signal.
        """
        self._ensure_built()
        cond = self.normalize_design(conditions)
        if extra_add is not None:
            extra_add = np.asarray(extra_add, dtype=np.float64)
            if extra_add.shape != (len(cond), self.n_genes):
                msg = (
                    f"'extra_add' must have shape (n_conditions, n_genes) = ({len(cond)}, "
                    f"{self.n_genes}); got {extra_add.shape}."
                )
                raise ValueError(msg)
            if not np.isfinite(extra_add).all() or (extra_add < 0).any():
                msg = "'extra_add' must hold finite, non-negative rates."
                raise ValueError(msg)
        kin = self.kinetics_
        n = len(cond)
        type_pos = {t: i for i, t in enumerate(self.cell_types_)}
        x0 = self.control_states_[[type_pos[t] for t in cond["cell_type"]]]
        before = self._inputs(cond, use_signal=False, extra_add=extra_add)
        state = kin.steady_state(before, x0=x0).x
        dynamic = np.flatnonzero(
            (cond["time"] > 0).to_numpy() & (cond["signal"] != NO_SIGNAL).to_numpy()
        )
        after = self._inputs(cond, use_signal=True, extra_add=extra_add)
        if len(dynamic):
            # one trajectory per distinct starting condition, reported at all its times
            key_cols = ["perturbation", "cell_type", "dose", "modality", "signal"]
            keys = cond.iloc[dynamic][key_cols].astype(str).agg("|".join, axis=1).to_numpy()
            uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            starts = dynamic[first]
            times = np.unique(cond["time"].to_numpy()[dynamic])
            traj = kin.trajectory(state[starts], after.take(starts), times)
            t_pos = np.searchsorted(times, cond["time"].to_numpy()[dynamic])
            state[dynamic] = traj[t_pos, inverse]
            logger.debug("Integrated %d time courses to %g h.", len(uniq), float(times.max()))
        k = self.variation_.n_factors
        if batch_size is None:
            per = 8 * 6 * k * self.n_genes
            batch_size = int(np.clip(100e6 // per, 1, 512))
        sens = np.empty((n, k, self.n_genes), dtype=np.float32)
        mean = np.empty((n, self.n_genes))
        for s in range(0, n, batch_size):
            rows = np.arange(s, min(s + batch_size, n))
            sub = after.take(rows)
            srows = kin.propagate(state[rows], sub, self.variation_.loadings)
            sens[rows] = srows
            mean[rows] = state[rows] * np.exp(self.variation_.mean_log_factor(srows))
        return SolvedConditions(conditions=cond, state=state, mean=mean, sensitivity=sens)

    def true_means(
        self,
        perturbations: Sequence[str],
        *,
        cell_type: str | None = None,
        dose: float = 0.0,
        time: float = 0.0,
        modality: str = "knockout",
        signal: str = NO_SIGNAL,
    ) -> pd.DataFrame:
        """Population mean of true expression for perturbations in one context.

        Returns
        -------
        Perturbations x genes DataFrame (molecules per cell, before measurement).
        """
        self._ensure_built()
        design = pd.DataFrame(
            {
                "perturbation": list(perturbations),
                "cell_type": cell_type if cell_type is not None else self.cell_types_[0],
                "dose": dose,
                "time": time,
                "modality": modality,
                "signal": signal,
            }
        )
        solved = self.solve(design)
        return pd.DataFrame(
            solved.mean,
            index=pd.Index(list(perturbations), name="perturbation"),
            columns=self.genes,
        )

    # ---------------------------------------------------------------- sampling
    def batch_effects(self, names: Sequence[str], *, key: Sequence[int]) -> list[BatchEffect]:
        """Draw the technical effect of each batch; ``key`` seeds them (with the batch position)."""
        self._ensure_built()
        m = self.measurement_model
        return [
            m.batch_effect(self.n_genes, np.random.default_rng([*key, 11, i]))
            for i in range(len(names))
        ]

    def iter_counts(
        self,
        solved: SolvedConditions,
        cell_condition: np.ndarray,
        cell_batch: np.ndarray,
        batch_effects: Sequence[BatchEffect],
        *,
        key: Sequence[int],
        chunk_size: int = 16 * BLOCK,
        n_jobs: int | None = None,
    ) -> Iterator[sp.csr_matrix]:
        """Draw measured counts for a list of cells, chunk by chunk.

        Parameters
        ----------
        solved
            Solved conditions (:meth:`solve`).
        cell_condition
            ``(n_cells,)`` row of ``solved.conditions`` of each cell.
        cell_batch
            ``(n_cells,)`` position of each cell's batch in ``batch_effects``.
        batch_effects
            Technical effect of each batch.
        key
            Integers seeding the draws; block ``i`` of :data:`BLOCK` cells uses
            ``default_rng([*key, i])``, so the output does not depend on
            ``chunk_size`` or ``n_jobs``.
        chunk_size
            Cells per chunk (rounded up to a multiple of :data:`BLOCK`).
        n_jobs
            Worker threads; default ``aivc.settings.n_jobs``.

        Yields
        ------
        int32 CSR count matrices of consecutive cells.
        """
        self._ensure_built()
        n_cells = len(cell_condition)
        chunk = max(BLOCK, -(-int(chunk_size) // BLOCK) * BLOCK)
        n_jobs = settings.n_jobs if n_jobs is None else max(1, int(n_jobs))
        log_state = solved.log_state()
        sens = solved.sensitivity
        lib = np.asarray([b.log_library for b in batch_effects], dtype=np.float32)
        gene_scale = np.asarray(
            [b.log_gene_scale for b in batch_effects], dtype=np.float32
        ).reshape(len(batch_effects), self.n_genes)
        offset = np.float32(np.log(self.count_scale_))
        cell_condition = np.asarray(cell_condition, dtype=np.int64)
        cell_batch = np.asarray(cell_batch, dtype=np.int64)

        def work(start: int) -> sp.csr_matrix:
            stop = min(start + chunk, n_cells)
            return self._draw_chunk(
                start,
                stop,
                cell_condition,
                cell_batch,
                log_state,
                sens,
                lib,
                gene_scale,
                offset,
                key,
            )

        starts = range(0, n_cells, chunk)
        if n_jobs == 1 or n_cells <= chunk:
            for s in starts:
                yield work(s)
            return
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            pending: deque[Future[sp.csr_matrix]] = deque()
            it = iter(starts)
            for s in it:
                pending.append(pool.submit(work, s))
                if len(pending) >= n_jobs:
                    break
            for s in it:
                yield pending.popleft().result()
                pending.append(pool.submit(work, s))
            while pending:
                yield pending.popleft().result()

    def _draw_chunk(
        self,
        start: int,
        stop: int,
        cell_condition: np.ndarray,
        cell_batch: np.ndarray,
        log_state: np.ndarray,
        sens: np.ndarray,
        lib: np.ndarray,
        gene_scale: np.ndarray,
        offset: np.float32,
        key: Sequence[int],
    ) -> sp.csr_matrix:
        m = self.measurement_model
        n_batches = len(lib)
        parts = []
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            a, b = block * BLOCK, min((block + 1) * BLOCK, stop)
            rng = np.random.default_rng([*key, block])
            z = self.variation_.sample(b - a, rng).astype(np.float32)
            cell_offset = (m.draw_capture(b - a, rng) + lib[cell_batch[a:b]] + offset).astype(
                np.float32
            )
            # cells of one condition and batch share their mean; only z and capture differ
            group = cell_condition[a:b] * n_batches + cell_batch[a:b]
            order = np.argsort(group, kind="stable")
            uniq, first = np.unique(group[order], return_index=True)
            bounds = [*first.tolist(), b - a]
            log_mu = np.empty((b - a, self.n_genes), dtype=np.float32)
            for j, key_j in enumerate(uniq.tolist()):
                rows = order[bounds[j] : bounds[j + 1]]
                c, bi = divmod(key_j, n_batches)
                log_mu[rows] = (
                    (log_state[c] + gene_scale[bi]) + z[rows] @ sens[c] + cell_offset[rows, None]
                )
            parts.append(m.sample(log_mu, self.dispersion_, rng))
        return sp.vstack(parts, format="csr", dtype=np.int32)

    def cell_plan(
        self,
        design: pd.DataFrame,
        *,
        n_batches: int,
        rng: np.random.Generator,
        batch_prefix: str = "batch_",
        shuffle: bool = True,
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
        """Expand a design into cells.

        Returns
        -------
        conditions
            The normalised design (one row per condition).
        cell_condition
            Row of each cell's condition.
        cell_batch
            Batch position of each cell.
        batch_names
            Batch names.
        """
        d = self.normalize_design(design)
        if "n_cells" not in d.columns:
            msg = "A design to simulate needs an 'n_cells' column (cells per condition)."
            raise ValueError(msg)
        n_per = d["n_cells"].to_numpy()
        cell_condition = np.repeat(np.arange(len(d)), n_per)
        if "batch" in d.columns:
            names = sorted(d["batch"].astype(str).unique())
            pos = {b: i for i, b in enumerate(names)}
            cell_batch = np.repeat(np.asarray([pos[b] for b in d["batch"].astype(str)]), n_per)
        else:
            if not isinstance(n_batches, int | np.integer) or n_batches < 1:
                msg = f"The 'n_batches' parameter must be a positive integer. Got {n_batches!r} instead."
                raise ValueError(msg)
            names = [f"{batch_prefix}{i + 1}" for i in range(n_batches)]
            cell_batch = rng.integers(0, n_batches, len(cell_condition))
        if shuffle:
            perm = rng.permutation(len(cell_condition))
            cell_condition, cell_batch = cell_condition[perm], cell_batch[perm]
        return d, cell_condition, cell_batch, names

    def obs_frame(
        self,
        conditions: pd.DataFrame,
        cell_condition: np.ndarray,
        cell_batch: np.ndarray,
        batch_names: Sequence[str],
        *,
        cell_prefix: str = "cell_",
        first_cell: int = 0,
    ) -> pd.DataFrame:
        """The measured ``obs`` table: design columns only, no ground truth."""
        labels = conditions["perturbation"].to_numpy()
        ptype = np.asarray(
            [
                self._perturbation_type(lbl, mod)
                for lbl, mod in zip(labels, conditions["modality"], strict=True)
            ]
        )
        dose = np.where(
            np.asarray([bool(self.parse(lbl)[1]) for lbl in labels]),
            conditions["dose"].to_numpy(),
            0.0,
        )

        def cat(values: np.ndarray) -> pd.Categorical:
            cats, codes = np.unique(values.astype(str), return_inverse=True)
            return pd.Categorical.from_codes(codes[cell_condition], categories=cats)

        n = len(cell_condition)
        width = max(7, len(str(first_cell + n)))
        obs = pd.DataFrame(
            {
                "perturbation": cat(labels),
                "cell_type": cat(conditions["cell_type"].to_numpy()),
                "batch": pd.Categorical.from_codes(cell_batch, categories=list(batch_names)),
                "dose": dose[cell_condition].astype(np.float64),
                "time": conditions["time"].to_numpy(dtype=np.float64)[cell_condition],
                "perturbation_type": cat(ptype),
            },
            index=pd.Index(
                [f"{cell_prefix}{i:0{width}d}" for i in range(first_cell, first_cell + n)]
            ),
        )
        if (conditions["signal"] != NO_SIGNAL).any():
            obs["signal"] = cat(conditions["signal"].to_numpy())
        for col in ("perturbation", "cell_type", "perturbation_type"):
            obs[col] = obs[col].cat.remove_unused_categories()
        return obs

    def _perturbation_type(self, label: str, modality: str) -> str:
        genes, drugs = self.parse(label)
        if not genes and not drugs:
            return CONTROL
        if not genes:
            return "drug"
        return modality + ("+drug" if drugs else "")

    def var_frame(self) -> pd.DataFrame:
        """The measured ``var`` table (gene symbols only)."""
        self._ensure_built()
        return pd.DataFrame(index=pd.Index(self.genes))

    def ground_truth(
        self,
        solved: SolvedConditions,
        *,
        batch_names: Sequence[str] = (),
        batch_effects: Sequence[BatchEffect] = (),
    ) -> GroundTruth:
        """Package solved conditions and the simulated biology as a :class:`GroundTruth`."""
        cond = solved.conditions.copy()
        if "n_cells" not in cond.columns:
            cond["n_cells"] = 0
        cond = cond[["perturbation", "cell_type", "dose", "time", "modality", "signal", "n_cells"]]
        return GroundTruth(
            gene_names=self.network_.gene_names,
            network=self.network_,
            modules=self.modules_,
            drugs=self.drugs_,
            cell_types=self.cell_types_,
            master_levels=self.master_levels_,
            conditions=cond.reset_index(drop=True),
            mean=solved.mean,
            steady_state=solved.state,
            count_scale=self.count_scale_,
            dispersion=self.dispersion_,
            batches=tuple(batch_names),
            batch_log_library=np.asarray([b.log_library for b in batch_effects], dtype=np.float64),
            batch_log_gene_scale=np.asarray(
                [b.log_gene_scale for b in batch_effects], dtype=np.float64
            ).reshape(len(batch_effects), self.n_genes),
            params=self.get_params(),
        )

    def simulate(
        self,
        design: pd.DataFrame,
        *,
        n_batches: int = 1,
        seed: int | None = None,
        chunk_size: int = 16 * BLOCK,
        n_jobs: int | None = None,
    ) -> tuple[AnnData, GroundTruth]:
        """Simulate a measured experiment in memory.

        Parameters
        ----------
        design
            Conditions with ``n_cells`` (see :meth:`normalize_design`).
        n_batches
            Batches the cells are spread over (ignored when ``design`` has a
            ``batch`` column).
        seed
            Seed of the sampled cells and batch effects (default: the simulator's seed).
        chunk_size
            Cells drawn at once.
        n_jobs
            Worker threads.

        Returns
        -------
        adata
            Raw integer counts in ``X`` (CSR int32); ``obs`` holds ``perturbation``,
            ``cell_type``, ``batch``, ``dose``, ``time`` and ``perturbation_type``;
            ``uns["aivc"]["schema"]`` the :func:`simulation_schema`.
        truth
            The :class:`GroundTruth` (kept out of ``adata``).
        """
        import anndata as ad

        self._ensure_built()
        seed = self.seed if seed is None else seed
        rng = np.random.default_rng([seed, 21])
        cond, cell_condition, cell_batch, names = self.cell_plan(
            design, n_batches=n_batches, rng=rng
        )
        solved = self.solve(cond)
        effects = self.batch_effects(names, key=[seed])
        chunks = list(
            self.iter_counts(
                solved,
                cell_condition,
                cell_batch,
                effects,
                key=[seed, 22],
                chunk_size=chunk_size,
                n_jobs=n_jobs,
            )
        )
        x = (
            sp.vstack(chunks, format="csr", dtype=np.int32)
            if chunks
            else sp.csr_matrix((0, self.n_genes), dtype=np.int32)
        )
        adata = ad.AnnData(
            X=x, obs=self.obs_frame(cond, cell_condition, cell_batch, names), var=self.var_frame()
        )
        adata.uns["aivc"] = measured_uns()
        return adata, self.ground_truth(solved, batch_names=names, batch_effects=effects)


def measured_uns() -> dict[str, object]:
    """The ``uns["aivc"]`` entry of measured simulated data (schema and provenance only)."""
    return {"schema": simulation_schema().to_dict(), "source": "aivc.sim"}
