"""Commands for perturbation manipulators (fit, predict).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from aivc.interfaces._cli_common import DataFile, DatasetName, ModelOut, error_message, working
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


#: Share of mouse-style gene symbols above which ``aivc fit --data`` refuses the data.
MOUSE_SHARE = 0.5


def _refuse_mouse_symbols(data: Path, schema: Any | None) -> None:
    """Stop a fit on genes named with mouse symbols, which no gene knowledge covers.

    Reads only the file's annotations (backed mode). Does nothing without the
    human gene table (no knowledge could be used anyway).
    """
    from aivc.data import read_h5ad
    from aivc.genes import gene_symbols, mouse_style_share

    try:
        human = gene_symbols()
    except FileNotFoundError:
        return
    adata = read_h5ad(data, backed=True)
    try:
        genes = [str(g) for g in adata.var_names]
    finally:
        if adata.file is not None:
            adata.file.close()
    share = mouse_style_share(genes, human_symbols=human)
    if share < MOUSE_SHARE:
        return
    examples = ", ".join([g for g in genes if g not in human][:3])
    columns = ""  # a schema stored in the file is read by `aivc orthologs` itself
    if schema is not None:
        columns = (
            f" --perturbation-key {schema.perturbation_key} --control-label {schema.control_label}"
        )
        if schema.combination_separator != "+":
            columns += f" --separator {schema.combination_separator}"
    mapped = data.with_name(f"{data.stem}_human.h5ad")
    _fail(
        f"The genes of {str(data)!r} look like mouse symbols ({share:.0%} of {len(genes)} are "
        f"written the mouse way and are not human symbols, e.g. {examples}), so the fit would "
        "use no gene knowledge: GO, STRING and HuRI are human tables. Map the genes and the "
        f"perturbation targets to their human orthologs first (aivc orthologs {data} --out "
        f"{mapped}{columns}) and fit on that file, or pass --keep-symbols to fit on the symbols "
        "as they are, without gene knowledge."
    )


def orthologs(
    data: Annotated[Path, typer.Argument(help="An .h5ad file (raw counts) to rename.")],
    out: Annotated[Path, typer.Option("--out", help="The renamed .h5ad file to write.")],
    perturbation_key: Annotated[
        str | None,
        typer.Option(
            "--perturbation-key",
            help="obs column with perturbation labels, renamed too (default: the file's schema).",
        ),
    ] = None,
    control_label: Annotated[
        str | None,
        typer.Option(
            "--control-label", help="Label of control cells (default: the file's schema)."
        ),
    ] = None,
    separator: Annotated[
        str | None,
        typer.Option(
            "--separator", help="Separator of combination labels (default: the schema's, or +)."
        ),
    ] = None,
    from_species: Annotated[
        str, typer.Option("--from", help="Species of the file's symbols: mouse or human.")
    ] = "mouse",
    to_species: Annotated[
        str, typer.Option("--to", help="Species to rename them to: human or mouse.")
    ] = "human",
    many: Annotated[
        str,
        typer.Option(
            "--many", help="A gene with several orthologs: 'best' keeps the best one, 'drop' none."
        ),
    ] = "best",
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
    """Rename genes and perturbation targets to their orthologs (mouse to human by default).

    Genes without an ortholog are left out (the output lists how many); a
    perturbation target without one is an error. The original symbols stay in
    var["source_symbol"] and obs["<perturbation key>_<species>"], the report in
    uns["aivc_orthologs"]. Example, before fitting with gene knowledge:
    aivc orthologs mouse.h5ad --out mouse_human.h5ad, then aivc fit --data mouse_human.h5ad.
    """
    _setup(verbosity, data_dir)
    from aivc._io import atomic_path
    from aivc.data import DataValidationError, read_h5ad
    from aivc.genes import orthologs_to_adata

    if out.exists() and not overwrite:
        _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
    if out.resolve() == data.resolve():
        _fail("--out must be a new file; the input file is kept as it is.")
    try:
        adata = read_h5ad(data)
        stored = (adata.uns.get("aivc") or {}).get("schema") or {}
        key = perturbation_key or stored.get("perturbation_key")
        control = control_label or stored.get("control_label")
        sep = separator or stored.get("combination_separator") or "+"
        if key is not None and control is None:
            _fail("renaming perturbation labels needs --control-label.")
        mapped = orthologs_to_adata(
            adata,
            from_species=from_species,
            to_species=to_species,
            many=many,
            perturbation_key=key,
            control_label=control,
            separator=sep,
        )
    except (FileNotFoundError, ValueError, KeyError, DataValidationError) as e:
        _fail(error_message(e))
    report = mapped.uns["aivc_orthologs"]
    with atomic_path(out) as tmp:
        mapped.write_h5ad(tmp)
    targets = report.get("targets", {})
    typer.echo(
        f"wrote {out}: {mapped.n_vars} of {adata.n_vars} genes renamed to {to_species} orthologs "
        f"({len(report['unmapped'])} without one left out)"
        + (f"; {len(targets)} perturbation targets renamed" if key is not None else "")
    )


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
    keep_symbols: Annotated[
        bool,
        typer.Option(
            "--keep-symbols",
            help="Fit --data whose genes are mouse symbols as they are, without gene knowledge "
            "(by default such data are refused; map them with `aivc orthologs`).",
        ),
    ] = False,
    compound_key: Annotated[
        str | None,
        typer.Option("--compound-key", help="aivc-chem, --data: obs column with the compound."),
    ] = None,
    smiles_key: Annotated[
        str | None,
        typer.Option(
            "--smiles-key", help="aivc-chem, --data: obs column(s) with SMILES (comma-separated)."
        ),
    ] = None,
    plate_key: Annotated[
        str | None,
        typer.Option("--plate-key", help="aivc-chem, --data: obs column with the plate."),
    ] = None,
    moa_key: Annotated[
        str | None,
        typer.Option("--moa-key", help="aivc-chem, --data: obs column with the mechanism."),
    ] = None,
    dose_unit: Annotated[
        str | None, typer.Option("--dose-unit", help="aivc-chem: unit of --dose-key (default uM).")
    ] = None,
    time_key: Annotated[
        str | None,
        typer.Option("--time-key", help="aivc-time, --data: obs column with each cell's time."),
    ] = None,
    expression: Annotated[
        str | None,
        typer.Option(
            "--expression", help="aivc-time: X (or --counts-layer) holds 'counts', 'log' or 'fpkm'."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Fit a perturbation model and write a self-describing model directory.

    Gene knowledge (GO, STRING, HuRI) is human: --data whose genes are mouse
    symbols (Stat1, Jak2) is refused, since no knowledge would reach the model;
    map it to human orthologs with `aivc orthologs` first, or pass --keep-symbols.

    Example: aivc fit --dataset papalexi2021 --model aivc-perturb --out models/papalexi

    The chemical manipulator reads compound profiles instead:
    aivc fit --model aivc-chem --dataset lincs_cellpainting_a549 --out models/lincs
    (or --data FILE with --compound-key, --dose-key, --smiles-key, --control-label).
    """
    _setup(verbosity, data_dir)
    chemical = {
        "compound_key": compound_key,
        "smiles_key": smiles_key,
        "plate_key": plate_key,
        "moa_key": moa_key,
        "dose_unit": dose_unit,
    }
    if model == "aivc-time":
        _fit_temporal(out, dataset, data, time_key, expression, counts_layer, seed, overwrite)
        return
    if time_key is not None or expression is not None:
        _fail("--time-key/--expression are for --model aivc-time.")
    if model == "aivc-chem":
        _fit_chemical(
            out,
            dataset,
            data,
            {**chemical, "dose_key": dose_key, "control_label": control_label},
            seed,
            overwrite,
        )
        return
    if any(v is not None for v in chemical.values()):
        _fail(
            "--compound-key/--smiles-key/--plate-key/--moa-key/--dose-unit are for --model aivc-chem."
        )
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
        if data is not None and not keep_symbols:
            _refuse_mouse_symbols(data, schema)
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


