"""The lab in the loop: propose -> measure -> update the model -> repeat, recorded in a ledger.

:func:`run_loop` drives rounds of an active-learning campaign over a list of
candidate perturbations. Each round an acquisition strategy
(:func:`aivc.experiments._acquisition.propose`) picks a batch of unmeasured
candidates, a lab measures them (the :class:`SimulatorLab`, a stand-in
laboratory over the mechanistic virtual cell, or a :class:`ResultsFileLab`,
an h5ad file of a real experiment), the model is refitted on everything
measured so far, and its predictions for every candidate are stored.

Crash safety and determinism come from the ledger: the proposal of round
``r`` is a function of the ledger's contents, the seed and ``r`` only; the
model is refitted from the measured profiles stored in the ledger; and each
round is committed in one transaction. A loop killed at any point therefore
resumes where it stopped (``resume=True``), and its final ledger equals the
one an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

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

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.instruments import PerturbationModel
    from aivc.sim import VirtualCellSimulator, VirtualLab

__all__ = ["LoopReport", "ResultsFileLab", "SimulatorLab", "run_loop"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- labs
class Lab(Protocol):
    """What the loop needs from a lab."""

    #: Whether the lab answers later (the loop stops after proposing).
    waits: bool

    def describe(self) -> dict[str, Any]: ...

    def measure(self, perturbations: Sequence[str], *, round: int) -> AnnData | None: ...

    def schema(self) -> PerturbationSchema: ...


class SimulatorLab:
    """A laboratory over the mechanistic virtual cell that answers at once.

    Each round is one experiment measuring the proposed perturbations and
    control cells in the same batch. The measurement of round ``r`` depends
    only on the seed, ``r`` and the request, so a resumed loop measures
    exactly what an uninterrupted one did.

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
    ) -> SimulatorLab:
        """Run the loop against a :class:`~aivc.sim.VirtualLab` (its hidden cell and seed).

        Each round measures with its own seeded experiment instead of the lab's
        running experiment counter, so a resumed loop measures what an
        uninterrupted one did.
        """
        return cls(
            simulator=lab._simulator(),
            seed=lab.seed,
            cell_type=cell_type,
            n_cells=n_cells,
            n_control_cells=n_control_cells,
        )

    @property
    def genes(self) -> list[str]:
        """Genes that can be perturbed."""
        return list(self._sim.genes)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "simulator",
            "n_genes": len(self._sim.genes),
            "simulator": "built" if self.simulator is None else "given",
            "cell_type": self.cell_type,
            "n_cells": self.n_cells,
            "n_control_cells": self.n_control_cells,
            "seed": self.seed,
        }

    def schema(self) -> PerturbationSchema:
        from aivc.sim import simulation_schema

        return simulation_schema()

    def measure(self, perturbations: Sequence[str], *, round: int) -> AnnData:
        from aivc.sim import CONTROL, VirtualLab

        seed = int(np.random.SeedSequence([self.seed, 7, round]).generate_state(1)[0])
        lab = VirtualLab(simulator=self._sim, seed=seed)
        cell_type = self.cell_type or lab.cell_types[0]
        labels = [CONTROL, *perturbations]
        counts = [self.n_control_cells] + [self.n_cells] * len(perturbations)
        adata = lab.run(labels, n_cells=counts, cell_type=cell_type)
        adata.obs["batch"] = pd.Categorical([f"round{round:04d}"] * adata.n_obs)
        return adata


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
    candidates: Sequence[str], allowed: Sequence[str] | None, what: str
) -> list[str]:
    cands = [str(c) for c in candidates]
    if not cands:
        msg = "The candidate list is empty; pass the genes to choose from."
        raise ValueError(msg)
    dup = sorted({c for c in cands if cands.count(c) > 1})
    if dup:
        msg = f"Candidates {dup[:10]} are listed more than once; list each once."
        raise ValueError(msg)
    if allowed is not None:
        check_known(cands, set(allowed), what="candidate", known_as=f"genes of the {what}")
    return cands


def _candidate_hash(cands: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(cands).encode()).hexdigest()


