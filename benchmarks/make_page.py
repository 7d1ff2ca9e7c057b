"""Write BENCHMARKS.md from the results folders of the runs listed in benchmarks/runs.toml.

Usage::

    python benchmarks/make_page.py RESULTS_ROOT [--timings FILE] [--out BENCHMARKS.md]
    python benchmarks/make_page.py RESULTS_ROOT --print-commands

``RESULTS_ROOT/<name>/results.json`` is read for every run of the manifest (a
missing folder becomes a "not run" row, never a silent gap). ``--timings``
(default ``RESULTS_ROOT/timings.txt`` when present) holds the lines printed by
``benchmarks/timed.py``: the wall time and peak memory of each whole command.
``--print-commands`` prints ``name<TAB>arguments`` per run, for
``benchmarks/run_all.sh``.

The page is built from the data alone: which model is aivc's, which are
baselines and which are published peers, and the headline metric of each task
are declared in :data:`RULES` and :data:`PEERS`; every number comes from a
``results.json`` or the timings file. Only the standard library is used, so
the page can be rebuilt without installing aivc.
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
MAX_LINES = 300

#: Published models of other groups, run in the same command: "peers". Every other model whose
#: name does not start with "aivc" is a baseline; other "aivc*" models are variants of ours.
PEERS = frozenset({"gears", "scvi", "scanvi", "harmony"})
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
        ``"higher"``, ``"lower"`` or ``"target"`` (closest to ``target`` is best).
    columns
        Main metrics of the task's own table (those present in the results are shown).
    target
        The ideal value when ``better == "target"``.
    """

    ours: str
    metric: str
    better: str
    columns: tuple[str, ...]
    target: float | None = None

    def score(self, mean: float) -> float:
        """A number that is larger for a better ``mean`` of the headline metric."""
        if self.better == "higher":
            return mean
        if self.better == "lower":
            return -mean
        return -abs(mean - float(self.target or 0.0))

    @property
    def direction(self) -> str:
        """The direction in words, for the page."""
        if self.better == "target":
            return f"closest to {self.target:.2f}"
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

#: Per task: aivc's model, the headline metric and its direction, the table's columns.
RULES: dict[str, Rule] = {
    "unseen-single": Rule("aivc-perturb", "pearson_delta_de20", "higher", _PERTURBATION_COLUMNS),
    "combinations": Rule("aivc-perturb", "mse_de20", "lower", _PERTURBATION_COLUMNS),
    "unseen-cell-type": Rule("aivc-perturb", "pearson_delta_de20", "higher", _PERTURBATION_COLUMNS),
    "simulator": Rule("aivc-perturb", "mse_de20", "lower", _PERTURBATION_COLUMNS),
    "calibration": Rule(
        "aivc-perturb",
        "coverage_90",
        "target",
        (
            "coverage_90",
            "coverage_80",
            "coverage_90_de20",
            "interval_width_90",
            "spearman_uncertainty_error",
        ),
        target=0.90,
    ),
    "label-transfer": Rule(
        "aivc", "accuracy", "higher", ("accuracy", "macro_f1", "ece", "abstention")
    ),
    "integration": Rule(
        "aivc-encoder",
        "overall",
        "higher",
        ("overall", "bio", "batch", "nmi", "ari", "label_asw", "ilisi", "graph_connectivity"),
    ),
    "rna-to-protein": Rule("aivc-protein", "pearson", "higher", ("pearson", "rmse")),
    "lab-loop": Rule(
        "aivc-design", "hit_ratio_final", "higher", ("hit_ratio_final", "error_auc", "final_error")
    ),
}

#: Directions of metrics whose results.json does not state one.
_DIRECTIONS = {
    "coverage_90": "target",
    "coverage_80": "target",
    "coverage_90_de20": "target",
    "interval_width_90": "lower",
    "spearman_uncertainty_error": "higher",
    "hit_ratio_final": "higher",
    "error_auc": "lower",
    "final_error": "lower",
}
_ARROWS = {"higher": " ↑", "lower": " ↓", "target": ""}


