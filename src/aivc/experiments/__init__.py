"""In silico experiments: virtual screens, inverse design, explanations and the lab in the loop.

- :func:`screen` scores every single perturbation of a gene list, or every
  pair of a panel, under an :class:`Objective`, ranked by predicted effect and
  by an uncertainty-aware score; chunked, resumable, optionally on Dask.
- :func:`inverse_design` searches single and paired perturbations (and doses)
  that move a start state closest to a target, with the predicted path.
- :func:`default_candidates` is what design, screens and proposals choose
  from when no list is given: the model's measured targets and the genes of
  its panel that prior knowledge describes.
- :func:`explain` says why a prediction is what it is: attribution by
  knowledge source, enriched GO processes, responding network neighbours.
- :func:`propose` picks the next experiments with a registered acquisition
  strategy (``random``, ``uncertainty``, ``gp-ucb``, ``degree-prior``,
  ``aivc-design``); the ``lab-loop`` task of :mod:`aivc.evaluate` benchmarks
  them on the simulator and on real genome-wide CRISPR screens.
- :class:`Ledger` records lab-loop projects in SQLite or PostgreSQL, with
  versioned schema migrations (:mod:`aivc.experiments.migrations`).
- :func:`run_loop` runs the lab in the loop (propose -> measure -> update)
  against a :class:`SimulatorLab`, a :class:`ResultsFileLab`, or a replay of a
  finished screen (:class:`ReplayLab` for its cells, :class:`ScreenScoresLab`
  for its gene-level scores); a killed loop resumes where it stopped.
- :func:`fit_holdout` fits a perturbation model with a seeded fifth of the
  measured perturbations held out; :func:`predict_with_observed` sets its
  predictions (intervals, DE calls, top genes) against the measured changes
  (:func:`measured_changes`); :func:`calibration_curve` is the coverage of its
  intervals on the held-out perturbations; :func:`propose_next` picks what to
  measure next from a model and the measurements; :func:`cell_embedding` places
  cells and predicted states in a 2-D PCA. The web page, the REST API and the
  MCP server call these.

Names are imported on first use, so ``import aivc.experiments`` stays cheap and
the database libraries are only needed by the ledger and the loop.
"""

from __future__ import annotations

from aivc._lazy import lazy_exports

_EXPORTS = {
    "Ledger": "aivc.experiments._ledger",
    "LedgerConflictError": "aivc.experiments._ledger",
    "ModelRecord": "aivc.experiments._ledger",
    "PredictionRecord": "aivc.experiments._ledger",
    "ResultRecord": "aivc.experiments._ledger",
    "RoundRecord": "aivc.experiments._ledger",
    "LoopReport": "aivc.experiments._loop",
    "ResultsFileLab": "aivc.experiments._loop",
    "RoundOutcome": "aivc.experiments._loop",
    "SimulatorLab": "aivc.experiments._loop",
    "run_loop": "aivc.experiments._loop",
    "ReplayLab": "aivc.experiments._replay",
    "ScreenScoresLab": "aivc.experiments._replay",
    "Objective": "aivc.experiments._objectives",
    "make_objective": "aivc.experiments._objectives",
    "reference_states": "aivc.experiments._objectives",
    "ScreenResult": "aivc.experiments._screen",
    "screen": "aivc.experiments._screen",
    "Candidates": "aivc.experiments._candidates",
    "default_candidates": "aivc.experiments._candidates",
    "DesignResult": "aivc.experiments._design",
    "inverse_design": "aivc.experiments._design",
    "Explanation": "aivc.experiments._explain",
    "edge_precision": "aivc.experiments._explain",
    "explain": "aivc.experiments._explain",
    "gene_set_enrichment": "aivc.experiments._explain",
    "STRATEGIES": "aivc.experiments._acquisition",
    "Strategy": "aivc.experiments._acquisition",
    "propose": "aivc.experiments._acquisition",
    "register_strategy": "aivc.experiments._acquisition",
    "GPRegressor": "aivc.experiments._surrogates",
    "batch_ucb": "aivc.experiments._surrogates",
    "ESSENTIAL_GO_TERMS": "aivc.experiments._screens_data",
    "SCREENS": "aivc.experiments._screens_data",
    "essential_machinery_genes": "aivc.experiments._screens_data",
    "load_screen": "aivc.experiments._screens_data",
    "read_mageck_summary": "aivc.experiments._screens_data",
    "screen_hits": "aivc.experiments._screens_data",
    "CalibrationCurve": "aivc.experiments._whatif",
    "CellEmbedding": "aivc.experiments._whatif",
    "HoldoutFit": "aivc.experiments._whatif",
    "ObservedChanges": "aivc.experiments._whatif",
    "PredictedChanges": "aivc.experiments._whatif",
    "Proposals": "aivc.experiments._whatif",
    "calibration_curve": "aivc.experiments._whatif",
    "cell_embedding": "aivc.experiments._whatif",
    "check_context_declared": "aivc.experiments._whatif",
    "check_perturbations": "aivc.experiments._whatif",
    "counts_schema": "aivc.experiments._whatif",
    "fit_holdout": "aivc.experiments._whatif",
    "measured_changes": "aivc.experiments._whatif",
    "merge_observed": "aivc.experiments._whatif",
    "perturbation_model": "aivc.experiments._whatif",
    "predict_with_observed": "aivc.experiments._whatif",
    "propose_next": "aivc.experiments._whatif",
    "resolve_context": "aivc.experiments._whatif",
    "suggest_perturbations": "aivc.experiments._whatif",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
