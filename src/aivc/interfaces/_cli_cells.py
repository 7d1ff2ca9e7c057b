"""Commands for cell representations and decoders (train-encoder, embed).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import (
    DaskScheduler,
    DaskWorkers,
    DataDir,
    DataFile,
    DatasetName,
    ModelOut,
    UseDask,
    Verbosity,
    dask_choice,
)
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import setup as _setup

Layer = Annotated[str | None, typer.Option("--layer", help="Layer with raw counts (default: X).")]
Species = Annotated[
    str, typer.Option("--species", help="human or mouse (mouse genes map to human orthologs).")
]


def train_encoder(
    out: ModelOut,
    dataset: DatasetName = None,
    data: DataFile = None,
    batch_key: Annotated[
        str | None, typer.Option("--batch-key", help="obs column with the batch (donor...).")
    ] = None,
    layer: Layer = None,
    species: Species = "human",
    gene_embedding: Annotated[
        str, typer.Option("--gene-embedding", help="go, fused or none.")
    ] = "go",
    n_latent: Annotated[int, typer.Option("--n-latent", help="Width of the representation.")] = 16,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            help="Train on N CPU processes with PyTorch DistributedDataParallel (gloo).",
        ),
    ] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    data_dir: DataDir = None,
    verbosity: Verbosity = "info",
) -> None:
    """Train a gene-panel-agnostic cell encoder on raw counts and save it."""
    _setup(verbosity, data_dir)
    if (dataset is None) == (data is None):
        _fail("pass exactly one of --dataset or --data.")
    if out.exists() and not overwrite:
        _fail(f"{out} exists; pass --overwrite to replace it.")
    from aivc.cells import CellEncoder
    from aivc.data import DataValidationError, load
    from aivc.data._validate import read_h5ad

    try:
        adata = load(dataset) if dataset is not None else read_h5ad(data)  # type: ignore[arg-type]
        enc = CellEncoder(
            n_latent=n_latent,
            gene_embedding=gene_embedding,
            max_epochs=epochs,
            seed=seed,
            n_processes=processes,
        )
        enc.fit(adata, batch_key=batch_key, layer=layer, species=species)
        enc.save(out, overwrite=overwrite)
    except (DataValidationError, ValueError, KeyError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"Wrote {out} ({len(enc.genes_)} reference genes, {len(enc.batches_)} batches).")


def embed(
    data: Annotated[Path, typer.Argument(help="An .h5ad file or .zarr store with raw counts.")],
    model: Annotated[Path, typer.Option("--model", help="Encoder directory (train-encoder).")],
    out: Annotated[Path, typer.Option("--out", help="Output .npy file (cells x n_latent).")],
    layer: Layer = None,
    species: Species = "human",
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Cells read and embedded at once.")
    ] = 20_000,
    dask: UseDask = False,
    workers: DaskWorkers = 2,
    scheduler: DaskScheduler = None,
    data_dir: DataDir = None,
    verbosity: Verbosity = "info",
) -> None:
    """Embed every cell of a file chunk by chunk (never loading it whole) into a .npy file.

    With --dask or --scheduler, the chunks are Dask tasks (each reads its own rows; the
    file is the same as on one process).
    """
    _setup(verbosity, data_dir)
    from aivc.cells import CellEncoder, embed_file
    from aivc.data import DataValidationError

    client = dask_choice(dask, scheduler)
    try:
        enc = CellEncoder.load(model)
        path = embed_file(
            enc,
            data,
            out,
            chunk_size=chunk_size,
            layer=layer,
            species=species,
            client=client,
            n_workers=workers,
        )
    except (DataValidationError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(f"Wrote {path} ({enc.n_latent} dimensions per cell).")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command("train-encoder")(train_encoder)
    app.command("embed")(embed)
