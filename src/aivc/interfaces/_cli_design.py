"""Commands for inverse design and explanations (design, explain).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import Verbosity, error_message, load_model, working
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import setup as _setup

ModelDir = Annotated[Path, typer.Argument(help="A saved model directory (aivc fit).")]


def _cells(path: Path, select: str | None, what: str, *, target_sum: float) -> object:
    """Log-expression of the cells of an h5ad file, optionally those with ``obs[column] == value``.

    Raw counts are log-normalised as the model's training data were, with a
    note saying so.
    """
    from aivc.data import read_h5ad
    from aivc.experiments._design import log_expression

    adata = read_h5ad(path)
    if select:
        column, sep, value = select.partition("=")
        if not sep or column not in adata.obs:
            _fail(f"--{what}-obs must be COLUMN=VALUE with a column of {path}; got {select!r}.")
        adata = adata[adata.obs[column].astype(str) == value]
        if adata.n_obs == 0:
            _fail(f"No cells in {path} with {column} == {value!r}.")
    adata, note = log_expression(adata, target_sum=target_sum, what=f"--{what} cells of {path}")
    if note is not None:
        typer.echo(f"note: {note}.")
    return adata


def _target_sum(manifest: dict) -> float:
    """Library size the model's training data were normalised to (10,000 when not recorded)."""
    prep = (manifest.get("training") or {}).get("preprocessing") or {}
    return float(prep.get("target_sum") or 1e4)


def _list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    p = Path(value)
    items = p.read_text().split() if p.exists() else value.split(",")
    return [s.strip() for s in items if s.strip()]


def register(app: typer.Typer) -> None:
    """Add the design and explain commands to the ``aivc`` app."""

    @app.command()
    def design(
        model_dir: ModelDir,
        target: Annotated[
            Path,
            typer.Option("--target", help="h5ad whose (selected) cells define the target state."),
        ],
        out: Annotated[Path, typer.Option("--out", help="CSV of ranked designs.")] = Path(
            "design.csv"
        ),
        target_obs: Annotated[
            str | None, typer.Option("--target-obs", help="Select target cells: COLUMN=VALUE.")
        ] = None,
        start: Annotated[
            Path | None,
            typer.Option("--start", help="h5ad of start cells (default: the context's controls)."),
        ] = None,
        start_obs: Annotated[
            str | None, typer.Option("--start-obs", help="Select start cells: COLUMN=VALUE.")
        ] = None,
        context: Annotated[str | None, typer.Option(help="Context (cell type or line).")] = None,
        candidates: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated targets or a file with one per line (default: the model's "
                "measured targets and the genes of its panel with prior knowledge)."
            ),
        ] = None,
        pairs: Annotated[bool, typer.Option(help="Also try pairs of the best singles.")] = True,
        top_singles: Annotated[int, typer.Option(help="Singles paired with each other.")] = 30,
        doses: Annotated[
            str | None, typer.Option(help="Comma-separated doses (manipulators with doses).")
        ] = None,
        level: Annotated[float, typer.Option(help="Interval level.")] = 0.9,
        verbosity: Verbosity = "info",
    ) -> None:
        """Inverse design: perturbations predicted to move a start state closest to a target.

        The target (and start) cells are log-expression; a file of raw counts is
        log-normalised as the model's training data were, and the output says so.
        """
        _setup(verbosity, None)
        from aivc.data import DataValidationError
        from aivc.experiments._design import inverse_design

        try:
            with working(f"loading {model_dir} and the target and start cells"):
                model, manifest = load_model(model_dir)
                target_sum = _target_sum(manifest)
                target_cells = _cells(target, target_obs, "target", target_sum=target_sum)
                start_cells = (
                    None
                    if start is None
                    else _cells(start, start_obs, "start", target_sum=target_sum)
                )
            steps = "scoring singles" + (", then pairs of the best" if pairs else "")
            with working("searching the designs", steps=steps):
                result = inverse_design(
                    model,
                    target=target_cells,
                    start=start_cells,
                    context=context,
                    candidates=_list(candidates),
                    pairs=pairs,
                    top_singles=top_singles,
                    doses=None if doses is None else [float(d) for d in doses.split(",")],
                    level=level,
                )
        except (FileNotFoundError, ValueError, KeyError, DataValidationError) as e:
            _fail(error_message(e))
        from aivc._io import write_csv_atomic

        write_csv_atomic(result.table, out)
        path_file = out.with_name(out.stem + "_path.csv")
        write_csv_atomic(result.path, path_file)
        typer.echo(result.candidates)
        typer.echo(f"start distance to target: {result.start_distance:.3f}")
        typer.echo(result.table.head(10).to_string(index=False))
        typer.echo("\npredicted path of the best design:")
        typer.echo(result.path.to_string(index=False))
        typer.echo(f"wrote {out} and {path_file}")

    @app.command()
    def explain(
        model_dir: ModelDir,
        perturbation: Annotated[str, typer.Argument(help='e.g. "STAT1" or "KLF1+MAP2K6".')],
        out: Annotated[
            Path | None, typer.Option("--out", help="Write the explanation as JSON.")
        ] = None,
        context: Annotated[str | None, typer.Option(help="Context (cell type or line).")] = None,
        n_top: Annotated[int, typer.Option("--n-top", help="Size of the predicted DE set.")] = 20,
    ) -> None:
        """Explain a prediction: attribution, enriched GO processes, responding network neighbours."""
        import json

        from aivc.data import DataValidationError
        from aivc.experiments._explain import explain as explain_prediction

        try:
            model, _ = load_model(model_dir)
            ex = explain_prediction(model, perturbation, context=context, n_top=n_top)
        except (FileNotFoundError, ValueError, KeyError, DataValidationError) as e:
            _fail(error_message(e))
        typer.echo(f"top predicted changes for {perturbation}:")
        typer.echo(ex.top_genes.head(10).to_string(index=False))
        typer.echo("\nattribution by knowledge source:")
        typer.echo(ex.attribution.to_string(index=False))
        typer.echo("\nenriched GO processes:")
        typer.echo(
            ex.pathways.head(10)[["term", "name", "overlap", "q_value"]].to_string(index=False)
        )
        typer.echo("\nnetwork neighbours of the target:")
        typer.echo(ex.neighbours.head(10).to_string(index=False))
        for note in ex.notes:
            typer.echo(f"note: {note}")
        if out is not None:
            from aivc._io import write_text_atomic

            write_text_atomic(out, json.dumps(ex.to_dict(), indent=2))
            typer.echo(f"wrote {out}")