# ----------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Run:
    """One entry of the manifest: a results folder and the command that fills it."""

    name: str
    task: str
    args: str
    question: str

    def command(self, root: str = SHOWN_ROOT) -> str:
        """The ``aivc benchmark`` command of this run, writing to ``root/name``."""
        return f"aivc benchmark {self.args} --out {root}/{self.name}"

    def option(self, flag: str) -> str | None:
        """The value of ``--flag`` in the arguments, or None."""
        words = shlex.split(self.args)
        for i, word in enumerate(words[:-1]):
            if word == flag:
                return words[i + 1]
        return None


def load_manifest(path: str | Path = MANIFEST) -> list[Run]:
    """Read the runs of a manifest (``[[run]]`` tables with name, task, args and question)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    runs = []
    for i, entry in enumerate(data.get("run", [])):
        missing = [k for k in ("name", "task", "args", "question") if k not in entry]
        if missing:
            msg = (
                f"Run {i} of {path} lacks {missing}; every run needs name, task, args and question."
            )
            raise ValueError(msg)
        run = Run(entry["name"], entry["task"], entry["args"], entry["question"])
        first = shlex.split(run.args)[0] if run.args.strip() else ""
        if first != run.task:
            msg = f"Run {run.name!r}: args must start with its task {run.task!r}, got {first!r}."
            raise ValueError(msg)
        if run.task not in RULES:
            msg = f"Run {run.name!r}: no summary rule for task {run.task!r}; add one to RULES."
            raise ValueError(msg)
        runs.append(run)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        msg = f"Run names in {path} must be unique; got {names}."
        raise ValueError(msg)
    return runs


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
    """Timings by run name; a later line for the same name replaces an earlier one."""
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


def _present(columns: Iterable[str], models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [c for c in columns if any(c in e for e in models.values())]


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
    )


def _calibration_blocks(result: Mapping[str, Any], rule: Rule) -> list[Block]:
    blocks = []
    for task, sub in result["results"].items():
        models = {m: _stats(e) for m, e in sub["models"].items()}
        blocks.append(
            Block(
                f"calibration · {task} ({sub.get('dataset', '?')})",
                rule,
                models,
                _present(rule.columns, models),
                _directions(result, rule),
                _numbers(sub.get("wall_seconds")),
                _numbers(sub.get("peak_memory_mb")),
                part=task,
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
    block.columns = _present([*extra, *rule.columns], block.models)
    # reference errors, the same for every strategy (simulator only)
    for key, text in (
        ("no_change_error", "*no change (reference)*"),
        ("pool_oracle_error", "*ridge on every candidate's true change (reference)*"),
    ):
        stat = next((e[key] for e in result["models"].values() if _is_stat(e.get(key))), None)
        if stat is not None and stat.get("mean") is not None:
            block.references[text] = {"final_error": float(stat["mean"])}
    return block


def result_label(run: Run, result: Mapping[str, Any] | None) -> str:
    """``task · dataset[, variant]`` of a run (from the results when present)."""
    dataset = None
    variant = run.option("--variant")
    if result is not None:
        dataset = result.get("dataset")
        variant = result.get("variant") or variant
        if isinstance(dataset, Mapping):  # calibration: one dataset per task
            dataset = None
    dataset = dataset or run.option("--dataset")
    if dataset and "," in dataset:  # several datasets (rna-to-protein): their short names
        dataset = ", ".join(_short_names(dataset.split(",")).values())
    label = run.task if not dataset else f"{run.task} · {dataset}"
    return f"{label}, {variant}" if variant else label


def blocks_of(run: Run, result: Mapping[str, Any]) -> list[Block]:
    """The scored comparisons of one run's ``results.json``."""
    rule = RULES[run.task]
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


