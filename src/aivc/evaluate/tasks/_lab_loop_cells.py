"""The ``lab-loop`` benchmark on single-cell perturbation data: the simulator and papalexi2021.

Each campaign alternates design and measurement. A strategy proposes a batch
of single-gene perturbations; the lab measures them (the simulator's
:class:`~aivc.sim.VirtualLab`, or, retrospectively, the cells of an existing
screen); a perturbation model is refitted on everything measured so far and
scored on a fixed held-out set of perturbations that no strategy may choose.
Each simulated round is a batch with its own controls, so the changes the
model fits are against batch-matched controls (see
:class:`aivc.instruments.PerturbationSummary`). On the simulator the scored
model is :func:`batch_aware_ridge` on the strategies' gene features (the
``linear`` instrument's intercept, the mean measured change, carries the
rounds' shared control noise, and its leave-one-condition-out choice of
penalty is flattered by it); on papalexi2021 it is the ``linear``
instrument. Two metrics per round:

* ``hit_ratio`` -- fraction of the pool's hits measured so far (hits = the
  candidates with the largest true effect norm, read from the ground truth
  only for scoring);
* model error -- mean squared error of the predicted mean log-expression
  change of the held-out perturbations; ``error_auc`` is its area under the
  error-vs-number-measured curve divided by the range (lower is better).

On the simulator the campaigns run by default on worlds with functional
modules (complexes, pathways) and gene features from each world's simulated
knowledge base (:data:`KNOWLEDGE_PROTOCOL`; ``variant="knowledge"`` says the
same). ``variant="coexpression"`` runs them on worlds without modules, where
gene features need no knowledge base: a co-expression embedding of the genes
from control cells measured before the first round (principal axes of the
standardised control cells, the global first axis dropped), and as prior the
co-expression degree (loading norm on the leading programmes), the analogue
of network degree. On the simulator ``aivc-design`` uses a mechanistic prior
instead, which also needs no measured perturbation: the knockout of gene
``g`` is predicted to move gene ``j`` by ``-mean(x_g) Cov(x_g, x_j) /
Var(x_g)`` (regression across control cells), and the norm of that vector
ranks the candidates (:func:`knockout_regression_effects`). For reference,
the simulator results also hold ``no_change_error``, the error of predicting
no change for every held-out perturbation, and ``pool_mean_error``, the error
of predicting the true (noise-free) mean change of the whole candidate pool:
the best constant prediction any model fitted on measured pool knockouts
could learn; and ``pool_oracle_error``, the error of ridge regressions from the
strategies' gene features to the true changes of all pool candidates, with the
ridge picked on the held-out set (an optimistic bound on what measuring the
pool could teach a model that uses these features).

The campaigns are run by :func:`aivc.experiments.run_loop`, one ledger project
per strategy and seed. On the simulator the lab is a
:class:`~aivc.experiments.SimulatorLab` continuing the campaign's
:class:`~aivc.sim.VirtualLab` series (the control cells the features come from
are its first experiment, round ``r`` its experiment ``r + 1``); on
papalexi2021 it is a :class:`~aivc.experiments.ReplayLab` of the screen. The
loop's options carry the benchmark's science: ``features`` (the gene
embedding), ``prior``, ``effect`` (the values fed back: the noise-aware
z-score effect of the measured cells on the simulator; on papalexi2021 the
target's effect norm over all its cells, which the replay reveals whole),
``rng`` (one stream per campaign, seeded by ``[seed, 11]``) and ``on_round``,
which scores the benchmark's model on each committed round. The loop also
refits its own ``linear`` model every round, as it does for users; that
model's predictions are recorded in the ledger but not scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc.data import PerturbationSchema, log_normalize, observed_changes
from aivc.evaluate._results import machine_info, summarize
from aivc.experiments._acquisition import STRATEGIES

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.experiments import Ledger, RoundOutcome

__all__ = [
    "CELL_PROTOCOLS",
    "coexpression_features",
    "knockout_prior",
    "knockout_regression_effects",
    "run_cell_loop",
]

logger = logging.getLogger(__name__)

CELL_MODELS = ("random", "uncertainty", "gp-ucb", "degree-prior", "aivc-design")
#: The perturbation model the lab loop refits every round (recorded in the ledger, not scored).
LOOP_MODEL = "linear"
#: Reference errors of the simulator campaigns, read from the noise-free truth (the same for
#: every strategy): no change, the pool's mean change, and the oracle ridge on the gene features.
REFERENCE_ERRORS = ("no_change_error", "pool_mean_error", "pool_oracle_error")

#: Protocol per dataset: pool size, held-out test size, rounds, batch, hit fraction, cells.
CELL_PROTOCOLS: dict[str, dict[str, Any]] = {
    "simulator": {
        "n_genes": 1000,
        "n_pool": 500,
        "n_test": 100,
        "n_rounds": 5,
        "batch_size": 48,
        "hit_fraction": 0.05,
        "cells_per_perturbation": 50,
        "control_cells_per_round": 200,
        "initial_control_cells": 1000,
        "n_components": 16,
    },
    "papalexi2021": {
        "n_test": 5,
        "n_rounds": 3,
        "batch_size": 4,
        "hit_fraction": 0.2,
        "n_components": 8,
    },
}

#: The simulator's default (``knowledge``) campaigns: worlds with functional modules (the
#: presets' share of genes in complexes and pathways) and gene features from their simulated
#: knowledge base of this quality; ``coexpression`` keeps worlds without modules and
#: co-expression features.
KNOWLEDGE_PROTOCOL: dict[str, Any] = {"module_fraction": 0.2, "knowledge": "good"}
#: The simulator's variants, the default first.
SIMULATOR_VARIANTS: tuple[str, ...] = ("knowledge", "coexpression")

AIVC_DESIGN_PARAMS: dict[str, Any] = {"beta": 1.0}
#: aivc-design on the simulator, chosen on worlds 100, 101 and 103 (never on the evaluated
#: seeds) among beta in {0, 1}, prior_share in {0, 0.5, 0.75} and prior-slope shrinkage
#: (prior_corr 0.5 at strength 100) or none. Its prior is the mechanistic knockout prior
#: (:func:`knockout_regression_effects`), which needs no measured perturbation.
SIMULATOR_DESIGN_PARAMS: dict[str, Any] = {
    "beta": 1.0,
    "prior_share": 0.5,
    "prior_corr": 0.5,
    "prior_strength": 100.0,
}


def coexpression_features(
    x_log: np.ndarray, genes: Sequence[str], *, n_components: int = 16, n_prior: int = 5
) -> tuple[pd.DataFrame, pd.Series]:
    """Co-expression embedding and a co-expression "degree" of genes from control cells.

    The first principal axis of the standardised control cells is dropped: in
    single-cell data it mostly carries global variation (library size, overall
    transcriptional capacity) shared by all genes rather than regulation.

    Parameters
    ----------
    x_log
        Control cells x genes, log-normalised (dense).
    genes
        Gene names of the columns.
    n_components
        Dimensions of the embedding (principal axes 2 .. n_components + 1).
    n_prior
        Principal axes (from the second) whose loading norm is the degree.

    Returns
    -------
    embedding
        Genes x ``n_components``: gene loadings (right singular vectors scaled
        by singular value / sqrt(cells)); genes without variance get zeros.
    degree
        Norm of each gene's loadings on axes 2 .. ``n_prior`` + 1: how much
        of its variation it shares with co-varying gene programmes.
    """
    x = np.asarray(x_log, dtype=float)
    sd = x.std(axis=0)
    z = np.where(sd > 0, (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    loadings = (vt.T * sv) / np.sqrt(max(x.shape[0], 1))
    emb = loadings[:, 1 : n_components + 1]
    degree = np.linalg.norm(loadings[:, 1 : n_prior + 1], axis=1)
    index = pd.Index([str(g) for g in genes])
    return pd.DataFrame(emb, index=index), pd.Series(degree, index=index)


def knockout_regression_effects(x_log: np.ndarray) -> np.ndarray:
    """Predicted knockout effects from control cells alone (no perturbation measured).

    Knocking out gene ``g`` removes its expression, a change of about
    ``-mean(x_g)``; the regression of gene ``j`` on gene ``g`` across control
    cells of one cell type turns that into a change of
    ``-mean(x_g) * Cov(x_g, x_j) / Var(x_g)`` for gene ``j``. The target's own
    entry is set to zero.

    Parameters
    ----------
    x_log
        Control cells x genes, log-normalised (dense), one cell type.

    Returns
    -------
    Genes x genes: row ``g`` is the predicted change of every gene after
    knocking out ``g`` (zeros for genes without variance).
    """
    x = np.asarray(x_log, dtype=float)
    mu = x.mean(axis=0)
    xc = x - mu
    var = xc.var(axis=0)
    ok = var > 0
    cov = xc.T @ xc / max(x.shape[0], 1)
    effects = -(mu[:, None] * cov / np.where(ok, var, 1.0)[:, None]) * ok[:, None]
    np.fill_diagonal(effects, 0.0)
    return effects


def knockout_prior(x_log: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Log of the predicted total knockout effect (:func:`knockout_regression_effects`) of ``columns``."""
    effects = knockout_regression_effects(x_log)[np.asarray(columns, dtype=int)]
    return np.log(np.linalg.norm(effects, axis=1) + 1e-12)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): kernels then compare directions."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)