def _fit_saved(
    name: str, out: Path, dataset: str | None, data: Path | None, overwrite: bool, build: Any
) -> Any:
    """Fit ``build(source)`` (a dataset name or a file path) and save it to ``out``; the fitted model."""
    from aivc.data import DataValidationError

    if (dataset is None) == (data is None):
        _fail("give one of --dataset NAME or --data FILE.")
    if out.exists() and not overwrite:
        _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
    source = dataset if dataset is not None else str(data)
    try:
        with working(
            f"fitting {name} on {source}", steps=f"loading, choosing candidates, writing {out}"
        ):
            model = build(source)
            model.save(out, overwrite=overwrite)
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else str(e))
    except (FileNotFoundError, ValueError, DataValidationError) as e:
        _fail(str(e))
    return model


def _fit_chemical(
    out: Path,
    dataset: str | None,
    data: Path | None,
    keys: dict[str, str | None],
    seed: int,
    overwrite: bool,
) -> None:
    from aivc.data import load_profiles
    from aivc.instruments._chemical import ChemicalManipulator

    def build(source: str) -> ChemicalManipulator:
        adata, schema, _ = load_profiles(source, **{k: v for k, v in keys.items() if v is not None})
        return ChemicalManipulator(seed=seed).fit(adata, schema)

    model = _fit_saved("aivc-chem", out, dataset, data, overwrite, build)
    chosen = {k: v["chosen"] for k, v in model.selection_.items()}
    typer.echo(
        f"wrote model directory {out} (aivc-chem: {chosen['seen']} for measured compounds at new doses, "
        f"{chosen['unseen']} for new compounds)"
    )


