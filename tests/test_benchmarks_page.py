"""The generated results page (benchmarks/make_page.py) on tiny fake results folders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_make_page():
    path = ROOT / "benchmarks" / "make_page.py"
    spec = importlib.util.spec_from_file_location("make_page", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_page"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


make_page = _load_make_page()

MANIFEST = """
[[run]]
name = "unseen-single"
task = "unseen-single"
args = "unseen-single --seeds 0 --seeds 1 --seeds 2"
question = "Predict unseen knockouts."

[[run]]
name = "lab-loop/never-run"
task = "lab-loop"
args = "lab-loop --dataset schmidt2022-ifng"
question = "Find the hits of a screen."
"""


def _stat(mean: float, sd: float) -> dict[str, float]:
    return {"mean": mean, "sd": sd, "n": 3}


def _result() -> dict:
    models = {
        "control": {"pearson_delta_de20": {"mean": None, "sd": None, "n": 0}},
        "train-mean": {"pearson_delta_de20": _stat(0.40, 0.01), "mse_de20": _stat(0.21, 0.004)},
        "linear": {"pearson_delta_de20": _stat(0.37, 0.02), "mse_de20": _stat(0.209, 0.006)},
        "aivc-perturb": {
            "pearson_delta_de20": _stat(0.30, 0.02),
            "pearson_delta_de20_scaled": _stat(-0.25, 0.05),
            "mse_de20": _stat(0.198, 0.014),
        },
        "gears": {
            "aggregated_over": "folds",
            "pearson_delta_de20": _stat(0.056, 0.127),
            "mse_de20": _stat(0.242, 0.177),
        },
    }
    return {
        "task": "unseen-single",
        "dataset": "papalexi2021",
        "split": {
            "kind": "leave-perturbations-out",
            "folds": 5,
            "seeds": [0, 1, 2],
            "n_splits": 15,
        },
        "models": models,
        "replicate": {"pearson_delta_de20": {"mean": 0.807}, "mse_de20": {"mean": 0.029}},
        "baseline_for_scaling": "train-mean",
        "metrics": {
            "pearson_delta_de20": {"higher_is_better": True},
            "mse_de20": {"higher_is_better": False},
        },
        "wall_seconds": {"train-mean": 2.0, "linear": 2.5, "aivc-perturb": 25.0, "gears": 174.0},
        "peak_memory_mb": {"train-mean": 9.0, "linear": 1.0, "aivc-perturb": 155.0, "gears": 591.0},
        "machine": {"cpus": 2, "python": "3.11.7", "aivc": "0.1.0"},
    }


@pytest.fixture
def page(tmp_path: Path) -> str:
    manifest = tmp_path / "runs.toml"
    manifest.write_text(MANIFEST)
    results = tmp_path / "results"
    (results / "unseen-single").mkdir(parents=True)
    (results / "unseen-single" / "results.json").write_text(json.dumps(_result()))
    (results / "timings.txt").write_text("unseen-single: exit 0, 240.5 s wall, 1734 MB peak RSS\n")
    out = tmp_path / "BENCHMARKS.md"
    text = make_page.make_page(results, out=out, manifest=manifest)
    assert out.read_text() == text
    return text


def _summary_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_summary_table_comes_first(page: str) -> None:
    lines = page.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[first_table].startswith("| run | headline metric | aivc | best baseline")
    # only the title and one paragraph come before it
    assert sum(1 for line in lines[:first_table] if line.strip()) == 2
    assert first_table < lines.index("## Runs")


def test_missing_run_is_listed_as_not_run(page: str) -> None:
    rows = _summary_rows(page)
    assert len(rows) == 2
    assert "lab-loop · schmidt2022-ifng" in rows[1]
    assert rows[1].rstrip().endswith("| not run |")
    assert "### lab-loop/never-run" in page


def test_page_is_short(page: str) -> None:
    assert len(page.splitlines()) <= make_page.MAX_LINES


def test_numbers_match_the_json(page: str) -> None:
    row = _summary_rows(page)[0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    label, metric, ours, baseline, peer, replicate, scaled, ratio, verdict = cells
    assert label == "unseen-single · papalexi2021"
    assert metric == "pearson_delta_de20"
    assert ours == "0.300 ± 0.020"
    assert baseline == "train-mean 0.400 ± 0.010"
    assert peer == "gears 0.056 ± 0.127"
    assert replicate == "0.807"
    assert scaled == "-0.250 ± 0.050"
    assert ratio == "12×"  # 25.0 s against train-mean's 2.0 s
    assert verdict.startswith("**loses** to train-mean by 0.100")
    # the run's own table: command, timing, every model, the replicate
    assert "`aivc benchmark unseen-single --seeds 0 --seeds 1 --seeds 2 --out " in page
    assert "240.5 s wall, 1734 MB peak RSS" in page
    assert "| **aivc-perturb** | 0.300 ± 0.020 | 0.198 ± 0.014 | 25.0 | 155 |" in page
    assert "| gears † | 0.056 ± 0.127 | 0.242 ± 0.177 | 174.0 | 591 |" in page
    assert "| control | n/a | — | — | — |" in page  # undefined metric, no metric, no timing
    assert "| *replicate (split-half)* | 0.807 | 0.029 |" in page


def test_losses_are_listed(page: str) -> None:
    section = page.split("## Where aivc loses", 1)[1].split("##", 1)[0]
    assert "unseen-single · papalexi2021" in section
    assert "train-mean 0.400 ± 0.010" in section


@pytest.mark.parametrize(
    ("ours", "other", "better", "expected"),
    [
        ((0.30, 0.02), (0.40, 0.01), "higher", "loses"),  # worse by more than one sd
        ((0.39, 0.02), (0.40, 0.01), "higher", "ties"),  # within the larger sd
        ((0.45, 0.01), (0.40, 0.01), "higher", "wins"),
        ((0.19, 0.005), (0.21, 0.004), "lower", "wins"),
        ((0.23, 0.005), (0.21, 0.004), "lower", "loses"),
    ],
)
def test_verdict(ours, other, better, expected) -> None:
    rule = make_page.Rule("aivc-perturb", "m", better, ("m",))
    assert make_page.verdict(ours, other, rule) == expected


def test_verdict_in_a_target_band() -> None:
    rule = make_page.RULES["calibration"]
    assert rule.band == (0.85, 0.95)
    # both meet the band: the narrower interval wins, however close either is to 0.90
    assert make_page.verdict((0.910, 0.01), (0.899, 0.01), rule, (1.0, 0.02), (1.2, 0.02)) == "wins"
    assert (
        make_page.verdict((0.899, 0.01), (0.910, 0.01), rule, (1.2, 0.02), (1.0, 0.02)) == "loses"
    )
    assert make_page.verdict((0.90, 0.01), (0.93, 0.01), rule, (1.0, 0.1), (1.05, 0.1)) == "ties"
    # meeting the band beats missing it, even with a much wider interval
    assert make_page.verdict((0.86, 0.01), (0.96, 0.01), rule, (3.0, 0.1), (1.0, 0.1)) == "wins"
    assert make_page.verdict((0.80, 0.01), (0.899, 0.01), rule, (0.5, 0.1), (1.2, 0.1)) == "loses"
    # both outside: aivc misses the target, whatever the other does
    assert make_page.verdict((0.80, 0.01), (0.97, 0.01), rule, (0.5, 0.1), (1.2, 0.1)) == "misses"
    # the bounds belong to the band
    assert rule.meets(0.85) and rule.meets(0.95) and not rule.meets(0.849)


def test_roles() -> None:
    rule = make_page.RULES["unseen-single"]
    assert make_page.role("aivc-perturb", rule) == "ours"
    assert make_page.role("gears", rule) == "peer"
    assert make_page.role("train-mean", rule) == "baseline"
    assert make_page.role("conformal:linear", make_page.RULES["calibration"]) == "baseline"
    assert make_page.role("aivc-adaptive", make_page.RULES["label-transfer"]) == "variant"


def test_manifest_of_the_project_is_valid() -> None:
    runs = make_page.load_manifest()
    assert runs, "benchmarks/runs.toml lists no run"
    assert all(r.task in make_page.RULES for r in runs)


def test_every_run_of_the_project_has_a_row(tmp_path: Path) -> None:
    text = make_page.make_page(tmp_path, out=tmp_path / "page.md")
    rows = _summary_rows(text)
    runs = make_page.load_manifest()
    assert len(rows) == len(runs)
    assert all(row.rstrip().endswith("| not run |") for row in rows)
    for run in runs:
        assert f"### {run.name}\n" in text
        assert f"`{run.command()}`" in text


def test_small_values_keep_three_significant_digits() -> None:
    assert make_page.mean_sd((0.41653, 0.03931)) == "0.417 ± 0.039"
    assert make_page.mean_sd((0.003071, 0.000991)) == "0.00307 ± 0.00099"
    assert make_page.mean_sd((0.0042, 0.0044), 3) == "0.004 ± 0.004"
    assert make_page.num(None) == "n/a"


# ----------------------------------------------------------------------------- calibration
def _calibration(coverage: float, width: float, *, deciles: list | None = None) -> dict:
    ours = {
        "coverage_90": _stat(coverage, 0.005),
        "coverage_90_de20": _stat(0.81, 0.01),
        "interval_width_90": _stat(width, 0.01),
    }
    if deciles is not None:
        ours["coverage_90_by_variability_decile"] = deciles
    models = {
        "aivc-perturb": ours,
        "conformal:train-mean": {
            "coverage_90": _stat(0.899, 0.005),
            "coverage_90_de20": _stat(0.40, 0.01),
            "interval_width_90": _stat(1.2, 0.01),
        },
    }
    return {
        "task": "calibration",
        "seeds": [0, 1, 2],
        "results": {
            "unseen-single": {
                "dataset": "papalexi2021",
                "models": models,
                "wall_seconds": {"aivc-perturb": 10.0, "conformal:train-mean": 1.0},
                "peak_memory_mb": {"aivc-perturb": 10.0, "conformal:train-mean": 1.0},
            }
        },
    }


def _calibration_page(tmp_path: Path, result: dict) -> str:
    manifest = tmp_path / "runs.toml"
    manifest.write_text(
        '[[run]]\nname = "calibration"\ntask = "calibration"\nargs = "calibration"\n'
        'question = "Are the intervals honest?"\n'
    )
    (tmp_path / "results" / "calibration").mkdir(parents=True)
    (tmp_path / "results" / "calibration" / "results.json").write_text(json.dumps(result))
    return make_page.make_page(tmp_path / "results", out=tmp_path / "page.md", manifest=manifest)


def test_calibration_in_the_band_and_narrower_wins(tmp_path: Path) -> None:
    deciles = [0.7, 0.82, 0.88, 0.9, 0.91, 0.93, 0.95, None, 0.97, 0.99]
    text = _calibration_page(tmp_path, _calibration(0.910, 1.0, deciles=deciles))
    row = _summary_rows(text)[0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # aivc: coverage, width, coverage on the top-20 DE genes and the range over the deciles
    assert cells[2] == "0.910 ± 0.005, width 1.000 ± 0.010, de20 0.810, deciles 0.700–0.990"
    assert cells[3] == "conformal:train-mean 0.899 ± 0.005, width 1.200 ± 0.010"
    assert cells[-1] == "**wins**: both meet 0.85–0.95, 0.200 narrower"
    assert "- Nowhere on the headline metrics of this page." in text
    # the run's own table shows the range over the deciles; the baseline has none
    assert "| coverage_90_de20 | coverage_90 deciles min–max | interval_width_90 ↓ |" in text
    assert "| 0.810 ± 0.010 | 0.700–0.990 | 1.000 ± 0.010 |" in text
    assert "| 0.400 ± 0.010 | — | 1.200 ± 0.010 |" in text


def test_calibration_outside_the_band_misses(tmp_path: Path) -> None:
    text = _calibration_page(tmp_path, _calibration(0.80, 0.5))
    verdict = _summary_rows(text)[0].strip("|").split("|")[-1].strip()
    assert verdict == "**loses** to conformal:train-mean: misses 0.85–0.95"
    section = text.split("## Where aivc loses", 1)[1].split("##", 1)[0]
    assert "coverage_90 0.800 ± 0.005 misses the 0.85–0.95 band" in section
    assert "conformal:train-mean 0.899 ± 0.005 meets it" in section


# ----------------------------------------------------------------------------- the suite
SUITE_MANIFEST = """
[suite]
out = "suite"
args = "suite --peers"
question = "Every perturbation task on every dataset."

