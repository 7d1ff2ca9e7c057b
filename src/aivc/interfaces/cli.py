"""The ``aivc`` command line: a thin layer over the Python API.

Heavy libraries are imported inside each command so ``aivc --help`` is instant.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import DataDir, Verbosity
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import setup as _setup

app = typer.Typer(
    name="aivc",
    help="aivc: the AI virtual cell. Representations of genes, cells and tissues; "
    "instruments that predict perturbation responses; evaluation that cannot flatter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="List and download datasets.", no_args_is_help=True)
instruments_app = typer.Typer(
    help="List virtual instruments (models and baselines).", no_args_is_help=True
)
peers_app = typer.Typer(
    help="Published peer models, each in a virtual environment of its own (never aivc's).",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")
app.add_typer(instruments_app, name="instruments")
app.add_typer(peers_app, name="peers")


@app.command()
def version() -> None:
    """Print the aivc version."""
    from aivc._version import __version__

    typer.echo(__version__)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the table and plot.")] = Path(
        "aivc-demo"
    ),
    dataset: Annotated[str, typer.Option(help="Registered perturbation dataset.")] = "papalexi2021",
    seed: Annotated[int, typer.Option(help="Seed of the 5-fold split.")] = 0,
    data_dir: DataDir = None,
    verbosity: Verbosity = "info",
) -> None:
    """Short end-to-end run on real data: predict never-seen knockouts with every baseline.

    Runs the unseen-single benchmark with the demo's models on one seed: every
    perturbation is held out once (5 folds), the models are fitted on the other
    folds, and the table shows mean ± sd over the folds. Writes the benchmark's
    results to OUT/benchmark and demo_results.csv, demo_results.md and demo.png.
    Needs no data folder: papalexi2021 ships with aivc; without the gene-knowledge
    tables the lines under the table say which models ran without them.
    """
    _setup(verbosity, data_dir)
    from aivc.interfaces._demo import run_demo

    try:
        table = run_demo(out=out, dataset=dataset, seed=seed)
    except (FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e))
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"aivc demo: unseen knockouts in {dataset} (mean ± sd over 5 folds, seed {seed})"
    )
    t.add_column("model")
    metrics = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    for m in metrics:
        t.add_column(m, justify="right")
    for name, row in table.iterrows():
        t.add_row(str(name), *(f"{row[m + '_mean']:.3f} ± {row[m + '_sd']:.3f}" for m in metrics))
    Console().print(t)
    for line in table.attrs.get("notes", []):
        typer.echo(line)
    typer.echo(
        f"wrote {out / 'demo_results.csv'}, {out / 'demo_results.md'} and {out / 'demo.png'}"
    )


@app.command()
def benchmark(
    task: Annotated[
        str | None,
        typer.Argument(help="Task name; `aivc benchmark --list` prints every task."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory for results.json and results.md.")
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="Print every task with its default dataset and exit.")
    ] = False,
    dataset: Annotated[
        str | None, typer.Option(help="Registered dataset instead of the task's default.")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--models", help="Instrument names (repeat or comma-separate)."),
    ] = None,
    seeds: Annotated[
        list[int] | None,
        typer.Option(
            "--seeds",
            help="Seeds (repeat the option); default: the task's own (3, or 5 for screens; "
            "1 for a perturbation task read out of core).",
        ),
    ] = None,
    variant: Annotated[
        str | None, typer.Option("--variant", help="A task's variant (e.g. lab-loop no-essential).")
    ] = None,
    no_cell_eval: Annotated[
        bool, typer.Option("--no-cell-eval", help="Skip cell-eval's metrics.")
    ] = False,
    peers: Annotated[
        bool, typer.Option("--peers", help="suite: also run the published peer models.")
    ] = False,
    out_of_core: Annotated[
        bool,
        typer.Option(
            "--out-of-core",
            help="Perturbation tasks: read the dataset from disk in blocks (default for a "
            ".zarr store or a sim:<preset> world such as sim:replogle).",
        ),
    ] = False,
    perturbation_key: Annotated[
        str | None,
        typer.Option(help="For --dataset FILE.h5ad: obs column with each cell's perturbation."),
    ] = None,
    control_label: Annotated[
        str | None, typer.Option(help="For --dataset FILE.h5ad: the control cells' label.")
    ] = None,
    context_key: Annotated[
        str | None,
        typer.Option(help="For --dataset FILE.h5ad: obs column with the context (cell type/line)."),
    ] = None,
    batch_key: Annotated[
        str | None, typer.Option(help="For --dataset FILE.h5ad: obs column with the batch.")
    ] = None,
    dose_key: Annotated[
        str | None, typer.Option(help="For --dataset FILE.h5ad: obs column with the dose.")
    ] = None,
    counts_layer: Annotated[
        str | None,
        typer.Option(help="For --dataset FILE.h5ad: layer with raw counts (default: X)."),
    ] = None,
    cell_type_key: Annotated[
        str | None,
        typer.Option(help="Label tasks, --dataset FILE.h5ad: obs column with the cell type."),
    ] = None,
    query_key: Annotated[
        str | None,
        typer.Option(
            help="Label tasks, --dataset FILE.h5ad: obs column that marks the query cells."
        ),
    ] = None,
    query_value: Annotated[
        str | None,
        typer.Option(
            help="Label tasks: the --query-key value of the query cells (others: reference)."
        ),
    ] = None,
    species: Annotated[
        str | None, typer.Option(help="Label tasks, --dataset FILE.h5ad: human or mouse.")
    ] = None,
    input_kind: Annotated[
        str | None,
        typer.Option(
            "--input", help="Label tasks: X holds 'counts', 'log-normalized' values, or 'auto'."
        ),
    ] = None,
    library_size_key: Annotated[
        str | None,
        typer.Option(
            help="Label tasks: obs column with library sizes (rebuilds counts from log values)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="chemical: unseen-compound or unseen-dose (the task's variants)."),
    ] = None,
    compound_key: Annotated[
        str | None, typer.Option(help="chemical, --dataset FILE: obs column with the compound.")
    ] = None,
    smiles_key: Annotated[
        str | None,
        typer.Option(
            help="chemical, --dataset FILE: obs column(s) with SMILES (comma-separated: first non-empty wins)."
        ),
    ] = None,
    plate_key: Annotated[
        str | None, typer.Option(help="chemical, --dataset FILE: obs column with the plate.")
    ] = None,
    moa_key: Annotated[
        str | None,
        typer.Option(help="chemical, --dataset FILE: obs column with the mechanism of action."),
    ] = None,
    dose_unit: Annotated[
        str | None, typer.Option(help="chemical: unit of --dose-key (nM, uM, mM...; default uM).")
    ] = None,
    time_key: Annotated[
        str | None, typer.Option(help="time, --dataset FILE: obs column with each cell's time.")
    ] = None,
    expression: Annotated[
        str | None,
        typer.Option(help="time: X (or --counts-layer) holds 'counts', 'log' or 'fpkm' values."),
    ] = None,
    section_key: Annotated[
        str | None,
        typer.Option(
            help="spatial, --dataset FILE: obs column with the section (graphs stay within one)."
        ),
    ] = None,
    region_key: Annotated[
        str | None,
        typer.Option(
            help="spatial, --dataset FILE: obs column with annotated regions (scores domains)."
        ),
    ] = None,
    data_dir: DataDir = None,
    verbosity: Verbosity = "info",
) -> None:
    """Run a benchmark task: every baseline and model on the same seeded splits.

    --dataset takes a registered name or the path of an .h5ad file; a file
    without an aivc schema needs its columns declared (--perturbation-key and
    --control-label, plus --context-key for the context tasks). Perturbation
    tasks also take a .zarr store or a simulated world (sim:replogle: 1M cells,
    8,000 genes, 2,000 knockouts), read from disk in blocks.
    """
    _setup(verbosity, data_dir)
    from aivc.evaluate.tasks import get_task, list_tasks, run_task

    if list_:
        for spec in list_tasks():
            typer.echo(f"{spec.name}\t{spec.default_dataset}\t{spec.description}")
        return
    if task is None or out is None:
        _fail("name a task and --out DIR (or pass --list to see the tasks).")
    try:
        spec = get_task(task)
    except ValueError as e:
        _fail(str(e))
    names = [m for item in (models or []) for m in item.split(",") if m] or None
    options: dict[str, object] = (
        {"cell_eval": False} if no_cell_eval and "cell_eval" in spec.options else {}
    )
    if peers:
        if "peers" not in spec.options:
            _fail(f"task {task!r} has no --peers option; peers run inside the suite.")
        options["peers"] = True
    if out_of_core:
        if "out_of_core" not in spec.options:
            _fail(f"task {task!r} has no --out-of-core option; the perturbation tasks do.")
        options["out_of_core"] = True
    chemical = {
        "split": split,
        "compound_key": compound_key,
        "smiles_key": smiles_key,
        "plate_key": plate_key,
        "moa_key": moa_key,
        "dose_unit": dose_unit,
    }
    if "time_key" in spec.options:
        options.update(
            {
                k: v
                for k, v in {
                    "time_key": time_key,
                    "expression": expression,
                    "layer": counts_layer,
                }.items()
                if v is not None
            }
        )
        counts_layer = None
    elif time_key is not None or expression is not None:
        _fail(f"task {task!r} takes no --time-key/--expression options.")
    if "compound_key" in spec.options:
        # profile tasks: the columns go to the task itself, not to a perturbation schema
        chemical.update({"dose_key": dose_key, "control_label": control_label})
        options.update({k: v for k, v in chemical.items() if v is not None})
        dose_key = control_label = None
    elif any(v is not None for v in chemical.values()):
        _fail(
            f"task {task!r} takes no --split/--compound-key/--smiles-key/--plate-key/--moa-key/--dose-unit options."
        )
    if "section_key" in spec.options:
        options.update(
            {k: v for k, v in {"section_key": section_key, "region_key": region_key}.items() if v}
        )
    elif section_key is not None or region_key is not None:
        _fail(f"task {task!r} takes no --section-key/--region-key options.")
    if "cell_type_key" in spec.options:
        # label tasks: the columns go to the task itself, not to a perturbation schema
        labels = {
            "cell_type_key": cell_type_key,
            "batch_key": batch_key,
            "query_key": query_key,
            "query_value": query_value,
            "species": species,
            "input": input_kind,
            "library_size_key": library_size_key,
            "counts_layer": counts_layer,
        }
        options.update({k: v for k, v in labels.items() if v is not None and k in spec.options})
        batch_key = counts_layer = None
    elif any(
        v is not None
        for v in (cell_type_key, query_key, query_value, species, input_kind, library_size_key)
    ):
        _fail(
            f"task {task!r} takes no --cell-type-key/--query-key/--query-value/--species/--input options."
        )
    declared = {
        "context_key": context_key,
        "batch_key": batch_key,
        "dose_key": dose_key,
        "counts_layer": counts_layer,
    }
    if perturbation_key is not None or control_label is not None or any(declared.values()):
        if perturbation_key is None or control_label is None:
            _fail("declare a dataset's schema with both --perturbation-key and --control-label.")
        if "schema" not in spec.options:
            _fail(f"task {task!r} does not read a declared perturbation schema.")
        from aivc.data import PerturbationSchema

        try:
            options["schema"] = PerturbationSchema(
                perturbation_key=perturbation_key,
                control_label=control_label,
                **{k: v for k, v in declared.items() if v is not None},
            )
        except ValueError as e:
            _fail(str(e))
    try:
        result = run_task(
            task,
            out,
            dataset=dataset,
            models=names,
            seeds=seeds or None,
            variant=variant,
            **options,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e))
    typer.echo((out / "results.md").read_text())
    typer.echo(f"wrote {out / 'results.json'} ({len(result.get('models', []))} models)")


@app.command()
def simulate(
    cells: Annotated[
        int | None,
        typer.Option("--cells", help="Number of cells (default 10,000, or the preset's)."),
    ] = None,
    genes: Annotated[
        int | None,
        typer.Option("--genes", help="Number of genes (default 1,000, or the preset's)."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option("--out", help="Output .h5ad file (or .zarr store) in an existing folder."),
    ] = Path("simulation.h5ad"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    cell_types: Annotated[
        int | None,
        typer.Option("--cell-types", help="Number of cell types (default 2; 5 with --spatial)."),
    ] = None,
    batches: Annotated[int, typer.Option("--batches", help="Number of batches.")] = 3,
    modality: Annotated[str, typer.Option(help="knockout, knockdown or activation.")] = "knockout",
    modules: Annotated[
        float,
        typer.Option(
            "--modules",
            help="Fraction of genes in functional modules (complexes and pathways); 0 for none.",
        ),
    ] = 0.0,
    knowledge: Annotated[
        str | None,
        typer.Option(
            "--knowledge",
            help="Also write a simulated knowledge base of this quality to <name>.knowledge/ "
            "(perfect, good, typical, poor, useless).",
        ),
    ] = None,
    world: Annotated[
        int | None,
        typer.Option(
            "--world",
            help="Write world number N of --preset (its seed): data, truth and knowledge base; "
            "--seed, --modules, --cell-types and --batches then come from the preset.",
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", help="World preset: small, medium or replogle.")
    ] = "small",
    spatial: Annotated[
        bool,
        typer.Option(
            "--spatial",
            help="Simulate a spatial measurement of a virtual tissue (layered sections, "
            "cell-cell signalling) instead of a perturbation experiment; default 300 genes.",
        ),
    ] = False,
    verbosity: Verbosity = "info",
) -> None:
    """Simulate a perturbation experiment with the mechanistic virtual cell and write it to disk.

    The default design has controls, single and double genetic perturbations and drugs at
    four doses in every cell type. The ground truth (network, true means) is written next to
    the data as <name>.truth.npz; the measured file carries none of it. With --world N, the
    world N of a named preset is written, with its simulated knowledge base in
    <name>.knowledge/ (GO-like annotations, STRING/HuRI-like networks, for aivc.genes).

    With --spatial, a virtual tissue is measured instead (positions in obsm["spatial"],
    sections, layers and cell types in obs) and its truth (true per-cell expression,
    signalling pathways and edges) is written as <name>.truth.npz.
    """
    _setup(verbosity, None)
    if out.suffix not in (".h5ad", ".zarr"):
        _fail(
            f"--out must name an .h5ad file (or a .zarr store); got {str(out)!r}. "
            f"Use e.g. --out {out.with_suffix('.h5ad')}."
        )
    if not out.parent.is_dir():
        _fail(
            f"The folder {str(out.parent)!r} of --out does not exist; create it first "
            f"(mkdir -p {out.parent}) or write elsewhere."
        )
    if spatial:
        _simulate_tissue(out, cells=cells, genes=genes, cell_types=cell_types, seed=seed)
        return
    from aivc.sim import write_simulation, write_world

    try:
        if world is not None:
            files = write_world(
                out, world, preset=preset, n_cells=cells, n_genes=genes, knowledge=knowledge
            )
        else:
            files = write_simulation(
                out,
                n_cells=10_000 if cells is None else cells,
                n_genes=1000 if genes is None else genes,
                seed=seed,
                n_cell_types=2 if cell_types is None else cell_types,
                n_batches=batches,
                modality=modality,
                simulator={"module_fraction": modules},
                knowledge=knowledge,
            )
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(
        f"wrote {files.data} ({files.n_cells} cells x {files.n_genes} genes, {files.n_conditions} conditions, "
        f"{files.seconds:.1f} s) and ground truth {files.truth}"
        + (f"; knowledge base {files.knowledge}" if files.knowledge is not None else "")
    )


def _simulate_tissue(
    out: Path, *, cells: int | None, genes: int | None, cell_types: int | None, seed: int
) -> None:
    """Write a simulated spatial measurement and its truth (``aivc simulate --spatial``)."""
    import time

    from aivc._io import atomic_path
    from aivc.sim import VirtualTissue, truth_path_for

    if out.suffix != ".h5ad":
        _fail(
            f"--spatial writes an .h5ad file; got {str(out)!r}. Use e.g. --out {out.with_suffix('.h5ad')}."
        )
    t0 = time.perf_counter()
    try:
        tissue = VirtualTissue(
            n_genes=300 if genes is None else genes,
            n_cell_types=5 if cell_types is None else cell_types,
            seed=seed,
        ).build()
        adata, truth = tissue.simulate(10_000 if cells is None else cells, seed=seed)
    except ValueError as e:
        _fail(str(e))
    truth_path = truth_path_for(out)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    truth.save(truth_path)
    typer.echo(
        f"wrote {out} ({adata.n_obs} cells x {adata.n_vars} genes, "
        f"{adata.obs['section'].nunique()} sections, {len(truth.pathways)} signalling pathways, "
        f"{time.perf_counter() - t0:.1f} s) and ground truth {truth_path}"
    )


@datasets_app.command("list")
def datasets_list(data_dir: DataDir = None) -> None:
    """List registered datasets and whether each is present locally.

    ``local`` says whether the data directory holds the dataset; ``embedded``
    whether a copy ships inside aivc (used when the data directory has none);
    ``download`` whether ``aivc datasets download`` fetches it: ``yes`` for a
    ready file, ``rebuild`` for one converted from its public source files.
    On a terminal this is a table; otherwise (a pipe or a file) one line per
    dataset with the columns separated by tabs, after a header line, nothing
    shortened.
    """
    _setup("warning", data_dir)
    from aivc._settings import settings
    from aivc.data import list_datasets
    from aivc.data._registry import embedded_path
    from aivc.data.sources import source_of

    columns = ("name", "kind", "local", "embedded", "download", "description")
    rows = [
        (
            e.name,
            e.kind,
            "yes" if e.path().exists() else "no",
            "yes" if embedded_path(e.name) is not None else "-",
            "yes" if e.remote else "rebuild" if source_of(e.name) is not None else "-",
            " ".join(e.description.split()),
        )
        for e in list_datasets()
    ]
    _print_listing(
        columns,
        rows,
        title="aivc datasets",
        caption=f"data directory: {settings.data_dir}; embedded datasets load without it",
    )


def _stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (tables for people, plain lines for pipes)."""
    import sys

    return sys.stdout.isatty()


