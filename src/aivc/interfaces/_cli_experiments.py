"""Commands for in silico experiments and the lab in the loop (screen, design, loop, explain).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import error_message as _message
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import load_model


def _read_list(path: Path) -> list[str]:
    if not path.exists():
        _fail(f"No such file: {str(path)!r}; expected a text file with one gene per line.")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def loop(
    ledger: Annotated[
        str,
        typer.Option(
            "--ledger", help="Ledger database URL (sqlite:///lab.db, postgresql+psycopg://...)."
        ),
    ],
    project: Annotated[str, typer.Option("--project", help="Project name in the ledger.")],
    lab: Annotated[
        str,
        typer.Option(
            "--lab",
            help="'simulator' (virtual lab, answers at once) or the path of an .h5ad results "
            "file of a real experiment (the loop proposes, stops, and continues with --resume "
            "once the file holds the measured cells).",
        ),
    ] = "simulator",
    model: Annotated[str, typer.Option("--model", help="Perturbation instrument.")] = "linear",
    strategy: Annotated[
        str, typer.Option("--strategy", help="Acquisition strategy (random, gp-ucb, ...).")
    ] = "random",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Candidates per round.")] = 48,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds",
            help="Rounds in the campaign (default 5; with --resume the project's own). With "
            "--resume, more rounds than recorded extend the project, a finished one too.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the proposals (and simulator).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing project.")] = False,
    candidates: Annotated[
        Path | None,
        typer.Option(
            "--candidates", help="Text file, one candidate gene per line (default: all genes)."
        ),
    ] = None,
    genes: Annotated[
        Path | None,
        typer.Option(
            "--genes",
            help="Text file of the measured genes the model predicts (default: the simulator's "
            "genes, or the candidates for a results file).",
        ),
    ] = None,
    sim_genes: Annotated[
        int, typer.Option("--sim-genes", help="Genes of the simulated cell (simulator lab).")
    ] = 200,
    sim_cells: Annotated[
        int, typer.Option("--sim-cells", help="Cells per perturbation (simulator lab).")
    ] = 50,
    sim_control_cells: Annotated[
        int, typer.Option("--sim-control-cells", help="Control cells per round (simulator lab).")
    ] = 200,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run the lab in the loop: propose -> measure -> update the model, recorded in a ledger.

    Every round is written to the ledger in one transaction; a loop that was
    killed continues where it stopped with --resume, and --resume --rounds N
    extends a project (finished or not) to N rounds.
    """
    from aivc._settings import settings

    settings.verbosity = verbosity
    settings.configure_logging()
    from aivc.data import DataValidationError
    from aivc.experiments._ledger import LedgerConflictError
    from aivc.experiments._loop import ResultsFileLab, SimulatorLab, run_loop

    cands = _read_list(candidates) if candidates is not None else None
    try:
        if lab == "simulator":
            the_lab: SimulatorLab | ResultsFileLab = SimulatorLab(
                n_genes=sim_genes, n_cells=sim_cells, n_control_cells=sim_control_cells, seed=seed
            )
        else:
            the_lab = ResultsFileLab(lab)
        report = run_loop(
            ledger,
            project,
            lab=the_lab,
            candidates=cands,
            genes=_read_list(genes) if genes is not None else None,
            model=model,
            strategy=strategy,
            batch_size=batch_size,
            n_rounds=rounds,
            seed=seed,
            resume=resume,
        )
    except (
        FileNotFoundError,
        ValueError,
        KeyError,
        DataValidationError,
        LedgerConflictError,
        RuntimeError,
    ) as e:
        _fail(_message(e))
    typer.echo(
        f"project {report.project}: round {report.round}, {report.status} "
        f"({report.rounds_done} round(s) run now)"
    )
    if report.status == "awaiting-results":
        typer.echo(
            f"measure these {len(report.proposed)} perturbations (with control cells), write the "
            f"cells to {lab} and run again with --resume:"
        )
        typer.echo("\n".join(report.proposed))
    if report.hits:
        typer.echo("strongest measured effects so far:")
        for name, value in list(report.hits.items())[:5]:
            typer.echo(f"  {name}\t{value:.3f}")


