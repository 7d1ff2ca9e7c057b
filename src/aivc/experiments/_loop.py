"""The lab in the loop: propose -> measure -> update the model -> repeat, recorded in a ledger.

:func:`run_loop` drives rounds of an active-learning campaign over a list of
candidate perturbations. Each round an acquisition strategy
(:func:`aivc.experiments._acquisition.propose`) picks a batch of unmeasured
candidates, a lab measures them (the :class:`SimulatorLab`, a stand-in
laboratory over the mechanistic virtual cell; a :class:`ResultsFileLab`, an
h5ad file of a real experiment; or a lab replaying a finished screen,
:class:`~aivc.experiments._replay.ReplayLab` for cells and
:class:`~aivc.experiments._replay.ScreenScoresLab` for gene-level scores),
the model is refitted on everything measured so far, and its predictions
for every candidate are stored.

Crash safety and determinism come from the ledger: the proposal of round
``r`` is a function of the ledger's contents, the seed and ``r`` only; the
model is refitted from the measured profiles stored in the ledger; and each
round is committed in one transaction. A loop killed at any point therefore
resumes where it stopped (``resume=True``), and its final ledger equals the
one an uninterrupted run writes. Two options trade this for sharing state
with code of your own, and say so: a generator passed as ``rng`` (proposals
then follow its state) and a :class:`SimulatorLab` that continues a virtual
lab's own series of experiments (it refuses to measure out of step).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._labels import check_known
from aivc._progress import progress
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError
from aivc.experiments._ledger import (
    COMPLETE,
    FINISHED,
    PROPOSED,
    DatasetRecord,
    Ledger,
    ModelRecord,
    PredictionRecord,
    ResultRecord,
    RoundRecord,
)
from aivc.experiments._replay import ReplayLab, ScreenScoresLab

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.instruments import PerturbationModel
    from aivc.sim import VirtualCellSimulator, VirtualLab

__all__ = ["LoopReport", "ResultsFileLab", "RoundOutcome", "SimulatorLab", "run_loop"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- labs
class Lab(Protocol):
    """What the loop needs from a lab.

    ``measure`` returns the cells of the round (an AnnData read with
    ``schema()``, holding control cells), or, for a lab of gene-level
    readouts, a :class:`pandas.Series` of one value per proposed candidate
    (``schema()`` then returns ``None``), or ``None`` while the results are
    not in yet.
    """

    #: Whether the lab answers later (the loop stops after proposing).
    waits: bool

    def describe(self) -> dict[str, Any]: ...

    def measure(
        self, perturbations: Sequence[str], *, round: int
    ) -> AnnData | pd.Series | None: ...

    def schema(self) -> PerturbationSchema | None: ...


class SimulatorLab:
    """A laboratory over the mechanistic virtual cell that answers at once.

    Each round is one experiment measuring the proposed perturbations and
    control cells in the same batch; round ``r`` is experiment ``r`` (batch
    ``exp000r`` in the cell names and the log). The measurement of round ``r``
    depends only on the seed, ``r`` and the request, so a resumed loop
    measures exactly what an uninterrupted one did. (:meth:`from_virtual_lab` can
    instead run the rounds as a :class:`~aivc.sim.VirtualLab`'s own next
    experiments.)

    Parameters
    ----------
    n_genes
        Genes of the hidden virtual cell (all of them are candidates by default).
    cell_type
        Cell type to experiment on (default: the first).
    n_cells
        Cells per perturbation and round.
    n_control_cells
        Control cells per round.
    seed
        Seed of the hidden cell and of the measurements.
    simulator
        Your own :class:`~aivc.sim.VirtualCellSimulator` (keeps its ground truth
        at hand for evaluation); ``None`` builds one with ``n_genes`` and ``seed``.
    """

    waits = False

    def __init__(
        self,
        *,
        n_genes: int = 200,
        cell_type: str | None = None,
        n_cells: int = 50,
        n_control_cells: int = 200,
        seed: int = 0,
        simulator: VirtualCellSimulator | None = None,
    ) -> None:
        from aivc.sim import VirtualCellSimulator

        self.n_genes = n_genes
        self.cell_type = cell_type
        self.n_cells = n_cells
        self.n_control_cells = n_control_cells
        self.seed = seed
        self.simulator = simulator
        sim = simulator
        if sim is None:
            sim = VirtualCellSimulator(n_genes=n_genes, n_cell_types=1, n_drugs=1, seed=seed)
        sim._ensure_built()
        self._sim = sim
        self._series: VirtualLab | None = None
        self._series_start = 0
        if cell_type is not None and cell_type not in sim.cell_types:
            msg = f"Unknown cell type {cell_type!r}; the simulated cell has {list(sim.cell_types)}."
            raise ValueError(msg)

    @classmethod
    def from_virtual_lab(
        cls,
        lab: VirtualLab,
        *,
        cell_type: str | None = None,
        n_cells: int = 50,
        n_control_cells: int = 200,
        continue_series: bool = False,
    ) -> SimulatorLab:
        """Run the loop against a :class:`~aivc.sim.VirtualLab` (its hidden cell and seed).

        By default each round measures with its own seeded experiment instead
        of the lab's running experiment counter, so a resumed loop measures
        what an uninterrupted one did.

        Parameters
        ----------
        lab
            The virtual lab.
        cell_type
            Cell type to experiment on (default: the lab's first).
        n_cells
            Cells per perturbation and round.
        n_control_cells
            Control cells per round.
        continue_series
            Measure round ``r`` as the lab's next experiment,
            ``lab.run([*proposals, "control"], n_cells=[n_cells, ..., n_control_cells],
            cell_type=...)``, so the campaign continues the lab's own series:
            experiments you ran by hand before the loop (e.g. control cells to
            compute gene features from) and the loop's rounds are one
            reproducible sequence of requests, the lab's ``budget_cells`` caps
            the campaign, and its ``cost`` and ``history`` count the rounds.
            The rounds must then be measured in step with the lab, so a loop
            resumed in a new process (whose lab has not run the earlier
            rounds) is refused; keep the default where a loop must resume.
        """
        out = cls(
            simulator=lab._simulator(),
            seed=lab.seed,
            cell_type=cell_type,
            n_cells=n_cells,
            n_control_cells=n_control_cells,
        )
        if continue_series:
            out._series = lab
            out._series_start = lab.cost.n_experiments
        return out

    @property
    def genes(self) -> list[str]:
        """Genes that can be perturbed."""
        return list(self._sim.genes)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "simulator",
            "n_genes": len(self._sim.genes),
            "simulator": "built" if self.simulator is None else "given",
            "cell_type": self.cell_type,
            "n_cells": self.n_cells,
            "n_control_cells": self.n_control_cells,
            "seed": self.seed,
        }
        if self._series is not None:
            out["series"] = {"virtual_lab": True, "first_experiment": self._series_start + 1}
        return out

    def schema(self) -> PerturbationSchema:
        from aivc.sim import simulation_schema

        return simulation_schema()

    def measure(self, perturbations: Sequence[str], *, round: int) -> AnnData:
        from aivc.sim import CONTROL, LabCost, VirtualLab

        if self._series is not None:
            return self._measure_in_series(self._series, perturbations, round=round)
        seed = int(np.random.SeedSequence([self.seed, 7, round]).generate_state(1)[0])
        lab = VirtualLab(simulator=self._sim, seed=seed)
        # round r is experiment r of the campaign (batch exp000r in the data and the log),
        # in a lab of its own, so it can be measured again without the earlier rounds
        lab._cost = LabCost(n_experiments=round - 1)
        cell_type = self.cell_type or lab.cell_types[0]
        labels = [CONTROL, *perturbations]
        counts = [self.n_control_cells] + [self.n_cells] * len(perturbations)
        adata = lab.run(labels, n_cells=counts, cell_type=cell_type)
        batch_key = self.schema().batch_key
        if batch_key is not None:
            adata.obs[batch_key] = pd.Categorical([f"round{round:04d}"] * adata.n_obs)
        return adata

    def _measure_in_series(
        self, lab: VirtualLab, perturbations: Sequence[str], *, round: int
    ) -> AnnData:
        from aivc.sim import CONTROL

        expected = self._series_start + round - 1
        if lab.cost.n_experiments != expected:
            msg = (
                f"Round {round} is experiment {expected + 1} of the virtual lab's series, but the lab "
                f"has run {lab.cost.n_experiments} experiments. A loop measured in the lab's own series "
                "runs in step with it and cannot resume in another process; start a new project, or "
                "measure each round with its own seeded experiment (continue_series=False)."
            )
            raise RuntimeError(msg)
        counts = [self.n_cells] * len(perturbations) + [self.n_control_cells]
        return lab.run(
            [*perturbations, CONTROL],
            n_cells=counts,
            cell_type=self.cell_type or lab.cell_types[0],
        )


class ResultsFileLab:
    """Results of a real experiment, uploaded as an h5ad file (counts in ``X`` or a layer).

    The loop writes its proposal to the ledger and stops; after the
    experiment, the user writes the measured cells (the proposed
    perturbations and control cells) to ``path`` and resumes the loop. The
    file is validated with :func:`aivc.data.validate` against ``schema`` (by
    default the one stored in the file's ``uns["aivc"]["schema"]``).

    Parameters
    ----------
    path
        The results file (need not exist before the first proposal).
    schema
        How to read the file; ``None`` reads it from the file.
    """

    waits = True

    def __init__(self, path: str | Path, *, schema: PerturbationSchema | None = None) -> None:
        self.path = Path(path)
        self._schema = schema

    def describe(self) -> dict[str, Any]:
        return {"kind": "results-file"}

    def schema(self) -> PerturbationSchema:
        if self._schema is not None:
            return self._schema
        return PerturbationSchema(perturbation_key="perturbation", control_label="control")

    def measure(self, perturbations: Sequence[str], *, round: int) -> AnnData | None:
        from aivc.data import read_h5ad, validate

        if not self.path.exists():
            return None
        if self.path.suffix != ".h5ad":
            msg = f"Results must be an .h5ad file of measured cells; got {str(self.path)!r}."
            raise DataValidationError(msg)
        adata = read_h5ad(self.path)
        schema = self._schema
        if schema is None:
            try:
                schema = PerturbationSchema.from_dict(dict(adata.uns["aivc"]["schema"]))
            except (KeyError, TypeError):
                msg = (
                    f"{str(self.path)!r} carries no schema in uns['aivc']['schema']; store one "
                    "(PerturbationSchema.to_dict()) or pass schema= to ResultsFileLab."
                )
                raise DataValidationError(msg) from None
        self._schema = schema
        validate(adata, schema, min_cells=1)
        labels = set(adata.obs[schema.perturbation_key].astype(str))
        missing = [p for p in perturbations if p not in labels]
        if missing:
            msg = (
                f"{str(self.path)!r} lacks {len(missing)} of the {len(perturbations)} perturbations "
                f"proposed in round {round}, e.g. {missing[:5]}; measure them (or fix their labels in "
                f"obs[{schema.perturbation_key!r}]) and resume."
            )
            raise DataValidationError(msg)
        keep = (
            adata.obs[schema.perturbation_key]
            .astype(str)
            .isin([*perturbations, schema.control_label])
        )
        return adata[keep.to_numpy()].copy()


# ----------------------------------------------------------------------------- report
@dataclass
class LoopReport:
    """What a call of :func:`run_loop` did.

    Attributes
    ----------
    project
        Project name.
    rounds_done
        Rounds completed in this call.
    round
        The project's current round.
    status
        ``"complete"`` (more rounds to go), ``"awaiting-results"`` or ``"finished"``.
    proposed
        Candidates of the last proposal.
    hits
        Measured candidates with the largest effects so far (candidate -> effect).
    """

    project: str
    rounds_done: int
    round: int
    status: str
    proposed: list[str] = field(default_factory=list)
    hits: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundOutcome:
    """A round :func:`run_loop` has just committed, as handed to its ``on_round`` callback.

    Attributes
    ----------
    project
        Project name.
    round
        Round number (1, 2, ...).
    proposed
        Candidates measured in this round, in the order proposed.
    values
        Values fed back to the strategy for ``proposed`` (same order), as recorded
        in the ledger's results.
    measurement
        What the lab returned for the round: its cells (AnnData) or its readouts
        per candidate (:class:`pandas.Series`).
    measured
        Every candidate measured so far, earlier rounds first, in the order the
        strategy sees them.
    """

    project: str
    round: int
    proposed: list[str]
    values: np.ndarray
    measurement: AnnData | pd.Series
    measured: list[str]


# ----------------------------------------------------------------------------- helpers
def _effect(delta: np.ndarray) -> np.ndarray:
    """Effect size of each row: root-mean-square change over genes."""
    return np.sqrt(np.mean(np.square(delta), axis=-1))


def _effect_bounds(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest effect size over the per-gene box ``[lower, upper]``."""
    closest = np.where((lower <= 0) & (upper >= 0), 0.0, np.minimum(np.abs(lower), np.abs(upper)))
    farthest = np.maximum(np.abs(lower), np.abs(upper))
    return _effect(closest), _effect(farthest)


def _hash_dir(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _profiles(adata: AnnData, schema: PerturbationSchema, genes: list[str]) -> pd.DataFrame:
    """Mean log-expression per perturbation (rows) over ``genes`` (columns), with ``n_cells``."""
    from aivc.data import check_gene_panel, prepare

    prepared, pschema = prepare(adata, schema)
    idx = check_gene_panel(prepared.var_names, genes)
    labels = prepared.obs[pschema.perturbation_key].astype(str).to_numpy()
    x = prepared.X[:, idx]
    rows, names, sizes = [], [], []
    for label in pd.unique(labels):
        mask = labels == label
        rows.append(np.asarray(x[mask].mean(axis=0)).ravel())
        names.append(str(label))
        sizes.append(int(mask.sum()))
    df = pd.DataFrame(np.stack(rows), index=names, columns=genes)
    df["n_cells"] = sizes
    return df


def _training_data(
    history: pd.DataFrame, genes: list[str], control_label: str
) -> tuple[AnnData, PerturbationSchema]:
    """One pseudo-cell per measured condition, batch-corrected by each round's controls.

    The control state is the mean of the rounds' control profiles; a
    perturbation's profile is that state plus its change against the controls
    of its own round.
    """
    import anndata as ad

    ctrl = history[history["is_control"]]
    pooled = np.mean(np.stack(ctrl["profile"].to_list()), axis=0).astype(np.float64)
    ctrl_by_round = {
        int(r): np.asarray(p, np.float64)
        for r, p in zip(ctrl["round"], ctrl["profile"], strict=True)
    }
    pert = history[~history["is_control"]]
    rows = [pooled]
    labels = [control_label]
    for r, cand, prof in zip(pert["round"], pert["candidate"], pert["profile"], strict=True):
        rows.append(pooled + (np.asarray(prof, np.float64) - ctrl_by_round[int(r)]))
        labels.append(str(cand))
    schema = PerturbationSchema(perturbation_key="perturbation", control_label=control_label)
    adata = ad.AnnData(
        X=np.clip(np.stack(rows), 0, None).astype(np.float32),
        obs=pd.DataFrame(
            {"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(rows))]
        ),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    return adata, schema


def _check_candidates(
    candidates: Sequence[str],
    allowed: Sequence[str] | None,
    what: str,
    *,
    known_as: str | None = None,
) -> list[str]:
    """The candidates as strings, each once and among ``allowed`` (the genes of the ``what``, or ``known_as``)."""
    cands = [str(c) for c in candidates]
    if not cands:
        msg = "The candidate list is empty; pass the genes to choose from."
        raise ValueError(msg)
    dup = sorted(c for c, n in Counter(cands).items() if n > 1)
    if dup:
        msg = f"Candidates {dup[:10]} are listed more than once; list each once."
        raise ValueError(msg)
    if allowed is not None:
        check_known(
            cands, set(allowed), what="candidate", known_as=known_as or f"genes of the {what}"
        )
    return cands


def _lab_catalogue(lab: Lab) -> tuple[list[str] | None, list[str] | None, str]:
    """What a lab can perturb and which genes it measures (``None``: not known), and how to name the former."""
    if isinstance(lab, SimulatorLab):
        return lab.genes, lab.genes, "genes of the simulated cell"
    if isinstance(lab, ReplayLab):
        return lab.perturbations, lab.genes, "perturbations of the replayed screen"
    if isinstance(lab, ScreenScoresLab):
        return lab.perturbations, [], "genes of the screen"
    return None, None, "lab"


def _check_features(features: Any, n: int) -> np.ndarray | sp.spmatrix:
    """Candidates x d features, dense (float) or scipy sparse, finite, one row per candidate."""
    x = features if sp.issparse(features) else np.asarray(features, dtype=float)
    values = x.data if sp.issparse(x) else x
    if x.ndim != 2 or x.shape[0] != n or not np.isfinite(values).all():
        msg = (
            f"features must be a candidates x d array of finite values, one row per candidate "
            f"({n} rows). Got shape {tuple(x.shape)} instead."
        )
        raise ValueError(msg)
    return x


def _array_hash(x: np.ndarray | sp.spmatrix) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    if sp.issparse(x):
        m = sp.csr_matrix(x)
        for part in (m.indptr, m.indices, m.data):
            h.update(np.ascontiguousarray(part, dtype="<f8").tobytes())
    else:
        h.update(np.ascontiguousarray(x, dtype="<f8").tobytes())
    return h.hexdigest()


def _candidate_hash(cands: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(cands).encode()).hexdigest()


# ----------------------------------------------------------------------------- the loop
def run_loop(
    ledger: Ledger | str | Path,
    project: str,
    *,
    lab: SimulatorLab | ResultsFileLab | ReplayLab | ScreenScoresLab | VirtualLab | Lab,
    candidates: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    model: str | None = "linear",
    model_params: Mapping[str, Any] | None = None,
    strategy: str = "random",
    strategy_params: Mapping[str, Any] | None = None,
    batch_size: int = 48,
    n_rounds: int | None = None,
    seed: int = 0,
    prior: Sequence[float] | None = None,
    features: np.ndarray | sp.spmatrix | None = None,
    effect: Callable[[AnnData | pd.Series, list[str]], Sequence[float] | np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    on_round: Callable[[RoundOutcome], None] | None = None,
    resume: bool = False,
    store_predicted_deltas: bool = True,
) -> LoopReport:
    """Run (or resume) a lab-in-the-loop campaign recorded in ``ledger``.

    Parameters
    ----------
    ledger
        A :class:`Ledger` or its URL.
    project
        Project name in the ledger; its settings are recorded at the start and
        must match when resuming.
    lab
        :class:`SimulatorLab` (answers at once; a :class:`~aivc.sim.VirtualLab` is
        wrapped by :meth:`SimulatorLab.from_virtual_lab`), :class:`ResultsFileLab`
        (the loop proposes and stops until results are supplied), or a replay of
        a finished screen: :class:`~aivc.experiments.ReplayLab` (its cells) or
        :class:`~aivc.experiments.ScreenScoresLab` (its gene-level scores; needs
        ``model=None``).
    candidates
        Perturbations to choose from (default: every gene of a
        :class:`SimulatorLab`, every perturbation of a replayed screen). Each is
        proposed at most once.
    genes
        Measured genes the model predicts (default: the genes the lab
        measures, or the candidates for a results file).
    model
        Registered perturbation instrument (``"linear"``, ``"additive"``, ...),
        or ``None`` to refit no model: a campaign that only seeks hits (e.g. on
        a screen's gene-level scores, which hold no cells to fit a model on);
        no model versions or predictions are recorded then.
    model_params
        Its constructor parameters.
    strategy
        Acquisition strategy (``"random"``, ``"uncertainty"``, ``"gp-ucb"``, ...).
        Strategies that learn from feedback see the model's predicted change of
        every candidate as features (unless ``features`` are given) and the
        measured effects (see ``effect``) as values.
    strategy_params
        Options of the strategy (e.g. ``beta``).
    batch_size
        Candidates per round.
    n_rounds
        Rounds in the campaign: default 5 for a new project and, when resuming,
        the project's own number. Resuming with more rounds than recorded
        extends the project (a finished one goes on from its next round);
        fewer than it has run are refused.
    seed
        Seed of the proposals; the same seed and ledger give the same proposals.
    prior
        Per-candidate prior scores for strategies that use one.
    features
        Candidates x d array (dense or scipy sparse; row ``i`` describes
        ``candidates[i]``) that strategies learning from feedback see instead of
        the model's predicted changes: e.g. a gene embedding from a knowledge
        graph or from control cells, which is informative before anything is
        measured and does not depend on the model. Needed by such strategies
        when ``model=None``. Its hash is recorded with the project's settings.
    effect
        ``effect(measurement, proposed)`` turns what the lab returned for a round
        (its cells, an AnnData read with the lab's schema, or its readouts per
        candidate, a :class:`pandas.Series`) into one finite value per proposed
        candidate, in order, larger meaning more wanted. The values are recorded
        as the results' ``value`` and fed back to the strategy. Default: the
        root-mean-square change of mean log-expression over ``genes`` against
        the round's controls for cells, the absolute readout for readouts. Set
        it to seek what you are after, e.g. a noise-aware effect (changes in
        units of their standard errors) or one direction of a readout only.
    rng
        One generator drawn from by every proposal, in round order, instead of a
        fresh generator per round seeded by ``(seed, round)``: lets a campaign
        share a seeded stream with code of your own, e.g. to reproduce a
        campaign that was run with a single generator. Proposals then depend on
        the generator's state, so a loop resumed in a new process continues
        from whatever state the generator passed then has; keep the default
        where a resumed loop must propose what an uninterrupted one did.
    on_round
        Called with a :class:`RoundOutcome` after each round this call commits
        (the round is already in the ledger): e.g. to score a model of your own
        on what was measured so far, to report progress, or to stop the
        campaign by raising (a later ``resume=True`` goes on from the next
        round).
    resume
        Continue a project that exists in the ledger. Without it, an existing
        project is refused so a typo cannot silently extend another campaign.
    store_predicted_deltas
        Store each candidate's predicted change (float32) with its prediction.

    Returns
    -------
    :class:`LoopReport`.
    """
    from aivc.experiments._acquisition import STRATEGIES

    own = not isinstance(ledger, Ledger)
    led = Ledger(ledger) if own else ledger
    try:
        if strategy not in STRATEGIES:
            msg = f"Unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)}."
            raise ValueError(msg)
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            msg = f"batch_size must be a positive integer. Got {batch_size!r} instead."
            raise ValueError(msg)
        exists = any(p["name"] == project for p in led.list_projects())
        if exists and not resume:
            msg = f"Project {project!r} already exists in the ledger; pass resume=True (--resume) to continue it."
            raise ValueError(msg)
        recorded = led.project_config(project) if exists else {}
        if n_rounds is None:
            n_rounds = int(recorded.get("n_rounds", DEFAULT_ROUNDS))
        if isinstance(n_rounds, bool) or int(n_rounds) < 1:
            msg = f"n_rounds must be a positive integer. Got {n_rounds!r} instead."
            raise ValueError(msg)
        from aivc.sim import VirtualLab

        if isinstance(lab, VirtualLab):
            lab = SimulatorLab.from_virtual_lab(lab)
        allowed, lab_genes, known_as = _lab_catalogue(lab)
        if candidates is None:
            if allowed is None:
                msg = "A results-file lab needs the candidate list (candidates=[...])."
                raise ValueError(msg)
            candidates = allowed
        cands = _check_candidates(candidates, allowed, "lab", known_as=known_as)
        if genes is not None:
            gene_panel = [str(g) for g in genes]
        else:
            gene_panel = list(lab_genes) if lab_genes is not None else cands
        if model is None:
            if model_params:
                msg = f"model_params {dict(model_params)} were given without a model; pass model= or drop them."
                raise ValueError(msg)
            if features is None and STRATEGIES[strategy].uses_feedback:
                msg = (
                    f"Strategy {strategy!r} learns from features, which default to the model's "
                    "predictions; without a model (model=None) pass features= (candidates x d)."
                )
                raise ValueError(msg)
        else:
            if isinstance(lab, ScreenScoresLab):
                msg = (
                    "A ScreenScoresLab returns gene-level scores, not cells, so no perturbation "
                    f"model can be fitted; run the loop with model=None instead of {model!r}."
                )
                raise ValueError(msg)
            from aivc.instruments import get_instrument_class

            model_cls = get_instrument_class(model)
            model_cls(**dict(model_params or {}))  # check the parameters before anything is written
        feats = None if features is None else _check_features(features, len(cands))
        config = {
            "lab": lab.describe(),
            "model": model,
            "model_params": dict(model_params or {}),
            "strategy": strategy,
            "strategy_params": dict(strategy_params or {}),
            "batch_size": int(batch_size),
            "n_rounds": int(n_rounds),
            "seed": int(seed),
            "n_candidates": len(cands),
            "candidates_sha256": _candidate_hash(cands),
            "genes_sha256": _candidate_hash(gene_panel),
        }
        # settings that only exist when used, so projects that do not use them keep their settings
        if feats is not None:
            config["features_sha256"] = _array_hash(feats)
        if effect is not None:
            config["effect"] = getattr(effect, "__qualname__", type(effect).__qualname__)
        if rng is not None:
            config["rng"] = "given"
        if exists and recorded.get("n_rounds") != config["n_rounds"]:
            # every other setting must match the recorded ones; the number of rounds may grow
            led.create_project(project, config={**config, "n_rounds": recorded.get("n_rounds")})
            led.set_rounds(project, int(n_rounds))
            logger.info(
                "Project %r: %s rounds recorded, now %d.",
                project,
                recorded.get("n_rounds"),
                int(n_rounds),
            )
        else:
            led.create_project(project, config=config)
        runner = _Runner(
            led,
            project,
            lab=lab,
            candidates=cands,
            genes=gene_panel,
            model=model,
            model_params=dict(model_params or {}),
            strategy=strategy,
            strategy_params=dict(strategy_params or {}),
            batch_size=int(batch_size),
            n_rounds=int(n_rounds),
            seed=int(seed),
            prior=None if prior is None else np.asarray(prior, dtype=float),
            features=feats,
            effect=effect,
            rng=rng,
            on_round=on_round,
            store_predicted_deltas=store_predicted_deltas,
        )
        return runner.run()
    finally:
        if own:
            led.close()


class _Runner:
    def __init__(self, ledger: Ledger, project: str, **kw: Any) -> None:
        self.ledger = ledger
        self.project = project
        for k, v in kw.items():
            setattr(self, k, v)
        self._index = {c: i for i, c in enumerate(self.candidates)}
        schema = self.lab.schema()
        self.control_label = None if schema is None else schema.control_label

    # -- state from the ledger ---------------------------------------------------
    def _measured(self) -> tuple[np.ndarray, np.ndarray]:
        res = self.ledger.results(self.project)
        res = res[~res["is_control"]]
        idx = np.asarray([self._index[c] for c in res["candidate"]], dtype=int)
        return idx, res["value"].to_numpy(dtype=float)

    def _features(self, round_number: int) -> np.ndarray | sp.spmatrix:
        if self.features is not None:
            return self.features
        if round_number <= 1 or self.model is None:
            return np.zeros((len(self.candidates), 1))
        pred = self.ledger.predictions(self.project, round=round_number - 1, payload=True)
        if pred.empty or pred["payload"].isna().any():
            return np.zeros((len(self.candidates), 1))
        by = dict(zip(pred["candidate"], pred["payload"], strict=True))
        return np.stack([np.asarray(by[c], dtype=np.float64) for c in self.candidates])

    def _propose(self, round_number: int) -> list[str]:
        from aivc.experiments._acquisition import propose

        idx, y = self._measured()
        if len(idx) >= len(self.candidates):
            return []  # every candidate is measured
        rng = self.rng if self.rng is not None else np.random.default_rng([self.seed, round_number])
        strategy = self.strategy
        if round_number == 1 and not STRATEGY_WORKS_COLD.get(strategy, False):
            strategy = "random"  # nothing is measured yet: the first batch is a random draw
        chosen = propose(
            strategy,
            features=self._features(round_number),
            measured_idx=idx,
            measured_y=y,
            batch_size=min(self.batch_size, len(self.candidates) - len(idx)),
            rng=rng,
            prior=self.prior,
            **(self.strategy_params if strategy == self.strategy else {}),
        )
        return [self.candidates[int(i)] for i in chosen]

    # -- one round ------------------------------------------------------------------
    def _effects(
        self, measurement: AnnData | pd.Series, proposals: Sequence[str]
    ) -> np.ndarray | None:
        """The ``effect`` callable's values for ``proposals`` (``None`` without one)."""
        if self.effect is None:
            return None
        values = np.asarray(self.effect(measurement, list(proposals)), dtype=float).ravel()
        if values.shape != (len(proposals),) or not np.isfinite(values).all():
            msg = (
                f"effect must return one finite value per proposed candidate ({len(proposals)}); "
                f"got {values.size} values{'' if np.isfinite(values).all() else ' with NaN or inf'}."
            )
            raise ValueError(msg)
        return values

    def _readout_results(
        self, round_number: int, proposals: Sequence[str], readouts: pd.Series
    ) -> list[ResultRecord]:
        """Results of a lab of gene-level readouts: the readout as a one-value profile."""
        index = pd.Index([str(c) for c in readouts.index])
        missing = [p for p in proposals if p not in index]
        if missing:
            msg = f"The round-{round_number} readouts lack {len(missing)} of the proposals, e.g. {missing[:5]}."
            raise DataValidationError(msg)
        raw = pd.Series(np.asarray(readouts, dtype=float), index=index).loc[list(proposals)]
        raw_values = raw.to_numpy(dtype=float)
        values = self._effects(readouts, proposals)
        if values is None:
            values = np.abs(raw_values)
        return [
            ResultRecord(p, n_cells=0, value=float(v), profile=np.asarray([r], dtype=np.float32))
            for p, v, r in zip(proposals, values, raw_values, strict=True)
        ]

    def _cell_results(
        self, round_number: int, proposals: Sequence[str], adata: AnnData
    ) -> list[ResultRecord]:
        schema = self.lab.schema()
        prof = _profiles(adata, schema, self.genes)
        if schema.control_label not in prof.index:
            msg = f"The round-{round_number} results hold no control cells (label {schema.control_label!r}); measure controls in every round."
            raise DataValidationError(msg)
        ctrl = prof.loc[schema.control_label, self.genes].to_numpy(dtype=np.float64)
        # the stored float32 profiles are what a resumed loop refits from; use them here too
        results = [
            ResultRecord(
                schema.control_label,
                n_cells=int(prof.loc[schema.control_label, "n_cells"]),
                profile=ctrl.astype(np.float32),
                is_control=True,
            )
        ]
        ctrl32 = ctrl.astype(np.float32).astype(np.float64)
        values = self._effects(adata, proposals)
        for i, p in enumerate(proposals):
            x = prof.loc[p, self.genes].to_numpy(dtype=np.float64).astype(np.float32)
            value = _effect(x.astype(np.float64) - ctrl32) if values is None else values[i]
            results.append(
                ResultRecord(p, n_cells=int(prof.loc[p, "n_cells"]), value=float(value), profile=x)
            )
        return results

    def _update(
        self, round_number: int, proposals: Sequence[str], measurement: AnnData | pd.Series
    ) -> tuple[list[ResultRecord], ModelRecord | None, list[PredictionRecord]]:
        from aivc.instruments import make_instrument

        if isinstance(measurement, pd.Series):
            if self.model is not None:
                msg = (
                    f"The lab returned readouts per candidate, not cells, in round {round_number}; "
                    "a perturbation model cannot be fitted on them. Run the loop with model=None."
                )
                raise DataValidationError(msg)
            return self._readout_results(round_number, proposals, measurement), None, []
        results = self._cell_results(round_number, proposals, measurement)
        if self.model is None:
            return results, None, []
        past = self.ledger.results(self.project, profiles=True)
        past = past[past["round"] < round_number]
        now = pd.DataFrame(
            {
                "round": round_number,
                "candidate": [r.candidate for r in results],
                "is_control": [r.is_control for r in results],
                "value": [r.value for r in results],
                "n_cells": [r.n_cells for r in results],
                "profile": [r.profile for r in results],
            }
        )
        history = pd.concat([past, now], ignore_index=True) if len(past) else now
        train, tschema = _training_data(history, self.genes, self.control_label)
        instrument: PerturbationModel = make_instrument(self.model, **self.model_params)  # type: ignore[assignment]
        instrument.fit(train, tschema, known_genes=self.candidates)
        with tempfile.TemporaryDirectory(prefix="aivc-loop-model-") as tmp:
            content_hash = _hash_dir(instrument.save(Path(tmp) / "model"))
        record = ModelRecord(self.model, instrument.get_params(), content_hash)
        predictions = self._predict(instrument)
        return results, record, predictions

    def _predict(self, instrument: PerturbationModel) -> list[PredictionRecord]:
        delta = instrument.predict_delta(self.candidates)
        score = _effect(delta)
        lower = upper = None
        if "uncertainty" in type(instrument).capabilities:
            _, lo, hi = instrument.predict_interval(self.candidates).arrays()
            lower, upper = _effect_bounds(lo, hi)
        return [
            PredictionRecord(
                c,
                score=float(score[i]),
                lower=None if lower is None else float(lower[i]),
                upper=None if upper is None else float(upper[i]),
                payload=delta[i] if self.store_predicted_deltas else None,
            )
            for i, c in enumerate(self.candidates)
        ]

    def _dataset(self, round_number: int) -> DatasetRecord | None:
        if not isinstance(self.lab, ResultsFileLab) or not self.lab.path.is_file():
            return None
        digest = _hash_file(self.lab.path)
        used = self.ledger.datasets(self.project)
        if digest in set(used["content_hash"]):
            name = used.loc[used["content_hash"] == digest, "name"].iloc[0]
            msg = (
                f"{str(self.lab.path)!r} has the same content as {name!r}, already recorded; write "
                f"the results of round {round_number} to the file and resume."
            )
            raise DataValidationError(msg)
        return DatasetRecord(f"round-{round_number}:{self.lab.path.name}", digest)

    def run(self) -> LoopReport:
        state = self.ledger.state(self.project)
        done = 0
        proposed: list[str] = []
        start = state["round"]
        steps = progress(
            range(self.n_rounds - start + (state["status"] == PROPOSED)),
            desc=f"lab loop {self.project}",
            total=self.n_rounds - start + (state["status"] == PROPOSED),
            unit="round",
        )
        for _ in steps:
            state = self.ledger.state(self.project)
            number, status = state["round"], state["status"]
            if status == PROPOSED:
                proposed = self.ledger.proposals(self.project, round=number)["candidate"].tolist()
                dataset = self._dataset(number)
                measurement = self.lab.measure(proposed, round=number)
                if measurement is None:
                    return self._report(done, proposed)
                self._complete(number, proposed, measurement, recorded=True, dataset=dataset)
                done += 1
                continue
            if number >= self.n_rounds or status == FINISHED:
                break
            number += 1
            proposed = self._propose(number)
            if not proposed:
                break
            logger.info(
                "Round %d: proposing %d candidates (%s).", number, len(proposed), self.strategy
            )
            measurement = None if self.lab.waits else self.lab.measure(proposed, round=number)
            if measurement is None:
                self._commit(number, proposed, PROPOSED, [], None, [], None)
                logger.info(
                    "Round %d proposed; measure the proposals and resume with their results.",
                    number,
                )
                return self._report(done, proposed)
            self._complete(number, proposed, measurement, recorded=False, dataset=None)
            done += 1
        state = self.ledger.state(self.project)
        if state["status"] == COMPLETE and state["round"] >= self.n_rounds:
            self.ledger.set_status(self.project, FINISHED)
        return self._report(done, proposed)

    def _complete(
        self,
        number: int,
        proposed: list[str],
        measurement: AnnData | pd.Series,
        *,
        recorded: bool,
        dataset: DatasetRecord | None,
    ) -> None:
        """Record the measurement of round ``number`` (proposals already ``recorded`` or not) and report it."""
        results, model, preds = self._update(number, proposed, measurement)
        self._commit(
            number, None if recorded else proposed, COMPLETE, results, model, preds, dataset
        )
        if self.on_round is None:
            return
        idx, _ = self._measured()
        self.on_round(
            RoundOutcome(
                project=self.project,
                round=number,
                proposed=list(proposed),
                values=np.asarray([r.value for r in results if not r.is_control], dtype=float),
                measurement=measurement,
                measured=[self.candidates[int(i)] for i in idx],
            )
        )

    def _commit(
        self,
        number: int,
        proposals: Sequence[str] | None,
        status: str,
        results: list[ResultRecord],
        model: ModelRecord | None,
        preds: list[PredictionRecord],
        dataset: DatasetRecord | None,
    ) -> None:
        finished = status == COMPLETE and number >= self.n_rounds
        self.ledger.commit_round(
            RoundRecord(
                project=self.project,
                number=number,
                strategy=self.strategy,
                status=status,
                proposals=proposals,
                results=results,
                dataset=dataset,
                model=model,
                predictions=preds,
                loop_status=FINISHED if finished else None,
            )
        )
        if status == COMPLETE:
            measured = [r for r in results if not r.is_control]
            best = max(measured, key=lambda r: r.value or 0.0, default=None)
            logger.info(
                "Round %d/%d complete: %d measured, strongest %s (effect %.3f).",
                number,
                self.n_rounds,
                len(measured),
                best.candidate if best else "-",
                (best.value or 0.0) if best else 0.0,
            )

    def _report(self, done: int, proposed: list[str]) -> LoopReport:
        state = self.ledger.state(self.project)
        res = self.ledger.results(self.project)
        res = res[~res["is_control"]].sort_values("value", ascending=False).head(10)
        return LoopReport(
            project=self.project,
            rounds_done=done,
            round=state["round"],
            status=state["status"],
            proposed=list(proposed),
            hits=dict(zip(res["candidate"], res["value"].astype(float), strict=True)),
        )


#: Rounds of a new campaign when ``n_rounds`` is not given.
DEFAULT_ROUNDS = 5

#: Strategies that make a sensible first batch without measurements (they use a prior).
STRATEGY_WORKS_COLD = {"degree-prior": True, "aivc-design": True}
