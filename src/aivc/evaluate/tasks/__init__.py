"""Benchmark tasks: one contract, one registry, one entry point.

Every task is a :class:`Task`: a name, a description, the datasets it reads
(its default first), its default models and seeds, its variants, and a
``run(out, *, dataset, models, seeds, variant)`` function that writes
``results.json`` and ``results.md`` into ``out`` (through
:func:`aivc.evaluate._results.write_results`) and returns the result. A task
module declares its tasks with :func:`register_task`; :func:`run_task` runs
any of them by name, and ``aivc benchmark --list`` prints them.

Adding a task is one module in this package that builds its result and calls
:func:`register_task`, plus its name in ``_TASK_MODULES``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivc._labels import check_known

__all__ = [
    "Task",
    "get_task",
    "knowledge_from",
    "list_tasks",
    "register_task",
    "run_task",
    "task_names",
]

#: Modules of this package that declare tasks; imported on first lookup.
_TASK_MODULES = (
    "perturbation",
    "calibration",
    "label_transfer",
    "unknown_type",
    "integration",
    "rna_to_protein",
    "lab_loop",
    "learning_curve",
    "knowledge",
    "chemical",
    "segmentation",
    "time",
    "spatial",
    "suite",
    "scaling",
)


@contextlib.contextmanager
def knowledge_from(folder: Path | None) -> Iterator[None]:
    """Models read prior knowledge (gene tables) from ``folder`` meanwhile (a simulated
    world's knowledge base); ``None`` changes nothing."""
    from aivc._settings import settings

    if folder is None:
        yield
        return
    before = settings.data_dir
    settings.data_dir = folder
    try:
        yield
    finally:
        settings.data_dir = before


#: ``run(out, *, dataset, models, seeds, variant, **options) -> result``.
Runner = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """A benchmark task.

    Attributes
    ----------
    name
        The name ``aivc benchmark NAME`` takes.
    description
        The question the task answers, in one line.
    datasets
        Dataset names the task reads; the first is the default.
    models
        Models run when none are named.
    seeds
        Seeds used when none are given (empty: they depend on the dataset).
    run
        ``run(out, *, dataset, models, seeds, variant, **options)``; writes
        ``results.json`` and ``results.md`` into ``out`` and returns the result.
    variants
        Names ``--variant`` accepts (empty: the task has none).
    options
        Extra keyword options ``run`` accepts (e.g. ``cell_eval``).
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    run: Runner
    variants: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def default_dataset(self) -> str:
        """The dataset used when none is named."""
        return self.datasets[0]


_REGISTRY: dict[str, Task] = {}
_loaded = False


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry; a second task with the same name raises."""
    if task.name in _REGISTRY:
        msg = f"A benchmark task named {task.name!r} is already registered."
        raise ValueError(msg)
    if not task.datasets:
        msg = f"Task {task.name!r} must name at least its default dataset."
        raise ValueError(msg)
    _REGISTRY[task.name] = task
    return task


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _TASK_MODULES:
            importlib.import_module(f"{__name__}.{module}")


def list_tasks() -> list[Task]:
    """Every registered task, sorted by name."""
    _load()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return [t.name for t in list_tasks()]


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name raises with the closest names."""
    _load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    check_known([name], _REGISTRY, what="benchmark task", error=ValueError)
    return _REGISTRY[name]


def run_task(
    task: str,
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variant: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run benchmark ``task`` and write its results into ``out``.

    ``seeds=None`` uses the task's own default seeds; ``options`` are the
    task's extra options (``Task.options``), e.g. ``cell_eval=False``.
    """
    spec = get_task(task)
    if variant is not None and spec.variants and variant not in spec.variants:
        msg = f"Task {task!r} has variants {list(spec.variants)}; got {variant!r}."
        raise ValueError(msg)
    if variant is not None and not spec.variants:
        msg = f"Task {task!r} has no variants (got {variant!r})."
        raise ValueError(msg)
    unknown = sorted(k for k, v in options.items() if v is not None and k not in spec.options)
    if unknown:
        msg = f"Task {task!r} accepts the options {list(spec.options)}; got {unknown}."
        raise ValueError(msg)
    given = {k: v for k, v in options.items() if v is not None}
    if seeds is not None:
        given["seeds"] = tuple(seeds)
    return spec.run(Path(out), dataset=dataset, models=models, variant=variant, **given)
