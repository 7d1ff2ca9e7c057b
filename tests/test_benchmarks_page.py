"""The generated results page (benchmarks/make_page.py) on tiny fake results folders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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


def test_verdict_towards_a_target() -> None:
    rule = make_page.Rule("aivc-perturb", "coverage_90", "target", ("coverage_90",), target=0.9)
    assert make_page.verdict((0.905, 0.01), (0.80, 0.01), rule) == "wins"
    assert make_page.verdict((0.70, 0.01), (0.93, 0.01), rule) == "loses"
    assert make_page.verdict((0.91, 0.01), (0.895, 0.01), rule) == "ties"


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
