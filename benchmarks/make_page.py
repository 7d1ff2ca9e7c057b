"""Write BENCHMARKS.md from the results folders of the runs listed in benchmarks/runs.toml.

Usage::

    python benchmarks/make_page.py RESULTS_ROOT [--timings FILE] [--out BENCHMARKS.md]
    python benchmarks/make_page.py RESULTS_ROOT --print-commands

``RESULTS_ROOT/<name>/results.json`` is read for every run of the manifest (a
missing folder becomes a "not run" row, never a silent gap). Runs marked
``from = "suite"`` are parts of the generalization suite, one command that
fills ``RESULTS_ROOT/<suite out>/<task>/<dataset>/`` and writes the win/loss
matrix ``suite.json`` beside them; the matrix gets its own section.
``--timings`` (default ``RESULTS_ROOT/timings.txt`` when present) holds the
lines printed by ``benchmarks/timed.py``: the wall time and peak memory of
each whole command. ``--print-commands`` prints ``folder<TAB>arguments`` once
per command, for ``benchmarks/run_all.sh``.

The page is built from the data alone: which model is aivc's, which are
baselines and which are published peers, and the headline metric of each task
are declared in :data:`RULES` and :data:`PEERS`; every number comes from a
``results.json``, the suite's ``suite.json`` or the timings file. Only the
standard library is used, so the page can be rebuilt without installing aivc.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "runs.toml"
#: The results root written in the commands shown on the page.
SHOWN_ROOT = "results"
MAX_LINES = 340

#: Published models of other groups, run in the same command: "peers". Every other model whose
#: name does not start with "aivc" is a baseline; other "aivc*" models are variants of ours.
PEERS = frozenset(
    {
        "gears",
        "scvi",
        "scanvi",
        "scanvi-retrain",
        "harmony",
        "gimvi",
        "tangram",
        "cellcharter",
        "novae",
        "state",
        "biolord",
        "cellflow",
        "prescient",
    }
)
#: Prefix of a wrapped model (calibration wraps baselines as ``conformal:<name>``).
WRAPPER_PREFIX = "conformal:"


@dataclass(frozen=True)
class Rule:
    """How one task is summarised.

    Attributes
    ----------
    ours
        Name of aivc's own model in the task's results.
    metric
        Headline metric of the summary table.
    better
        ``"higher"``, ``"lower"`` or ``"band"``: a mean inside ``band`` meets the target, and
        models that meet it are ranked by ``then`` (lower is better).
    columns
        Main metrics of the task's own table (those present in the results are shown).
    band
        Inclusive bounds of the target band when ``better == "band"``.
    then
        Metric, lower is better, that ranks the models inside the band.
    """

    ours: str
    metric: str
    better: str
    columns: tuple[str, ...]
    band: tuple[float, float] | None = None
    then: str | None = None

    def score(self, mean: float) -> float:
        """A number that is larger for a better ``mean`` (higher or lower rules)."""
        return -mean if self.better == "lower" else mean

    def meets(self, mean: float) -> bool:
        """Whether ``mean`` lies inside the target band (band rules)."""
        lo, hi = self.band or (-math.inf, math.inf)
        return lo <= mean <= hi

    @property
    def band_text(self) -> str:
        """The band in words, e.g. ``0.85–0.95``."""
        lo, hi = self.band or (-math.inf, math.inf)
        return f"{lo:.2f}–{hi:.2f}"

    @property
    def direction(self) -> str:
        """The direction in words, for the page."""
        if self.better == "band":
            return f"in {self.band_text} meets the target; then narrower {self.then} wins"
        return f"{self.better} is better"


_PERTURBATION_COLUMNS = (
    "pearson_delta_de20",
    "mse_de20",
    "systema_pearson_delta",
    "overlap_at_N",
    "discrimination_score_l1",
    "mae",
    "energy_distance_rel",
)
#: Column of the calibration table with the range of coverage over the variability deciles.
DECILE_COLUMN = "coverage_90 deciles min–max"
_DECILE_KEY = "coverage_90_by_variability_decile"

#: Per task: aivc's model, the headline metric and its direction, the table's columns.
RULES: dict[str, Rule] = {
    "unseen-single": Rule("aivc-perturb", "pearson_delta_de20", "higher", _PERTURBATION_COLUMNS),
    "combinations": Rule("aivc-perturb", "mse_de20", "lower", _PERTURBATION_COLUMNS),
    "unseen-cell-type": Rule("aivc-perturb", "pearson_delta_de20", "higher", _PERTURBATION_COLUMNS),
    "unseen-context": Rule("aivc-perturb", "pearson_delta_de20", "higher", _PERTURBATION_COLUMNS),
    "simulator": Rule("aivc-perturb", "mse_de20", "lower", _PERTURBATION_COLUMNS),
    "calibration": Rule(
        "aivc-perturb",
        "coverage_90",
        "band",
        (
            "coverage_90",
            "coverage_80",
            "coverage_90_de20",
            DECILE_COLUMN,
            "interval_width_90",
            "spearman_uncertainty_error",
        ),
        band=(0.85, 0.95),
        then="interval_width_90",
    ),
    "label-transfer": Rule(
        "aivc", "accuracy", "higher", ("accuracy", "macro_f1", "ece", "abstention", "query_mixing")
    ),
    "unknown-type": Rule(
        "aivc",
        "unknown_auroc",
        "higher",
        (
            "unknown_auroc",
            "unknown_recall",
            "accuracy_known",
            "accuracy_known_closed",
            "known_accuracy_drop",
        ),
    ),
    "integration": Rule(
        "aivc",
        "overall",
        "higher",
        ("overall", "bio", "batch", "nmi", "ari", "label_asw", "ilisi", "graph_connectivity"),
    ),
    "rna-to-protein": Rule("aivc-protein", "pearson", "higher", ("pearson", "rmse")),
    "lab-loop": Rule(
        "aivc-design",
        "hit_ratio_final",
        "higher",
        ("hit_ratio_final", "error_auc", "final_error", "final_error_rel"),
    ),
    "learning-curve": Rule(
        "aivc-perturb", "pearson_delta_de20", "higher", ("pearson_delta_de20", "mse_de20")
    ),
    "knowledge": Rule(
        "ridge-fused",
        "mse_rel",
        "lower",
        ("mse_rel", "mse_rel_effect", "pearson_delta", "coverage"),
    ),
    "chemical": Rule(
        "aivc-chem",
        "pearson_delta_top20",
        "higher",
        ("pearson_delta", "pearson_delta_top20", "mse_top20", "mse", "map_moa", "coverage_90"),
    ),
    "time": Rule(
        "aivc-time",
        "energy_distance_rel",
        "lower",
        ("energy_distance_rel", "energy_distance", "w2", "pearson_delta"),
    ),
    "time:perturbation": Rule(
        "aivc-time",
        "pearson_delta_de20",
        "higher",
        ("pearson_delta_de20", "mse_de20", "pearson_delta", "coverage_90"),
    ),
    "time:fates": Rule("aivc-time", "fate_accuracy", "higher", ("fate_accuracy", "fate_log_loss")),
    "spatial": Rule(
        "aivc-niche",
        "accuracy",
        "higher",
        (
            "accuracy",
            "macro_f1",
            "ece",
            "domain_ari",
            "domain_nmi",
            "imputation_pearson_panel",
            "imputation_pearson",
        ),
    ),
    "spatial:niche-effect": Rule(
        "aivc-tissue",
        "effect_mse_rel",
        "lower",
        (
            "effect_mse_rel",
            "effect_mse",
            "effect_mse_receivers",
            "effect_pearson",
            "removal_mse_rel",
            "removal_pearson",
            "edge_precision",
            "edge_precision_random",
        ),
    ),
    "segmentation": Rule(
        "classical", "ap50", "higher", ("ap50", "f1_50", "precision50", "recall50", "ap_mean")
    ),
}

#: Directions of metrics whose results.json does not state one ("target": no arrow).
_DIRECTIONS = {
    "coverage_90": "target",
    "coverage_80": "target",
    "coverage_90_de20": "target",
    DECILE_COLUMN: "target",
    "interval_width_90": "lower",
    "spearman_uncertainty_error": "higher",
    "hit_ratio_final": "higher",
    "error_auc": "lower",
    "final_error": "lower",
    "final_error_rel": "lower",
}
_ARROWS = {"higher": " ↑", "lower": " ↓", "target": "", "band": ""}


# ----------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Run:
    """One entry of the manifest: a results folder and the command that fills it.

    Attributes
    ----------
    name
        Results folder of the run, relative to the results root.
    task
        The benchmark task whose results the folder holds.
    args
        Arguments of ``aivc benchmark`` (without ``--out``) of the command that fills it.
    question
        What the run answers, in one line.
    out
        Folder the command writes (``--out``); empty when it is ``name`` itself. A part of
        the suite has the suite's folder here and lies in ``<out>/<task>/<dataset>``.
    """

    name: str
    task: str
    args: str
    question: str
    out: str = ""

    @property
    def folder(self) -> str:
        """The folder the command writes, relative to the results root."""
        return self.out or self.name

    @property
    def dataset(self) -> str | None:
        """The dataset named by the arguments or, for a part of the suite, by the folder."""
        if self.out:
            return self.name.rsplit("/", 1)[-1]
        return self.option("--dataset")

    def command(self, root: str = SHOWN_ROOT) -> str:
        """The ``aivc benchmark`` command of this run, writing to ``root/folder``."""
        return f"aivc benchmark {self.args} --out {root}/{self.folder}"

    def option(self, flag: str) -> str | None:
        """The value of ``--flag`` in the arguments, or None."""
        words = shlex.split(self.args)
        for i, word in enumerate(words[:-1]):
            if word == flag:
                return words[i + 1]
        return None


@dataclass(frozen=True)
class Suite:
    """The generalization suite of the manifest: one command, many results folders.

    Attributes
    ----------
    out
        Folder the suite writes (``<out>/suite.json`` and ``<out>/<task>/<dataset>/``).
    args
        Arguments of ``aivc benchmark``, starting with ``suite``.
    question
        What the suite answers, in one line.
    """

    out: str
    args: str
    question: str

    def command(self, root: str = SHOWN_ROOT) -> str:
        """The ``aivc benchmark`` command of the suite, writing to ``root/out``."""
        return f"aivc benchmark {self.args} --out {root}/{self.out}"


def _read_manifest(path: str | Path) -> tuple[list[Run], Suite | None]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    suite = None
    if "suite" in data:
        entry = data["suite"]
        missing = [k for k in ("out", "args", "question") if k not in entry]
        if missing:
            msg = f"The [suite] table of {path} lacks {missing}; it needs out, args and question."
            raise ValueError(msg)
        suite = Suite(entry["out"], entry["args"], entry["question"])
        if shlex.split(suite.args)[:1] != ["suite"]:
            msg = f"The [suite] args of {path} must start with 'suite', got {suite.args!r}."
            raise ValueError(msg)
    runs = []
    for i, entry in enumerate(data.get("run", [])):
        run = _manifest_run(i, entry, suite, path)
        if run.task not in RULES:
            msg = f"Run {run.name!r}: no summary rule for task {run.task!r}; add one to RULES."
            raise ValueError(msg)
        runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        msg = f"Run names in {path} must be unique; got {names}."
        raise ValueError(msg)
    return runs, suite


def _manifest_run(i: int, entry: Mapping[str, Any], suite: Suite | None, path: str | Path) -> Run:
    if entry.get("from") is not None:
        missing = [k for k in ("name", "task", "question") if k not in entry]
        if missing:
            msg = f"Run {i} of {path} lacks {missing}; a part of the suite needs name, task and question."
            raise ValueError(msg)
        name, task = entry["name"], entry["task"]
        if entry["from"] != "suite" or suite is None:
            msg = f"Run {name!r}: 'from' may only name the suite, declared in a [suite] table."
            raise ValueError(msg)
        if "args" in entry:
            msg = f"Run {name!r}: a part of the suite runs the suite's command; drop its args."
            raise ValueError(msg)
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != suite.out or parts[1] != task:
            msg = f"Run {name!r}: a part of the suite must be named '{suite.out}/{task}/<dataset>'."
            raise ValueError(msg)
        return Run(name, task, suite.args, entry["question"], out=suite.out)
    missing = [k for k in ("name", "task", "args", "question") if k not in entry]
    if missing:
        msg = f"Run {i} of {path} lacks {missing}; every run needs name, task, args and question."
        raise ValueError(msg)
    run = Run(entry["name"], entry["task"], entry["args"], entry["question"])
    first = shlex.split(run.args)[0] if run.args.strip() else ""
    if first != run.task:
        msg = f"Run {run.name!r}: args must start with its task {run.task!r}, got {first!r}."
        raise ValueError(msg)
    return run


def load_manifest(path: str | Path = MANIFEST) -> list[Run]:
    """Read the runs of a manifest, in page order.

    Parameters
    ----------
    path
        TOML file with ``[[run]]`` tables (name, task, args and question; or name, task,
        question and ``from = "suite"``) and an optional ``[suite]`` table (out, args, question).

    Returns
    -------
    list of Run
        The runs; parts of the suite carry the suite's command.
    """
    return _read_manifest(path)[0]


def load_suite(path: str | Path = MANIFEST) -> Suite | None:
    """The ``[suite]`` table of a manifest, or None when it declares no suite."""
    return _read_manifest(path)[1]


def commands(runs: Sequence[Run], suite: Suite | None = None) -> list[tuple[str, str]]:
    """``(folder, arguments)`` of every command to run, once each, in page order.

    The suite's command comes where its first part is listed, or last when no run is a part.
    """
    out: dict[str, str] = {}
    for run in runs:
        out.setdefault(run.folder, run.args)
    if suite is not None:
        out.setdefault(suite.out, suite.args)
    return list(out.items())


_TIMING = re.compile(
    r"^(?P<name>.+?): exit (?P<rc>-?\d+), (?P<wall>[\d.]+) s wall, (?P<mb>[\d.]+) MB peak RSS"
)


@dataclass(frozen=True)
class Timing:
    """Wall time and peak memory of one whole command (a line of ``benchmarks/timed.py``)."""

    exit_code: int
    wall_seconds: float
    peak_mb: float


def read_timings(path: str | Path | None) -> dict[str, Timing]:
    """Timings by command folder; a later line for the same folder replaces an earlier one."""
    if path is None or not Path(path).is_file():
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        m = _TIMING.match(line.strip())
        if m:
            out[m["name"]] = Timing(int(m["rc"]), float(m["wall"]), float(m["mb"]))
    return out


# ----------------------------------------------------------------------------- results
@dataclass
class Block:
    """One scored comparison: models x metrics on one task and dataset.

    A run gives one block, except calibration, which gives one per perturbation task.
    """

    label: str
    rule: Rule
    models: dict[str, dict[str, dict[str, Any]]]
    columns: list[str]
    directions: dict[str, str]
    wall: dict[str, float]
    peak: dict[str, float]
    #: split-half replicate of the data (a ceiling): metric -> value
    replicate: dict[str, float] = field(default_factory=dict)
    #: other reference rows (not models): label -> metric -> value
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    #: models summarised over the folds of one seed instead of over seeds
    folds: set[str] = field(default_factory=set)
    #: the part of its run this block is (calibration: the perturbation task)
    part: str = ""
    #: the baseline whose score is 0 on the scaled metrics (``baseline_for_scaling``)
    zero: str | None = None
    #: cells given as text, not as a summary statistic: model -> column -> text
    texts: dict[str, dict[str, str]] = field(default_factory=dict)


def _is_stat(v: Any) -> bool:
    return isinstance(v, Mapping) and "mean" in v


def _stats(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in entry.items() if _is_stat(v)}


def _directions(result: Mapping[str, Any], rule: Rule) -> dict[str, str]:
    out = dict(_DIRECTIONS)
    for name, info in (result.get("metrics") or {}).items():
        if isinstance(info, Mapping) and "higher_is_better" in info:
            out[name] = "higher" if info["higher_is_better"] else "lower"
    out[rule.metric] = rule.better
    return out


def _numbers(d: Mapping[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (d or {}).items() if isinstance(v, int | float)}


def _present(
    columns: Iterable[str],
    models: Mapping[str, Mapping[str, Any]],
    texts: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    texts = texts or {}
    return [
        c
        for c in columns
        if any(c in e for e in models.values()) or any(c in t for t in texts.values())
    ]


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common prefix of ``names`` that ends at a ``-`` or ``_`` separator."""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    cut = max(first.rfind("-", 0, n), first.rfind("_", 0, n))
    return first[: cut + 1]