def _log_norm(values: Any) -> np.ndarray:
    """Dense float64 log-normalised expression per 10,000, in this benchmark's arithmetic
    (``scaling="fraction"`` of :func:`aivc.data.log_normalize`)."""
    x, _ = log_normalize(values, dtype=np.float64, dense=True, scaling="fraction")
    return x


def _logged(adata: AnnData, x: np.ndarray | None = None) -> AnnData:
    """The cells of ``adata`` (raw counts) with ``X`` log-normalised by :func:`_log_norm`."""
    import anndata as ad

    return ad.AnnData(X=_log_norm(adata.X) if x is None else x, obs=adata.obs, var=adata.var)


def _rows_of(info: pd.DataFrame, perturbations: Sequence[str]) -> np.ndarray:
    """Row of each perturbation in an :func:`aivc.data.observed_changes` result (one context)."""
    row_of = {str(p): i for i, p in enumerate(info["perturbation"].to_numpy())}
    return np.asarray([row_of[str(p)] for p in perturbations], dtype=int)


def _batch_zscores(
    adata: AnnData, schema: PerturbationSchema, perturbations: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Change of mean log-normalised expression vs the controls of the same batch, and its z-scores."""
    delta, info, se = observed_changes(
        _logged(adata), schema, control="batch", standard_errors=True
    )
    rows = _rows_of(info, perturbations)
    d, s = delta.to_numpy()[rows], se.to_numpy()[rows]
    return d, np.where(s > 0, d / np.where(s > 0, s, 1.0), 0.0)


@dataclass
class _Campaign:
    hit_ratio: list[float]
    error: list[float]
    n_measured: list[int]
    chosen: list[list[str]]
    no_change_error: float = float("nan")
    pool_mean_error: float = float("nan")
    pool_oracle_error: float = float("nan")


def _record_round(
    camp: _Campaign, outcome: RoundOutcome, row: dict[str, int], hits: np.ndarray
) -> None:
    """Hit ratio, number measured and the chosen candidates after a committed round."""
    measured = np.asarray([row[c] for c in outcome.measured], dtype=int)
    camp.hit_ratio.append(float(hits[measured].sum() / hits.sum()))
    camp.n_measured.append(int(measured.size))
    camp.chosen.append(list(outcome.proposed))


def _fit_and_score(
    adata: AnnData,
    schema: Any,
    test: Sequence[str],
    true_delta: np.ndarray,
) -> float:
    """MSE of the ``linear`` instrument's predicted change of the test perturbations (papalexi2021),
    each target's own gene left out."""
    from aivc.data import prepare
    from aivc.instruments import make_instrument

    prepared, pschema = prepare(adata, schema, validate_input=False)
    model = make_instrument("linear")
    contexts = None
    if pschema.context_key is not None:
        contexts = [str(prepared.obs[pschema.context_key].iloc[0])] * len(test)
    model.fit(prepared, pschema, known_genes=list(test))
    pred = np.asarray(model.predict_delta(list(test), contexts=contexts), dtype=float)
    names = list(prepared.var_names.astype(str))
    keep = np.ones_like(pred, dtype=bool)
    for i, t in enumerate(test):
        if t in names:
            keep[i, names.index(t)] = False
    return float(np.mean(((pred - true_delta) ** 2)[keep]))


#: The simulator campaigns' scored model: ridge penalties tried (``inf``: no slope) and the
#: share of the measured mean change kept as the intercept (0: no change, 1: the mean change),
#: so the model holds both baselines and picks among them on the measured rounds only.
#: Chosen on worlds 100 and 101 (never on the evaluated seeds), see docs/benchmarks/defaults.md.
RIDGE_GRID: tuple[float, ...] = (0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 1e3, np.inf)
INTERCEPT_SHARES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)