def verdict(ours: tuple[float, float], other: tuple[float, float], rule: Rule) -> str:
    """``"wins"``, ``"loses"`` or ``"ties"``: ours against another model on the headline metric.

    A difference no larger than the larger of the two standard deviations is a tie.
    """
    gap = rule.score(ours[0]) - rule.score(other[0])
    if abs(gap) <= max(ours[1], other[1]):
        return "ties"
    return "wins" if gap > 0 else "loses"


def _best(block: Block, kind: str) -> tuple[str, tuple[float, float]] | None:
    rule = block.rule
    found = [
        (name, s)
        for name in block.models
        if role(name, rule) == kind and (s := _stat(block, name, rule.metric)) is not None
    ]
    return max(found, key=lambda kv: rule.score(kv[1][0])) if found else None


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
    wall_ratio: float | None = None
    verdict: str = "not run"
    rival: str = ""
    #: how much better (positive) or worse ours is than the rival, in the headline's units
    gap: float | None = None
    status: str = ""


def summarise(block: Block) -> Summary:
    """The summary row of a block: ours against the best baseline and the best peer."""
    rule = block.rule
    row = Summary(block.label, rule)
    row.ours = _stat(block, rule.ours, rule.metric)
    row.baseline = _best(block, "baseline")
    row.peer = _best(block, "peer")
    row.replicate = block.replicate.get(rule.metric)
    row.scaled = _stat(block, rule.ours, f"{rule.metric}_scaled")
    if row.baseline is not None:
        ours_wall = block.wall.get(rule.ours)
        base_wall = block.wall.get(row.baseline[0])
        if ours_wall is not None and base_wall:
            row.wall_ratio = ours_wall / base_wall
    rivals = [r for r in (row.baseline, row.peer) if r is not None]
    if row.ours is None:
        row.verdict = f"no {rule.ours} result"
    elif not rivals:
        row.verdict = "no baseline"
    else:
        name, best = max(rivals, key=lambda kv: rule.score(kv[1][0]))
        row.verdict, row.rival = verdict(row.ours, best, rule), name
        row.gap = rule.score(row.ours[0]) - rule.score(best[0])
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


def _named(entry: tuple[str, tuple[float, float]] | None) -> str:
    return "—" if entry is None else f"{entry[0]} {mean_sd(entry[1])}"


