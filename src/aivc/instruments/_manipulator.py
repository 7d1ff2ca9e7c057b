"""``aivc-perturb``: the aivc genetic perturbation manipulator.

A Gaussian-process (kernel ridge) model of perturbation effects that embeds
each target through gene representations, so never-measured targets,
combinations and cell types are predictable, with a predictive standard
deviation for every gene and conformal intervals.

How it predicts the change of mean log-expression of a condition
(targets, context, dose):

1. **Singles.** The training single perturbations' changes are regressed on a
   kernel between conditions, ``K = (K_target + beta) * K_context``, with the
   mean training change as prior mean. ``K_target`` averages cosine kernels of
   the targets' embeddings from the chosen sources (Gene Ontology, STRING,
   HuRI, co-expression in the training control cells, the gene's loadings on
   the training responses, drug features) plus an identity term for the same
   target (times a log-dose kernel). ``K_context`` compares the control states
   of contexts. The sources and the ridge penalty are chosen by closed-form
   leave-one-target-out error on the training conditions (the prior mean,
   i.e. the train-mean prediction, is one of the candidates, so the model
   shrinks to it where embeddings carry no information).
2. **Context transfer.** With several contexts, the context kernel's width and
   a mean-reversion weight ``rho`` (the perturbed state partly keeps the
   level of the nearest contexts rather than their change) are chosen by
   leave-one-context-out error on the training contexts.
3. **Combinations.** The sum of the targets' single changes (measured in the
   same context where available, predicted otherwise) plus an interaction
   term ``theta_g1 * sum + theta_g2 * sum of pairwise products`` per gene ``g``
   (shrunk towards coefficients pooled over genes) learned from the measured
   combinations whose singles were all measured, and kept only if it lowers
   their leave-one-out error (three or more targets use all pairs).
   A target measured at other doses of the same context is interpolated
   linearly in log10-dose between the nearest measured doses. A target never
   measured alone but inside measured combinations gets its single change
   inferred from them (jointly, shrunk towards the GP prediction with a weight
   chosen by recovering the measured singles from the combinations), used
   inside combinations and when that target is asked for alone.
4. **Uncertainty.** The GP predictive variance times a per-gene scale
   estimated from the leave-one-target-out residuals is the raw standard
   deviation (:meth:`PerturbModel.predict_scale`); intervals use a conformal
   quantile (:class:`aivc.instruments._conformal.ConformalCalibrator`) of the
   held-out residuals of the training conditions divided by their raw scale,
   separately for singles and combinations.
5. **Predicted cells.** :meth:`PerturbModel.predict` changes how many cells
   express each confidently changed gene, not only its level, where the
   held-out predictions of the training conditions show that this recovers
   their measured DE genes (``cell_detection``).
6. **The target's own gene.** A perturbation usually changes its own target
   gene more than any other (a knockout lowers it, CRISPRa raises it), which
   the GP, gene by gene, cannot learn: for the GP a target's own gene is just
   another gene. So an unmeasured target that is a gene of the panel gets, on
   its own gene, the median change that the training singles made on theirs,
   either as a step on the log scale or as the share of the expression left,
   whichever predicts the training singles' own genes better
   (``target_effect``).
7. **Shrinkage towards no change.** ``null_shrinkage`` pulls the predicted
   change of an unmeasured target towards zero by a factor that falls as the
   training changes it draws on disagree with it (``"dispersion"``, the
   default; other kinds use the predictive sd or a scaled prior mean), with a
   strength chosen by leave-one-target-out error: where a target's neighbours
   mix strong and null responses the model cannot tell which it is, and a
   timid prediction costs less.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from aivc.data import DataValidationError
from aivc.instruments import _manipulator_module as mm
from aivc.instruments._base import PerturbationModel, PerturbationSummary
from aivc.instruments._conformal import ConformalCalibrator, check_level
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["PerturbModel"]

logger = logging.getLogger(__name__)

KNOWLEDGE_SOURCES = ("go", "string", "huri")
DATA_SOURCES = ("coexpression", "response")
ALL_SOURCES = (*KNOWLEDGE_SOURCES, *DATA_SOURCES, "features")
_RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_TAU_GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
_RHO_GRID = (0.0, 0.1, 0.2, 0.35, 0.5)
_CONTEXT_BIAS = 0.2
_SINGLES_LAMBDA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
_NULL_GRID = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0)
_PRIOR_SCALE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
_DETECTION_Z = 1.96  # a predicted change this many predictive sds from zero changes detection
_DETECTION_CONDITIONS = 40  # training conditions (at most) on which cell_detection="auto" chooses
_PRIOR_RIDGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
NULL_SHRINKAGE = ("prior", "none", "condition", "dispersion", "uncertainty", "gene")


def _condition_weight(f: np.ndarray, s2: np.ndarray, c: float) -> np.ndarray:
    """Per-condition weight ``|f|^2 / (|f|^2 + c |s|^2)`` of predicted changes (column vector)."""
    ff = (f**2).sum(axis=1, keepdims=True)
    return ff / (ff + c * s2.sum(axis=1, keepdims=True) + 1e-300)


def _fraction_change(fraction: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Change of a mean log-expression ``level`` when a ``fraction`` of the expression is left."""
    level = np.maximum(level, 0.0)
    return np.log1p(np.maximum(fraction, 0.0) * np.expm1(level)) - level


def _neighbour_dispersion(weights: np.ndarray, y: np.ndarray, f: np.ndarray) -> np.ndarray:
    """How much the training changes ``y`` that a prediction ``f`` draws on disagree with it.

    ``weights`` (predictions x training rows) are the GP's smoother weights;
    their absolute values, normalised per prediction, weight the squared
    distances ``|y_j - f_i|^2``.
    """
    a = np.abs(weights)
    a = a / np.maximum(a.sum(axis=1, keepdims=True), 1e-300)
    d2 = (f**2).sum(axis=1)[:, None] - 2.0 * f @ y.T + (y**2).sum(axis=1)[None, :]
    return (a * np.maximum(d2, 0.0)).sum(axis=1)


def _log_dose(d: float) -> float:
    return float(np.log10(d)) if d > 0 else 0.0