def denoised_changes(delta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each measured change shrunk toward no change by its own signal-to-noise.

    The James–Stein factor ``max(0, 1 - 1 / mean(z²))`` over the genes: a knockout whose
    z-scores are no larger than noise (mean square 1) becomes no change, a strong one
    keeps nearly all of its measured change.
    """
    ms = np.mean(np.asarray(z, dtype=float) ** 2, axis=1)
    factor = np.maximum(0.0, 1.0 - 1.0 / np.maximum(ms, 1e-12))
    return np.asarray(delta, dtype=float) * factor[:, None]


def _ridge_slope(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, lam: float) -> np.ndarray:
    """The centred ridge's part of the predicted changes of ``x_new`` (zero for ``lam = inf``);
    the prediction adds a share of the mean change ``y.mean(axis=0)``."""
    if np.isinf(lam):
        return np.zeros((len(x_new), y.shape[1]))
    xm = x.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - y.mean(axis=0)))
    return (x_new - xm) @ w


def batch_aware_ridge(
    x: np.ndarray, y: np.ndarray, batches: np.ndarray, x_new: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """Predicted changes of ``x_new`` from a ridge whose settings are cross-validated by batch.

    Every condition of a batch is compared with that batch's controls, so they share the
    controls' noise: holding out one condition at a time would let the rest of its batch
    fit that noise and flatter the mean change. The penalty and the intercept share
    (:data:`RIDGE_GRID`, :data:`INTERCEPT_SHARES`) are chosen holding out one batch at a
    time; with a single batch, five folds of conditions choose the penalty and the
    intercept is left out (its noise cannot be told from signal within one batch).
    """
    batches = np.asarray(batches).astype(str)
    if np.unique(batches).size >= 2:
        groups, shares = batches, INTERCEPT_SHARES
    else:
        groups, shares = np.arange(len(y)) % 5, (0.0,)
    errors = np.zeros((len(RIDGE_GRID), len(shares)))
    for g in np.unique(groups):
        held = groups == g
        mean = y[~held].mean(axis=0)
        for i, lam in enumerate(RIDGE_GRID):
            slope = _ridge_slope(x[~held], y[~held], x[held], lam)
            for j, share in enumerate(shares):
                errors[i, j] += float(np.sum((slope + share * mean - y[held]) ** 2))
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    lam, share = RIDGE_GRID[i], shares[j]
    pred = _ridge_slope(x, y, x_new, lam) + share * y.mean(axis=0)
    return pred, {"ridge": lam, "intercept_share": share}


def _score_batch_aware(
    adata: AnnData,
    schema: PerturbationSchema,
    measured: Sequence[str],
    features: np.ndarray,
    test_features: np.ndarray,
    true_test: np.ndarray,
    keep: np.ndarray,
    col: dict[str, int],
) -> float:
    """MSE on the test perturbations of :func:`batch_aware_ridge` fitted on the measured changes.

    The training changes are against each round's own controls, each target's own gene
    set to zero and each change denoised (:func:`denoised_changes`).
    """
    delta, z = _batch_zscores(adata, schema, measured)
    rows = np.arange(len(measured))
    own = np.asarray([col[g] for g in measured], dtype=int)
    delta[rows, own] = 0.0
    z[rows, own] = 0.0
    batch_of = (
        adata.obs[[schema.perturbation_key, schema.batch_key]]
        .astype(str)
        .drop_duplicates(schema.perturbation_key)
        .set_index(schema.perturbation_key)[schema.batch_key]
    )
    pred, _ = batch_aware_ridge(
        features, denoised_changes(delta, z), batch_of.loc[list(measured)].to_numpy(), test_features
    )
    return float(np.mean(((pred - true_test) ** 2)[keep]))


def _oracle_error(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    keep: np.ndarray,
) -> float:
    """Error on the test perturbations of ridge regressions from gene features to true changes.

    The regressions are fitted on the noise-free changes of every pool candidate
    and the best ridge is picked on the test perturbations themselves: an
    optimistic bound on what any model using these features could learn from
    measuring the pool, whichever candidates a strategy chooses.
    """
    xp = np.column_stack([x_pool, np.ones(len(x_pool))])
    xt = np.column_stack([x_test, np.ones(len(x_test))])
    gram, cross = xp.T @ xp, xp.T @ y_pool
    errors = [float(np.mean((y_test**2)[keep]))]  # the infinite ridge: no change
    for lam in (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e4):
        w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross)
        errors.append(float(np.mean(((xt @ w - y_test) ** 2)[keep])))
    return min(errors)


def _error_auc(n: Sequence[int], err: Sequence[float]) -> float:
    n_arr, e = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    if n_arr.size < 2:
        return float(e.mean())
    return float(np.trapezoid(e, n_arr) / (n_arr[-1] - n_arr[0]))


def knowledge_features(folder: Path, genes: Sequence[str]) -> tuple[pd.DataFrame, pd.Series]:
    """The fused knowledge embedding of ``genes`` (zeros where a gene has no record) and
    each gene's number of records (annotations and interactions): how well studied it is."""
    from aivc.genes import fused_embedding

    emb = fused_embedding(data_dir=folder)[0].reindex([str(g) for g in genes]).fillna(0.0)
    tables = folder / "genes"
    counts = pd.concat(
        [
            pd.read_csv(tables / "human_go_annotations.tsv.gz", sep="\t", usecols=["symbol"])[
                "symbol"
            ],
            *(
                pd.read_csv(tables / name, sep="\t", usecols=["symbol_a", "symbol_b"]).stack()
                for name in (
                    "string_v12_human_notextmining_700_top3.tsv.gz",
                    "huri_ppi_luck2020.tsv.gz",
                )
            ),
        ]
    ).value_counts()
    degree = counts.reindex(emb.index).fillna(0.0).astype(float)
    return emb, degree


def _simulator_campaign(
    strategy: str,
    seed: int,
    proto: dict[str, Any],
    ledger: Ledger,
    project: str,
    knowledge_dir: Path | None = None,
) -> tuple[_Campaign, dict[str, Any]]:
    import anndata as ad

    from aivc.experiments import SimulatorLab, run_loop
    from aivc.sim import (
        CONTROL,
        VirtualCellSimulator,
        VirtualLab,
        simulated_knowledge,
        simulation_schema,
        write_knowledge,
    )

    schema = simulation_schema()
    sim = VirtualCellSimulator(
        n_genes=proto["n_genes"],
        n_cell_types=1,
        seed=seed,
        module_fraction=proto.get("module_fraction", 0.0),
    )
    lab = VirtualLab(simulator=sim, seed=seed)
    cell_type = lab.cell_types[0]
    genes = np.asarray(lab.genes)
    world = np.random.default_rng([seed, 7])
    picked = world.choice(genes.size, proto["n_pool"] + proto["n_test"], replace=False)
    pool, test = genes[picked[: proto["n_pool"]]], genes[picked[proto["n_pool"] :]]

    # ground truth, used only for scoring
    truth = sim.true_means([CONTROL, *pool, *test], cell_type=cell_type)
    logm = _log_norm(truth.to_numpy(dtype=float))
    delta = logm[1:] - logm[0]
    col = {g: i for i, g in enumerate(genes)}
    downstream = delta.copy()
    for i, g in enumerate([*pool, *test]):
        downstream[i, col[g]] = 0.0
    effect = np.linalg.norm(downstream[: pool.size], axis=1)
    n_hits = int(np.ceil(proto["hit_fraction"] * pool.size))
    hits = np.zeros(pool.size, dtype=bool)
    hits[np.argsort(-effect, kind="stable")[:n_hits]] = True
    true_test = delta[pool.size :]

    controls = lab.run([CONTROL], n_cells=proto["initial_control_cells"], cell_type=cell_type)
    # the world's knowledge base, written once per world and shared by the strategies
    folder = None if knowledge_dir is None else knowledge_dir / f"world-{seed}"
    if folder is None:
        emb, degree = coexpression_features(
            _log_norm(controls.X), genes, n_components=proto["n_components"]
        )
    else:
        if not folder.exists():  # the lab has built the simulator by now
            tables = simulated_knowledge(sim.network_, sim.modules_, proto["knowledge"], seed=seed)
            write_knowledge(folder, tables)
        emb, degree = knowledge_features(folder, genes)
        degree = np.log1p(degree)
    features = _unit_rows(emb.loc[pool].to_numpy())
    test_features = _unit_rows(emb.loc[test].to_numpy())
    if strategy == "aivc-design":
        # mechanistic prior from control cells: no perturbation needs to be measured
        prior = knockout_prior(_log_norm(controls.X), np.array([col[g] for g in pool]))
    else:
        prior = degree.loc[pool].to_numpy()
    prior = (prior - prior.mean()) / (prior.std() or 1.0)

    camp = _Campaign([], [], [], [])
    # reference: the error of predicting no change for every held-out perturbation
    test_keep = np.ones_like(true_test, dtype=bool)
    test_keep[np.arange(test.size), [col[g] for g in test]] = False
    camp.no_change_error = float(np.mean((true_test**2)[test_keep]))
    # reference: the noise-free mean change of the whole pool, the best constant any model
    # fitted on measured pool knockouts could learn
    pool_mean = downstream[: pool.size].mean(axis=0)
    camp.pool_mean_error = float(np.mean(((true_test - pool_mean) ** 2)[test_keep]))
    camp.pool_oracle_error = _oracle_error(
        features, downstream[: pool.size], test_features, true_test, test_keep
    )
    params = dict(SIMULATOR_DESIGN_PARAMS) if strategy == "aivc-design" else {}
    candidates = [str(g) for g in pool]
    row = {g: i for i, g in enumerate(candidates)}
    parts: list[AnnData] = [controls]

    def noise_aware_effect(cells: AnnData, perturbations: list[str]) -> np.ndarray:
        _, zs = _batch_zscores(cells, schema, perturbations)
        for j, g in enumerate(perturbations):
            zs[j, col[g]] = 0.0
        # excess of squared z-scores over their null expectation: a noise-aware effect size
        return np.log1p(np.maximum(np.mean(zs**2, axis=1) - 1.0, 0.0))

    def score(outcome: RoundOutcome) -> None:
        data = outcome.measurement
        parts.append(data)
        merged = ad.concat(parts, join="inner", merge="same")
        merged.uns["aivc"] = data.uns["aivc"]
        chosen = [str(g) for g in outcome.measured]
        camp.error.append(
            _score_batch_aware(
                merged,
                schema,
                chosen,
                features[[row[g] for g in chosen]],
                test_features,
                true_test,
                test_keep,
                col,
            )
        )
        _record_round(camp, outcome, row, hits)

    run_loop(
        ledger,
        project,
        lab=SimulatorLab.from_virtual_lab(
            lab,
            cell_type=cell_type,
            n_cells=proto["cells_per_perturbation"],
            n_control_cells=proto["control_cells_per_round"],
            continue_series=True,
        ),
        candidates=candidates,
        model=LOOP_MODEL,
        strategy=strategy,
        strategy_params=params,
        batch_size=proto["batch_size"],
        n_rounds=proto["n_rounds"],
        seed=seed,
        prior=prior if STRATEGIES[strategy].needs_prior or strategy == "aivc-design" else None,
        features=features,
        effect=noise_aware_effect,
        rng=np.random.default_rng([seed, 11]),
        on_round=score,
        store_predicted_deltas=False,
    )
    info = {
        "n_pool": int(pool.size),
        "n_test": int(test.size),
        "n_hits": n_hits,
        "n_genes": int(genes.size),
    }
    return camp, info


def _papalexi_campaign(
    strategy: str,
    seed: int,
    proto: dict[str, Any],
    cache: dict[str, Any],
    ledger: Ledger,
    project: str,
) -> tuple[_Campaign, dict[str, Any]]:
    from aivc.data import load
    from aivc.data._registry import schema_of
    from aivc.experiments import ReplayLab, run_loop

    if "adata" not in cache:
        adata = load("papalexi2021")
        schema = schema_of(adata)
        labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
        x = _log_norm(adata.X)
        ctrl = labels == schema.control_label
        targets = sorted(set(labels) - {schema.control_label})
        # each target against the pooled controls (the screen's batches are replicates)
        changes, info = observed_changes(_logged(adata, x), schema, control="context")
        delta = changes.to_numpy()[_rows_of(info, targets)]
        # the target's own expression is left out of the effect norm
        names = list(adata.var_names.astype(str))
        downstream = delta.copy()
        for i, t in enumerate(targets):
            if t in names:
                downstream[i, names.index(t)] = 0.0
        emb, degree = coexpression_features(x[ctrl], names, n_components=proto["n_components"])
        cache.update(
            adata=adata,
            schema=schema,
            labels=labels,
            targets=np.asarray(targets),
            delta=delta,
            effect=np.linalg.norm(downstream, axis=1),
            emb=emb,
            degree=degree,
        )
    c = cache
    targets, effect = c["targets"], c["effect"]
    world = np.random.default_rng([seed, 7])
    order = world.permutation(targets.size)
    test_idx, pool_idx = order[: proto["n_test"]], order[proto["n_test"] :]
    pool = targets[pool_idx]
    n_hits = int(np.ceil(proto["hit_fraction"] * pool.size))
    hits = np.zeros(pool.size, dtype=bool)
    hits[np.argsort(-effect[pool_idx], kind="stable")[:n_hits]] = True
    # target features: its co-expression embedding when measured, else the STRING embedding's fallback zeros
    emb = c["emb"].reindex(pool).fillna(0.0).to_numpy()
    deg = c["degree"].reindex(pool).fillna(0.0).to_numpy()
    try:
        from aivc.genes import network_embedding

        net = network_embedding("string", n_components=16).reindex(pool).fillna(0.0).to_numpy()
        string_deg = np.linalg.norm(net, axis=1)
        features = np.hstack([emb, net])
    except FileNotFoundError:
        string_deg = np.zeros(pool.size)
        features = emb
    features = _unit_rows(features)
    prior = np.log1p(deg) + string_deg
    prior = (prior - prior.mean()) / (prior.std() or 1.0)
    camp = _Campaign([], [], [], [])
    params = dict(AIVC_DESIGN_PARAMS) if strategy == "aivc-design" else {}
    labels = c["labels"]
    control = c["schema"].control_label
    candidates = [str(g) for g in pool]
    row = {g: i for i, g in enumerate(candidates)}
    effect_of = dict(zip(candidates, effect[pool_idx], strict=True))

    def target_effect(cells: AnnData, perturbations: list[str]) -> list[float]:
        # the effect norm of each target over all its cells in the screen, which the replay reveals whole
        return [effect_of[p] for p in perturbations]

    def score(outcome: RoundOutcome) -> None:
        keep = np.isin(labels, [control, *outcome.measured])
        sub = c["adata"][keep].copy()
        camp.error.append(
            _fit_and_score(sub, c["schema"], list(targets[test_idx]), c["delta"][test_idx])
        )
        _record_round(camp, outcome, row, hits)

    run_loop(
        ledger,
        project,
        lab=ReplayLab(c["adata"], schema=c["schema"], name="papalexi2021"),
        candidates=candidates,
        model=LOOP_MODEL,
        strategy=strategy,
        strategy_params=params,
        batch_size=proto["batch_size"],
        n_rounds=proto["n_rounds"],
        seed=seed,
        prior=prior if STRATEGIES[strategy].needs_prior or strategy == "aivc-design" else None,
        features=features,
        effect=target_effect,
        rng=np.random.default_rng([seed, 11]),
        on_round=score,
        store_predicted_deltas=False,
    )
    info = {"n_pool": int(pool.size), "n_test": int(test_idx.size), "n_hits": n_hits}
    return camp, info


def _n_to_reach(n: Sequence[int], err: Sequence[float], target: float) -> float | None:
    """Smallest number measured at which the (linearly interpolated) error reaches ``target``."""
    n_arr, e = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    if e[0] <= target:
        return float(n_arr[0])
    for i in range(1, e.size):
        if e[i] <= target:
            frac = (e[i - 1] - target) / (e[i - 1] - e[i])
            return float(n_arr[i - 1] + frac * (n_arr[i] - n_arr[i - 1]))
    return None


def compare_to_random(results: dict[str, Any]) -> None:
    """Add, per strategy, the number measured at which it reaches random's final error (relative
    to no change where that is known) and its hits vs random."""
    if "random" not in results:
        return
    base = results["random"]
    # worlds weigh alike where each has its own scale (the simulator's relative errors)
    key = "error_rel" if "error_rel" in base else "error"
    target = base[key][-1]["mean"]
    # where random's final model is no better than predicting no change (relative error 1),
    # reaching it is not learning: the count is left empty
    learned = key != "error_rel" or target < 1.0
    for r in results.values():
        mean_err = [e["mean"] for e in r[key]]
        r["n_to_reach_random_final_error"] = (
            _n_to_reach(r["n_measured"], mean_err, target) if learned else None
        )
        r["hits_vs_random"] = (
            r["hit_ratio_final"]["mean"] / base["hit_ratio_final"]["mean"]
            if base["hit_ratio_final"]["mean"] > 0
            else None
        )


def run_cell_loop(
    dataset: str,
    *,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    ledger: Ledger | str | Path | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Design campaigns on the simulator or papalexi2021 for every strategy and seed.

    Each campaign is a project ``"<dataset>:<strategy>:seed<seed>"`` in ``ledger``
    (see :func:`aivc.evaluate.tasks.lab_loop.campaign_ledger`; the projects must
    not exist yet). On the simulator the campaigns run on worlds with functional
    modules, with gene features and degree from each world's simulated knowledge
    base (:data:`KNOWLEDGE_PROTOCOL`; ``variant=None`` or ``"knowledge"``), or with
    ``variant="coexpression"`` on worlds without modules and co-expression features.
    """
    import tempfile

    from aivc.evaluate._memory import ResourceMeter
    from aivc.evaluate.tasks.lab_loop import campaign_ledger

    if dataset not in CELL_PROTOCOLS:
        msg = f"cell lab-loop datasets are {sorted(CELL_PROTOCOLS)}; received {dataset!r}."
        raise ValueError(msg)
    allowed = SIMULATOR_VARIANTS if dataset == "simulator" else ()
    if variant is not None and variant not in allowed:
        msg = f"lab-loop on {dataset!r} has variants {list(allowed)}; received {variant!r}."
        raise ValueError(msg)
    if dataset == "simulator":
        variant = variant or "knowledge"
    models = list(CELL_MODELS if models is None else models)
    unknown = [m for m in models if m not in STRATEGIES]
    if unknown:
        msg = f"unknown strategies {unknown}; expected names from {sorted(STRATEGIES)}."
        raise ValueError(msg)
    proto = CELL_PROTOCOLS[dataset]
    if variant == "knowledge":
        proto = {**proto, **KNOWLEDGE_PROTOCOL}
    cache: dict[str, Any] = {}
    results: dict[str, Any] = {}
    wall, peak = {}, {}
    info: dict[str, Any] = {}
    with (
        campaign_ledger(ledger) as led,
        tempfile.TemporaryDirectory(prefix="aivc-lab-loop-knowledge-") as tmp,
    ):
        knowledge_dir = Path(tmp) if variant == "knowledge" else None
        for name in models:
            camps = []
            with ResourceMeter() as meter:
                for seed in seeds:
                    project = f"{dataset}:{name}:seed{int(seed)}"
                    if dataset == "simulator":
                        camp, info = _simulator_campaign(
                            name, int(seed), proto, led, project, knowledge_dir
                        )
                    else:
                        camp, info = _papalexi_campaign(name, int(seed), proto, cache, led, project)
                    camps.append(camp)
            wall[name], peak[name] = meter.wall_seconds, meter.peak_increase_mb
            hr = np.array([c.hit_ratio for c in camps])
            err = np.array([c.error for c in camps])
            n_meas = camps[0].n_measured
            relative = {}
            if dataset == "simulator":  # each world's error over its own no-change error
                rel = err / np.array([[c.no_change_error] for c in camps])
                relative = {
                    "error_rel": [summarize(rel[:, t]) for t in range(rel.shape[1])],
                    "final_error_rel": summarize(rel[:, -1]),
                    "pool_oracle_error_rel": summarize(
                        [c.pool_oracle_error / c.no_change_error for c in camps]
                    ),
                    "per_seed_no_change_error": [c.no_change_error for c in camps],
                }
            results[name] = {
                "hit_ratio": [summarize(hr[:, t]) for t in range(hr.shape[1])],
                "hit_ratio_final": summarize(hr[:, -1]),
                "error": [summarize(err[:, t]) for t in range(err.shape[1])],
                "final_error": summarize(err[:, -1]),
                "error_auc": summarize([_error_auc(n_meas, e) for e in err]),
                "n_measured": n_meas,
                "per_seed_hit_ratio": hr.tolist(),
                "per_seed_error": err.tolist(),
                **{
                    key: summarize([getattr(c, key) for c in camps])
                    if dataset == "simulator"
                    else None
                    for key in REFERENCE_ERRORS
                },
                "chosen": [c.chosen for c in camps],
                **relative,
            }
            logger.info(
                "%s: hit_ratio_final %.3f, error_auc %.4f",
                name,
                results[name]["hit_ratio_final"]["mean"],
                results[name]["error_auc"]["mean"],
            )
    compare_to_random(results)
    description = {
        "simulator": "mechanistic simulator without functional modules (aivc.sim.VirtualLab, hidden "
        "ground truth): knockouts of single genes",
        "papalexi2021": "Papalexi 2021 THP-1 ECCITE-seq CRISPR screen, revealed retrospectively one target at a time",
    }[dataset]
    features = {
        "all": "unit-length co-expression embedding of the target gene from control cells"
        + (" plus 16-d STRING embedding" if dataset == "papalexi2021" else ""),
        "degree-prior": "co-expression degree (loading norm on control-cell principal axes 2-6)"
        + (" + STRING embedding norm" if dataset == "papalexi2021" else ""),
        "aivc-design": (
            "linear-kernel GP on the features, prior mean from the mechanistic knockout prior "
            "(log norm of -mean(x_g) Cov(x_g, x_j) / Var(x_g) over genes j, control cells), "
            f"GP-BUCB {SIMULATOR_DESIGN_PARAMS}"
            if dataset == "simulator"
            else f"linear-kernel GP on the features, prior mean from the degree prior, GP-BUCB {AIVC_DESIGN_PARAMS}"
        ),
        "perturbation model": "aivc 'linear' instrument refitted after every round on all measured "
        "cells (changes against batch-matched controls where pooled controls would bias them)",
    }
    if dataset == "simulator":
        features["perturbation model"] = (
            "ridge from the gene features to the measured changes (against each round's controls, "
            "each shrunk toward no change by its signal-to-noise), penalty and intercept share "
            "(no change ... the mean change) chosen holding out one round at a time; refitted "
            "after every round"
        )
    if variant == "knowledge":
        description = (
            "mechanistic simulator with functional modules (complexes, pathways) and a "
            f"{proto['knowledge']} simulated knowledge base: knockouts of single genes"
        )
        features = {
            **features,
            "all": "unit-length fused knowledge embedding (GO, STRING, HuRI) of the target gene, "
            "built from the world's simulated knowledge base",
            "degree-prior": "log(1 + number of knowledge records of the gene): how well studied it is",
        }
    return {
        "task": "lab-loop",
        "dataset": dataset,
        "variant": variant,
        "description": description,
        "protocol": {k: v for k, v in proto.items()},
        "pool": info,
        "seeds": [int(s) for s in seeds],
        "models": results,
        "features": features,
        "notes": "hits = largest true effect norm (target gene itself excluded); error = MSE of the "
        "predicted log-expression change (target gene left out) on held-out perturbations that no strategy may choose; "
        "measured y fed back to strategies = log1p of the excess mean squared z-score of the measured "
        "pseudobulk change over the same-batch controls (target excluded).",
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "peak resident memory above the process's memory before the strategy ran (all seeds)",
        "machine": machine_info(),
    }
