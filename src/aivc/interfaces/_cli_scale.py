"""Commands for data too large for memory (pseudobulk out of core, on one process or Dask).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import DaskScheduler, DaskWorkers, UseDask, Verbosity, dask_choice
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import setup as _setup

ContextKey = Annotated[
    str | None, typer.Option("--context-key", help="obs column with the context.")
]
DoseKey = Annotated[str | None, typer.Option("--dose-key", help="obs column with the dose.")]
CountsLayer = Annotated[
    str | None, typer.Option("--counts-layer", help="Layer with raw counts (default: X).")
]
ChunkSize = Annotated[int, typer.Option("--chunk-size", help="Cells read per block.")]


def pseudobulk(
    data: Annotated[Path, typer.Argument(help="An .h5ad file or .zarr folder with raw counts.")],
    out: Annotated[Path, typer.Option("--out", help="Pseudobulk .h5ad to write.")],
    perturbation_key: Annotated[
        str, typer.Option("--perturbation-key", help="obs column with the perturbation.")
    ],
    control_label: Annotated[
        str, typer.Option("--control-label", help="Label of the control cells.")
    ],
    context_key: ContextKey = None,
    dose_key: DoseKey = None,
    counts_layer: CountsLayer = None,
    chunk_size: ChunkSize = 50_000,
    dask: UseDask = False,
    workers: DaskWorkers = 2,
    scheduler: DaskScheduler = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    verbosity: Verbosity = "info",
) -> None:
    """Mean log-normalised expression and raw-count sums per condition, read from disk in blocks.

    The matrix is never loaded whole: blocks of --chunk-size cells are read,
    normalised (each cell to 10,000 counts, then log1p) and added to
    per-condition sums. The result is an .h5ad with one row per condition:
    X holds the mean log-normalised expression, layers["counts_sum"] the
    summed raw counts, obs the perturbation, context, dose and n_cells.
    """
    _setup(verbosity, None)
    if out.exists() and not overwrite:
        _fail(f"{out} exists; pass --overwrite to replace it.")
    client = dask_choice(dask, scheduler)
    import anndata as ad

    from aivc._io import atomic_path
    from aivc.data import DataValidationError, PerturbationSchema
    from aivc.data._ooc import pseudobulk_from_file

    schema = PerturbationSchema(
        perturbation_key=perturbation_key,
        control_label=control_label,
        context_key=context_key,
        dose_key=dose_key,
        counts_layer=counts_layer,
    )
    try:
        res = pseudobulk_from_file(
            data, schema, chunk_size=chunk_size, client=client, n_workers=workers
        )
    except (FileNotFoundError, DataValidationError, ValueError) as e:
        _fail(str(e))
    obs = res.info.copy()
    obs["context"] = obs["context"].astype(str) if context_key is not None else "all"
    bulk = ad.AnnData(
        X=res.means.to_numpy(dtype="float32"),
        obs=obs,
        layers={"counts_sum": res.count_sums.to_numpy()},
    )
    bulk.var_names = res.means.columns.astype(str)
    bulk.obs_names = res.means.index.astype(str)
    bulk.uns["aivc_pseudobulk"] = {
        "source": str(data),
        "n_cells": res.n_cells,
        "n_blocks": res.n_blocks,
        "target_sum": res.target_sum,
        "schema": schema.to_dict(),
    }
    with atomic_path(out) as tmp:
        bulk.write_h5ad(tmp)
    typer.echo(
        f"wrote {out}: {bulk.n_obs} conditions x {bulk.n_vars} genes from {res.n_cells:,} cells "
        f"in {res.n_blocks} blocks"
    )


def validate(
    data: Annotated[Path, typer.Argument(help="An .h5ad file or .zarr folder.")],
    perturbation_key: Annotated[
        str | None,
        typer.Option(
            "--perturbation-key",
            help="obs column with the perturbation (default: the stored schema).",
        ),
    ] = None,
    control_label: Annotated[
        str | None, typer.Option("--control-label", help="Label of the control cells.")
    ] = None,
    context_key: ContextKey = None,
    dose_key: DoseKey = None,
    counts_layer: CountsLayer = None,
    min_cells: Annotated[
        int, typer.Option("--min-cells", help="Fewest cells a perturbation may have.")
    ] = 1,
    chunk_size: ChunkSize = 50_000,
    dask: UseDask = False,
    workers: DaskWorkers = 2,
    scheduler: DaskScheduler = None,
    verbosity: Verbosity = "info",
) -> None:
    """Check a dataset on disk without loading its matrix: schema columns, labels, controls,
    and raw counts block by block (on Dask with --dask or --scheduler)."""
    _setup(verbosity, None)
    client = dask_choice(dask, scheduler)
    from aivc.data import DataValidationError, PerturbationSchema
    from aivc.data._ooc import stored_schema, validate_file

    try:
        if perturbation_key is None and control_label is None:
            schema = stored_schema(data)
            if counts_layer is not None:
                from dataclasses import replace

                schema = replace(schema, counts_layer=counts_layer)
        elif perturbation_key is None or control_label is None:
            _fail("declare the schema with both --perturbation-key and --control-label.")
        else:
            schema = PerturbationSchema(
                perturbation_key=perturbation_key,
                control_label=control_label,
                context_key=context_key,
                dose_key=dose_key,
                counts_layer=counts_layer,
            )
        n = validate_file(
            data,
            schema,
            min_cells=min_cells,
            chunk_size=chunk_size,
            client=client,
            n_workers=workers,
        )
    except (FileNotFoundError, DataValidationError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{data}: valid ({n:,} cells)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command("pseudobulk")(pseudobulk)
    app.command("validate")(validate)