# ----------------------------------------------------------------------------- the loop
def run_loop(
    ledger: Ledger | str | Path,
    project: str,
    *,
    lab: SimulatorLab | ResultsFileLab | VirtualLab | Lab,
    candidates: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    model: str = "linear",
    model_params: Mapping[str, Any] | None = None,
    strategy: str = "random",
    strategy_params: Mapping[str, Any] | None = None,
    batch_size: int = 48,
    n_rounds: int = 5,
    seed: int = 0,
    prior: Sequence[float] | None = None,
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
        wrapped by :meth:`SimulatorLab.from_virtual_lab`) or :class:`ResultsFileLab`
        (the loop proposes and stops until results are supplied).
    candidates
        Perturbations to choose from (default: every gene of a
        :class:`SimulatorLab`). Each is proposed at most once.
    genes
        Measured genes the model predicts (default: the simulator's genes,
        or the candidates for a results file).
    model
        Registered perturbation instrument (``"linear"``, ``"additive"``, ...).
    model_params
        Its constructor parameters.
    strategy
        Acquisition strategy (``"random"``, ``"uncertainty"``, ``"gp-ucb"``, ...).
        Strategies that learn from feedback see the model's predicted change of
        every candidate as features and the measured effect sizes (RMS change of
        log-expression) as values.
    strategy_params
        Options of the strategy (e.g. ``beta``).
    batch_size
        Candidates per round.
    n_rounds
        Rounds in the campaign.
    seed
        Seed of the proposals; the same seed and ledger give the same proposals.
    prior
        Per-candidate prior scores for strategies that use one.
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
        if int(n_rounds) < 1:
            msg = f"n_rounds must be a positive integer. Got {n_rounds!r} instead."
            raise ValueError(msg)
        from aivc.sim import VirtualLab

        if isinstance(lab, VirtualLab):
            lab = SimulatorLab.from_virtual_lab(lab)
        sim_genes = lab.genes if isinstance(lab, SimulatorLab) else None
        if candidates is None:
            if sim_genes is None:
                msg = "A results-file lab needs the candidate list (candidates=[...])."
                raise ValueError(msg)
            candidates = sim_genes
        cands = _check_candidates(candidates, sim_genes, "simulated cell")
        gene_panel = [str(g) for g in (genes if genes is not None else (sim_genes or cands))]
        from aivc.instruments import get_instrument_class

        model_cls = get_instrument_class(model)
        model_cls(**dict(model_params or {}))  # check the parameters before anything is written
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
        exists = any(p["name"] == project for p in led.list_projects())
        if exists and not resume:
            msg = f"Project {project!r} already exists in the ledger; pass resume=True (--resume) to continue it."
            raise ValueError(msg)
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
        self.control_label = self.lab.schema().control_label

    # -- state from the ledger ---------------------------------------------------
    def _measured(self) -> tuple[np.ndarray, np.ndarray]:
        res = self.ledger.results(self.project)
        res = res[~res["is_control"]]
        idx = np.asarray([self._index[c] for c in res["candidate"]], dtype=int)
        return idx, res["value"].to_numpy(dtype=float)

    def _features(self, round_number: int) -> np.ndarray:
        if round_number <= 1:
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
        rng = np.random.default_rng([self.seed, round_number])
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
    def _update(
        self, round_number: int, proposals: Sequence[str], adata: AnnData
    ) -> tuple[list[ResultRecord], ModelRecord, list[PredictionRecord]]:
        from aivc.instruments import make_instrument

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
        for p in proposals:
            x = prof.loc[p, self.genes].to_numpy(dtype=np.float64).astype(np.float32)
            results.append(
                ResultRecord(
                    p,
                    n_cells=int(prof.loc[p, "n_cells"]),
                    value=float(_effect(x.astype(np.float64) - ctrl32)),
                    profile=x,
                )
            )
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
            _, lo, hi = instrument.predict_interval(self.candidates)
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
                adata = self.lab.measure(proposed, round=number)
                if adata is None:
                    return self._report(done, proposed)
                results, model, preds = self._update(number, proposed, adata)
                self._commit(number, None, COMPLETE, results, model, preds, dataset)
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
            adata = None if self.lab.waits else self.lab.measure(proposed, round=number)
            if adata is None:
                self._commit(number, proposed, PROPOSED, [], None, [], None)
                logger.info(
                    "Round %d proposed; measure the proposals and resume with their results.",
                    number,
                )
                return self._report(done, proposed)
            results, model, preds = self._update(number, proposed, adata)
            self._commit(number, proposed, COMPLETE, results, model, preds, None)
            done += 1
        state = self.ledger.state(self.project)
        if state["status"] == COMPLETE and state["round"] >= self.n_rounds:
            self.ledger.set_status(self.project, FINISHED)
        return self._report(done, proposed)

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
            best = max(
                (r for r in results if not r.is_control), key=lambda r: r.value or 0.0, default=None
            )
            logger.info(
                "Round %d/%d complete: %d measured, strongest %s (effect %.3f).",
                number,
                self.n_rounds,
                len(results) - 1,
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


#: Strategies that make a sensible first batch without measurements (they use a prior).
STRATEGY_WORKS_COLD = {"degree-prior": True, "aivc-design": True}