def _fit_temporal(
    out: Path,
    dataset: str | None,
    data: Path | None,
    time_key: str | None,
    expression: str | None,
    layer: str | None,
    seed: int,
    overwrite: bool,
) -> None:
    from aivc.evaluate.tasks.time import load_time_course
    from aivc.instruments._temporal import TemporalManipulator

    def build(source: str) -> TemporalManipulator:
        adata, key, kind, lay = load_time_course(source, time_key, expression, layer)
        return TemporalManipulator(seed=seed).fit(adata, time_key=key, expression=kind, layer=lay)

    model = _fit_saved("aivc-time", out, dataset, data, overwrite, build)
    chosen = {k: v["chosen"] for k, v in model.selection_.items()}
    typer.echo(
        f"wrote model directory {out} (aivc-time, times {model.times_.tolist()}: {chosen['interpolate']} "
        f"between them, {chosen['forecast']} beyond)"
    )


def _predict_temporal(model_dir: Path, times: list[float], n_cells: int, out: Path) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from aivc.instruments import Instrument
    from aivc.instruments._temporal import TemporalModel

    if out.suffix != ".h5ad":
        _fail(f"predicted cells are an AnnData: give --out an .h5ad file (got {str(out)!r}).")
    try:
        model = Instrument.load(model_dir)
        if not isinstance(model, TemporalModel):
            _fail(f"{str(model_dir)!r} holds a {type(model).__name__}, not a temporal model.")
        blocks = [model.predict_cells(t, n_cells=n_cells) for t in times]
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    z = np.vstack(blocks)
    cells = ad.AnnData(
        X=model.center_ + z @ model.components_,
        obs=pd.DataFrame(
            {"time": np.repeat(times, [len(b) for b in blocks])},
            index=[f"predicted_{i}" for i in range(len(z))],
        ),
        var=pd.DataFrame(index=model.genes_),
    )
    cells.obsm["X_aivc_time"] = z
    cells.uns["aivc"] = {
        "model": "aivc-time",
        "measured_times": [float(t) for t in model.times_],
        "selection": {k: v["chosen"] for k, v in model.selection_.items()},
        "X": "log expression of the representation's genes, reconstructed from its components",
    }
    tmp = out.with_name(f".{out.name}.tmp")
    cells.write_h5ad(tmp)
    tmp.replace(out)
    typer.echo(f"wrote {out} ({cells.n_obs} predicted cells at times {times})")


def _predict_chemical(
    model_dir: Path, compound: str, doses: list[float], dose_unit: str, level: float, out: Path
) -> None:
    from aivc._io import write_csv_atomic
    from aivc.instruments import Instrument
    from aivc.instruments._chemical import ChemicalModel, dose_response

    if out.suffix != ".csv":
        _fail(
            f"a compound's predicted changes are a table: give --out a .csv file (got {str(out)!r})."
        )
    try:
        model = Instrument.load(model_dir)
        if not isinstance(model, ChemicalModel):
            _fail(
                f"{str(model_dir)!r} holds a {type(model).__name__}, not a chemical model; use --perturbations."
            )
        table = dose_response(model, compound, doses, dose_unit=dose_unit, level=level)
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else str(e))
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    write_csv_atomic(table, out)
    typer.echo(
        f"wrote {out} ({len(doses)} dose(s) x {table['feature'].nunique()} features, {int(100 * level)}% intervals)"
    )