def _ratio(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 1:
        return f"{x:.2g}×"
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _gap(row: Summary) -> str:
    if row.gap is None or row.ours is None:
        return ""
    return f" by {num(abs(row.gap), _decimals(row.ours[0]))}"


def _verdict_text(row: Summary) -> str:
    if row.verdict == "wins":
        return f"**wins**{_gap(row)}"
    if row.verdict == "loses":
        return f"**loses** to {row.rival}{_gap(row)}"
    if row.verdict == "ties":
        return f"ties with {row.rival}"
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
            f"| {r.label} | {r.rule.metric if r.rule else '—'} | {mean_sd(r.ours)} | {_named(r.baseline)} "
            f"| {_named(r.peer)} | {num(r.replicate) if r.replicate is not None else '—'} "
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
            cells = [
                mean_sd(_stat(block, name, c), decimals[c]) if c in entry else "—" for c in cols
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


def _timing_text(t: Timing | None) -> str:
    if t is None:
        return "whole command: not timed"
    text = f"whole command: {t.wall_seconds:.1f} s wall, {t.peak_mb:.0f} MB peak RSS"
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
    """Read ``root/<name>/results.json`` of every run; missing ones are kept with no result."""
    out = []
    for run in runs:
        path = Path(root) / run.name / "results.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        item = Loaded(run, result, timings.get(run.name))
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


def _machine(items: Sequence[Loaded]) -> str:
    cpus, pythons, versions = set(), set(), set()
    for item in items:
        if item.result is None:
            continue
        m = item.result.get("machine") or {}
        cpus.add(m.get("cpus"))
        pythons.add(m.get("python"))
        versions.add(m.get("aivc") or item.result.get("aivc") or item.result.get("aivc_version"))

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


def _losses(rows: Sequence[Summary]) -> list[str]:
    out = []
    for r in rows:
        if r.verdict != "loses" or r.ours is None or r.rule is None:
            continue
        rival = r.peer if r.peer is not None and r.peer[0] == r.rival else r.baseline
        assert rival is not None
        worse = f"further from {r.rule.target:.2f}" if r.rule.better == "target" else "worse"
        out.append(
            f"- {r.label}: {r.rule.metric} {mean_sd(r.ours)} against {rival[0]} "
            f"{mean_sd(rival[1])}, {worse}{_gap(r)}."
        )
    return out or ["- Nowhere on the headline metrics of this page."]


def _section(item: Loaded) -> list[str]:
    run = item.run
    lines = [f"### {run.name}", ""]
    head = f"{run.question} `{run.command()}` — {_timing_text(item.timing)}"
    if item.result is None:
        return [*lines, f"{head}. **{_status(item)}**: no results.json.", ""]
    split = _split_text(item.result)
    lines += [f"{head}. Split: {split}." if split else f"{head}.", ""]
    lines += [*model_table(item.blocks), ""]
    if any(b.folds for b in item.blocks):
        lines += ["† run on the first seed's splits only; mean ± sd over those splits.", ""]
    return lines


def render(items: Sequence[Loaded]) -> str:
    """The whole page."""
    rows = summaries(items)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/make_page.py results` from the results folders of the runs "
        "in [benchmarks/runs.toml](benchmarks/runs.toml); do not edit by hand. In every run all "
        "models, baselines included, are scored in the same command on the same seeded splits "
        "(saved as `splits.json` beside `results.json`, [format](docs/results-format.md)); "
        "hyperparameters are chosen on training data only; values are mean ± sd over seeds "
        f"(or folds, marked †). Machine: {_machine(items)}. "
        "`bash benchmarks/run_all.sh results` reruns every command, appends its wall time and "
        "peak memory to `results/timings.txt` and rebuilds this page.",
        "",
        *summary_table(rows),
        "",
        "aivc = aivc's own model of the task; baselines are simple reference methods, peers are "
        "published models of other groups, both run in the same command. Verdict: aivc against the "
        "best baseline or peer on the headline metric; a difference within the larger of the two "
        "sds is a tie. replicate: the split-half replicate of the data (a ceiling); scaled: "
        "(aivc − train-mean) / (replicate − train-mean), 0 = baseline, 1 = as good as a repeat "
        "of the experiment. Wall ratio: aivc's fit+predict time over the best baseline's.",
        "",
        "## Where aivc loses",
        "",
        *_losses(rows),
        "",
        "## Models and headline metrics per task",
        "",
        *_rules_table(items),
        "",
        "Development history (option sweeps, superseded runs, frontier studies): "
        "[docs/benchmarks/history.md](docs/benchmarks/history.md).",
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
        Results root holding ``<name>/results.json`` for the runs of ``manifest``.
    out
        Page to write.
    timings
        Lines of ``benchmarks/timed.py``; default ``root/timings.txt`` when present.
    manifest
        The runs, in page order.
    """
    runs = load_manifest(manifest)
    if timings is None:
        timings = Path(root) / "timings.txt"
    text = render(load_results(root, runs, read_timings(timings)))
    write_atomic(out, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="results root with one folder per run of the manifest")
    parser.add_argument("--timings", help="timings file (default ROOT/timings.txt)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="page to write")
    parser.add_argument("--manifest", default=str(MANIFEST), help="runs to report")
    parser.add_argument(
        "--print-commands", action="store_true", help="print name<TAB>arguments per run and exit"
    )
    args = parser.parse_args(argv)
    if args.print_commands:
        for run in load_manifest(args.manifest):
            sys.stdout.write(f"{run.name}\t{run.args}\n")
        return 0
    text = make_page(args.root, out=args.out, timings=args.timings, manifest=args.manifest)
    n = text.count("\n")
    sys.stdout.write(f"wrote {args.out} ({n} lines)\n")
    if n > MAX_LINES:
        sys.stderr.write(f"warning: {args.out} has {n} lines, more than {MAX_LINES}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
