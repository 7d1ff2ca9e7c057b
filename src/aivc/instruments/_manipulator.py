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

8. **The blend with the simple baselines.** A user who would otherwise
   predict with a simple baseline must not do worse with this model, on data
   it was never tuned on. So the baselines are candidates inside it: for a
   target never measured, a target measured only in other contexts and a
   combination, the regression's prediction (steps 1-7) is blended with
   ``control``, ``train-mean``, ``context-mean``, ``perturbation-elsewhere``,
   ``additive`` and ``linear`` (those that apply), with convex weights per
   block of genes fitted on nested held-out predictions of the training data
   (every candidate refitted without the held-out conditions). The blend, or a
   single candidate, replaces the regression only when a cross-fit shows it
   ahead by more than one standard error over held-out conditions
   (``blend``; :mod:`aivc.instruments._perturb._blend`). Intervals of blended
   predictions are conformal per kind of query and decile of gene
   variability.

Each step is a small component with its own fitted state, in
:mod:`aivc.instruments._perturb`: the knowledge-kernel regression
(``_kernel``, with the embedding tables of ``_embeddings``), the context
transfer (``_context``), the own-gene model (``_target``), the shrinkage
towards no change (``_shrinkage``), the measured singles (``_measured``), the
combinations and the singles inferred from them (``_combinations``), the
calibration (``_calibration``), the cell generation (``_cells``) and the blend
with the simple baselines (``_blend``).
:class:`PerturbModel` composes them; its fitted attributes read the stages'
states, and its saved state is derived from their declarations
(:mod:`aivc.instruments._perturb._state`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aivc.data import DataValidationError
from aivc.instruments._base import PerturbationModel, PerturbationSummary
from aivc.instruments._conformal import check_level
from aivc.instruments._perturb._blend import Blend
from aivc.instruments._perturb._calibration import Calibration
from aivc.instruments._perturb._cells import CellGeneration
from aivc.instruments._perturb._combinations import (
    InferredSingles,
    Interactions,
    additive_parts,
)
from aivc.instruments._perturb._context import ContextTransfer
from aivc.instruments._perturb._embeddings import (
    ALL_SOURCES,
    KNOWLEDGE_SOURCES,
    EmbeddingTables,
    data_tables,
    knowledge_tables,
)
from aivc.instruments._perturb._kernel import KernelRegression, TrainingRows, log_dose
from aivc.instruments._perturb._measured import MeasuredSingles
from aivc.instruments._perturb._shrinkage import NULL_SHRINKAGE, NullShrinkage, neighbour_dispersion
from aivc.instruments._perturb._state import dump_state, load_state
from aivc.instruments._perturb._target import TargetEffect
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["PERTURB_FORMAT_VERSION", "PerturbModel"]

logger = logging.getLogger(__name__)

#: Version of the layout of an ``aivc-perturb`` state (``state.perturb_format_version`` in
#: ``config.json``). Version 2 stores one entry per fitting stage; version 3 adds the blend
#: with the simple baselines; version 4 the nearest-neighbour baseline among them; loading
#: refuses others.
PERTURB_FORMAT_VERSION = 4

#: The dispersion of a prediction's neighbours, under its former name (used by benchmarks).
_neighbour_dispersion = neighbour_dispersion


class _StageField:
    """A fitted attribute of :class:`PerturbModel` that reads a field of one stage's state."""

    def __init__(self, stage: str, field: str) -> None:
        self.stage, self.field = stage, field
        self.name = field

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            component = obj.__dict__[self.stage]
        except KeyError:
            msg = f"{type(obj).__name__} has no {self.name!r} before it is fitted; call fit(adata) first."
            raise AttributeError(msg) from None
        return getattr(component.state, self.field)

    def __set__(self, obj: Any, value: Any) -> None:
        msg = (
            f"{self.name!r} is read from the fitted state of a stage; change "
            f"model.stages_[{self.stage.lstrip('_')!r}].state.{self.field} instead."
        )
        raise AttributeError(msg)


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
    blend
        Blend the regression with the simple baselines (see the module
        docstring, point 8, and :mod:`aivc.instruments._perturb._blend`). The
        weights, and whether they are used at all, are chosen on the training
        data only; ``selection_["blend_<kind>"]`` records the held-out errors,
        the choice and the mean weights. Where it was developed and checked is
        written in docs/benchmarks/defaults.md.
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
        Leave-out errors of every candidate, for inspection (the stages'
        ``selection`` entries together).
    gene_sigma2_
        Per-gene scale of the GP predictive variance.
    calibrator_
        Conformal calibrator of held-out residuals.
    stages_
        The fitted components by stage name (``kernel``, ``context``,
        ``target``, ``shrinkage``, ``measured``, ``interactions``,
        ``inferred``, ``cells``, ``calibration``); every fitted attribute above
        reads a field of one of their states.

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

    #: The stages, as (attribute holding the fitted component, component class); the saved
    #: state is one entry per stage, derived from each component's ``State`` declaration.
    _STAGES: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("_kernel", KernelRegression),
        ("_context", ContextTransfer),
        ("_target", TargetEffect),
        ("_shrinkage", NullShrinkage),
        ("_measured", MeasuredSingles),
        ("_interactions", Interactions),
        ("_inferred", InferredSingles),
        ("_cells", CellGeneration),
        ("_calibration", Calibration),
        ("_blend", Blend),
    )

    # fitted attributes, each a field of one stage's state
    sources_ = _StageField("_kernel", "sources")
    ridge_ = _StageField("_kernel", "ridge")
    identity_ = _StageField("_kernel", "identity")
    row_targets_ = _StageField("_kernel", "row_targets")
    row_contexts_ = _StageField("_kernel", "row_contexts")
    row_log_doses_ = _StageField("_kernel", "row_log_doses")
    row_states_ = _StageField("_kernel", "row_states")
    kernel_scale_ = _StageField("_kernel", "kernel_scale")
    prior_scale_ = _StageField("_kernel", "prior_scale")
    prior_mean_ = _StageField("_kernel", "prior_mean")
    alpha_ = _StageField("_kernel", "alpha")
    inverse_ = _StageField("_kernel", "inverse")
    gene_weight_ = _StageField("_kernel", "gene_weight")
    gene_sigma2_ = _StageField("_kernel", "gene_sigma2")
    context_scale_ = _StageField("_context", "scale")
    context_center_ = _StageField("_context", "center")
    tau_ = _StageField("_context", "tau")
    rho_ = _StageField("_context", "rho")
    target_change_ = _StageField("_target", "change")
    target_fraction_ = _StageField("_target", "fraction")
    target_form_ = _StageField("_target", "form")
    target_sd_ = _StageField("_target", "sd")
    shrinkage_ = _StageField("_shrinkage", "kind")
    shrinkage_strength_ = _StageField("_shrinkage", "strength")
    null_weight_ = _StageField("_shrinkage", "null_weight")
    measured_keys_ = _StageField("_measured", "keys")
    measured_delta_ = _StageField("_measured", "delta")
    theta_ = _StageField("_interactions", "theta")
    interaction_var_ = _StageField("_interactions", "interaction_var")
    inferred_keys_ = _StageField("_inferred", "keys")
    inferred_delta_ = _StageField("_inferred", "delta")
    inferred_var_ = _StageField("_inferred", "var")
    detection_z_ = _StageField("_cells", "detection_z")
    calibrator_ = _StageField("_calibration", "calibrator")

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
        blend: bool = True,
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
        self.blend = blend
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
        if not isinstance(self.blend, bool | np.bool_):
            msg = (
                f"The 'blend' parameter of PerturbModel must be a bool. Got {self.blend!r} instead."
            )
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

    # ------------------------------------------------------------------------- fitted stages
    @property
    def stages_(self) -> dict[str, Any]:
        """The fitted components by stage name, in fitting order."""
        self._check_fitted()
        return {component.State.stage: getattr(self, attr) for attr, component in self._STAGES}

    @property
    def selection_(self) -> dict[str, Any]:
        """Leave-out errors of every candidate of every stage (for inspection)."""
        self._check_fitted()
        out: dict[str, Any] = {}
        for attr in (
            "_target",
            "_kernel",
            "_context",
            "_shrinkage",
            "_interactions",
            "_cells",
            "_inferred",
            "_blend",
        ):
            out.update(getattr(self, attr).state.selection)
        return out

    # ------------------------------------------------------------------------- fitting
    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_params()
        schema = summary.schema
        g = len(summary.genes)
        wanted = self._requested_sources()
        knowledge = getattr(self, "_knowledge_frames", None)
        if knowledge is None:
            knowledge = knowledge_tables(
                [s for s in wanted if s in KNOWLEDGE_SOURCES], self._known_set
            )
        frames = dict(knowledge)
        frames.update(
            data_tables(
                wanted,
                summary,
                adata,
                seed=self.seed,
                n_coexpression_cells=self.n_coexpression_cells,
            )
        )
        tables = EmbeddingTables.from_frames({s: frames[s] for s in ALL_SOURCES if s in frames})
        doses = summary.doses or [0.0] * len(summary.perturbations)
        orders = [schema.order(p) for p in summary.perturbations]
        rows = TrainingRows.from_summary(summary, doses, orders)

        # 1. own gene, context geometry, knowledge-kernel regression (with the context choice)
        self._target, own = TargetEffect.fit(summary, rows.index, enabled=self.target_effect)
        self._context = ContextTransfer.from_controls(summary.control_mean, g)
        self._kernel, held = KernelRegression.fit(
            rows,
            tables,
            schema,
            self._context,
            auto=self.embeddings == "auto",
            ridge=self.ridge,
            gene_shrinkage=self.gene_shrinkage,
            choose_prior=self.null_shrinkage == "prior",
        )
        kernel = self._kernel.state
        y, var = rows.y, held.variance
        loo_scale = np.sqrt(kernel.gene_sigma2[None, :] * np.maximum(var, 1e-12)[:, None])

        # 2. shrinkage towards no change
        res = held.residuals
        self._shrinkage = NullShrinkage.none(g)
        if held.n_targets >= 3:
            self._shrinkage, res = NullShrinkage.fit(
                self.null_shrinkage,
                y,
                res,
                var,
                held.kernel,
                held.groups,
                held.ridge,
                inverse=kernel.inverse,
                gene_sigma2=kernel.gene_sigma2,
                embedded=bool(kernel.sources),
                keep_rows=not any(o == 1 for o in orders),
            )
        # held-out errors of the own-gene changes, for the intervals and the cells
        self._target.correct_held_out(res, loo_scale, own)

        # 3. combinations: interaction term and held-out residuals (with the regression for
        # unmeasured singles; singles inferred from the combinations are fitted afterwards)
        self._measured = MeasuredSingles.fit(summary, doses, orders)
        self._inferred = InferredSingles.none(g)
        combo_rows = [i for i, o in enumerate(orders) if o >= 2]
        residuals, scales, labels = [res], [loo_scale], ["order1"] * len(res)
        held_out = [(rows.index, y - res, loo_scale)]
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
                    all(self._measured.single(t, c, d) is not None for t in schema.targets(p))
                    for p, c, d in zip(perts, ctxs, cd, strict=True)
                ]
            )
            self._interactions, combo_res, combo_scale = Interactions.fit(
                add, prod, var_add, yobs, full, enabled=self.interactions
            )
            residuals.append(combo_res)
            scales.append(combo_scale)
            labels += ["order2"] * len(combo_rows)
            held_out.append((combo_rows, yobs - combo_res, combo_scale))
        else:
            self._interactions = Interactions.none(g)

        # 4. cells, singles inferred from combinations, calibration
        loo_single = self._measured.state.delta - res if len(res) == len(self._measured) else None
        self._cells = CellGeneration.fit(
            summary, adata, held_out, mode=self.cell_detection, seed=self.seed
        )
        self._inferred = InferredSingles.fit(
            summary,
            doses,
            loo_single,
            self._measured,
            self._unmeasured_singles,
            enabled=self.combination_singles,
        )
        self._calibration = Calibration.fit(residuals, scales, labels)
        # 5. the blend with the simple baselines, on nested held-out predictions
        self._blend = Blend.none(summary)
        if self.blend:
            self._blend = Blend.fit(self, summary, adata, knowledge=knowledge, seed=self.seed)
        logger.info(
            "aivc-perturb: sources %s, ridge %g, tau %g, rho %g, mean interaction %s",
            self.sources_,
            self.ridge_,
            self.tau_,
            self.rho_,
            np.round(self.theta_.mean(axis=0), 3).tolist(),
        )

    # ------------------------------------------------------------------------- composition
    def _gp_singles(
        self,
        targets: list[str],
        log_doses: np.ndarray,
        states: np.ndarray,
        *,
        weights: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """The regression's mean (change) and variance factor of single targets in control states.

        With ``weights``, also its smoother weights (targets x training rows).
        See :meth:`KernelRegression.predict`.
        """
        return self._kernel.predict(targets, log_doses, states, self._context, weights=weights)

    def _own_gene(self, targets: Sequence[str]) -> list[tuple[int, int]]:
        """``(row, gene)`` of the never-measured targets that are genes of the panel."""
        pos = {str(g): j for j, g in enumerate(self.genes_)}
        return self._target.own_gene(targets, pos, set(self.row_targets_))

    def _apply_target_effect(
        self, targets: Sequence[str], mean: np.ndarray, var: np.ndarray, base: np.ndarray
    ) -> None:
        """Set the own-gene change and variance of unmeasured single targets, in place."""
        pos = {str(g): j for j, g in enumerate(self.genes_)}
        self._target.apply(targets, mean, var, base, pos, set(self.row_targets_))

    def _unmeasured_singles(
        self, targets: list[str], log_doses: np.ndarray, states: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Change and per-gene variance of targets that were neither measured nor inferred
        (the regression with the own-gene model, without the shrinkage towards no change)."""
        mean, var = self._gp_singles(targets, log_doses, states)
        var = var[:, None] * self.gene_sigma2_[None, :]
        self._apply_target_effect(targets, mean, var, states)
        return mean, var

    def _row_changes(self) -> np.ndarray:
        """The training changes of the regression's rows: the measured singles, or (when none
        was measured alone, so the regression was fitted on combinations) those the shrinkage
        stored."""
        if len(self._measured) == len(self.row_targets_):
            return self.measured_delta_
        return self._shrinkage.state.row_changes

    def _additive_parts(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        doses: list[float],
        control_mean: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sum of single changes, sum of their pairwise products and the sum's variance, per condition."""
        return additive_parts(
            [self.schema_.targets(p) for p in perturbations],
            contexts,
            doses,
            control_mean,
            measured=self._measured,
            inferred=self._inferred,
            predict=self._unmeasured_singles,
            noise=self.gene_sigma2_ * self.ridge_ * self.kernel_scale_,
        )

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
            names = [perturbations[i] for i in single]
            shrinkage = self._shrinkage
            dispersion = shrinkage.state.kind == "dispersion"
            mean, v, *weights = self._gp_singles(
                names,
                np.array([log_dose(doses[i]) for i in single]),
                control_mean[single],
                weights=dispersion,
            )
            if shrinkage.state.kind != "none":
                mean = shrinkage.apply(
                    mean,
                    v,
                    gene_sigma2=self.gene_sigma2_,
                    weights=weights[0] if weights else None,
                    row_changes=self._row_changes() if dispersion else None,
                    embedded=self._kernel.embedded(names) if self.sources_ else None,
                )
            v = v[:, None] * self.gene_sigma2_[None, :]
            self._apply_target_effect(names, mean, v, control_mean[single])
            out[single], var[single] = mean, v
            inferred = self._inferred
            for i in single:
                measured = (
                    self._measured.profile(perturbations[i], contexts[i], doses[i])
                    if len(self._measured)
                    else None
                )
                if measured is not None:
                    out[i] = measured
                elif (j := inferred.lookup(perturbations[i], contexts[i], doses[i])) is not None:
                    # never measured alone, but inferred from the measured combinations
                    out[i] = inferred.state.delta[j]
                    var[i] = inferred.state.var
        multi = np.flatnonzero(orders >= 2)
        if len(multi):
            add, prod, var_add = self._additive_parts(
                [perturbations[i] for i in multi],
                [contexts[i] for i in multi],
                [doses[i] for i in multi],
                control_mean[multi],
            )
            out[multi] = self._interactions.combine(add, prod)
            var[multi] = self._interactions.variance(var_add)
        blend = getattr(self, "_blend", None)
        if blend is not None and blend.state.kinds:
            out = self._blended(out, perturbations, contexts, control_mean, doses)
        return out, var

    def query_kinds(
        self,
        perturbations: Sequence[str],
        contexts: Sequence[str | None],
        doses: Sequence[float] | None = None,
    ) -> list[str | None]:
        """How each query is predicted: ``None`` for a measured (or inferred) single, else the
        kind of the blend (``"target"``, ``"pair"`` or ``"combination"``; see
        :mod:`aivc.instruments._perturb._blend`)."""
        doses = list(doses) if doses is not None else [0.0] * len(perturbations)
        measured_targets = {str(k[0]) for k in self.measured_keys_}
        out: list[str | None] = []
        for p, c, d in zip(perturbations, contexts, doses, strict=True):
            if self.schema_.order(p) >= 2:
                out.append("combination")
            elif (
                len(self._measured) and self._measured.profile(p, c, d) is not None
            ) or self._inferred.lookup(p, c, d) is not None:
                out.append(None)
            elif p in measured_targets:
                out.append("pair")
            else:
                out.append("target")
        return out

    def _blended(
        self,
        kernel: np.ndarray,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float],
    ) -> np.ndarray:
        """The regression's changes with the blend applied to the rows of each blended kind."""
        out = kernel.copy()
        kinds = self.query_kinds(perturbations, contexts, doses)
        targets = [self.schema_.targets(p) for p in perturbations]
        for kind in self._blend.state.kinds:
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if not rows:
                continue
            keep = None
            if kind == "target":
                keep = np.zeros((len(rows), len(self.genes_)), dtype=bool)
                for r, gene in self._own_gene([perturbations[i] for i in rows]):
                    keep[r, gene] = True
            out[rows] = self._blend.apply(
                kernel,
                rows,
                kind,
                targets=targets,
                perturbations=perturbations,
                contexts=contexts,
                doses=doses,
                control_mean=control_mean,
                keep=keep,
            )
        return out

    # ------------------------------------------------------------------------- prediction
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
        if not self._cells.uses_detection:
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
        return self._cells.move(cells, target, rng, reference, extra)

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
        mean, sd, _ = self._with_scale_and_base(perturbations, contexts, doses, control)
        return mean, sd

    def _with_scale_and_base(
        self,
        perturbations: Sequence[str],
        contexts: Sequence[str | None] | str | None,
        doses: Sequence[float] | float | None,
        control: AnnData | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Floored change, raw sd and the control means they are relative to (one resolve)."""
        return self._resolved_prediction(perturbations, contexts, doses, control)[3:]

    def _resolved_prediction(
        self,
        perturbations: Sequence[str],
        contexts: Sequence[str | None] | str | None,
        doses: Sequence[float] | float | None,
        control: AnnData | None,
    ) -> tuple[list[str], list[str | None], list[float], np.ndarray, np.ndarray, np.ndarray]:
        """The resolved request (labels, contexts, doses) with its floored change, raw sd and
        control means."""
        from aivc.instruments._base import _broadcast_doses, floor_at_zero

        perts, ctxs, base = self._resolve(perturbations, contexts, control)
        if not perts:
            z = np.zeros((0, len(self.genes_)))
            return perts, ctxs, [], z, z.copy(), z.copy()
        dose_list = _broadcast_doses(doses, len(perts))
        mean, var = self._predict_with_var(perts, ctxs, base, dose_list)
        delta = floor_at_zero(mean, base, model=type(self).__name__)
        return perts, ctxs, dose_list, delta, np.sqrt(var), base

    def _predict_interval(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None,
        doses: Sequence[float] | float | None,
        control: AnnData | None,
        level: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted change with conformal per-gene intervals: ``(delta, lower, upper)``.

        ``delta ± q * scale`` with ``scale`` from :meth:`predict_scale` and ``q``
        the conformal quantile at ``level`` of held-out ``|residual| / scale``
        on the training conditions (leave-one-target-out for singles,
        leave-one-combination-out for combinations, pooled over genes).
        """
        from aivc.instruments._base import clip_interval

        check_level(level)
        perts, ctxs, dose_list, delta, scale, base = self._resolved_prediction(
            perturbations, contexts, doses, control
        )
        orders = [self.schema_.order(p) for p in perts]
        lower, upper = self._calibration.interval(delta, scale, orders, level=level)
        if self._blend.state.kinds and len(delta):
            kinds = self.query_kinds(perts, ctxs, dose_list)
            for kind in self._blend.state.kinds:
                rows = [i for i, k in enumerate(kinds) if k == kind]
                if rows and self._blend.calibrates(kind):
                    half = self._blend.half_width(scale[rows], kind, level, change=delta[rows])
                    lower[rows], upper[rows] = delta[rows] - half, delta[rows] + half
        lower, upper = clip_interval(lower, upper, base)
        return delta, lower, upper

    # ------------------------------------------------------------------------- persistence
    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"perturb_format_version": PERTURB_FORMAT_VERSION}
        for attr, component in self._STAGES:
            stage_arrays, meta[component.State.stage] = dump_state(getattr(self, attr).state)
            arrays.update(stage_arrays)
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        version = meta.get("perturb_format_version", 1)
        if version != PERTURB_FORMAT_VERSION:
            msg = (
                f"This aivc-perturb model was saved in format version {version!r}; this aivc reads "
                f"version {PERTURB_FORMAT_VERSION}, which stores each fitting stage's state "
                "separately. Refit the model with this aivc (PerturbModel(...).fit(...) or "
                "`aivc fit ... --model aivc-perturb`) and save it again."
            )
            raise DataValidationError(msg)
        for attr, component in self._STAGES:
            setattr(self, attr, component(load_state(component.State, arrays, meta)))
        self._blend.attach(self.schema_, self.genes_)
        g = len(self.genes_)
        changes = self._row_changes()
        if self.shrinkage_ == "dispersion" and changes.shape != (len(self.row_targets_), g):
            msg = (
                "The model directory is corrupted: its shrinkage towards no change "
                f"({self.shrinkage_!r}) does not match the stored training changes."
            )
            raise DataValidationError(msg)