def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by aivc fit.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Output .h5ad file of predicted cells (.csv for --compound)."),
    ],
    perturbations: Annotated[
        str | None,
        typer.Option("--perturbations", help="Comma-separated labels, e.g. STAT1,IRF1+STAT1."),
    ] = None,
    compound: Annotated[
        str | None,
        typer.Option(
            "--compound", help="aivc-chem: a compound name of the training data, or a SMILES."
        ),
    ] = None,
    doses: Annotated[
        str | None,
        typer.Option("--doses", help="aivc-chem: comma-separated doses for a dose-response table."),
    ] = None,
    dose_unit: Annotated[
        str, typer.Option("--dose-unit", help="aivc-chem: unit of --dose/--doses (nM, uM, mM...).")
    ] = "uM",
    time: Annotated[
        str | None,
        typer.Option(
            "--time", help="aivc-time: time(s) to predict the population at, comma-separated."
        ),
    ] = None,
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
    if sum(x is not None for x in (perturbations, compound, time)) != 1:
        _fail(
            "give one of --perturbations (genetic or drug labels), --compound with --dose/--doses "
            "(aivc-chem) or --time (aivc-time)."
        )
    if time is not None:
        if out.exists() and not overwrite:
            _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
        try:
            times = [float(t) for t in time.split(",") if t.strip()]
        except ValueError:
            _fail(f"--time must be comma-separated numbers; got {time!r}.")
        _predict_temporal(model_dir, times, n_cells, out)
        return
    if compound is not None:
        if out.exists() and not overwrite:
            _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
        try:
            values = [float(d) for d in doses.split(",") if d.strip()] if doses else []
        except ValueError:
            _fail(f"--doses must be comma-separated numbers; got {doses!r}.")
        values += [dose] if dose is not None else []
        if not values:
            _fail("--compound needs --dose D (or --doses D1,D2,...).")
        _predict_chemical(model_dir, compound, values, dose_unit, level, out)
        return
    perturbations = perturbations or ""  # given: checked above
    from aivc.data import DataValidationError, PerturbationSchema, read_h5ad
    from aivc.experiments import check_context_declared
    from aivc.instruments._model_dir import predict_model_dir, read_manifest

    if out.exists() and not overwrite:
        _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
    try:
        declared = read_manifest(model_dir).get("schema")
        if declared:
            check_context_declared(PerturbationSchema.from_dict(dict(declared)), context)
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


def fates(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory written by aivc fit --model aivc-time.")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="The time course (.h5ad) with the cells to map.")
    ],
    time_key: Annotated[str, typer.Option("--time-key", help="obs column with each cell's time.")],
    label_key: Annotated[
        str, typer.Option("--label-key", help="obs column with the later cells' states.")
    ],
    from_time: Annotated[
        float, typer.Option("--from", help="Time of the cells whose fates are wanted.")
    ],
    to_time: Annotated[
        float, typer.Option("--to", help="Later time whose labelled cells are the fates.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output .h5ad: the data with obsm['aivc_fates'].")
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    verbosity: Annotated[
        str, typer.Option("--verbosity", "-v", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Fate probabilities of early cells towards the states of later cells (entropic optimal transport).

    Writes the data with obsm["aivc_fates"] (one column per state, NaN for cells of other
    times) and uns["aivc_fates"], as CellRank writes absorption probabilities.
    """
    _setup(verbosity, None)
    from aivc.data import DataValidationError, read_h5ad
    from aivc.instruments import Instrument
    from aivc.instruments._temporal import TemporalModel, add_fates

    if out.suffix != ".h5ad":
        _fail(f"--out must name an .h5ad file; got {str(out)!r}.")
    if out.exists() and not overwrite:
        _fail(f"{str(out)!r} already exists; pass --overwrite to replace it.")
    try:
        model = Instrument.load(model_dir)
        if not isinstance(model, TemporalModel):
            _fail(f"{str(model_dir)!r} holds a {type(model).__name__}, not a temporal model.")
        adata = read_h5ad(data)
        table = add_fates(
            model,
            adata,
            time_key=time_key,
            label_key=label_key,
            from_time=from_time,
            to_time=to_time,
        )
    except (FileNotFoundError, ValueError, KeyError, DataValidationError) as e:
        _fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)
    top = table.mean().sort_values(ascending=False)
    typer.echo(
        f"wrote {out} (fates of {len(table)} cells at {from_time:g} towards {to_time:g}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in top.items())
        + ")"
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command("fit")(fit)
    app.command("predict")(predict)
    app.command("fates")(fates)
    app.command("orthologs")(orthologs)