def _short_names(names: Sequence[str]) -> dict[str, str]:
    """Names without their common prefix and suffix (``pbmc10k_cite_small`` -> ``pbmc10k``)."""
    if len(names) < 2:
        return {n: n for n in names}
    prefix = _common_prefix(names)
    suffix = _common_prefix([n[::-1] for n in names])[::-1]
    out = {}
    for n in names:
        core = n[len(prefix) : len(n) - len(suffix)]
        out[n] = core or n
    return out


def _plain_block(label: str, result: Mapping[str, Any], rule: Rule) -> Block:
    """Models with summary statistics at the top level (perturbation tasks, integration)."""
    models = {m: _stats(e) for m, e in result["models"].items()}
    folds = {m for m, e in result["models"].items() if e.get("aggregated_over") == "folds"}
    replicate = {k: v.get("mean") for k, v in (result.get("replicate") or {}).items()}
    zero = result.get("baseline_for_scaling")
    return Block(
        label,
        rule,
        models,
        _present(rule.columns, models),
        _directions(result, rule),
        _numbers(result.get("wall_seconds")),
        _numbers(result.get("peak_memory_mb")),
        replicate=_numbers(replicate),
        folds=folds,
        zero=zero if isinstance(zero, str) else None,
    )


def decile_range(values: Any) -> tuple[float, float] | None:
    """Smallest and largest finite value of a list (coverage by decile), or None."""
    if not isinstance(values, list):
        return None
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def _calibration_blocks(result: Mapping[str, Any], rule: Rule) -> list[Block]:
    blocks = []
    for task, sub in result["results"].items():
        models = {m: _stats(e) for m, e in sub["models"].items()}
        texts = {}
        for m, e in sub["models"].items():
            span = decile_range(e.get(_DECILE_KEY))
            if span is not None:
                texts[m] = {DECILE_COLUMN: f"{num(span[0])}–{num(span[1])}"}
        blocks.append(
            Block(
                f"calibration · {task} ({sub.get('dataset', '?')})",
                rule,
                models,
                _present(rule.columns, models, texts),
                _directions(result, rule),
                _numbers(sub.get("wall_seconds")),
                _numbers(sub.get("peak_memory_mb")),
                part=task,
                texts=texts,
            )
        )
    return blocks


