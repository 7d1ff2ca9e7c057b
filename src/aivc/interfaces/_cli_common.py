"""Pieces every command module shares: common options, setup and the error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