def _print_listing(
    columns: tuple[str, ...], rows: list[tuple[str, ...]], *, title: str, caption: str
) -> None:
    """A table on a terminal; otherwise a header line and one tab-separated line a row."""
    if not _stdout_is_terminal():
        for row in (columns, *rows):
            typer.echo("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, caption=caption)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*row)
    Console().print(t)


@datasets_app.command("download")
def datasets_download(
    name: Annotated[str, typer.Argument(help="Registered dataset name.")],
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
    data_dir: DataDir = None,
    verbosity: Verbosity = "info",
) -> None:
    """Download a public dataset into the data directory (verifies its checksum)."""
    _setup(verbosity, data_dir)
    from aivc.data import download

    try:
        path = download(name, force=force)
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as e:
        _fail(str(e))
    typer.echo(f"ready: {path}")


@instruments_app.command("list")
def instruments_list() -> None:
    """List registered instruments with what they can do."""
    from rich.console import Console
    from rich.table import Table

    from aivc.instruments import list_instruments

    t = Table(title="aivc instruments")
    for c in ("name", "kind", "capabilities", "description"):
        t.add_column(c)
    for info in list_instruments():
        t.add_row(info.name, info.kind, ", ".join(sorted(info.capabilities)), info.description)
    Console().print(t)


@peers_app.command("list")
def peers_list() -> None:
    """List the peer models and whether each one's environment is installed.

    ``installed`` says whether its environment (under the cache directory's
    ``peers`` folder) is ready; ``versions`` gives the installed versions of
    its packages and of torch. On a terminal this is a table; otherwise one
    line per peer with the columns separated by tabs, after a header line.
    """
    _setup("warning", None)
    from aivc.evaluate._peer_envs import list_peers, peer_root

    columns = ("name", "installed", "versions", "licence", "description", "note")
    rows = [
        (
            s.peer.name,
            "yes" if s.installed else "no",
            ", ".join(f"{k} {v}" for k, v in s.versions.items()) or "-",
            s.peer.licence or "-",
            s.peer.description,
            s.peer.note,
        )
        for s in list_peers()
    ]
    _print_listing(
        columns,
        rows,
        title="aivc peers",
        caption=f"environments in {peer_root()}; install one with `aivc peers install NAME`",
    )


@peers_app.command("install")
def peers_install(
    name: Annotated[str, typer.Argument(help="Peer name (aivc peers list).")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete the environment and build it anew.")
    ] = False,
    verbosity: Verbosity = "info",
) -> None:
    """Create a peer's own virtual environment and install its packages from the package index.

    The environment is CACHE_DIR/peers/NAME (AIVC_CACHE_DIR); torch is held to
    its CPU build. Nothing is installed into aivc's own environment.
    """
    _setup(verbosity, None)
    from aivc.evaluate._peer_envs import (
        PeerInstallError,
        UnknownPeerError,
        get_peer,
        install_peer,
    )
    from aivc.interfaces._cli_common import working

    try:
        get_peer(name)
        with working(f"installing the peer {name}", every=30):
            path = install_peer(name, force=force)
    except (UnknownPeerError, PeerInstallError) as e:
        _fail(str(e))
    typer.echo(f"ready: {path}")


# Commands of each area live beside it; each module only imports typer at the top.
for _module in (
    "_cli_cells",
    "_cli_models",
    "_cli_experiments",
    "_cli_design",
    "_cli_serve",
    "_cli_scale",
):
    importlib.import_module(f"aivc.interfaces.{_module}").register(app)


def main() -> None:
    """Entry point of the ``aivc`` command."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
