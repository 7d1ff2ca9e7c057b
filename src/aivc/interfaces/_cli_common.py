"""Pieces every command module shares: common options, setup and the error exit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
]
ModelOut = Annotated[Path, typer.Option("--out", help="Model directory to write.")]
DatasetName = Annotated[
    str | None, typer.Option("--dataset", help="Registered dataset (aivc datasets list).")
]
DataFile = Annotated[
    Path | None, typer.Option("--data", help="An .h5ad file with raw counts instead.")
]
Verbosity = Annotated[str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")]
UseDask = Annotated[bool, typer.Option("--dask", help="Run the blocks on a local Dask cluster.")]
DaskWorkers = Annotated[
    int, typer.Option("--workers", help="Worker processes of the local Dask cluster.")
]
DaskScheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address of a running Dask scheduler (default: AIVC_DASK_SCHEDULER when set).",
    ),
]


def dask_choice(dask: bool, scheduler: str | None) -> str | None:
    """The ``client`` argument of the block functions: "local", an address, or None."""
    if dask and scheduler is not None:
        fail("pass --dask (a local cluster) or --scheduler ADDRESS, not both.")
    return "local" if dask else scheduler


logger = logging.getLogger("aivc.interfaces.cli")


def setup(verbosity: str, data_dir: Path | None) -> None:
    """Apply the common options: log level and data folder."""
    from aivc._settings import settings

    settings.verbosity = verbosity
    settings.configure_logging()
    if data_dir is not None:
        settings.data_dir = data_dir


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def error_message(e: BaseException) -> str:
    """An exception's message (KeyError quotes its argument; drop the quotes)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def load_model(path: Path) -> tuple[Any, dict[str, Any]]:
    """The model of a model directory (``aivc fit``) or an ``Instrument.save`` folder.

    Returns the model and the directory's manifest (empty for a plain folder).
    """
    from aivc.instruments import PerturbationModel

    if (path / "aivc-model.json").exists():
        from aivc.instruments._model_dir import load_model_dir

        md = load_model_dir(path)
        return md.model, md.manifest
    return PerturbationModel.load(path), {}


@contextmanager
def working(what: str, *, steps: str | None = None, every: float = 10.0) -> Iterator[None]:
    """Say at INFO what a long step does: when it starts, every ``every`` seconds, and when done.

    Commands wrap work that runs for seconds to minutes without a loop to put
    a progress bar on (loading, fitting, writing), so the terminal never sits
    silent; ``--verbosity warning`` hides it.

    Parameters
    ----------
    what
        The step, as a phrase in the progressive ("fitting aivc-perturb on papalexi2021").
    steps
        What the step goes through, said once at the start ("loading, preparing, fitting").
    every
        Seconds between the lines that say the step is still running.
    """
    logger.info("%s%s%s ...", what[:1].upper(), what[1:], f": {steps}" if steps else "")
    start = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            logger.info("still %s (%.0f s)", what, time.perf_counter() - start)

    thread = threading.Thread(target=beat, name="aivc-working", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    logger.info("done %s in %.1f s", what, time.perf_counter() - start)