def _label_transfer_block(label: str, result: Mapping[str, Any], rule: Rule) -> Block:
    block = _plain_block(label, result, rule)
    directions = result.get("directions") or {}
    arrows = [d.replace("-to-", "→") for d in directions]
    short = _short_names(arrows)
    extra = []
    if len(directions) > 1:
        for info, arrow in zip(directions.values(), arrows, strict=True):
            column = f"accuracy {short[arrow]}"
            extra.append(column)
            block.directions[column] = "higher"
            for m, entry in info.get("models", {}).items():
                if m in block.models and _is_stat(entry.get("accuracy")):
                    block.models[m][column] = dict(entry["accuracy"])
    block.columns = _present([*rule.columns, *extra], block.models)
    return block


def _protein_block(label: str, result: Mapping[str, Any], rule: Rule) -> Block:
    block = _plain_block(label, result, rule)
    pairs = [f"{p['train']}->{p['test']}" for p in result.get("pairs", [])]
    datasets = sorted({d for key in pairs for d in key.split("->")})
    short = _short_names(datasets)
    extra = []
    for key in pairs:
        a, b = key.split("->")
        column = f"r {short[a]}→{short[b]}"
        extra.append(column)
        block.directions[column] = "higher"
        for m, entry in result["models"].items():
            stat = (entry.get("per_pair") or {}).get(key, {}).get("pearson")
            if _is_stat(stat):
                block.models[m][column] = dict(stat)
    block.columns = _present([*rule.columns, *extra], block.models)
    return block


def _lab_loop_block(label: str, result: Mapping[str, Any], rule: Rule) -> Block:
    block = _plain_block(label, result, rule)
    rounds = max((len(e.get("hit_ratio", [])) for e in result["models"].values()), default=0)
    extra = [f"hits r{t + 1}" for t in range(rounds - 1)]
    for m, entry in result["models"].items():
        for t, stat in enumerate(entry.get("hit_ratio", [])[:-1]):
            if _is_stat(stat):
                block.models[m][f"hits r{t + 1}"] = dict(stat)
    for column in extra:
        block.directions[column] = "higher"
    # how many measured knockouts each strategy needs to reach random design's final error
    reach = "measured to reach random's final"
    texts: dict[str, dict[str, str]] = {}
    for m, entry in result["models"].items():
        if "final_error_rel" in entry:  # simulator worlds, where the no-change error is known
            n = entry.get("n_to_reach_random_final_error")
            texts[m] = {reach: "n/a" if n is None else f"{n:.0f}"}
    block.texts = texts
    block.directions[reach] = "lower"
    block.columns = _present([*extra, *rule.columns, reach], block.models, texts)
    # reference errors, the same for every strategy (simulator only)
    for key, text in (
        ("no_change_error", "*no change (reference)*"),
        ("pool_oracle_error", "*ridge on every candidate's true change (reference)*"),
    ):
        stat = next((e[key] for e in result["models"].values() if _is_stat(e.get(key))), None)
        if stat is not None and stat.get("mean") is not None:
            block.references[text] = {"final_error": float(stat["mean"])}
            # relative to each world's no-change error (simulator worlds of their own scale)
            rel = next(
                (e.get(f"{key}_rel") for e in result["models"].values() if "error_rel" in e), None
            )
            if key == "no_change_error" and any(
                "error_rel" in e for e in result["models"].values()
            ):
                block.references[text]["final_error_rel"] = 1.0
            elif _is_stat(rel):
                block.references[text]["final_error_rel"] = float(rel["mean"])
    return block


def _curve_blocks(label: str, result: Mapping[str, Any], rule: Rule) -> list[Block]:
    """One comparison per knowledge quality: the headline at the largest training size, and
    pearson_delta_de20 at every size (``n=25`` ...)."""
    sizes = list(result["split"]["sizes"])
    replicate = _numbers(result.get("replicate"))
    blocks = []
    for quality in result["split"]["knowledge"]:
        models: dict[str, dict[str, dict[str, Any]]] = {}
        for m, entry in result["models"].items():
            points = {p["n_train"]: p for p in entry["curve"] if p["knowledge"] == quality}
            row: dict[str, dict[str, Any]] = {}
            for n in sizes:
                if n in points:
                    p = points[n]
                    row[f"n={n}"] = {
                        "mean": p["pearson_delta_de20"],
                        "sd": p["pearson_delta_de20_sd"],
                    }
            if sizes[-1] in points:
                last = points[sizes[-1]]
                for metric in rule.columns:
                    row[metric] = {"mean": last[metric], "sd": last[metric + "_sd"]}
            models[m] = row
        columns = [*rule.columns, *(f"n={n}" for n in sizes)]
        directions = {**_directions(result, rule), **{f"n={n}": "higher" for n in sizes}}
        blocks.append(
            Block(
                f"{label}, {quality} knowledge",
                rule,
                models,
                _present(columns, models),
                directions,
                _numbers(result.get("wall_seconds")),
                _numbers(result.get("peak_memory_mb")),
                replicate=replicate,
                part=f"{quality} knowledge",
                zero="train-mean" if "train-mean" in models else None,
            )
        )
    return blocks


def _knowledge_blocks(label: str, result: Mapping[str, Any], rule: Rule) -> list[Block]:
    """One comparison per knowledge quality, from perfect to useless."""
    blocks = []
    for quality in result["split"]["knowledge"]:
        models = {
            m: {k: dict(v) for k, v in entry["by_knowledge"].get(quality, {}).items()}
            for m, entry in result["models"].items()
        }
        blocks.append(
            Block(
                f"{label}, {quality} knowledge",
                rule,
                models,
                _present(rule.columns, models),
                _directions(result, rule),
                _numbers(result.get("wall_seconds")),
                {},
                part=f"{quality} knowledge",
                zero="no-change" if "no-change" in models else None,
            )
        )
    return blocks


def result_label(run: Run, result: Mapping[str, Any] | None) -> str:
    """``task · dataset[, variant]`` of a run (from the results when present)."""
    dataset = None
    variant = run.option("--variant")
    if result is not None:
        dataset = result.get("dataset")
        variant = result.get("variant") or variant
        if isinstance(dataset, Mapping):  # calibration: one dataset per task
            dataset = None
    dataset = dataset or run.dataset
    if dataset and "," in dataset:  # several datasets (rna-to-protein): their short names
        dataset = ", ".join(_short_names(dataset.split(",")).values())
    label = run.task if not dataset else f"{run.task} · {dataset}"
    return f"{label}, {variant}" if variant else label


def blocks_of(run: Run, result: Mapping[str, Any]) -> list[Block]:
    """The scored comparisons of one run's ``results.json``."""
    # a variant may score with a rule of its own, keyed "task:variant"
    rule = RULES.get(f"{run.task}:{result.get('variant')}", RULES[run.task])
    label = result_label(run, result)
    task = result.get("task", run.task)
    if task != run.task:
        msg = f"{run.name}/results.json is of task {task!r}, the manifest says {run.task!r}."
        raise ValueError(msg)
    if task == "calibration":
        return _calibration_blocks(result, rule)
    if task == "label-transfer":
        return [_label_transfer_block(label, result, rule)]
    if task == "rna-to-protein":
        return [_protein_block(label, result, rule)]
    if task == "lab-loop":
        return [_lab_loop_block(label, result, rule)]
    if task == "learning-curve":
        return _curve_blocks(label, result, rule)
    if task == "knowledge":
        return _knowledge_blocks(label, result, rule)
    return [_plain_block(label, result, rule)]


