"""Benchmark tasks beyond the perturbation runner, looked up by name.

Each entry names a function ``run(out, *, dataset, models, seeds, variant)``
that writes ``results.json`` and ``results.md`` into ``out`` and returns the
result dictionary. Modules are imported only when their task runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXTRA_TASKS: dict[str, str] = {
    "label-transfer": "aivc.cells._label_transfer:run_label_transfer",
    "integration": "aivc.cells._integration:run_integration",
    "rna-to-protein": "aivc.cells._protein_benchmark:run_rna_to_protein",
    "calibration": "aivc.evaluate._calibration:run_calibration",
    "lab-loop": "aivc.experiments._lab_loop:run_lab_loop",
}


def task_names() -> list[str]:
    """Every benchmark task name, the perturbation runner's and the extra ones."""
    from aivc.evaluate._benchmark import TASKS

    return sorted({*TASKS, *EXTRA_TASKS})


def _runner(task: str) -> Callable[..., dict[str, Any]]:
    module, _, func = EXTRA_TASKS[task].partition(":")
    return getattr(importlib.import_module(module), func)


def run_task(
    task: str,
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variant: str | None = None,
    cell_eval: bool | None = None,
) -> dict[str, Any]:
    """Run any benchmark task by name; results land in ``out``.

    ``seeds=None`` uses the task's own default seeds.
    """
    from aivc.evaluate._benchmark import TASKS, run_benchmark

    if task in TASKS:
        if variant is not None:
            msg = f"task {task!r} has no variants (got {variant!r})."
            raise ValueError(msg)
        return run_benchmark(
            task,
            out=out,
            dataset=dataset,
            models=models,
            seeds=(0, 1, 2) if seeds is None else seeds,
            cell_eval=cell_eval,
        )
    if task not in EXTRA_TASKS:
        msg = f"unknown task {task!r}; expected one of {task_names()}."
        raise ValueError(msg)
    given = {} if seeds is None else {"seeds": seeds}
    return _runner(task)(Path(out), dataset=dataset, models=models, variant=variant, **given)