[[run]]
name = "suite/unseen-context/kang2018"
task = "unseen-context"
from = "suite"
question = "Predict a held-out cell type's response from the other cell types."

[[run]]
name = "label-transfer"
task = "label-transfer"
args = "label-transfer"
question = "Annotate cells."
"""


def _cell(task: str, dataset: str, metric: str, ours: float, base: float, **kw: Any) -> dict:
    higher = metric.startswith("pearson")
    margin = (ours - base) if higher else (base - ours)
    return {
        "task": task,
        "dataset": dataset,
        "metric": metric,
        "higher_is_better": higher,
        "model": "aivc-perturb",
        "best_baseline": kw.get("baseline", "train-mean"),
        "model_mean": ours,
        "model_sd": 0.01,
        "baseline_mean": base,
        "baseline_sd": 0.02,
        "wins": margin > 0,
        "within_sd": margin >= -0.02,
        "sign_p": kw.get("p", 0.5),
        "n_conditions": 12,
        "aggregated_over": "seeds",
    }


def _suite() -> dict:
    cells = [
        # papalexi2021: one win, one within sd
        _cell("unseen-single", "papalexi2021", "pearson_delta_de20", 0.417, 0.380, p=0.031),
        _cell("unseen-single", "papalexi2021", "mse_de20", 0.205, 0.200),
        # kang2018: a loss to context-mean
        _cell(
            "unseen-context", "kang2018", "pearson_delta_de20", 0.60, 0.70, baseline="context-mean"
        ),
        _cell("unseen-context", "kang2018", "mse_de20", 0.10, 0.12, baseline="context-mean"),
    ]
    for w in range(5):  # worlds 0-2 won, 3 within sd, 4 lost
        ours = {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.39, 4: 0.2}[w]
        cells.append(_cell("unseen-single", f"sim-world-{w}", "pearson_delta_de20", ours, 0.4))
    runs = [
        {"task": c["task"], "dataset": c["dataset"], "folder": f"{c['task']}/{c['dataset']}"}
        for c in cells
    ]
    return {
        "task": "suite",
        "model": "aivc-perturb",
        "metrics": {"pearson_delta_de20": {"higher_is_better": True}, "mse_de20": {}},
        "cells": cells,
        "runs": runs,
    }


def _context_result() -> dict:
    result = _result()
    result["task"] = "unseen-context"
    result["dataset"] = "kang2018"
    result["baseline_for_scaling"] = "context-mean"
    result["models"]["context-mean"] = {"pearson_delta_de20": _stat(0.42, 0.01)}
    result["models"]["perturbation-elsewhere"] = {"pearson_delta_de20": _stat(0.10, 0.01)}
    return result


@pytest.fixture
def suite_root(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "runs.toml"
    manifest.write_text(SUITE_MANIFEST)
    results = tmp_path / "results"
    folder = results / "suite" / "unseen-context" / "kang2018"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(_context_result()))
    (results / "timings.txt").write_text("suite: exit 0, 3600.0 s wall, 2900 MB peak RSS\n")
    return results, manifest


def _suite_page(results: Path, manifest: Path, **kw) -> str:
    runs, suite = make_page._read_manifest(manifest)
    timings = make_page.read_timings(results / "timings.txt")
    items = make_page.load_results(results, runs, timings)
    return make_page.render(items, make_page.load_suite_result(results, suite, timings), **kw)


def _suite_section(text: str) -> str:
    return text.split("## Generalization suite", 1)[1].split("\n## ", 1)[0]


def test_suite_section_follows_the_summary(suite_root: tuple[Path, Path]) -> None:
    results, manifest = suite_root
    (results / "suite" / "suite.json").write_text(json.dumps(_suite()))
    text = _suite_page(results, manifest)
    lines = text.splitlines()
    # right after the summary table and its legend, before the losses
    assert lines.index("## Generalization suite") < lines.index("## Where aivc loses")
    assert not any(
        line.startswith("## ") for line in lines[: lines.index("## Generalization suite")]
    )
    section = _suite_section(text)
    assert "`aivc benchmark suite --peers --out results/suite`" in section
    assert "3600.0 s wall" in section
    # 9 cells: papalexi 1 win + 1 within; kang 1 loss + 1 win; worlds 3 wins, 1 within, 1 loss
    assert (
        "aivc-perturb wins 5 of 9 cells, is within one sd of the best baseline in 2 more and loses 2."
        in section
    )
    assert "| task · dataset | pearson_delta_de20 ↑ | mse_de20 ↓ |" in section
    assert (
        "| unseen-single · papalexi2021 | 0.417 vs 0.380 train-mean ✓ p=0.031 | 0.205 vs 0.200 train-mean ≈ p=0.5 |"
        in section
    )
    assert "0.600 vs 0.700 context-mean ✗" in section
    # not folded while the page is short: one row per world
    assert "| unseen-single · sim-world-4 | 0.200 vs 0.400 train-mean ✗ p=0.5 | — |" in section


def test_suite_losses_are_listed_by_name(suite_root: tuple[Path, Path]) -> None:
    results, manifest = suite_root
    (results / "suite" / "suite.json").write_text(json.dumps(_suite()))
    text = _suite_page(results, manifest)
    losses = text.split("## Where aivc loses", 1)[1].split("\n## ", 1)[0]
    assert (
        "- suite · unseen-context · kang2018: pearson_delta_de20 0.600 ± 0.010 against "
        "context-mean 0.700 ± 0.020 (p=0.5)." in losses
    )
    assert "- suite · unseen-single · sim-world-4: pearson_delta_de20 0.200 ± 0.010" in losses
    assert "papalexi2021" not in losses  # a cell within one sd is not a loss
    assert "sim-world-3" not in losses


def test_suite_worlds_fold_into_one_row(suite_root: tuple[Path, Path]) -> None:
    results, manifest = suite_root
    (results / "suite" / "suite.json").write_text(json.dumps(_suite()))
    text = _suite_page(results, manifest, fold=True)
    section = _suite_section(text)
    assert (
        "| unseen-single · sim-world-0…4 (5 worlds) | 3 of 5 worlds won, 1 within sd | — |"
        in section
    )
    assert "sim-world-4 |" not in section
    # the losing world is still named among the losses
    losses = text.split("## Where aivc loses", 1)[1].split("\n## ", 1)[0]
    assert (
        "- suite · unseen-single · sim-world-0…4 (5 worlds): sim-world-4 pearson_delta_de20"
        in losses
    )


def test_missing_suite_is_not_run(suite_root: tuple[Path, Path]) -> None:
    results, manifest = suite_root
    text = make_page.make_page(results, out=results / "page.md", manifest=manifest)
    section = _suite_section(text)
    assert "**not run**: no suite/suite.json." in section
    assert "Where aivc loses" in text  # the rest of the page is still there


def test_part_of_the_suite_reads_its_folder(suite_root: tuple[Path, Path]) -> None:
    results, manifest = suite_root
    text = make_page.make_page(results, out=results / "page.md", manifest=manifest)
    row = _summary_rows(text)[0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "unseen-context · kang2018"
    assert cells[3] == "context-mean 0.420 ± 0.010"  # the new baselines are baselines
    assert "### suite/unseen-context/kang2018\n" in text
    assert (
        "`aivc benchmark suite --peers --out results/suite` — whole suite command: 3600.0 s" in text
    )
    # the zero point of the scaled column comes from the results, not from an assumption
    assert "(aivc − z) / (replicate − z), z = context-mean;" in text
    assert (
        "| unseen-context | aivc-perturb | pearson_delta_de20 (higher is better) | context-mean, control, linear, perturbation-elsewhere, train-mean | gears |"
        in text
    )
    # a missing folder of the suite is a row of its own, named by its dataset
    (results / "suite" / "unseen-context" / "kang2018" / "results.json").unlink()
    text = make_page.make_page(results, out=results / "page.md", manifest=manifest)
    assert _summary_rows(text)[0].startswith("| unseen-context · kang2018 | — |")


def test_each_command_runs_once(tmp_path: Path) -> None:
    manifest = tmp_path / "runs.toml"
    manifest.write_text(
        SUITE_MANIFEST
        + '\n[[run]]\nname = "suite/unseen-single/papalexi2021"\ntask = "unseen-single"\n'
        'from = "suite"\nquestion = "Predict unseen knockouts."\n'
    )
    runs, suite = make_page._read_manifest(manifest)
    assert [r.command() for r in runs if r.out] == [
        "aivc benchmark suite --peers --out results/suite"
    ] * 2
    assert make_page.commands(runs, suite) == [
        ("suite", "suite --peers"),
        ("label-transfer", "label-transfer"),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "suite/combinations/kang2018"\ntask = "unseen-single"', "must be named"),
        ('name = "elsewhere/unseen-single/kang2018"\ntask = "unseen-single"', "must be named"),
        ('name = "suite/unseen-single/x"\ntask = "unseen-single"\nargs = "suite"', "drop its args"),
    ],
)
def test_part_of_the_suite_is_checked(tmp_path: Path, entry: str, message: str) -> None:
    manifest = tmp_path / "runs.toml"
    manifest.write_text(f'{SUITE_MANIFEST}\n[[run]]\n{entry}\nfrom = "suite"\nquestion = "q"\n')
    with pytest.raises(ValueError, match=message):
        make_page.load_manifest(manifest)


def test_project_suite_rows_point_at_the_suite() -> None:
    runs = make_page.load_manifest()
    suite = make_page.load_suite()
    assert suite is not None
    parts = {r.name for r in runs if r.out}
    assert {
        "suite/unseen-single/papalexi2021",
        "suite/unseen-single/norman2019_subset",
        "suite/combinations/norman2019_subset",
        "suite/unseen-cell-type/kang2018",
        "suite/unseen-context/kang2018",
    } <= parts
    assert all(r.command() == "aivc benchmark suite --out results/suite" for r in runs if r.out)


def test_the_genome_wide_run_reports_its_targets_and_the_best_baseline(tmp_path: Path) -> None:
    import numpy as np
    import scipy.sparse as sp

    from aivc.data._synthetic import synthetic_perturbation_data
    from aivc.evaluate.tasks.perturbation import run_benchmark

    raw, schema = synthetic_perturbation_data(n_singles=10, n_doubles=0, n_contexts=1, seed=2)
    raw.X = sp.csr_matrix(raw.X, dtype=np.float32)
    raw.uns["aivc"] = {"schema": schema.to_dict()}
    raw.write_zarr(tmp_path / "screen.zarr")
    folder, _ = make_page.REPLOGLE_RUN
    run_benchmark(
        "unseen-single",
        out=tmp_path / "root" / folder,
        dataset=str(tmp_path / "screen.zarr"),
        models=["linear", "control"],
        seeds=[0],
    )
    timings = {folder: make_page.Timing(0, 1200.0, 9000.0)}
    text = "\n".join(make_page.replogle_lines(tmp_path / "root", timings))
    assert "target under 15 minutes: missed" in text and "target under 8 GB: missed" in text
    assert "| control |" in text and "read from the cache" in text
    # no aivc-perturb row: no verdict line; with one, the best baseline is named
    assert "best baseline" not in text
    assert make_page.replogle_lines(tmp_path / "empty") == []