@register_instrument(
    "aivc-perturb",
    description=(
        "aivc's manipulator: Gaussian process over gene-knowledge and data embeddings with a train-mean "
        "prior, context transfer from control states, learned combination interactions, conformal intervals."
    ),
)
class PerturbModel(PerturbationModel):
    """The aivc perturbation manipulator (see the module docstring for the model).

    Parameters
    ----------
    embeddings
        ``"auto"`` chooses the target embedding sources by leave-one-target-out
        error on the training conditions; otherwise a comma-separated subset of
        ``go, string, huri, coexpression, response, features`` (sources that
        are unavailable are skipped with a log message).
    ridge
        Ridge penalty (GP noise, relative to the kernel's mean diagonal);
        ``None`` chooses it from a grid by leave-one-target-out error.
    interactions
        Learn an interaction term for combinations (kept only when it lowers
        the leave-one-out error of the measured combinations).
    combination_singles
        Infer the change of targets never measured alone from the measured
        combinations that contain them (``delta(A+C) - delta(C)``, solved
        jointly and shrunk towards the GP prediction with a weight chosen by
        recovering the measured singles from the combinations), and use it
        inside combinations and for that target alone. Used only when that
        recovery beats the GP on the training singles. On the simulator task
        it lowered the doubles' mse_de20 from 0.275 to 0.117 (additive 0.287).
    gene_shrinkage
        Blend the GP's predicted deviation from the prior mean gene by gene
        with a weight in [0, 1] fitted on the leave-one-target-out predictions
        (shrunk towards 1), so genes the embeddings do not predict stay near
        the train mean. Off by default: on papalexi2021 unseen singles it raised
        pearson_delta_de20 (0.430 -> 0.436) but also mse_de20 (0.179 -> 0.185).
    null_shrinkage
        Whether and how predicted changes of targets that were not measured are
        pulled towards zero (no change), so that targets unlike the training
        targets, and genes the model is unsure about, stay near the control
        level. ``"none"``: the GP with the mean training change as prior mean. ``"prior"``: the prior mean is ``a`` times the mean training
        change, with ``a`` in {0, 0.25, 0.5, 0.75, 1} chosen together with the
        ridge (a target unlike the training targets gets ``a`` times the mean
        change, one like them their changes). Post-hoc kinds on the GP mean
        ``f`` with predictive sd ``s``: ``"condition"`` multiplies a condition's
        whole change by ``|f|^2 / (|f|^2 + c |s|^2)`` (its direction is kept);
        ``"dispersion"`` does the same with ``|s|^2`` replaced by how much the
        training changes the prediction draws on disagree with it (the mean of
        ``|y_j - f|^2`` weighted by the absolute GP smoother weights), so a
        target whose neighbours respond alike keeps its change and one whose
        neighbours include both strong and null responses is pulled towards
        zero (the default); ``"uncertainty"`` multiplies gene by gene by ``f^2 / (f^2 + c s^2)``;
        ``"gene"`` uses one weight per gene, the regression of the observed on
        the held-out predicted changes. ``a`` (with the ridge) or ``c`` is
        chosen on the leave-one-target-out predictions of the training
        singles: the lowest worse-of-two ratio of the mean absolute error over
        all genes and of the error on the top 20 changed genes to the better of
        the no-change and mean-change baselines on the same held-out targets
        (no shrinkage is one of the candidates). Needs at least three training
        targets, otherwise nothing is shrunk; post-hoc kinds leave targets
        without any embedding at the prior mean, and combinations use the
        unshrunk single predictions. On papalexi2021 unseen singles
        ``"dispersion"`` (against ``"none"``) lowered cell-eval mae from 0.101 to
        0.094 (``control`` 0.096) and the energy distance from 1.56 to 1.01 and
        raised discrimination_score_cosine from 0.563 to 0.576, at a cost in
        mse_de20 (0.175 -> 0.200, best baseline 0.205), overlap_at_N (0.226 ->
        0.209) and discrimination_score_l1 (0.583 -> 0.574); on the simulator's
        unseen singles mse_de20 rose from 0.119 to 0.122 (BENCHMARKS.md).
    target_effect
        Model the change of a target's own gene separately (see the module
        docstring, point 6): a target never measured gets, on its own gene, the
        median own-gene change of the training singles (at least three targets
        needed), with the spread of their leave-one-out errors as its predictive
        sd; every other gene keeps the GP's prediction. The change is either a
        step on the log scale (clipped so the predicted mean stays
        non-negative) or the median share of the expression left, applied to
        the target's control level; the form with the lower leave-one-target-out
        error on the training singles is kept (``target_form_``). On papalexi2021
        unseen singles 9 of the 25 targets are in the gene panel and for 8 of
        them their own gene is their largest change (0.56 to 3.3 log units
        down): overlap_at_N rose from 0.075 to 0.226. On the simulator task the
        doubles' mse_de20 rose from 0.118 to 0.123, all on one seed, where it
        tipped a near tie in the choice of the ``combination_singles`` weight
        (BENCHMARKS.md).
    cell_detection
        How :meth:`predict` moves control cells to the predicted mean. With
        ``False`` (as every other model) expression is only scaled
        (:func:`aivc.instruments._base.shift_cells`; zeros stay zeros). With
        ``True``, genes whose predicted change is at least 1.96 raw predictive
        sds from zero also change how many cells express them, by the change
        in detection rate that the control cells' detection-vs-mean curve
        gives between the control and the predicted mean (a gene induced from
        near zero is switched on in more cells, as in real responses);
        expression is then scaled to the predicted mean exactly
        (:func:`aivc.instruments._manipulator_module.detection_shift_cells`).
        ``"auto"`` (the default) chooses the threshold (1.96, 3 or none, i.e.
        scaling only) on the held-out predictions of the training conditions:
        the one whose moved cells recover most of the measured cells'
        differentially expressed genes
        (:func:`aivc.instruments._manipulator_module.choose_detection_threshold`;
        the choice is ``detection_z_`` and ``selection_["detection"]``).
        Predicted means are the same either way. On kang2018 unseen cell types
        ``True`` raised overlap_at_N from 0.224 to 0.305 but on the norman2019
        combinations lowered it (0.500 -> 0.400); ``"auto"`` keeps both gains
        and losses to what the training conditions support (BENCHMARKS.md).
    n_coexpression_cells
        Control cells sampled (with ``seed``) for the co-expression embedding.
    seed
        Seed of the control-cell sampling.

    Fitted attributes
    -----------------
    sources_
        The embedding sources used (empty: the prior mean alone won).
    ridge_, tau_, rho_
        The chosen ridge penalty, context-kernel width and mean reversion.
    theta_
        Genes x 2 interaction coefficients on the sum of the singles and the
        sum of their pairwise products (zeros when not kept).
    inferred_keys_, inferred_delta_, inferred_var_
        Targets (with context and log10-dose) inferred from combinations, their
        changes and the per-gene variance of such an inferred single (empty
        unless ``combination_singles`` helped).
    target_change_, target_fraction_, target_form_, target_sd_
        The own-gene model of an unmeasured target in the panel: the median
        change on the log scale, the median share of the expression left, the
        form kept (``"shift"`` or ``"fraction"``) and its predictive sd
        (``target_change_`` is ``None`` and ``target_sd_`` 0 when
        ``target_effect`` is off or fewer than three training singles target a
        gene of the panel).
    prior_scale_
        Factor of the mean training change in the prior mean (1 unless
        ``null_shrinkage="prior"``).
    shrinkage_, shrinkage_strength_
        The chosen post-hoc shrinkage towards zero (``"none"``,
        ``"condition"``, ``"uncertainty"`` or ``"gene"``) and its strength ``c``.
    null_weight_
        Per-gene weight of predicted changes (ones unless ``shrinkage_ == "gene"``).
    gene_weight_
        Per-gene blend weight of the GP deviation (ones unless ``gene_shrinkage``).
    selection_
        Leave-out errors of every candidate, for inspection.
    gene_sigma2_
        Per-gene scale of the GP predictive variance.
    calibrator_
        Conformal calibrator of held-out residuals.

    Notes
    -----
    A target that is a known gene but has no embedding in any used source
    (and was not measured) gets the prior mean, i.e. the mean training change
    (in its context; times ``prior_scale_``), with the prior's full predictive variance, so its
    interval is wide. Targets that are not known genes are refused with
    :class:`aivc.data.DataValidationError`.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"single", "combination", "context", "dose", "uncertainty"}
    )

    def __init__(
        self,
        *,
        embeddings: str = "auto",
        ridge: float | None = None,
        interactions: bool = True,
        combination_singles: bool = True,
        gene_shrinkage: bool = False,
        null_shrinkage: str = "dispersion",
        target_effect: bool = True,
        cell_detection: bool | str = "auto",
        n_coexpression_cells: int = 1000,
        seed: int = 0,
    ) -> None:
        self.embeddings = embeddings
        self.ridge = ridge
        self.interactions = interactions
        self.combination_singles = combination_singles
        self.gene_shrinkage = gene_shrinkage
        self.null_shrinkage = null_shrinkage
        self.target_effect = target_effect
        self.cell_detection = cell_detection
        self.n_coexpression_cells = n_coexpression_cells
        self.seed = seed

    # ------------------------------------------------------------------------- validation
    def _requested_sources(self) -> tuple[str, ...]:
        if not isinstance(self.embeddings, str):
            msg = f"The 'embeddings' parameter of PerturbModel must be a string. Got {self.embeddings!r} instead."
            raise ValueError(msg)
        if self.embeddings == "auto":
            # "response" is left out: it is computed from the training changes themselves, so
            # leave-one-target-out errors cannot judge it fairly
            return tuple(s for s in ALL_SOURCES if s != "response")
        names = tuple(s.strip() for s in self.embeddings.split(",") if s.strip())
        bad = [s for s in names if s not in ALL_SOURCES]
        if bad or not names:
            msg = (
                "The 'embeddings' parameter of PerturbModel must be 'auto' or a comma-separated subset of "
                f"{list(ALL_SOURCES)}. Got {self.embeddings!r} instead."
            )
            raise ValueError(msg)
        return names

    def _check_params(self) -> None:
        self._requested_sources()
        if not isinstance(self.combination_singles, bool | np.bool_):
            msg = (
                "The 'combination_singles' parameter of PerturbModel must be a bool. "
                f"Got {self.combination_singles!r} instead."
            )
            raise ValueError(msg)
        if self.ridge is not None and (
            not isinstance(self.ridge, int | float) or not self.ridge > 0
        ):
            msg = f"The 'ridge' parameter of PerturbModel must be a positive number or None. Got {self.ridge!r} instead."
            raise ValueError(msg)
        if self.null_shrinkage not in NULL_SHRINKAGE:
            msg = (
                f"The 'null_shrinkage' parameter of PerturbModel must be one of {list(NULL_SHRINKAGE)}. "
                f"Got {self.null_shrinkage!r} instead."
            )
            raise ValueError(msg)
        if not isinstance(self.target_effect, bool | np.bool_):
            msg = f"The 'target_effect' parameter of PerturbModel must be a bool. Got {self.target_effect!r} instead."
            raise ValueError(msg)
        if not (isinstance(self.cell_detection, bool) or self.cell_detection == "auto"):
            msg = f"The 'cell_detection' parameter of PerturbModel must be True, False or 'auto'. Got {self.cell_detection!r} instead."
            raise ValueError(msg)
        if not isinstance(self.n_coexpression_cells, int) or self.n_coexpression_cells < 10:
            msg = (
                "The 'n_coexpression_cells' parameter of PerturbModel must be an integer >= 10. "
                f"Got {self.n_coexpression_cells!r} instead."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------------- embeddings
    def _knowledge_tables(self, wanted: Sequence[str]) -> dict[str, pd.DataFrame]:
        from aivc.genes import gene_aliases, go_embedding, network_embedding

        out: dict[str, pd.DataFrame] = {}
        for s in wanted:
            try:
                table = go_embedding() if s == "go" else network_embedding(s)
            except FileNotFoundError as e:
                logger.info("aivc-perturb: no %s embedding (%s); source skipped", s, e)
                continue
            out[s] = table
        if not out:
            return out
        try:
            aliases = gene_aliases()
        except FileNotFoundError:
            aliases = {}
        known = self._known_set
        for s, table in out.items():
            keep = table.index.isin(list(known))
            extra = {
                a: sym
                for a, sym in aliases.items()
                if a in known and sym in table.index and a not in table.index
            }
            parts = [table[keep]]
            if extra:
                rows = table.loc[list(extra.values())]
                rows.index = list(extra.keys())
                parts.append(rows)
            out[s] = pd.concat(parts) if len(parts) > 1 else parts[0]
        return out

    def _data_tables(
        self, wanted: Sequence[str], summary: PerturbationSummary, adata: AnnData
    ) -> dict[str, pd.DataFrame]:
        out: dict[str, pd.DataFrame] = {}
        genes = summary.genes
        if "coexpression" in wanted:
            schema = summary.schema
            ctrl = np.flatnonzero(
                adata.obs[schema.perturbation_key].astype(str).to_numpy() == schema.control_label
            )
            rng = np.random.default_rng(self.seed)
            if len(ctrl) > self.n_coexpression_cells:
                ctrl = np.sort(rng.choice(ctrl, self.n_coexpression_cells, replace=False))
            x = adata.X[ctrl]
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=np.float64)
            x = x - x.mean(axis=0)
            sd = x.std(axis=0)
            x = x / np.where(sd > 1e-8, sd, np.inf)
            emb = mm.top_right_singular(x, 32)
            if emb.shape[1] >= 2:
                out["coexpression"] = pd.DataFrame(mm.unit_rows(emb), index=genes)
        if "response" in wanted:
            singles = [
                i for i, p in enumerate(summary.perturbations) if summary.schema.order(p) == 1
            ]
            y = summary.delta[singles] if len(singles) >= 3 else summary.delta
            yc = y - y.mean(axis=0)
            emb = mm.top_right_singular(yc, 10)
            if emb.shape[1] >= 2:
                out["response"] = pd.DataFrame(mm.unit_rows(emb), index=genes)
        if "features" in wanted and summary.features is not None and summary.features.shape[0]:
            v = summary.features.to_numpy(dtype=np.float64)
            sd = v.std(axis=0)
            v = (v - v.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
            out["features"] = pd.DataFrame(mm.unit_rows(v), index=summary.features.index)
        return out

    def _set_tables(self, tables: dict[str, pd.DataFrame]) -> None:
        self.tables_ = {s: t.astype(np.float32) for s, t in tables.items()}
        self._table_pos = {s: {g: i for i, g in enumerate(t.index)} for s, t in tables.items()}

    def _embed(self, source: str, targets: Sequence[str]) -> np.ndarray:
        table = self.tables_[source]
        pos = self._table_pos[source]
        out = np.zeros((len(targets), table.shape[1]))
        values = table.to_numpy()
        for i, t in enumerate(targets):
            j = pos.get(t)
            if j is not None:
                out[i] = values[j]
        return out

    # ------------------------------------------------------------------------- kernels
    def _target_kernel(
        self,
        sources: Sequence[str],
        ta: Sequence[str],
        la: np.ndarray,
        tb: Sequence[str],
        lb: np.ndarray,
    ) -> np.ndarray:
        """Target kernel: mean of the sources' cosine kernels plus the identity (x dose kernel)."""
        dose = mm.dose_kernel(la, lb)
        k = np.zeros((len(ta), len(tb)))
        for s in sources:
            ks = mm.linear_kernel(self._embed(s, ta), self._embed(s, tb))
            k += ks * dose if s == "features" else ks
        if sources:
            k /= len(sources)
        if not self.identity_:
            return k
        same = np.asarray(ta, dtype=object)[:, None] == np.asarray(tb, dtype=object)[None, :]
        return k + same * dose

    def _target_diagonal(self, targets: Sequence[str]) -> np.ndarray:
        """``k(t, t)`` of the target kernel, without building the full matrix."""
        d = np.zeros(len(targets))
        for s in self.sources_:
            pos = self._table_pos[s]
            d += np.array([t in pos for t in targets], dtype=np.float64)
        if self.sources_:
            d /= len(self.sources_)
        return d + 1.0 if self.identity_ else d

    def _full_kernel(
        self,
        sources: Sequence[str],
        ta: Sequence[str],
        la: np.ndarray,
        za: np.ndarray,
        tb: Sequence[str],
        lb: np.ndarray,
        zb: np.ndarray,
        tau: float,
    ) -> np.ndarray:
        k = self._target_kernel(sources, ta, la, tb, lb)
        if self.context_scale_ is None:
            return k
        kc = mm.context_kernel(za, zb, scale=self.context_scale_, tau=tau)
        return (k + _CONTEXT_BIAS) * kc

    # ------------------------------------------------------------------------- fitting
    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_params()
        schema = summary.schema
        wanted = self._requested_sources()
        tables = self._knowledge_tables([s for s in wanted if s in KNOWLEDGE_SOURCES])
        tables.update(self._data_tables(wanted, summary, adata))
        self._set_tables(tables)
        available = [s for s in ALL_SOURCES if s in tables]

        doses = summary.doses or [0.0] * len(summary.perturbations)
        orders = [schema.order(p) for p in summary.perturbations]
        single_rows = [i for i, o in enumerate(orders) if o == 1]
        if not single_rows:  # only combinations measured: their sum of targets is used
            single_rows = list(range(len(orders)))
        self.row_targets_ = [summary.perturbations[i] for i in single_rows]
        self.row_log_doses_ = np.array([_log_dose(doses[i]) for i in single_rows])
        self.row_contexts_ = [summary.contexts[i] for i in single_rows]
        z_rows = np.stack([summary.control_mean[c] for c in self.row_contexts_])
        self.row_states_ = z_rows
        y = summary.delta[single_rows]
        own = self._fit_target_effect(summary, single_rows)
        # the identity term links the same target across contexts and doses; with one row per
        # target it would only act as extra noise on the training rows
        self.identity_ = len(set(self.row_targets_)) < len(self.row_targets_) or not available

        ctx_keys = [k for k in summary.control_mean if k is not None]
        if len(ctx_keys) >= 2:
            states = np.stack([summary.control_mean[k] for k in ctx_keys])
            d2 = ((states[:, None, :] - states[None, :, :]) ** 2).sum(-1)
            self.context_scale_ = float(np.median(d2[np.triu_indices(len(ctx_keys), 1)]))
            self.context_center_ = states.mean(axis=0)
        else:
            self.context_scale_ = None
            self.context_center_ = np.zeros(len(summary.genes))

        selection: dict[str, Any] = {}
        if self.target_selection_:
            selection["target-effect|held-out rms"] = dict(self.target_selection_)
        targets = self.row_targets_
        group_ids = pd.factorize(pd.Series(targets))[0]
        n_targets = len(set(targets))
        tau0 = 0.2
        # candidate source groups (few, so that choosing among ~20 training targets stays honest):
        # the fused knowledge sources, the fused data sources, and both; a source must embed at
        # least half of the training targets to be a candidate
        train_targets = {u for r in targets for u in schema.targets(r)}
        covered = {
            s
            for s in available
            if sum(u in self._table_pos[s] for u in train_targets) >= 0.5 * len(train_targets)
        }
        know = tuple(s for s in available if s in KNOWLEDGE_SOURCES and s in covered)
        data = tuple(s for s in available if s not in KNOWLEDGE_SOURCES and s in covered)
        candidates = [c for c in (know, data) if c]
        if know and data:
            candidates.append(know + data)
        if self.embeddings != "auto":
            candidates = [tuple(available)] if available else []
        lams = [float(self.ridge)] if self.ridge is not None else list(_RIDGE_GRID)

        best: tuple[float, tuple[str, ...], float] = (np.inf, (), lams[-1])
        if n_targets >= 3:
            yc = y - y.mean(axis=0)
            base_err = float(mm.top_gene_error(-yc * 1.0, y).mean())
            selection["prior-mean"] = base_err
            best = (base_err, (), lams[-1])
            for cand in candidates:
                k = self._full_kernel(
                    cand,
                    targets,
                    self.row_log_doses_,
                    z_rows,
                    targets,
                    self.row_log_doses_,
                    z_rows,
                    tau0,
                )
                scale = float(np.mean(np.diag(k)))
                loo = mm.grouped_loo(k, yc, group_ids, [r * scale for r in lams])
                for lam, (res, _) in zip(lams, loo, strict=True):
                    err = float(mm.top_gene_error(res, y).mean())
                    selection[f"{'+'.join(cand)}|ridge={lam}"] = err
                    if err < best[0] - 1e-12:
                        best = (err, cand, lam)
        else:
            best = (
                np.inf,
                tuple(available),
                lams[min(2, len(lams) - 1)] if len(lams) > 1 else lams[0],
            )
        self.sources_ = list(best[1])
        self.ridge_ = float(best[2])
        self.tau_ = tau0
        self.rho_ = 0.0
        self._choose_context(summary, y, selection, lams, n_targets)
        self.selection_ = selection

        # final fit on all single rows
        k = self._full_kernel(
            self.sources_,
            targets,
            self.row_log_doses_,
            z_rows,
            targets,
            self.row_log_doses_,
            z_rows,
            self.tau_,
        )
        diag_mean = float(np.mean(np.diag(k)))
        self.kernel_scale_ = diag_mean if diag_mean > 1e-12 else 1.0
        yt = y + self.rho_ * (z_rows - self.context_center_)
        self.prior_scale_ = 1.0
        if self.null_shrinkage == "prior" and n_targets >= 3:
            self._choose_prior_scale(k, y, yt, group_ids, selection)
        self.prior_mean_ = self.prior_scale_ * yt.mean(axis=0)
        yc = yt - self.prior_mean_
        lam_abs = self.ridge_ * self.kernel_scale_
        fit = mm.fit_kernel_ridge(k, yc, lam_abs)
        self.alpha_, self.inverse_ = fit.alpha, fit.inverse
        groups = group_ids if n_targets >= 3 else np.arange(len(targets))
        res, var = mm.grouped_loo(k, yc, groups, [lam_abs])[0]
        if not (self.sources_ or n_targets < 3):
            # prior mean alone: held-out residuals of the (scaled) mean
            res = yc + self.prior_scale_ * (yt - yt.mean(axis=0)) / max(len(yc) - 1, 1)
        self.gene_weight_ = np.ones(len(summary.genes))
        if self.gene_shrinkage and self.sources_ and n_targets >= 3:
            # per-gene empirical-Bayes blend of the GP deviation and the prior mean: the weight is
            # the regression of the measured on the held-out predicted deviation, shrunk towards 1
            f = yc - res
            sff, sfy = (f**2).sum(axis=0), (f * yc).sum(axis=0)
            m = float(sff.mean()) + 1e-12
            self.gene_weight_ = np.clip((sfy + m) / (sff + m), 0.0, 1.0)
            self.alpha_ = self.alpha_ * self.gene_weight_
            res = yc - f * self.gene_weight_
        self.gene_sigma2_ = np.maximum(
            np.mean(res**2 / np.maximum(var, 1e-12)[:, None], axis=0), 1e-12
        )
        loo_scale = np.sqrt(self.gene_sigma2_[None, :] * np.maximum(var, 1e-12)[:, None])
        self.null_weight_ = np.ones(len(summary.genes))
        self.shrinkage_, self.shrinkage_strength_ = "none", 0.0
        self.row_delta_ = None
        if n_targets >= 3:
            res = self._choose_null_shrinkage(y, res, var, k, groups, lam_abs, selection)
        if own:
            # held-out errors of the own-gene changes, for the intervals and the cells
            rows, cols, loo_err = (np.array(v) for v in zip(*own, strict=True))
            res[rows, cols] = loo_err
            loo_scale[rows, cols] = max(self.target_sd_, 1e-6)

        # measured singles, used as-is inside combinations
        self.measured_keys_ = [
            [summary.perturbations[i], summary.contexts[i], float(doses[i])]
            for i, o in enumerate(orders)
            if o == 1
        ]
        self.measured_delta_ = (
            summary.delta[[i for i, o in enumerate(orders) if o == 1]]
            if any(o == 1 for o in orders)
            else np.zeros((0, len(summary.genes)))
        )
        self._index_measured()

        # combinations: interaction term and held-out residuals (with the GP for unmeasured singles;
        # singles inferred from the combinations themselves are fitted afterwards)
        self.inferred_keys_ = []
        self._index_inferred()
        combo_rows = [i for i, o in enumerate(orders) if o >= 2]
        self.theta_ = np.zeros((len(summary.genes), 2))
        residuals, scales, labels = [res], [loo_scale], ["order1"] * len(res)
        if combo_rows:
            perts = [summary.perturbations[i] for i in combo_rows]
            ctxs = [summary.contexts[i] for i in combo_rows]
            cd = [float(doses[i]) for i in combo_rows]
            base = np.stack([summary.control_mean[c] for c in ctxs])
            add, prod, var_add = self._additive_parts(perts, ctxs, cd, base)
            yobs = summary.delta[combo_rows]
            # the interaction is learned where it is identifiable: combinations whose singles
            # were all measured in the same context and dose
            full = np.array(
                [
                    all(self._measured_single(t, c, d) is not None for t in schema.targets(p))
                    for p, c, d in zip(perts, ctxs, cd, strict=True)
                ]
            )
            theta = self._fit_interactions(add[full], prod[full], yobs[full], selection)
            combo_res = yobs - add - theta[:, 0] * add - theta[:, 1] * prod
            self.theta_ = theta
            self.interaction_var_ = np.mean(combo_res**2, axis=0)
            residuals.append(combo_res)
            scales.append(np.sqrt(var_add + self.interaction_var_[None, :]))
            labels += ["order2"] * len(combo_rows)
        else:
            self.interaction_var_ = np.zeros(len(summary.genes))
        loo_single = self.measured_delta_ - res if len(res) == len(self.measured_delta_) else None
        held_out = [(single_rows, y - res, loo_scale)]
        if combo_rows:
            held_out.append((combo_rows, yobs - combo_res, scales[-1]))
        self._choose_detection(summary, adata, held_out, selection)
        self._fit_combination_singles(summary, doses, loo_single, selection)
        self.calibrator_ = ConformalCalibrator(pooling="genes", min_group_size=5).fit(
            np.vstack(residuals), np.vstack(scales), groups=labels
        )
        logger.info(
            "aivc-perturb: sources %s, ridge %g, tau %g, rho %g, mean interaction %s",
            self.sources_,
            self.ridge_,
            self.tau_,
            self.rho_,
            np.round(self.theta_.mean(axis=0), 3).tolist(),
        )

    def _fit_target_effect(
        self, summary: PerturbationSummary, single_rows: list[int]
    ) -> list[tuple[int, int, float]]:
        """The own-gene model: the training singles' changes of their own target gene.

        Two forms are fitted and the one with the lower leave-one-target-out
        root mean square error is kept (``target_form_``; ties keep the
        shift):

        - ``"shift"``: the median change of the mean log-expression
          (``target_change_``), clipped so the predicted mean stays
          non-negative, as for knockouts that remove a share of the
          transcripts on a log scale;
        - ``"fraction"``: the median fraction of expression left
          (``target_fraction_``, ``expm1(level + change) / expm1(level)``),
          applied to the target's control level, as for knockouts that remove
          the same share of the expression whatever its level.

        Sets ``target_sd_`` (the root mean square of the kept form's held-out
        errors) and returns ``(row, gene, held-out error)`` for every single
        whose target is a gene of the panel (empty, and ``target_change_``
        ``None``, when ``target_effect`` is off or fewer than three training
        targets are genes of the panel).
        """
        self.target_change_, self.target_sd_ = None, 0.0
        self.target_form_, self.target_fraction_ = "shift", 1.0
        self.target_selection_: dict[str, float] = {}
        if not self.target_effect:
            return []
        gene_pos = {str(g): j for j, g in enumerate(summary.genes)}
        targets = [summary.perturbations[i] for i in single_rows]
        own = [(r, gene_pos[t]) for r, t in enumerate(targets) if t in gene_pos]
        if len({targets[r] for r, _ in own}) < 3:
            return []
        levels = np.array(
            [summary.control_mean[summary.contexts[single_rows[r]]][j] for r, j in own]
        )
        change = np.array([summary.delta[single_rows[r], j] for r, j in own])
        names = np.array([targets[r] for r, _ in own], dtype=object)
        expressed = levels > 1e-6
        fraction = np.where(
            expressed,
            np.expm1(np.maximum(levels + change, 0.0)) / np.expm1(np.maximum(levels, 1e-6)),
            1.0,
        )
        errors = {}
        loo_shift = np.array([np.median(change[names != n]) for n in names])
        errors["shift"] = change - np.maximum(loo_shift, -levels)
        if expressed.sum() >= 3 and len(set(names[expressed])) >= 3:
            loo_frac = np.array([np.median(fraction[(names != n) & expressed]) for n in names])
            errors["fraction"] = change - _fraction_change(loo_frac, levels)
            self.target_fraction_ = float(np.median(fraction[expressed]))
        rms = {form: float(np.sqrt(np.mean(e**2))) for form, e in errors.items()}
        self.target_selection_ = rms
        self.target_form_ = min(rms, key=lambda form: (rms[form], form != "shift"))
        self.target_change_ = float(np.median(change))
        self.target_sd_ = rms[self.target_form_]
        chosen = errors[self.target_form_]
        return [(r, j, float(e)) for (r, j), e in zip(own, chosen, strict=True)]

    def _own_gene(self, targets: Sequence[str]) -> list[tuple[int, int]]:
        """``(row, gene)`` of the never-measured targets that are genes of the panel.

        A target measured in any context or dose is left to the GP, which
        carries its own measurements over to new contexts and doses.
        """
        if self.target_change_ is None:
            return []
        pos = {str(g): j for j, g in enumerate(self.genes_)}
        seen = set(self.row_targets_)
        return [(i, pos[t]) for i, t in enumerate(targets) if t in pos and t not in seen]

    def _apply_target_effect(
        self, targets: Sequence[str], mean: np.ndarray, var: np.ndarray, base: np.ndarray
    ) -> None:
        """Set the own-gene change and variance of unmeasured single targets, in place."""
        for i, j in self._own_gene(targets):
            level = float(base[i, j])
            if self.target_form_ == "fraction":
                mean[i, j] = float(_fraction_change(np.float64(self.target_fraction_), level))
            else:
                mean[i, j] = max(self.target_change_, -level)
            var[i, j] = self.target_sd_**2

    def _choose_detection(
        self,
        summary: PerturbationSummary,
        adata: AnnData,
        held_out: list[tuple[list[int], np.ndarray, np.ndarray]],
        selection: dict[str, Any],
    ) -> None:
        """Set ``detection_z_``: which predicted changes also change detection in :meth:`predict`.

        ``cell_detection="auto"`` chooses it on the held-out predictions of the
        training conditions (at most ``_DETECTION_CONDITIONS``, sampled with the
        model's seed; :func:`aivc.instruments._manipulator_module.choose_detection_threshold`);
        ``True`` fixes it at ``_DETECTION_Z`` and ``False`` at infinity (scaling only).
        """
        if self.cell_detection is False:
            self.detection_z_ = float("inf")
            return
        self.detection_z_ = _DETECTION_Z
        if self.cell_detection is True:
            return
        import scipy.sparse as sp

        from aivc.data._preprocess import CONDITION_SEP, condition_labels, dose_label

        schema = summary.schema
        cond = condition_labels(adata, schema).to_numpy()

        def cells_of(perturbation: str, context: str | None, dose: float) -> np.ndarray:
            label = dose_label(perturbation, dose)
            return np.flatnonzero(
                cond == (label if context is None else label + CONDITION_SEP + context)
            )

        def dense(rows: np.ndarray) -> np.ndarray:
            block = adata.X[rows]
            return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float64)

        doses = summary.doses or [0.0] * len(summary.perturbations)
        rng = np.random.default_rng([self.seed, 29])
        candidates = [(j, i, delta, sd) for rows, delta, sd in held_out for j, i in enumerate(rows)]
        if len(candidates) > _DETECTION_CONDITIONS:
            pick = np.sort(rng.choice(len(candidates), _DETECTION_CONDITIONS, replace=False))
            candidates = [candidates[k] for k in pick]
        real, contexts, pred, scale, controls = [], [], [], [], {}
        for j, i, delta, sd in candidates:
            c = summary.contexts[i]
            cells = cells_of(summary.perturbations[i], c, float(doses[i]))
            if len(cells) < 10:
                continue
            if c not in controls:
                pool = cells_of(schema.control_label, c, 0.0)
                if len(pool) < 10:
                    continue
                controls[c] = dense(np.sort(rng.choice(pool, min(len(pool), 2000), replace=False)))
            real.append(dense(cells))
            contexts.append(c)
            pred.append(delta[j])
            scale.append(sd[j])
        if not real:
            return
        z, scores = mm.choose_detection_threshold(
            real, contexts, controls, np.asarray(pred), np.asarray(scale), rng
        )
        self.detection_z_ = z
        selection["detection"] = {"chosen": "inf" if np.isinf(z) else z, "overlap": scores}

    def _choose_prior_scale(
        self,
        k: np.ndarray,
        y: np.ndarray,
        yt: np.ndarray,
        groups: np.ndarray,
        selection: dict[str, Any],
    ) -> None:
        """Choose the prior-mean scale and the ridge by leave-one-target-out error (``null_shrinkage="prior"``).

        The GP's prior mean is ``a`` times the mean training change, ``a`` in
        ``_PRIOR_SCALE_GRID``, jointly with the ridge: a target unlike the
        training targets then gets ``a`` times the mean change, one like them
        their changes. Each pair is scored on the held-out predictions of the
        training singles (the prior mean recomputed without the held-out
        target) by its mean absolute error over all genes and its error on the
        top 20 changed genes, each divided by the better of the two baselines
        on the same held-out targets (no change; the mean training change);
        the lowest worse-of-the-two ratio wins.
        """
        n = len(y)
        members = [np.flatnonzero(groups == gid) for gid in np.unique(groups)]
        shift = yt - y
        m = yt.mean(axis=0)
        prior_loo, mean_loo = np.empty_like(yt), np.empty_like(y)
        for idx in members:
            rest = np.setdiff1d(np.arange(n), idx)
            prior_loo[idx] = yt[rest].mean(axis=0)
            mean_loo[idx] = y[rest].mean(axis=0)

        def score(pred: np.ndarray) -> tuple[float, float]:
            return float(np.abs(pred - y).mean()), float(mm.top_gene_error(pred - y, y).mean())

        zero, mean = score(np.zeros_like(y)), score(mean_loo)
        ref = (max(min(zero[0], mean[0]), 1e-12), max(min(zero[1], mean[1]), 1e-12))
        selection["prior-scale|baselines (mae, top20)"] = {"zero": zero, "train-mean": mean}

        def objective(values: tuple[float, float]) -> float:
            return max(values[0] / ref[0], values[1] / ref[1])

        lams = (
            [float(self.ridge)]
            if self.ridge is not None
            else sorted({*_PRIOR_RIDGE_GRID, float(self.ridge_)})
        )
        ones = np.ones((n, 1))
        best = (np.inf, 1.0, float(self.ridge_))
        for a in _PRIOR_SCALE_GRID:
            target = np.hstack([yt - a * m, ones])
            outs = mm.grouped_loo(k, target, groups, [lam * self.kernel_scale_ for lam in lams])
            for lam, (res, _) in zip(lams, outs, strict=True):
                # the held-out prior moves the prediction by (1 - the kernel weights' sum),
                # which is the held-out residual of the constant column
                f = yt - res[:, :-1] + res[:, -1:] * (a * prior_loo - a * m) - shift
                values = score(f)
                obj = objective(values)
                selection[f"prior-scale|scale={a}|ridge={lam}"] = {
                    "mae": values[0],
                    "top20": values[1],
                    "objective": obj,
                }
                if obj < best[0] - 1e-12:
                    best = (obj, a, lam)
        _, self.prior_scale_, self.ridge_ = best

    def _choose_null_shrinkage(
        self,
        y: np.ndarray,
        res: np.ndarray,
        var: np.ndarray,
        k: np.ndarray,
        groups: np.ndarray,
        lam_abs: float,
        selection: dict[str, Any],
    ) -> np.ndarray:
        """Choose how predicted changes of unmeasured targets are shrunk towards zero.

        Candidates (see ``null_shrinkage``): no shrinkage and every strength
        ``c`` of the requested kind. Every candidate is scored on the
        leave-one-target-out predictions ``f`` of the training singles (the
        prior mean and the per-gene weights recomputed without the held-out
        target) by its mean absolute error over all genes and its error on the
        top 20 changed genes, each divided by the better of the two baselines
        on the same held-out targets (no change; the mean training change). The
        candidate with the lowest worse-of-the-two ratio wins.

        Returns the held-out residuals of the chosen predictions.
        """
        n, n_genes = y.shape
        self.null_weight_ = np.ones(n_genes)
        self.shrinkage_, self.shrinkage_strength_ = "none", 0.0
        members = [np.flatnonzero(groups == gid) for gid in np.unique(groups)]
        if self.null_shrinkage in {"none", "prior"} or len(members) < 3:
            return res
        # held-out predictions, with the prior mean recomputed without the held-out target:
        # the prior's change moves the prediction by (1 - the kernel weights' sum), which is
        # the held-out residual of a constant
        f = y - res
        prior = np.empty_like(y)
        ones = mm.grouped_loo(k, np.ones((n, 1)), groups, [lam_abs])[0][0][:, 0]
        for idx in members:
            rest = np.setdiff1d(np.arange(n), idx)
            prior[idx] = y[rest].mean(axis=0)
            if self.sources_:
                f[idx] += ones[idx, None] * (prior[idx[0]] - y.mean(axis=0))
        s2 = np.maximum(var, 1e-12)[:, None] * self.gene_sigma2_[None, :]

        def score(pred: np.ndarray) -> tuple[float, float]:
            return (
                float(np.abs(pred - y).mean()),
                float(mm.top_gene_error(pred - y, y).mean()),
            )

        zero, mean = score(np.zeros_like(y)), score(prior)
        ref = (max(min(zero[0], mean[0]), 1e-12), max(min(zero[1], mean[1]), 1e-12))
        selection["null-shrinkage|baselines (mae, top20)"] = {"zero": zero, "train-mean": mean}

        def objective(pred: np.ndarray, key: str) -> float:
            mae, top = score(pred)
            obj = max(mae / ref[0], top / ref[1])
            selection[f"null-shrinkage|{key}"] = {"mae": mae, "top20": top, "objective": obj}
            return obj

        best: tuple[float, str, float] = (objective(f, "none"), "none", 0.0)
        best_pred = f
        kinds = (self.null_shrinkage,)
        sff, sfy = (f**2).sum(axis=0), (f * y).sum(axis=0)
        if self.null_shrinkage == "dispersion":
            # held-out smoother weights: holding out group G leaves -inv(A_GG) A_G,rest with
            # A = (K + lam I)^-1 (the fitted inverse), the weights of the training changes
            a_full = self.inverse_
            dispersion = np.zeros(n)
            for idx in members:
                rest = np.setdiff1d(np.arange(n), idx)
                w = -np.linalg.solve(a_full[np.ix_(idx, idx)], a_full[np.ix_(idx, rest)])
                dispersion[idx] = _neighbour_dispersion(w, y[rest], f[idx])
        for kind in kinds:
            for c in _NULL_GRID:
                if kind == "gene":
                    pred = np.empty_like(f)
                    for idx in members:
                        a = sff - (f[idx] ** 2).sum(axis=0)
                        b = sfy - (f[idx] * y[idx]).sum(axis=0)
                        w = np.clip(b / (a + c * float(a.mean()) + 1e-12), 0.0, 1.0)
                        pred[idx] = f[idx] * w
                elif kind == "condition":
                    pred = f * _condition_weight(f, s2, c)
                elif kind == "dispersion":
                    ff = (f**2).sum(axis=1, keepdims=True)
                    pred = f * ff / (ff + c * dispersion[:, None] + 1e-300)
                else:
                    pred = f * f**2 / (f**2 + c * s2)
                obj = objective(pred, f"{kind}={c}")
                if obj < best[0] - 1e-12:
                    best, best_pred = (obj, kind, c), pred
        _, self.shrinkage_, self.shrinkage_strength_ = best
        if self.shrinkage_ == "none":
            return res
        if self.shrinkage_ == "dispersion":
            self.row_delta_ = y  # the training changes the smoother weights refer to
        if self.shrinkage_ == "gene":
            c = self.shrinkage_strength_
            self.null_weight_ = np.clip(sfy / (sff + c * float(sff.mean()) + 1e-12), 0.0, 1.0)
        return y - best_pred

    def _row_changes(self) -> np.ndarray | None:
        """The training changes of the GP's rows: the measured singles, or (when none was
        measured alone, so the GP was fitted on combinations) the stored ``row_delta_``."""
        if len(self.measured_delta_) == len(self.row_targets_):
            return self.measured_delta_
        return self.row_delta_

    def _null_shrink(
        self,
        mean: np.ndarray,
        v: np.ndarray,
        targets: Sequence[str],
        weights: np.ndarray | None,
    ) -> np.ndarray:
        """Apply the chosen shrinkage towards zero to predicted changes (see ``null_shrinkage``).

        ``weights`` are the GP's smoother weights of the predictions (from
        :meth:`_gp_singles`). Targets without an embedding in any used source
        keep the prior mean: the strength was chosen on embedded targets.
        """
        if self.shrinkage_ == "none":
            return mean
        if self.shrinkage_ == "gene":
            out = mean * self.null_weight_[None, :]
        elif self.shrinkage_ == "condition":
            out = mean * _condition_weight(
                mean, v[:, None] * self.gene_sigma2_[None, :], self.shrinkage_strength_
            )
        elif self.shrinkage_ == "dispersion":
            d = _neighbour_dispersion(weights, self._row_changes(), mean)
            ff = (mean**2).sum(axis=1, keepdims=True)
            out = mean * ff / (ff + self.shrinkage_strength_ * d[:, None] + 1e-300)
        else:
            s2 = v[:, None] * self.gene_sigma2_[None, :]
            out = mean * mean**2 / (mean**2 + self.shrinkage_strength_ * s2 + 1e-300)
        if self.sources_:
            embedded = np.array(
                [any(t in self._table_pos[s] for s in self.sources_) for t in targets]
            )
            out[~embedded] = mean[~embedded]
        return out

    def _choose_context(
        self,
        summary: PerturbationSummary,
        y: np.ndarray,
        selection: dict[str, Any],
        lams: list[float],
        n_targets: int,
    ) -> None:
        """Choose the context-kernel width and mean reversion by leave-one-context-out error."""
        ctxs = self.row_contexts_
        if self.context_scale_ is None:
            return
        per_target: dict[str, set] = {}
        for t, c in zip(self.row_targets_, ctxs, strict=True):
            per_target.setdefault(t, set()).add(c)
        if not any(len(v) >= 2 for v in per_target.values()):
            return
        lam_grid = [self.ridge_] if n_targets >= 3 or self.ridge is not None else lams
        targets = np.asarray(self.row_targets_, dtype=object)
        z = self.row_states_
        best = (np.inf, self.tau_, 0.0, self.ridge_)
        ctx_arr = np.asarray([str(c) for c in ctxs])
        for tau in _TAU_GRID:
            k_all = self._full_kernel(
                self.sources_,
                list(targets),
                self.row_log_doses_,
                z,
                list(targets),
                self.row_log_doses_,
                z,
                tau,
            )
            errs = {(rho, lam): 0.0 for rho in _RHO_GRID for lam in lam_grid}
            n_scored = 0
            for c in np.unique(ctx_arr):
                test = np.flatnonzero(ctx_arr == c)
                train = np.flatnonzero(ctx_arr != c)
                seen = set(targets[train])
                test = np.asarray([i for i in test if targets[i] in seen], dtype=int)
                if len(test) == 0 or len(train) < 2:
                    continue
                n_scored += len(test)
                ktr = k_all[np.ix_(train, train)]
                kte = k_all[np.ix_(test, train)]
                scale = float(np.mean(np.diag(ktr)))
                shift_tr = z[train] - self.context_center_
                shift_te = z[test] - self.context_center_
                for lam in lam_grid:
                    inv = np.linalg.inv(ktr + lam * scale * np.eye(len(train)))
                    w = kte @ inv
                    hy = w @ y[train]
                    hs = w @ shift_tr
                    rs = w.sum(axis=1, keepdims=True)
                    for rho in _RHO_GRID:
                        yt = y[train] + rho * shift_tr
                        m = yt.mean(axis=0)
                        pred = m + (hy + rho * hs - rs * m) - rho * shift_te
                        errs[(rho, lam)] += float(mm.top_gene_error(pred - y[test], y[test]).sum())
            if n_scored == 0:
                return
            for (rho, lam), e in errs.items():
                e /= n_scored
                selection[f"context|tau={tau}|rho={rho}|ridge={lam}"] = e
                if e < best[0] - 1e-12:
                    best = (e, tau, rho, lam)
        _, self.tau_, self.rho_, self.ridge_ = best

    def _fit_interactions(
        self, add: np.ndarray, prod: np.ndarray, y: np.ndarray, selection: dict[str, Any]
    ) -> np.ndarray:
        """Per-gene interaction coefficients (genes x 2), zeros when they do not help.

        The residual of each combination over the sum of its singles is
        regressed, gene by gene, on ``[sum, sum of pairwise products]``; each
        gene's coefficients are shrunk towards the pooled ones with a strength
        chosen by leave-one-combination-out error, and the additive model
        (zero coefficients) is kept unless the interaction lowers that error.
        """
        n, g = y.shape
        zero = np.zeros((g, 2))
        if not self.interactions or n < 5:
            return zero
        r = y - add
        x = np.stack([add, prod], axis=-1)  # n x genes x 2
        xtx_i = np.einsum("ngk,ngl->ngkl", x, x)  # per row and gene
        xty_i = np.einsum("ngk,ng->ngk", x, r)
        xtx_g, xty_g = xtx_i.sum(0), xty_i.sum(0)  # genes x 2 x 2, genes x 2
        scale = float(np.mean(np.trace(xtx_g, axis1=1, axis2=2))) / 2 + 1e-12
        eye = np.eye(2)

        def solve(xtx: np.ndarray, xty: np.ndarray, kappa: float | None) -> np.ndarray:
            pooled = np.linalg.solve(xtx.sum(0) + 1e-3 * scale * g * eye, xty.sum(0))
            if kappa is None:
                return np.tile(pooled, (xtx.shape[0], 1))
            a = xtx + kappa * scale * eye
            b = xty + kappa * scale * pooled
            return np.linalg.solve(a, b[..., None])[..., 0]

        e0 = float(mm.top_gene_error(r, y).mean())
        selection["combinations|additive"] = e0
        best: tuple[float, float | str | None] = (e0, "additive")
        for kappa in (None, 10.0, 3.0, 1.0, 0.3):
            loo = np.empty_like(r)
            for i in range(n):
                th = solve(xtx_g - xtx_i[i], xty_g - xty_i[i], kappa)
                loo[i] = r[i] - np.einsum("gk,gk->g", x[i], th)
            e = float(mm.top_gene_error(loo, y).mean())
            selection[f"combinations|interaction|shrinkage={kappa}"] = e
            if e < best[0] - 1e-12:
                best = (e, kappa)
        if best[1] == "additive":
            return zero
        return solve(xtx_g, xty_g, best[1])  # type: ignore[arg-type]

    # ------------------------------------------------------------------------- singles from combinations
    def _fit_combination_singles(
        self,
        summary: PerturbationSummary,
        doses: Sequence[float],
        loo_single: np.ndarray | None,
        selection: dict[str, Any],
    ) -> None:
        """Infer the singles that were never measured alone from the measured combinations.

        A target measured only inside combinations (``A+C`` with ``C`` measured
        alone) has an estimate ``delta(A+C) - delta(C)``; all such targets are
        solved jointly with :func:`~aivc.instruments._manipulator_module.combination_singles`,
        shrunk towards their GP prediction with a weight chosen on the training
        data: every measured single that also occurs in a combination is in turn
        treated as unmeasured (with its leave-one-target-out GP prediction as
        prior) and the weight with the lowest top-gene error of the recovered
        single is kept, or none when the GP alone is better. The per-gene mean
        squared error of those recovered singles is the variance of an inferred
        single inside a combination.
        """
        g = len(summary.genes)
        self.inferred_keys_: list[list[Any]] = []
        self.inferred_delta_ = np.zeros((0, g))
        self.inferred_var_ = np.zeros(g)
        self._index_inferred()
        schema = summary.schema
        combo = [i for i, p in enumerate(summary.perturbations) if schema.order(p) >= 2]
        if not self.combination_singles or not combo or loo_single is None:
            return
        keys = [
            [
                (t, summary.contexts[i], float(doses[i]))
                for t in schema.targets(summary.perturbations[i])
            ]
            for i in combo
        ]
        # row of each measured (target, context, dose) in measured_delta_
        measured = {k: j for ks in keys for k in ks if (j := self._measured_single(*k)) is not None}
        unknown = sorted({k for ks in keys for k in ks if k not in measured}, key=str)
        if not unknown:
            return
        held = sorted(measured, key=str)
        if len(held) < 5:
            return
        base = np.stack([summary.control_mean[u[1]] for u in unknown])
        prior, prior_var = self._gp_singles(
            [u[0] for u in unknown], np.array([_log_dose(u[2]) for u in unknown]), base
        )
        # the same prediction as for a target asked for alone, own gene included, as the
        # held-out singles' priors (loo_single) have it
        self._apply_target_effect(
            [u[0] for u in unknown], prior, np.repeat(prior_var[:, None], g, axis=1), base
        )
        y = summary.delta[combo]

        def system(
            hidden: tuple[str, str | None, float] | None,
        ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
            unk = [*unknown, hidden] if hidden is not None else unknown
            pos = {u: j for j, u in enumerate(unk)}
            rows, sel = [], []
            for r, ks in enumerate(keys):
                idx = [pos[k] for k in ks if k in pos]
                if idx:
                    rows.append(idx)
                    sel.append(r)
            res = y[sel].copy()
            for a, r in enumerate(sel):
                for k in keys[r]:
                    if k not in pos:
                        res[a] -= self.measured_delta_[measured[k]]
            pri = prior if hidden is None else np.vstack([prior, loo_single[measured[hidden]]])
            return rows, res, pri

        # choose the prior weight by recovering the measured singles from the combinations
        errors = {lam: np.zeros(g) for lam in _SINGLES_LAMBDA_GRID}
        top = {lam: [] for lam in _SINGLES_LAMBDA_GRID}
        gp_err = []
        for h in held:
            truth = self.measured_delta_[measured[h]][None, :]
            gp = loo_single[measured[h]][None, :]
            gp_err.append(float(mm.top_gene_error(gp - truth, truth)[0]))
            rows, res, pri = system(h)
            for lam in _SINGLES_LAMBDA_GRID:
                est = mm.combination_singles(rows, res, pri, lam)[-1][None, :]
                top[lam].append(float(mm.top_gene_error(est - truth, truth)[0]))
                errors[lam] += (est[0] - truth[0]) ** 2
        best: tuple[float, float | None] = (float(np.mean(gp_err)), None)
        selection["combination-singles|gp"] = best[0]
        for lam in _SINGLES_LAMBDA_GRID:
            e = float(np.mean(top[lam]))
            selection[f"combination-singles|lambda={lam}"] = e
            if e < best[0] - 1e-12:
                best = (e, lam)
        if best[1] is None:
            return
        self.inferred_keys_ = [[t, c, _log_dose(d)] for t, c, d in unknown]
        self.inferred_delta_ = mm.combination_singles(*system(None), best[1])
        self.inferred_var_ = errors[best[1]] / len(held)
        self._index_inferred()

    def _index_inferred(self) -> None:
        self._inferred = {
            (t, c, round(float(ld), 9)): j for j, (t, c, ld) in enumerate(self.inferred_keys_)
        }

    def _inferred_single(self, target: str, context: str | None, dose: float) -> int | None:
        """Row of ``inferred_delta_`` of a target inferred from combinations, or ``None``."""
        return getattr(self, "_inferred", {}).get((target, context, round(_log_dose(dose), 9)))

    # ------------------------------------------------------------------------- measured singles
    def _index_measured(self) -> None:
        self._measured: dict[tuple[str, str | None], list[int]] = {}
        for i, (p, c, _) in enumerate(self.measured_keys_):
            self._measured.setdefault((p, c), []).append(i)

    def _measured_single(self, target: str, context: str | None, dose: float) -> int | None:
        rows = self._measured.get((target, context))
        if not rows:
            return None
        for i in rows:
            if abs(_log_dose(self.measured_keys_[i][2]) - _log_dose(dose)) < 1e-9:
                return i
        return None

    def _dose_profile(self, target: str, context: str | None, dose: float) -> np.ndarray | None:
        """The change of a target measured at other doses of the same context, interpolated.

        Linear in log10-dose between the two measured doses around ``dose``;
        the nearest measured dose outside their range. ``None`` when the target
        was never measured with a dose in that context.
        """
        if dose <= 0:
            return None
        rows = [
            i for i in self._measured.get((target, context), []) if self.measured_keys_[i][2] > 0
        ]
        if not rows:
            return None
        ld = np.array([_log_dose(self.measured_keys_[i][2]) for i in rows])
        order = np.argsort(ld)
        ld, rows = ld[order], [rows[i] for i in order]
        q = _log_dose(dose)
        if q <= ld[0]:
            return self.measured_delta_[rows[0]]
        if q >= ld[-1]:
            return self.measured_delta_[rows[-1]]
        j = int(np.searchsorted(ld, q))
        w = (q - ld[j - 1]) / (ld[j] - ld[j - 1])
        return (1 - w) * self.measured_delta_[rows[j - 1]] + w * self.measured_delta_[rows[j]]

    def _measured_profile(self, target: str, context: str | None, dose: float) -> np.ndarray | None:
        """The measured change of a single target (exact, or interpolated over doses), or ``None``."""
        j = self._measured_single(target, context, dose)
        if j is not None:
            return self.measured_delta_[j]
        return self._dose_profile(target, context, dose)

    # ------------------------------------------------------------------------- prediction
    def _gp_singles(
        self,
        targets: list[str],
        log_doses: np.ndarray,
        states: np.ndarray,
        *,
        weights: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """GP posterior mean (change) and variance factor of single targets in given control states.

        With ``weights``, also the smoother weights ``k (K + lam I)^-1`` of the
        training rows in each mean (targets x training rows).
        """
        if not targets:
            g = len(self.genes_)
            empty = (np.zeros((0, g)), np.zeros(0))
            return (*empty, np.zeros((0, len(self.row_targets_)))) if weights else empty
        out_mean, out_var, out_weights = [], [], []
        for start in range(0, len(targets), 2048):
            sl = slice(start, start + 2048)
            t, ld, z = targets[sl], log_doses[sl], states[sl]
            k = self._full_kernel(
                self.sources_,
                t,
                ld,
                z,
                self.row_targets_,
                self.row_log_doses_,
                self.row_states_,
                self.tau_,
            )
            # a target without embeddings keeps the prior variance of an embedded one
            kss = self._target_diagonal(t)
            kss = np.maximum(
                kss, self.kernel_scale_ - (_CONTEXT_BIAS if self.context_scale_ else 0.0)
            )
            if self.context_scale_ is not None:
                kss = kss + _CONTEXT_BIAS
            mean = self.prior_mean_ + k @ self.alpha_ - self.rho_ * (z - self.context_center_)
            v = (
                kss
                - np.einsum("ij,jk,ik->i", k, self.inverse_, k)
                + self.ridge_ * self.kernel_scale_
            )
            v = np.maximum(v, 1e-12)
            out_mean.append(mean)
            out_var.append(v)
            if weights:
                out_weights.append(k @ self.inverse_)
        if weights:
            return np.vstack(out_mean), np.concatenate(out_var), np.vstack(out_weights)
        return np.vstack(out_mean), np.concatenate(out_var)

    def _additive_parts(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        doses: list[float],
        control_mean: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sum of single changes, sum of their pairwise products and the sum's variance, per condition."""
        g = len(self.genes_)
        n = len(perturbations)
        units: list[tuple[int, str]] = []
        parts: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        gp_t, gp_ld, gp_z, gp_key = [], [], [], []
        noise = self.gene_sigma2_ * self.ridge_ * self.kernel_scale_
        for i, p in enumerate(perturbations):
            for t in self.schema_.targets(p):
                units.append((i, t))
                measured = self._measured_profile(t, contexts[i], doses[i])
                inferred = self._inferred_single(t, contexts[i], doses[i])
                if measured is not None:
                    parts[(i, t)] = (measured, noise)
                elif inferred is not None:
                    parts[(i, t)] = (self.inferred_delta_[inferred], self.inferred_var_)
                else:
                    gp_t.append(t)
                    gp_ld.append(_log_dose(doses[i]))
                    gp_z.append(control_mean[i])
                    gp_key.append((i, t))
        if gp_t:
            mean, var = self._gp_singles(gp_t, np.asarray(gp_ld), np.stack(gp_z))
            var = var[:, None] * self.gene_sigma2_[None, :]
            self._apply_target_effect(gp_t, mean, var, np.stack(gp_z))
            for key, m_, v_ in zip(gp_key, mean, var, strict=True):
                parts[key] = (m_, v_)
        add = np.zeros((n, g))
        var_add = np.zeros((n, g))
        prod = np.zeros((n, g))
        by_cond: dict[int, list[np.ndarray]] = {}
        for i, t in units:
            m_, v_ = parts[(i, t)]
            add[i] += m_
            var_add[i] += v_
            by_cond.setdefault(i, []).append(m_)
        for i, vals in by_cond.items():
            for a in range(len(vals)):
                for b in range(a + 1, len(vals)):
                    prod[i] += vals[a] * vals[b]
        return add, prod, var_add

    def _predict_with_var(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        doses = doses or [0.0] * len(perturbations)
        orders = np.array([self.schema_.order(p) for p in perturbations])
        out = np.zeros((len(perturbations), len(self.genes_)))
        var = np.zeros_like(out)
        single = np.flatnonzero(orders == 1)
        if len(single):
            mean, v, *weights = self._gp_singles(
                [perturbations[i] for i in single],
                np.array([_log_dose(doses[i]) for i in single]),
                control_mean[single],
                weights=self.shrinkage_ == "dispersion",
            )
            names = [perturbations[i] for i in single]
            mean = self._null_shrink(mean, v, names, weights[0] if weights else None)
            v = v[:, None] * self.gene_sigma2_[None, :]
            self._apply_target_effect(names, mean, v, control_mean[single])
            out[single], var[single] = mean, v
            for i in single:
                measured = (
                    self._measured_profile(perturbations[i], contexts[i], doses[i])
                    if self.measured_keys_
                    else None
                )
                if measured is not None:
                    out[i] = measured
                elif (
                    j := self._inferred_single(perturbations[i], contexts[i], doses[i])
                ) is not None:
                    # never measured alone, but inferred from the measured combinations
                    out[i] = self.inferred_delta_[j]
                    var[i] = self.inferred_var_
        multi = np.flatnonzero(orders >= 2)
        if len(multi):
            add, prod, var_add = self._additive_parts(
                [perturbations[i] for i in multi],
                [contexts[i] for i in multi],
                [doses[i] for i in multi],
                control_mean[multi],
            )
            out[multi] = add + self.theta_[:, 0] * add + self.theta_[:, 1] * prod
            var[multi] = var_add * (1 + self.theta_[:, 0]) ** 2 + self.interaction_var_[None, :]
        return out, var

    def _predict_delta(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None = None,
    ) -> np.ndarray:
        return self._predict_with_var(perturbations, contexts, control_mean, doses)[0]

    def _cell_changes(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        doses: Sequence[float] | float | None,
        control: AnnData,
    ) -> tuple[np.ndarray, Sequence[Any] | None]:
        """Predicted changes and, with detection on, each change's raw predictive sd.

        With ``cell_detection``, genes whose predicted change is at least
        ``detection_z_`` raw predictive sds from zero also change how
        many cells express them (:func:`aivc.instruments._manipulator_module.detection_shift_cells`),
        unless the predicted mean falls to zero (a change larger than the
        gene's level, clipped): those genes are only scaled.
        """
        if not np.isfinite(self.detection_z_):
            return super()._cell_changes(perturbations, contexts, doses, control)
        delta, scale = self.predict_with_scale(
            perturbations, contexts=contexts, doses=doses, control=control
        )
        return delta, list(zip(delta, scale, strict=True))

    def _move_cells(
        self,
        cells: np.ndarray,
        target: np.ndarray,
        rng: np.random.Generator,
        reference: Any,
        extra: Any = None,
    ) -> np.ndarray:
        if extra is None:
            return super()._move_cells(cells, target, rng, reference)
        delta, scale = extra
        genes = mm.detection_genes(delta, scale, self.detection_z_, target)
        return mm.detection_shift_cells(
            cells, target, rng, mm.detection_curve(reference), genes=genes
        )

    def predict_scale(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """Raw predictive standard deviation of each predicted change, conditions x genes.

        The GP posterior variance (plus noise) times a per-gene scale fitted on
        leave-one-target-out residuals; for combinations, the variances of the
        singles plus the interaction term's residual variance. Uncalibrated:
        :meth:`predict_interval` turns it into conformal intervals.
        """
        return self.predict_with_scale(
            perturbations, contexts=contexts, doses=doses, control=control
        )[1]

    def predict_with_scale(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted change and its raw standard deviation in one pass."""
        from aivc.instruments._base import _broadcast_doses

        perts, ctxs, base = self._resolve(perturbations, contexts, control)
        if not perts:
            z = np.zeros((0, len(self.genes_)))
            return z, z.copy()
        mean, var = self._predict_with_var(perts, ctxs, base, _broadcast_doses(doses, len(perts)))
        return mean, np.sqrt(var)

    def predict_interval(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
        level: float = 0.9,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted change with conformal per-gene intervals: ``(delta, lower, upper)``.

        ``delta ± q * scale`` with ``scale`` from :meth:`predict_scale` and ``q``
        the conformal quantile at ``level`` of held-out ``|residual| / scale``
        on the training conditions (leave-one-target-out for singles,
        leave-one-combination-out for combinations, pooled over genes).
        """
        check_level(level)
        delta, scale = self.predict_with_scale(
            perturbations, contexts=contexts, doses=doses, control=control
        )
        perts = [str(p) for p in perturbations]
        groups = [f"order{min(self.schema_.order(p), 2)}" for p in perts]
        lower, upper = self.calibrator_.interval(delta, scale, level=level, groups=groups)
        return delta, lower, upper

    # ------------------------------------------------------------------------- persistence
    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        cal_arrays, cal_meta = self.calibrator_.state()
        arrays: dict[str, np.ndarray] = {
            "alpha": self.alpha_,
            "inverse": self.inverse_,
            "prior_mean": self.prior_mean_,
            "row_log_doses": self.row_log_doses_,
            "row_states": self.row_states_,
            "context_center": self.context_center_,
            "gene_sigma2": self.gene_sigma2_,
            "gene_weight": self.gene_weight_,
            "null_weight": self.null_weight_,
            "measured_delta": self.measured_delta_,
            "theta": self.theta_,
            "interaction_var": self.interaction_var_,
            "inferred_delta": self.inferred_delta_,
            "inferred_var": self.inferred_var_,
        }
        arrays.update({f"calibrator.{k}": v for k, v in cal_arrays.items()})
        if self.row_delta_ is not None and len(self.measured_delta_) != len(self.row_targets_):
            # only when the GP rows are not the measured singles (none was measured alone)
            arrays["row_delta"] = self.row_delta_
        meta: dict[str, Any] = {
            "sources": self.sources_,
            "ridge_chosen": self.ridge_,
            "tau": self.tau_,
            "rho": self.rho_,
            "shrinkage": self.shrinkage_,
            "prior_scale": self.prior_scale_,
            "target_change": self.target_change_,
            "target_sd": self.target_sd_,
            "target_form": self.target_form_,
            "target_fraction": self.target_fraction_,
            "shrinkage_strength": self.shrinkage_strength_,
            "detection_z": None if np.isinf(self.detection_z_) else self.detection_z_,
            "kernel_scale": self.kernel_scale_,
            "context_scale": self.context_scale_,
            "identity": self.identity_,
            "row_targets": self.row_targets_,
            "row_contexts": self.row_contexts_,
            "measured_keys": self.measured_keys_,
            "inferred_keys": self.inferred_keys_,
            "selection": self.selection_,
            "calibrator": cal_meta,
            "tables": {},
        }
        for s in self.sources_:
            arrays[f"table.{s}"] = self.tables_[s].to_numpy(dtype=np.float32)
            meta["tables"][s] = list(map(str, self.tables_[s].index))
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.alpha_ = arrays["alpha"]
        self.inverse_ = arrays["inverse"]
        self.prior_mean_ = arrays["prior_mean"]
        self.row_log_doses_ = arrays["row_log_doses"]
        self.row_states_ = arrays["row_states"]
        self.context_center_ = arrays["context_center"]
        self.gene_sigma2_ = arrays["gene_sigma2"]
        self.gene_weight_ = arrays["gene_weight"]
        self.null_weight_ = arrays.get("null_weight", np.ones_like(self.gene_weight_))
        self.row_delta_ = arrays.get("row_delta")
        self.shrinkage_ = str(meta.get("shrinkage", "none"))
        self.prior_scale_ = float(meta.get("prior_scale", 1.0))
        change = meta.get("target_change")
        self.target_change_ = None if change is None else float(change)
        self.target_sd_ = float(meta.get("target_sd", 0.0))
        self.target_form_ = str(meta.get("target_form", "shift"))
        self.target_fraction_ = float(meta.get("target_fraction", 1.0))
        if self.target_form_ not in {"shift", "fraction"} or not (
            np.isfinite(self.target_fraction_) and self.target_fraction_ >= 0
        ):
            msg = (
                "The model directory is corrupted: its own-gene model must have form 'shift' or "
                "'fraction' and a finite, non-negative share of expression left. Got "
                f"{self.target_form_!r} and {self.target_fraction_!r}."
            )
            raise DataValidationError(msg)
        self.shrinkage_strength_ = float(meta.get("shrinkage_strength", 0.0))
        z = meta.get("detection_z", _DETECTION_Z if self.cell_detection is True else None)
        self.detection_z_ = float("inf") if z is None else float(z)
        self.measured_delta_ = arrays["measured_delta"]
        self.theta_ = arrays["theta"]
        self.interaction_var_ = arrays["interaction_var"]
        g = len(self.interaction_var_)
        self.inferred_delta_ = arrays.get("inferred_delta", np.zeros((0, g)))
        self.inferred_var_ = arrays.get("inferred_var", np.zeros(g))
        self.inferred_keys_ = [list(k) for k in meta.get("inferred_keys", [])]
        self._index_inferred()
        self.sources_ = list(meta["sources"])
        self.ridge_ = float(meta["ridge_chosen"])
        self.tau_ = float(meta["tau"])
        self.rho_ = float(meta["rho"])
        self.kernel_scale_ = float(meta["kernel_scale"])
        self.identity_ = bool(meta["identity"])
        self.context_scale_ = (
            None if meta["context_scale"] is None else float(meta["context_scale"])
        )
        self.row_targets_ = list(meta["row_targets"])
        self.row_contexts_ = list(meta["row_contexts"])
        self.measured_keys_ = [list(k) for k in meta["measured_keys"]]
        changes = self._row_changes()
        if self.shrinkage_ not in NULL_SHRINKAGE or (
            self.shrinkage_ == "dispersion"
            and (
                changes is None or changes.shape != (len(self.row_targets_), len(self.gene_weight_))
            )
        ):
            msg = (
                "The model directory is corrupted: its shrinkage towards no change "
                f"({self.shrinkage_!r}) does not match the stored training changes."
            )
            raise DataValidationError(msg)
        self.selection_ = dict(meta["selection"])
        self.calibrator_ = ConformalCalibrator.from_state(
            {k[len("calibrator.") :]: v for k, v in arrays.items() if k.startswith("calibrator.")},
            meta["calibrator"],
        )
        self._set_tables(
            {s: pd.DataFrame(arrays[f"table.{s}"], index=idx) for s, idx in meta["tables"].items()}
        )
        self._index_measured()
