"""Commands for perturbation manipulators (fit, predict).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from aivc.interfaces._cli_common import DataFile, DatasetName, ModelOut, working
from aivc.interfaces._cli_common import fail as _fail
from aivc.interfaces._cli_common import setup as _setup


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (parsed from JSON or kept as text) fits a constructor's type hint."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is not None:
        annotation = origin
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a hint this check does not read: the constructor decides


def _type_words(annotation: Any) -> str:
    """A type hint in the words of the command line (``a number or null``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_words(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        type(None): "null",
        None: "null",
        dict: "a JSON object",
        list: "a JSON list",
    }
    return words.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def check_param_types(model: str, params: dict[str, Any], raw: dict[str, str]) -> dict[str, Any]:
    """Check ``--param`` values against the type hints of the model's constructor.

    A text parameter given a value that parsed as JSON (``--param name=123``)
    keeps its text. Parameters the model does not have are left for the fit to
    report.

    Parameters
    ----------
    model
        Registered instrument name.
    params
        Name -> value parsed by :func:`~aivc.instruments._model_dir.parse_param`.
    raw
        Name -> the text given on the command line.

    Returns
    -------
    The parameters, with text restored where a text parameter expects it.

    Raises
    ------
    ValueError
        A value does not fit its parameter's type; the message names both.
    """
    from aivc.instruments._registry import get_instrument_class

    cls = get_instrument_class(model)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # hints that do not resolve are not checked
        return params
    out = dict(params)
    for name, value in params.items():
        if name not in hints or _accepts(hints[name], value):
            continue
        if _accepts(hints[name], raw[name]):
            out[name] = raw[name]
            continue
        msg = (
            f"The {name!r} parameter of {model!r} must be {_type_words(hints[name])} "
            f"({cls.__name__}'s signature). Got {raw[name]!r} in --param {name}={raw[name]} instead."
        )
        raise ValueError(msg)
    return out


def fit(
    out: ModelOut,
    dataset: DatasetName = None,
    data: DataFile = None,
    perturbation_key: Annotated[
        str | None,
        typer.Option("--perturbation-key", help="obs column with perturbation labels (--data)."),
    ] = None,
    control_label: Annotated[
        str | None, typer.Option("--control-label", help="Label of control cells (--data).")
    ] = None,
    context_key: Annotated[
        str | None, typer.Option("--context-key", help="obs column with the cell context.")
    ] = None,
    batch_key: Annotated[
        str | None,
        typer.Option(
            "--batch-key",
            help="obs column with the batch; a condition is compared with its own batches' "
            "controls where pooling all controls would bias its change.",
        ),
    ] = None,
    dose_key: Annotated[
        str | None, typer.Option("--dose-key", help="obs column with doses.")
    ] = None,
    counts_layer: Annotated[
        str | None, typer.Option("--counts-layer", help="Layer with raw counts (default: X).")
    ] = None,
    separator: Annotated[
        str, typer.Option("--separator", help="Separator of combination labels.")
    ] = "+",
    model: Annotated[
        str, typer.Option("--model", help="Registered perturbation model (aivc instruments list).")
    ] = "aivc-perturb",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="Model parameter key=value (repeat); values are JSON or text."
        ),
    ] = None,
    n_top_genes: Annotated[
        int | None,
        typer.Option(
            "--n-top-genes", help="Keep this many highly variable genes (and all targets)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Fit a perturbation model and write a self-describing model directory.

    Example: aivc fit --dataset papalexi2021 --model aivc-perturb --out models/papalexi
    """
    _setup(verbosity, data_dir)
    from aivc.data import DataValidationError, PerturbationSchema
    from aivc.instruments._model_dir import fit_model_dir, parse_param

    schema = None
    keys_given = any(
        v is not None for v in (perturbation_key, control_label, context_key, dose_key, batch_key)
    )
    try:
        if data is not None and (perturbation_key or control_label):
            if not (perturbation_key and control_label):
                _fail("--data needs both --perturbation-key and --control-label.")
            schema = PerturbationSchema(
                perturbation_key=perturbation_key,  # type: ignore[arg-type]
                control_label=control_label,  # type: ignore[arg-type]
                combination_separator=separator,
                context_key=context_key,
                batch_key=batch_key,
                dose_key=dose_key,
                counts_layer=counts_layer,
            )
        elif dataset is not None and keys_given:
            _fail("--dataset uses the dataset's registered schema; drop the column options.")
        params = dict(parse_param(p) for p in (param or []))
        raw = {k.strip(): v for k, _, v in (p.partition("=") for p in (param or []))}
        params = check_param_types(model, params, raw)
        source = dataset if dataset is not None else str(data)
        with working(
            f"fitting {model} on {source}", steps=f"loading, preparing, fitting, writing {out}"
        ):
            path = fit_model_dir(
                out,
                model=model,
                dataset=dataset,
                data=data,
                schema=schema,
                params=params,
                seed=seed,
                n_top_genes=n_top_genes,
                overwrite=overwrite,
            )
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else str(e))
    except (FileNotFoundError, FileExistsError, ValueError, DataValidationError) as e:
        _fail(str(e))
    typer.echo(f"wrote model directory {path}")


def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by aivc fit.")],
    perturbations: Annotated[
        str,
        typer.Option("--perturbations", help="Comma-separated labels, e.g. STAT1,IRF1+STAT1."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad file of predicted cells.")],
    context: Annotated[
        str | None, typer.Option("--context", help="Context (cell type) to predict in.")
    ] = None,
    control: Annotated[
        Path | None,
        typer.Option("--control", help="Control cells (.h5ad, same genes); default: stored ones."),
    ] = None,
    dose: Annotated[
        float | None, typer.Option("--dose", help="Dose for every perturbation.")
    ] = None,
    n_cells: Annotated[
        int, typer.Option("--n-cells", help="Predicted cells per perturbation.")
    ] = 100,
    level: Annotated[float, typer.Option("--level", help="Coverage of the intervals.")] = 0.9,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cell sampling.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Predict cells, mean changes with intervals and DE calls for perturbations.

    The output h5ad has the predicted cells and control cells with the model's
    perturbation column (it can be passed to `cell-eval run -ap` as is); uns["aivc"]
    holds predicted_delta, delta_lower/delta_upper and the DE table "de".
    """
    _setup(verbosity, None)
    from aivc.data import DataValidationError, read_h5ad
    from aivc.instruments._model_dir import predict_model_dir

    if out.exists() and not overwrite:
        _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
    try:
        ctrl = read_h5ad(control) if control is not None else None
        n_perts = len([p for p in perturbations.split(",") if p.strip()])
        with working(
            f"predicting {n_perts} perturbation(s) with {model_dir}",
            steps="loading the model, predicting cells and intervals, testing DE",
        ):
            pred = predict_model_dir(
                model_dir,
                perturbations.split(","),
                context=context,
                control=ctrl,
                dose=dose,
                n_cells=n_cells,
                level=level,
                seed=seed,
            )
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else str(e))
    except (FileNotFoundError, ValueError, DataValidationError) as e:
        _fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pred.write_h5ad(tmp)
    tmp.replace(out)
    n_cond = len(pred.uns["aivc"]["conditions"])
    typer.echo(f"wrote {out} ({pred.n_obs} cells x {pred.n_vars} genes, {n_cond} conditions)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command("fit")(fit)
    app.command("predict")(predict)