# ----------------------------------------------------------------------------- summary
def role(model: str, rule: Rule) -> str:
    """``"ours"``, ``"variant"`` (another aivc model), ``"peer"`` or ``"baseline"``."""
    if model == rule.ours:
        return "ours"
    base = model.removeprefix(WRAPPER_PREFIX)
    if base in PEERS:
        return "peer"
    if base.startswith("aivc"):
        return "variant"
    return "baseline"


def _stat(block: Block, model: str, metric: str) -> tuple[float, float] | None:
    s = block.models.get(model, {}).get(metric)
    if not s or s.get("mean") is None or not math.isfinite(s["mean"]):
        return None
    sd = s.get("sd")
    return float(s["mean"]), float(sd) if sd is not None and math.isfinite(sd) else 0.0


def verdict(
    ours: tuple[float, float],
    other: tuple[float, float],
    rule: Rule,
    ours_then: tuple[float, float] | None = None,
    other_then: tuple[float, float] | None = None,
) -> str:
    """``"wins"``, ``"loses"``, ``"ties"`` or ``"misses"``: ours against another model.

    Parameters
    ----------
    ours, other
        ``(mean, sd)`` of the headline metric.
    rule
        The task's rule. A higher or lower rule compares the means: a difference no larger
        than the larger of the two sds is a tie. A band rule first asks which means meet the
        band (one that meets it beats one that misses it, whatever the distance); when both
        meet it, ``ours_then`` and ``other_then`` (``(mean, sd)`` of ``rule.then``, lower is
        better) decide with the same sd rule; when both miss it, the verdict is ``"misses"``.
    ours_then, other_then
        The ranking metric of a band rule; without them two models in the band tie.
    """
    if rule.better == "band":
        a, b = rule.meets(ours[0]), rule.meets(other[0])
        if a != b:
            return "wins" if a else "loses"
        if not a:
            return "misses"
        if ours_then is None or other_then is None:
            return "ties"
        gap = other_then[0] - ours_then[0]
        if abs(gap) <= max(ours_then[1], other_then[1]):
            return "ties"
        return "wins" if gap > 0 else "loses"
    gap = rule.score(ours[0]) - rule.score(other[0])
    if abs(gap) <= max(ours[1], other[1]):
        return "ties"
    return "wins" if gap > 0 else "loses"


def _rank(block: Block, model: str, stat: tuple[float, float]) -> tuple[float, ...]:
    """A key that is larger for a better model on the headline metric of ``block``."""
    rule = block.rule
    if rule.better != "band":
        return (rule.score(stat[0]),)
    then = _stat(block, model, rule.then) if rule.then else None
    return (float(rule.meets(stat[0])), -then[0] if then is not None else -math.inf)


def _best(block: Block, kind: str) -> tuple[str, tuple[float, float]] | None:
    rule = block.rule
    found = [
        (name, s)
        for name in block.models
        if role(name, rule) == kind and (s := _stat(block, name, rule.metric)) is not None
    ]
    return max(found, key=lambda kv: _rank(block, *kv)) if found else None


@dataclass
class Summary:
    """One row of the summary table."""

    label: str
    rule: Rule | None = None
    ours: tuple[float, float] | None = None
    baseline: tuple[str, tuple[float, float]] | None = None
    peer: tuple[str, tuple[float, float]] | None = None
    replicate: float | None = None
    scaled: tuple[float, float] | None = None
    #: the baseline whose score is 0 on ``scaled``
    zero: str | None = None
    wall_ratio: float | None = None
    verdict: str = "not run"
    rival: str = ""
    #: how much better (positive) or worse ours is than the rival, in the headline's units
    #: (band rules: in the units of ``rule.then``, when the band does not decide)
    gap: float | None = None
    status: str = ""
    #: band rules: ``rule.then`` of ours, the best baseline and the best peer, by model
    then: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: further facts about ours, shown after its value (calibration: de20, deciles)
    notes: list[str] = field(default_factory=list)

    def rival_stat(self) -> tuple[float, float] | None:
        """The headline ``(mean, sd)`` of the rival."""
        for entry in (self.peer, self.baseline):
            if entry is not None and entry[0] == self.rival:
                return entry[1]
        return None

    def decided_by_band(self) -> bool:
        """Whether the band alone separates ours from the rival (band rules)."""
        rival = self.rival_stat()
        if self.rule is None or self.rule.better != "band" or self.ours is None or rival is None:
            return False
        return self.rule.meets(self.ours[0]) != self.rule.meets(rival[0])


def summarise(block: Block) -> Summary:
    """The summary row of a block: ours against the best baseline and the best peer."""
    rule = block.rule
    row = Summary(block.label, rule)
    row.ours = _stat(block, rule.ours, rule.metric)
    row.baseline = _best(block, "baseline")
    row.peer = _best(block, "peer")
    row.replicate = block.replicate.get(rule.metric)
    row.scaled = _stat(block, rule.ours, f"{rule.metric}_scaled")
    row.zero = block.zero
    if row.baseline is not None:
        ours_wall = block.wall.get(rule.ours)
        base_wall = block.wall.get(row.baseline[0])
        if ours_wall is not None and base_wall:
            row.wall_ratio = ours_wall / base_wall
    if rule.then:
        for name in (rule.ours, *(r[0] for r in (row.baseline, row.peer) if r is not None)):
            if (s := _stat(block, name, rule.then)) is not None:
                row.then[name] = s
        if (de20 := _stat(block, rule.ours, "coverage_90_de20")) is not None:
            row.notes.append(f"de20 {num(de20[0])}")
        if DECILE_COLUMN in block.texts.get(rule.ours, {}):
            row.notes.append(f"deciles {block.texts[rule.ours][DECILE_COLUMN]}")
    rivals = [r for r in (row.baseline, row.peer) if r is not None]
    if row.ours is None:
        row.verdict = f"no {rule.ours} result"
    elif not rivals:
        row.verdict = "no baseline"
    else:
        name, best = max(rivals, key=lambda kv: _rank(block, *kv))
        row.rival = name
        row.verdict = verdict(row.ours, best, rule, row.then.get(rule.ours), row.then.get(name))
        if rule.better != "band":
            row.gap = rule.score(row.ours[0]) - rule.score(best[0])
        elif rule.ours in row.then and name in row.then and not row.decided_by_band():
            row.gap = row.then[name][0] - row.then[rule.ours][0]
    return row


# ----------------------------------------------------------------------------- formatting
def _decimals(x: float) -> int:
    """Three decimals; three significant digits for values below 0.01 in size."""
    if x == 0 or not math.isfinite(x) or abs(x) >= 0.01:
        return 3
    return 2 - math.floor(math.log10(abs(x)))