def screen(
    model_dir: Annotated[
        Path, typer.Argument(help="A saved model directory (aivc fit, or Instrument.save).")
    ],
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="'up:GENE[,GENE...]', 'down:GENE' or 'towards:STATE': a context the model "
            "was trained on, or a group of the --reference cells (e.g. a cell type).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Ranked table (.csv).")],
    genes: Annotated[
        Path | None,
        typer.Option(
            "--genes",
            help="Text file, one candidate gene per line (single perturbations); without it "
            "and --pairs-of: the model's measured targets and its genes with prior knowledge.",
        ),
    ] = None,
    pairs_of: Annotated[
        Path | None,
        typer.Option("--pairs-of", help="Text file with a gene panel; every pair is scored."),
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Context the perturbations act in.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="An .h5ad of reference cells; 'towards:GROUP' then moves towards the mean of the "
            "cells whose --reference-key column is GROUP.",
        ),
    ] = None,
    reference_key: Annotated[
        str, typer.Option("--reference-key", help="obs column grouping the reference cells.")
    ] = "cell_type",
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Directory of finished chunks; rerun to resume."),
    ] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Candidates per chunk.")] = 8192,
    level: Annotated[float, typer.Option("--level", help="Interval level.")] = 0.9,
    dask: Annotated[
        bool, typer.Option("--dask", help="Run the chunks on a local Dask cluster.")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of a running Dask scheduler (implies --dask)."),
    ] = None,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Virtual screen: score every single perturbation of a gene list, or every pair of a panel.

    Ranks by the predicted objective and, for models with intervals, by its
    lower confidence bound; writes both ranks to the CSV. Without --genes or
    --pairs-of the candidates are the model's measured targets and the genes of
    its panel with prior knowledge (the output says how many of each).
    """
    from aivc._settings import settings

    settings.verbosity = verbosity
    settings.configure_logging()
    if genes is not None and pairs_of is not None:
        _fail("pass either --genes FILE or --pairs-of FILE, not both.")
    from aivc.data import DataValidationError
    from aivc.experiments._screen import screen as run_screen

    client = None
    try:
        model, _ = load_model(model_dir)
        if genes is not None:
            singles: list[str] | None = _read_list(genes)
        elif pairs_of is None:
            from aivc.experiments import default_candidates

            chosen = default_candidates(model)
            singles = list(chosen.labels)
            typer.echo(chosen.description)
        else:
            singles = None
        states = None
        if reference is not None:
            from aivc.data import read_h5ad
            from aivc.experiments._objectives import reference_states

            states = reference_states(
                read_h5ad(reference), reference_key, genes=list(map(str, model.genes_))
            )
        if scheduler is not None:
            client = scheduler  # the screen connects (and disconnects) itself
        elif dask:
            client = "local"
        result = run_screen(
            model,
            singles,
            pairs_of=_read_list(pairs_of) if pairs_of is not None else None,
            objective=objective,
            context=context,
            level=level,
            chunk_size=chunk_size,
            checkpoint=checkpoint,
            client=client,
            states=states,
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError, DataValidationError) as e:
        _fail(_message(e))
    from aivc._io import write_csv_atomic

    write_csv_atomic(result.table, out)
    typer.echo(
        f"scored {len(result.table)} candidates ({result.objective}) in {result.seconds:.1f} s"
        + (f", {result.chunks_resumed} chunks resumed" if result.chunks_resumed else "")
    )
    typer.echo(f"uncertainty-aware ranking: {result.uncertainty}")
    for _, row in result.table.head(5).iterrows():
        typer.echo(f"  {row['candidate']}\t{row['score']:.4f}")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command("screen")(screen)
    app.command("loop")(loop)