def num(x: float | None, decimals: int | None = None) -> str:
    """A value with :func:`_decimals` decimals (or ``decimals``); ``n/a`` when missing."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def mean_sd(s: tuple[float, float] | None, decimals: int | None = None) -> str:
    """``mean ± sd`` of a summary pair, both with the decimals of the mean (or ``decimals``)."""
    if s is None:
        return "n/a"
    d = _decimals(s[0]) if decimals is None else decimals
    return f"{num(s[0], d)} ± {num(s[1], d)}"


def p_value(p: Any) -> str:
    """A p-value in two significant digits (``p<0.001`` below that)."""
    if not isinstance(p, int | float) or not math.isfinite(p):
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _named(entry: tuple[str, tuple[float, float]] | None, row: Summary | None = None) -> str:
    if entry is None:
        return "—"
    text = f"{entry[0]} {mean_sd(entry[1])}"
    if row is not None and row.rule is not None and row.rule.then and entry[0] in row.then:
        text += f", width {mean_sd(row.then[entry[0]])}"
    return text


def _ours_text(row: Summary) -> str:
    text = mean_sd(row.ours)
    if row.rule is not None and row.rule.then and row.rule.ours in row.then:
        text += f", width {mean_sd(row.then[row.rule.ours])}"
    return ", ".join([text, *row.notes])


def _ratio(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 1:
        return f"{x:.2g}×"
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _gap(row: Summary) -> str:
    if row.gap is None or row.ours is None:
        return ""
    if row.rule is not None and row.rule.better == "band":
        return num(abs(row.gap), _decimals(row.then[row.rule.ours][0]))
    return f" by {num(abs(row.gap), _decimals(row.ours[0]))}"


def _verdict_text(row: Summary) -> str:
    if row.rule is not None and row.rule.better == "band" and row.ours is not None:
        return _band_verdict_text(row)
    if row.verdict == "wins":
        return f"**wins**{_gap(row)}"
    if row.verdict == "loses":
        return f"**loses** to {row.rival}{_gap(row)}"
    if row.verdict == "ties":
        return f"ties with {row.rival}"
    return row.verdict


def _band_verdict_text(row: Summary) -> str:
    assert row.rule is not None
    band = row.rule.band_text
    if row.verdict == "misses":
        return f"**misses** {band}, as does {row.rival}"
    if row.decided_by_band():
        if row.verdict == "wins":
            return f"**wins**: meets {band}, {row.rival} misses it"
        return f"**loses** to {row.rival}: misses {band}"
    if row.verdict == "wins":
        return f"**wins**: both meet {band}, {_gap(row)} narrower"
    if row.verdict == "loses":
        return f"**loses** to {row.rival}: both meet {band}, {_gap(row)} wider"
    if row.verdict == "ties":
        return f"ties with {row.rival}: both meet {band}"
    return row.verdict


def summary_table(rows: Sequence[Summary]) -> list[str]:
    """The first-screen table."""
    lines = [
        "| run | headline metric | aivc | best baseline | best peer | replicate | scaled "
        "| wall ours/baseline | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.status and r.ours is None:
            lines.append(f"| {r.label} | — | — | — | — | — | — | — | {r.status} |")
            continue
        lines.append(
            f"| {r.label} | {r.rule.metric if r.rule else '—'} | {_ours_text(r)} "
            f"| {_named(r.baseline, r)} | {_named(r.peer, r)} "
            f"| {num(r.replicate) if r.replicate is not None else '—'} "
            f"| {mean_sd(r.scaled) if r.scaled else '—'} | {_ratio(r.wall_ratio)} "
            f"| {r.status or _verdict_text(r)} |"
        )
    return lines


def model_table(blocks: Sequence[Block]) -> list[str]:
    """Models as rows, the main metrics as columns (mean ± sd), then wall time and memory.

    Several blocks of one run (calibration's tasks) share one table with a first column
    naming the block's part.
    """
    cols = list(dict.fromkeys(c for b in blocks for c in b.columns))
    directions = {k: v for b in blocks for k, v in b.directions.items()}
    show_wall = any(m in b.wall for b in blocks for m in b.models)
    parts = len(blocks) > 1
    head = [f"{c}{_ARROWS.get(directions.get(c, ''), '')}" for c in cols]
    tail = ["wall s", "peak MB"] if show_wall else []
    first = ["task", "model"] if parts else ["model"]
    lines = [
        "| " + " | ".join([*first, *head, *tail]) + " |",
        "|" + "---|" * (len(first) + len(cols) + len(tail)),
    ]
    # one precision per column, from its largest value
    largest = {
        c: max(
            (abs(v[0]) for b in blocks for m in b.models if (v := _stat(b, m, c)) is not None),
            default=0.0,
        )
        for c in cols
    }
    decimals = {c: _decimals(largest[c]) for c in cols}
    for block in blocks:
        lead = [block.part] if parts else []
        for name, entry in block.models.items():
            label = name if role(name, block.rule) != "ours" else f"**{name}**"
            if name in block.folds:
                label += " †"
            texts = block.texts.get(name, {})
            cells = [
                texts[c]
                if c in texts
                else mean_sd(_stat(block, name, c), decimals[c])
                if c in entry
                else "—"
                for c in cols
            ]
            if show_wall:
                wall, peak = block.wall.get(name), block.peak.get(name)
                cells += [
                    "—" if wall is None else f"{wall:.1f}",
                    "—" if peak is None else f"{peak:.0f}",
                ]
            lines.append("| " + " | ".join([*lead, label, *cells]) + " |")
        references = dict(block.references)
        if block.replicate:
            references = {"*replicate (split-half)*": block.replicate, **references}
        for text, values in references.items():
            cells = [num(values[c], decimals[c]) if c in values else "" for c in cols]
            lines.append("| " + " | ".join([*lead, text, *cells, *[""] * len(tail)]) + " |")
    return lines


def _timing_text(t: Timing | None, what: str = "whole command") -> str:
    if t is None:
        return f"{what}: not timed"
    text = f"{what}: {t.wall_seconds:.1f} s wall, {t.peak_mb:.0f} MB peak RSS"
    return text if t.exit_code == 0 else f"{text}, exit {t.exit_code}"


def _split_text(result: Mapping[str, Any]) -> str:
    split = result.get("split") or {}
    seeds = split.get("seeds") or result.get("seeds")
    parts = []
    if split.get("kind"):
        parts.append(str(split["kind"]))
    if split.get("folds"):
        parts.append(f"{split['folds']} folds")
    if seeds:
        parts.append("seeds " + ", ".join(map(str, seeds)))
    if split.get("n_splits"):
        parts.append(f"{split['n_splits']} splits")
    proto = result.get("protocol") or {}
    if proto.get("n_rounds") and proto.get("batch_size"):
        parts.append(f"{proto['n_rounds']} rounds × {proto['batch_size']}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- the suite
#: A dataset that is one member of a numbered family (``sim-world-3``): stem and index.
_FAMILY = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)$")
_MARKS = {"wins": "✓", "within": "≈", "loses": "✗"}


@dataclass
class SuiteLoaded:
    """The suite of the manifest with its matrix (None when ``suite.json`` is missing)."""

    suite: Suite
    data: dict[str, Any] | None
    timing: Timing | None


def load_suite_result(
    root: str | Path, suite: Suite | None, timings: Mapping[str, Timing]
) -> SuiteLoaded | None:
    """Read ``root/<suite out>/suite.json``; None when the manifest declares no suite."""
    if suite is None:
        return None
    path = Path(root) / suite.out / "suite.json"
    data = json.loads(path.read_text()) if path.is_file() else None
    if data is not None and not isinstance(data.get("cells"), list):
        msg = f"{path} has no list of cells."
        raise ValueError(msg)
    return SuiteLoaded(suite, data, timings.get(suite.out))


def outcome(cell: Mapping[str, Any]) -> str:
    """``"wins"``, ``"within"`` (worse, but within one sd of the baseline) or ``"loses"``."""
    if "wins" in cell and "within_sd" in cell:
        wins, within = bool(cell["wins"]), bool(cell["within_sd"])
    else:
        sign = 1.0 if cell.get("higher_is_better", True) else -1.0
        margin = sign * (float(cell["model_mean"]) - float(cell["baseline_mean"]))
        wins, within = margin > 0, margin >= -float(cell.get("baseline_sd") or 0.0)
    return "wins" if wins else "within" if within else "loses"


def _suite_metrics(data: Mapping[str, Any]) -> dict[str, bool]:
    """Metrics of the matrix in order, with whether higher is better."""
    declared = data.get("metrics") or {}
    out: dict[str, bool] = {}
    for cell in data["cells"]:
        out.setdefault(cell["metric"], bool(cell.get("higher_is_better", True)))
    order = [m for m in declared if m in out] + [m for m in out if m not in declared]
    return {m: out[m] for m in order}


@dataclass
class _SuiteRow:
    label: str
    task: str
    datasets: list[str]
    #: the word for one member of a folded family ("world"), empty when not folded
    member: str = ""


def _suite_rows(data: Mapping[str, Any], fold: bool) -> list[_SuiteRow]:
    """One row per task x dataset (runs first, then any cell's), families folded on request."""
    pairs = [(r["task"], r["dataset"]) for r in data.get("runs") or []]
    pairs += [(c["task"], c["dataset"]) for c in data["cells"]]
    pairs = list(dict.fromkeys(pairs))
    families: dict[tuple[str, str], list[str]] = {}
    for task, dataset in pairs:
        m = _FAMILY.match(dataset)
        if m:
            families.setdefault((task, m["stem"]), []).append(dataset)
    rows: list[_SuiteRow] = []
    folded: set[tuple[str, str]] = set()
    for task, dataset in pairs:
        m = _FAMILY.match(dataset)
        members = families.get((task, m["stem"]), []) if m else []
        if fold and m and len(members) > 1:
            if (task, m["stem"]) in folded:
                continue
            folded.add((task, m["stem"]))
            indices = sorted(int(d.rsplit("-", 1)[1]) for d in members)
            word = m["stem"].rsplit("-", 1)[-1]
            label = f"{task} · {m['stem']}-{indices[0]}…{indices[-1]} ({len(members)} {word}s)"
            rows.append(_SuiteRow(label, task, members, member=word))
        else:
            rows.append(_SuiteRow(f"{task} · {dataset}", task, [dataset]))
    return rows


def suite_counts(data: Mapping[str, Any]) -> dict[str, int]:
    """How many cells aivc's model wins, is within one sd in, and loses."""
    counts = dict.fromkeys(_MARKS, 0)
    for cell in data["cells"]:
        counts[outcome(cell)] += 1
    return counts


def suite_table(data: Mapping[str, Any], fold: bool = False) -> list[str]:
    """The win/loss matrix: a row per task x dataset (or family), a column per metric."""
    metrics = _suite_metrics(data)
    by_key = {(c["task"], c["dataset"], c["metric"]): c for c in data["cells"]}
    decimals = {
        m: _decimals(
            max(
                (
                    abs(float(c[k]))
                    for c in data["cells"]
                    if c["metric"] == m
                    for k in ("model_mean", "baseline_mean")
                    if c.get(k) is not None and math.isfinite(c[k])
                ),
                default=0.0,
            )
        )
        for m in metrics
    }
    head = [f"{m}{_ARROWS['higher' if up else 'lower']}" for m, up in metrics.items()]
    lines = [
        "| task · dataset | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for row in _suite_rows(data, fold):
        texts = []
        for m in metrics:
            cells = [by_key[k] for d in row.datasets if (k := (row.task, d, m)) in by_key]
            if not cells:
                texts.append("—")
            elif row.member:
                outcomes = [outcome(c) for c in cells]
                text = f"{outcomes.count('wins')} of {len(cells)} {row.member}s won"
                if within := outcomes.count("within"):
                    text += f", {within} within sd"
                texts.append(text)
            else:
                c = cells[0]
                d = decimals[m]
                texts.append(
                    f"{num(c['model_mean'], d)} vs {num(c['baseline_mean'], d)} "
                    f"{c['best_baseline']} {_MARKS[outcome(c)]} {p_value(c.get('sign_p'))}"
                )
        lines.append(f"| {row.label} | " + " | ".join(texts) + " |")
    return lines


def suite_section(loaded: SuiteLoaded | None, fold: bool = False) -> list[str]:
    """The "Generalization suite" section (a "not run" line when ``suite.json`` is missing)."""
    if loaded is None:
        return []
    suite = loaded.suite
    lines = ["## Generalization suite", ""]
    head = f"{suite.question} `{suite.command()}` — {_timing_text(loaded.timing)}"
    data = loaded.data
    if data is None:
        t = loaded.timing
        status = f"failed (exit {t.exit_code})" if t is not None and t.exit_code else "not run"
        return [*lines, f"{head}. **{status}**: no {suite.out}/suite.json.", ""]
    model = data.get("model", "aivc's model")
    n = len(data["cells"])
    c = suite_counts(data)
    count = (
        f"**{model} wins {c['wins']} of {n} cells, is within one sd of the best baseline in "
        f"{c['within']} more and loses {c['loses']}.**"
        if n
        else "**No cell**: suite.json lists no comparison."
    )
    lines += [
        f"{head}. {count} Each cell: {model} against the best baseline of that task, dataset and "
        "metric, the baseline picked on the held-out results (which favours the baseline; peers "
        "are not baselines); ✓ better, ≈ worse by no more than that baseline's sd over seeds (or "
        "folds), ✗ worse by more; p: two-sided sign test over the held-out conditions, each "
        f"averaged over seeds. Folders: `{SHOWN_ROOT}/{suite.out}/<task>/<dataset>/`.",
        "",
    ]
    if n:
        lines += [*suite_table(data, fold), ""]
    return lines


def _loss_text(c: Mapping[str, Any]) -> str:
    d = _decimals(float(c["model_mean"]))
    return (
        f"{c['metric']} {mean_sd((c['model_mean'], c.get('model_sd') or 0.0), d)} against "
        f"{c['best_baseline']} {mean_sd((c['baseline_mean'], c.get('baseline_sd') or 0.0), d)} "
        f"({p_value(c.get('sign_p'))})"
    )


def suite_losses(loaded: SuiteLoaded | None, fold: bool = False) -> list[str]:
    """Every cell of the suite that aivc's model loses, one line per row of the matrix."""
    if loaded is None or loaded.data is None:
        return []
    by_pair: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in loaded.data["cells"]:
        if outcome(c) == "loses":
            by_pair.setdefault((c["task"], c["dataset"]), []).append(c)
    out = []
    for row in _suite_rows(loaded.data, fold):
        parts = []
        for dataset in row.datasets:
            texts = [_loss_text(c) for c in by_pair.get((row.task, dataset), [])]
            if texts:
                lead = f"{dataset} " if row.member else ""
                parts.append(lead + ", ".join(texts))
        if parts:
            out.append(f"- suite · {row.label}: {'; '.join(parts)}.")
    return out


# ----------------------------------------------------------------------------- the page
@dataclass
class Loaded:
    """A run with its results (None when the folder has no results.json) and timing."""

    run: Run
    result: dict[str, Any] | None
    timing: Timing | None
    blocks: list[Block] = field(default_factory=list)


def load_results(
    root: str | Path, runs: Sequence[Run], timings: Mapping[str, Timing]
) -> list[Loaded]:
    """Read ``root/<name>/results.json`` of every run; missing ones are kept with no result.

    A run's timing is its command's: the whole suite's for a part of the suite.
    """
    out = []
    for run in runs:
        path = Path(root) / run.name / "results.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        item = Loaded(run, result, timings.get(run.folder))
        if result is not None:
            item.blocks = blocks_of(run, result)
        out.append(item)
    return out


def _status(item: Loaded) -> str:
    if item.result is None:
        if item.timing is not None and item.timing.exit_code != 0:
            return f"failed (exit {item.timing.exit_code})"
        return "not run"
    notes = []
    if item.result.get("complete") is False:
        seeds = (item.result.get("split") or {}).get("seeds") or []
        notes.append(f"partial (seeds {', '.join(map(str, seeds))})")
    if item.timing is not None and item.timing.exit_code != 0:
        notes.append(f"last command exit {item.timing.exit_code}")
    return "; ".join(notes)


def summaries(items: Sequence[Loaded]) -> list[Summary]:
    """Every row of the summary table, one per block; runs without results get a status row."""
    rows = []
    for item in items:
        status = _status(item)
        if not item.blocks:
            rows.append(Summary(result_label(item.run, None), status=status or "no result"))
            continue
        for block in item.blocks:
            row = summarise(block)
            if status:
                row.status = f"{_verdict_text(row)}; {status}"
            rows.append(row)
    return rows


def _machine(items: Sequence[Loaded], suite: SuiteLoaded | None = None) -> str:
    cpus, pythons, versions = set(), set(), set()
    found = [item.result for item in items if item.result is not None]
    if suite is not None and suite.data is not None:
        found.append(suite.data)
    for result in found:
        m = result.get("machine") or {}
        cpus.add(m.get("cpus"))
        pythons.add(m.get("python"))
        versions.add(m.get("aivc") or result.get("aivc") or result.get("aivc_version"))

    def join(values: set[Any]) -> str:
        vals = sorted(str(v) for v in values if v is not None)
        return " / ".join(vals) if vals else "unknown"

    return f"{join(cpus)} CPUs, Python {join(pythons)}, aivc {join(versions)}"


def _rules_table(items: Sequence[Loaded]) -> list[str]:
    seen: dict[str, dict[str, set[str]]] = {}
    for item in items:
        roles = seen.setdefault(item.run.task, {"baseline": set(), "peer": set(), "variant": set()})
        for block in item.blocks:
            for name in block.models:
                kind = role(name, block.rule)
                if kind != "ours":
                    roles[kind].add(name)
    lines = [
        "| task | aivc's model | headline metric | baselines | peers | other aivc variants |",
        "|---|---|---|---|---|---|",
    ]
    for task, roles in seen.items():
        rule = RULES[task]

        def names(kind: str, roles: dict[str, set[str]] = roles) -> str:
            return ", ".join(sorted(roles[kind])) or "—"

        lines.append(
            f"| {task} | {rule.ours} | {rule.metric} ({rule.direction}) | {names('baseline')} "
            f"| {names('peer')} | {names('variant')} |"
        )
    return lines


def _band_loss(r: Summary, rival: tuple[str, tuple[float, float]]) -> str:
    rule = r.rule
    assert rule is not None and r.ours is not None
    band = rule.band_text
    if r.verdict == "misses":
        return (
            f"- {r.label}: {rule.metric} {mean_sd(r.ours)} misses the {band} band, and so does "
            f"the best alternative, {rival[0]} {mean_sd(rival[1])}."
        )
    if r.decided_by_band():
        return (
            f"- {r.label}: {rule.metric} {mean_sd(r.ours)} misses the {band} band; "
            f"{rival[0]} {mean_sd(rival[1])} meets it."
        )
    return (
        f"- {r.label}: both meet the {band} band ({rule.metric} {mean_sd(r.ours)} against "
        f"{rival[0]} {mean_sd(rival[1])}), but aivc's {rule.then} is wider: "
        f"{mean_sd(r.then[rule.ours])} against {mean_sd(r.then[rival[0]])}."
    )


def _losses(
    rows: Sequence[Summary], suite: SuiteLoaded | None = None, fold: bool = False
) -> list[str]:
    out = []
    for r in rows:
        if r.verdict not in ("loses", "misses") or r.ours is None or r.rule is None:
            continue
        stat = r.rival_stat()
        assert stat is not None
        if r.rule.better == "band":
            out.append(_band_loss(r, (r.rival, stat)))
            continue
        out.append(
            f"- {r.label}: {r.rule.metric} {mean_sd(r.ours)} against {r.rival} "
            f"{mean_sd(stat)}, worse{_gap(r)}."
        )
    out += suite_losses(suite, fold)
    return out or ["- Nowhere on the headline metrics of this page."]


def _zero_text(rows: Sequence[Summary]) -> str:
    """Which baseline is the zero of the scaled column, from the results themselves."""
    zeros: dict[str, list[str]] = {}
    for r in rows:
        if r.scaled is not None and r.zero:
            zeros.setdefault(r.zero, []).append(r.label)
    if not zeros:
        return "z = the baseline named by the run's `baseline_for_scaling`"
    common = max(zeros, key=lambda z: len(zeros[z]))
    others = [f"{z} for {', '.join(labels)}" for z, labels in zeros.items() if z != common]
    return f"z = {common}" + (f" (except {'; '.join(others)})" if others else "")


def _legend(rows: Sequence[Summary]) -> str:
    text = (
        "aivc = aivc's own model of the task; baselines are simple reference methods, peers are "
        "published models of other groups, both run in the same command. Verdict: aivc against "
        "the best baseline or peer on the headline metric; a difference within the larger of the "
        "two sds is a tie. replicate: the split-half replicate of the data (a ceiling); scaled: "
        f"(aivc − z) / (replicate − z), {_zero_text(rows)}; 0 = as good as z, 1 = as good as a "
        "repeat of the experiment. Wall ratio: aivc's fit+predict time over the best baseline's."
    )
    band = next((r.rule for r in rows if r.rule is not None and r.rule.better == "band"), None)
    if band is not None:
        text += (
            f" Calibration: {band.metric} in {band.band_text} meets the target, outside it "
            "misses; a model that meets it beats one that misses it, and among models that meet "
            f"it the narrower {band.then} wins (width = {band.then}; de20 = coverage on each "
            "condition's top-20 DE genes; deciles = lowest–highest coverage over the ten deciles "
            "of the genes' variability)."
        )
    return text


def _section(item: Loaded) -> list[str]:
    run = item.run
    lines = [f"### {run.name}", ""]
    what = "whole suite command" if run.out else "whole command"
    head = f"{run.question} `{run.command()}` — {_timing_text(item.timing, what)}"
    if item.result is None:
        return [*lines, f"{head}. **{_status(item)}**: no results.json.", ""]
    split = _split_text(item.result)
    lines += [f"{head}. Split: {split}." if split else f"{head}.", ""]
    return [*lines, *model_table(item.blocks), ""]


def render(
    items: Sequence[Loaded], suite: SuiteLoaded | None = None, fold: bool | None = None
) -> str:
    """The whole page.

    Parameters
    ----------
    items
        The runs of the manifest with their results.
    suite
        The generalization suite with its matrix; None when the manifest has no suite.
    fold
        Fold the numbered datasets of one task (``sim-world-0`` … ``sim-world-4``) into one
        row of the suite's matrix; by default only when the page would exceed
        :data:`MAX_LINES` otherwise.
    """
    if fold is None:
        text = render(items, suite, fold=False)
        return text if text.count("\n") <= MAX_LINES else render(items, suite, fold=True)
    rows = summaries(items)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/make_page.py benchmarks/results` from the results folders "
        "(their `results.json` and `results.md` are committed there) of the runs "
        "in [benchmarks/runs.toml](benchmarks/runs.toml); do not edit by hand. In every run all "
        "models, baselines included, are scored in the same command on the same seeded splits "
        "(saved as `splits.json` beside `results.json`, [format](docs/results-format.md)); "
        "hyperparameters are chosen on training data only; values are mean ± sd over seeds "
        "(†: run on the first seed's splits only, mean ± sd over those splits). "
        f"Machine: {_machine(items, suite)}. "
        "`bash benchmarks/run_all.sh ROOT` reruns every command into ROOT, appends its wall time and "
        "peak memory to `ROOT/timings.txt` and rebuilds this page. Development history "
        "(option sweeps, superseded runs, frontier studies): "
        "[docs/benchmarks/history.md](docs/benchmarks/history.md).",
        "",
        *summary_table(rows),
        "",
        _legend(rows),
        "",
        *suite_section(suite, fold),
        "## Where aivc loses",
        "",
        *_losses(rows, suite, fold),
        "",
        "## Models and headline metrics per task",
        "",
        *_rules_table(items),
        "",
        "## Runs",
        "",
    ]
    for item in items:
        lines += _section(item)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_page(
    root: str | Path,
    *,
    out: str | Path = "BENCHMARKS.md",
    timings: str | Path | None = None,
    manifest: str | Path = MANIFEST,
) -> str:
    """Build the page from ``root`` and write it atomically to ``out``; returns its text.

    Parameters
    ----------
    root
        Results root holding ``<name>/results.json`` for the runs of ``manifest`` and
        ``<suite out>/suite.json`` for its suite.
    out
        Page to write.
    timings
        Lines of ``benchmarks/timed.py``; default ``root/timings.txt`` when present.
    manifest
        The runs, in page order, and the suite.
    """
    runs, suite = _read_manifest(manifest)
    if timings is None:
        timings = Path(root) / "timings.txt"
    times = read_timings(timings)
    items = load_results(root, runs, times)
    text = render(items, load_suite_result(root, suite, times))
    peers = peer_section(items)
    if peers:
        text += "\n" + "\n".join(peers).rstrip("\n") + "\n"
    scale = scale_section(root, times)
    if scale:
        text += "\n" + "\n".join(scale).rstrip("\n") + "\n"
    realism = realism_section(root, times)
    if realism:
        text += "\n" + "\n".join(realism).rstrip("\n") + "\n"
    write_atomic(out, text)
    return text


#: Results of the scale scripts (not benchmark tasks): folder, title, command.
SCALE_RUNS = (
    (
        "embed-tissue-million",
        "A million-cell virtual tissue embedded by the niche model",
        "python benchmarks/embed_tissue_million.py --out benchmarks/results/embed-tissue-million",
    ),
)


#: The simulator's realism check (a script, not a benchmark task): folder and command.
REALISM_RUN = (
    "simulator-realism",
    "python benchmarks/sim_realism.py --out benchmarks/results/simulator-realism",
)


def realism_section(root: str | Path, timings: Mapping[str, Timing] | None = None) -> list[str]:
    """The simulated-vs-real statistics, as the script wrote them (none: no section)."""
    folder, command = REALISM_RUN
    path = Path(root) / folder / "results.md"
    if not path.exists():
        return []
    body = path.read_text().replace("\n## ", "\n#### ")
    t = (timings or {}).get(folder)
    return [
        "## Simulator realism",
        "",
        f"Does the simulator look like real screens? Each real design is copied onto a simulated "
        f"world of the same size; DE genes by Welch t-test, BH FDR 0.05; partners are STRING "
        f"pairs (the real table for the real data, the world's simulated one for the simulated "
        f"data). `{command}` — {_timing_text(t)}.",
        "",
        body.rstrip("\n"),
        "",
    ]


#: The scaling task's results folder and command.
SCALING_RUN = ("scaling", "aivc benchmark scaling --out results/scaling")


def scaling_lines(root: str | Path) -> list[str]:
    """The scaling curves (cells, Dask workers, training processes), when they were run."""
    folder, command = SCALING_RUN
    path = Path(root) / folder / "results.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    lo, hi = r["slope_target"]
    slope_met = "met" if lo <= r["slope"] <= hi else "missed"
    lines = [
        f"### {folder}",
        "",
        f"`{command}`: simulated screens of {r['genes']:,} genes read from zarr in blocks of "
        f"{r['chunk_size']:,} cells, pseudobulk + the simple baselines fitted and scored on 5 "
        "folds, each size in a fresh process (peak = its VmHWM). Plot: "
        "[docs/images/scaling.png](docs/images/scaling.png).",
        "",
        "| cells | conditions | seconds | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    for i, n in enumerate(r["cells"]):
        lines.append(
            f"| {n:,} | {r['n_conditions'][i]:,} | {r['seconds'][i]:.1f} | "
            f"{r['peak_memory_mb'][i]:,.0f} |"
        )
    d, t = r["dask"], r["ddp"]
    lines += [
        "",
        f"Slope of log time on log cells {r['slope']:.2f} (target {lo}–{hi}: {slope_met}). "
        + (
            f"Peak memory grew {r['memory_bytes_per_cell']:.0f} bytes per cell from "
            f"{r['cells'][0]:,} to {r['cells'][-1]:,} cells. "
            if "memory_bytes_per_cell" in r
            else ""
        )
        + f"Dask on {d['cells']:,} cells: "
        + ", ".join(
            f"{w} worker(s) {s:.1f} s" for w, s in zip(d["workers"], d["seconds"], strict=True)
        )
        + f" (speed-up {d['speedup']:.2f}×, results identical: {all(d['identical_to_one_process'])}). "
        f"DistributedDataParallel, cell encoder on {t['cells']:,} cells for {t['epochs']} epochs: "
        + ", ".join(
            f"{p} process(es) {s:.1f} s"
            + (f" (training loop {ts:.1f} s)" if ts is not None else "")
            + f", final loss {loss:.1f}"
            for p, s, ts, loss in zip(
                t["processes"],
                t["seconds"],
                t.get("train_seconds", [None] * len(t["seconds"])),
                t["final_loss"],
                strict=True,
            )
        )
        + f" (speed-up {t['speedup']:.2f}× in all"
        + (
            f", {t['train_speedup']:.2f}× in the training loop)."
            if "train_speedup" in t
            else "; the start-up of the processes is included)."
        ),
        "",
    ]
    return lines


#: The Replogle-sized screen run out of core: folder and command (shown relative to benchmarks/).
REPLOGLE_RUN = (
    "scale/replogle-unseen-single",
    "aivc benchmark unseen-single --dataset sim:replogle --out results/scale/replogle-unseen-single",
)
#: The issue's targets for that run: whole command under 15 minutes, peak memory under 8 GB.
REPLOGLE_TARGETS = (15 * 60.0, 8 * 1024.0)


def replogle_lines(root: str | Path, timings: Mapping[str, Timing] | None = None) -> list[str]:
    """The genome-wide-sized unseen-single task read from disk in blocks, when it was run."""
    folder, command = REPLOGLE_RUN
    path = Path(root) / folder / "results.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    o = r["out_of_core"]
    t_max, m_max = REPLOGLE_TARGETS
    timing = (timings or {}).get(folder)
    wall = timing.wall_seconds if timing is not None else o["total_wall_seconds"]
    peak = max(o["peak_memory_mb"], timing.peak_mb if timing is not None else 0.0)
    zero = r.get("baseline_for_scaling", "train-mean")
    lines = [
        f"### {folder}",
        "",
        f"`{command}`: {r['n_cells']:,} cells x {r['n_genes']:,} genes, "
        f"{r['n_conditions']:,} knockouts held out in {r['split']['n_splits']} folds, read from "
        f"zarr in blocks of {o['chunk_size']:,} cells (the data pass: {o['statistics_seconds']:.0f} s); "
        f"models fitted on exact per-condition summaries and {o['sampled_cells']:,} sampled cells; "
        "top-20 DE genes by Welch's t; no cell-level metrics. "
        + (
            f"The world was written first ({o['simulate_seconds']:.0f} s, not counted)."
            if o["simulate_seconds"] > 0
            else "The world was read from the cache (its writing is not counted)."
        ),
        "",
        "| model | pearson_delta_de20 ↑ | mse_de20 ↓ | pearson_delta ↑ | "
        f"pearson_delta_de20 scaled (0 = {zero}) | fit+predict s | peak MB above start |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in r["models"].items():
        lines.append(
            f"| {name} | {num(e['pearson_delta_de20']['mean'], 3)} ± {num(e['pearson_delta_de20']['sd'], 3)} | "
            f"{num(e['mse_de20']['mean'], 4)} ± {num(e['mse_de20']['sd'], 4)} | "
            f"{num(e['pearson_delta']['mean'], 3)} | "
            f"{num(e['pearson_delta_de20_scaled']['mean'], 2)} | "
            f"{r['wall_seconds'].get(name, 0):.1f} | {r['peak_memory_mb'].get(name, 0):,.0f} |"
        )
    rep = r["replicate"]
    lines += [
        f"| *replicate (split-half)* | {num(rep['pearson_delta_de20']['mean'], 3)} | "
        f"{num(rep['mse_de20']['mean'], 4)} | {num(rep['pearson_delta']['mean'], 3)} | 1 | | |",
        "",
        f"Whole command {wall:.0f} s (target under {t_max / 60:.0f} minutes: "
        f"{'met' if wall < t_max else 'missed'}), peak resident memory {peak:,.0f} MB (target "
        f"under {m_max / 1024:.0f} GB: {'met' if peak < m_max else 'missed'}); 2 cores. Mean ± sd "
        "over the 5 folds of seed 0.",
        "",
    ]
    ours = r["models"].get("aivc-perturb")
    if ours is not None:
        verdicts = []
        for metric, higher in (("pearson_delta_de20", True), ("mse_de20", False)):
            rivals = {
                n: e[metric]["mean"]
                for n, e in r["models"].items()
                if n != "aivc-perturb" and e[metric]["mean"] is not None
            }
            best = (max if higher else min)(rivals, key=rivals.__getitem__)
            mine = ours[metric]["mean"]
            ahead = mine > rivals[best] if higher else mine < rivals[best]
            verdicts.append(
                f"{metric}: aivc-perturb {num(mine, 4)}, best baseline {best} "
                f"{num(rivals[best], 4)} ({'ahead' if ahead else 'not ahead'})"
            )
        lines += ["; ".join(verdicts) + ".", ""]
    return lines


def scale_section(root: str | Path, timings: Mapping[str, Timing] | None = None) -> list[str]:
    """Lines of the scale runs whose ``results.json`` is under ``root`` (none: no section)."""
    found = [(d, t, c) for d, t, c in SCALE_RUNS if (Path(root) / d / "results.json").exists()]
    scaling = scaling_lines(root)
    replogle = replogle_lines(root, timings)
    if not found and not scaling and not replogle:
        return []
    lines = ["## Scale", "", *scaling, *replogle]
    for folder, title, command in found:
        r = json.loads((Path(root) / folder / "results.json").read_text())
        target = "met" if r.get("meets_target") else "missed"
        lines += [
            f"### {folder}",
            "",
            f"{title}: `{command}`. {r['n_cells']:,} cells x {r['n_genes']} genes; read "
            f"{r['read_seconds']} s, fit {r['fit_seconds']} s, embed {r['embed_seconds']} s; peak "
            f"resident memory {r['peak_rss_mb']:,.0f} MB (target under {r['target_peak_mb']:,} MB: "
            f"{target}).",
            "",
        ]
    return lines


def peer_table(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Our model against each published peer, one row per task x dataset x metric x peer."""
    lines = [
        "| task · dataset | metric | aivc-perturb | peer | peer mean ± sd (folds) | aivc ahead | p | wall ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        arrow = _ARROWS["higher" if c["higher_is_better"] else "lower"]
        d = _decimals(max(abs(float(c["model_mean"])), abs(float(c["peer_mean"]))))
        lines.append(
            f"| {c['task']} · {c['dataset']} | {c['metric']}{arrow} | "
            f"{float(c['model_mean']):.{d}f} | {c['peer']} | "
            f"{mean_sd((c['peer_mean'], c.get('peer_sd') or 0.0), d)} | "
            f"{'yes' if c['wins'] else '**no**'} | {p_value(c.get('sign_p'))} | "
            f"{float(c['wall_ratio']):.1f}× |"
        )
    return lines


def peer_section(items: Sequence[Loaded]) -> list[str]:
    """Published peers side by side: the ``peer_comparison`` of every run that ran peers."""
    found = [it for it in items if it.result and it.result.get("peer_comparison")]
    if not found:
        return []
    lines = ["## Published peers, side by side", ""]
    for item in found:
        versions = [
            f"{name} {info.get('version', '?')} ({info.get('licence', '')}; "
            f"{info.get('steps')} steps; {info.get('clipped_values', 0)} generated values clipped "
            "to [0, 14])"
            for name, info in (item.result.get("peer_runs") or {}).items()
        ]
        lines += [
            f"`{item.run.command()}` — {_timing_text(item.timing)}. Each peer is trained from "
            "scratch on CPU in its own environment (`aivc peers install NAME`, "
            "[docs/peers.md](docs/peers.md)) on the first seed's splits; aivc-perturb's mean is "
            "taken over the same splits; p: two-sided sign test over the held-out conditions; "
            "wall ratio = the peer's time / aivc-perturb's time per seed. "
            + "; ".join(versions)
            + ".",
            "",
            *peer_table(item.result["peer_comparison"]),
            "",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="results root with one folder per run of the manifest")
    parser.add_argument("--timings", help="timings file (default ROOT/timings.txt)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="page to write")
    parser.add_argument("--manifest", default=str(MANIFEST), help="runs to report")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print folder<TAB>arguments once per command and exit",
    )
    args = parser.parse_args(argv)
    if args.print_commands:
        for folder, arguments in commands(*_read_manifest(args.manifest)):
            sys.stdout.write(f"{folder}\t{arguments}\n")
        return 0
    text = make_page(args.root, out=args.out, timings=args.timings, manifest=args.manifest)
    n = text.count("\n")
    sys.stdout.write(f"wrote {args.out} ({n} lines)\n")
    if n > MAX_LINES:
        sys.stderr.write(f"warning: {args.out} has {n} lines, more than {MAX_LINES}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
