"""Self-contained HTML reports of benchmark results and predictions.

:func:`write_report` reads either a results directory (``results.json`` as
written by ``aivc benchmark``, see ``docs/results-format.md``) or a predictions
``.h5ad`` (written by ``aivc predict`` or :meth:`PerturbationModel.predict`) and
writes one HTML file with plotly.js inlined, so it opens offline and can be
mailed around:

- results: per-metric bars for every model with the baselines (sd over seeds
  as error bars, the replicate ceiling as a dashed line where measured), a
  metric table, calibration curves when the results hold coverages at several
  levels, and per-condition distributions when ``per_condition.csv`` is there;
- predictions: the top predicted changes per condition (with intervals when
  present), predicted vs observed changes when measured cells are given
  (``observed=``: a registered dataset or an ``.h5ad``), and the cells in an
  embedding (``obsm["X_*"]`` when present, otherwise a PCA of the cells).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._io import write_text_atomic
from aivc._progress import progress

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

_COVERAGE = re.compile(r"^coverage_(\d{2})$")
_PALETTE = ["#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#e53935", "#00897b", "#6d4c41", "#3949ab"]
_GREY = {"control": "#9e9e9e", "train-mean": "#616161"}


def write_report(
    source: str | Path, out: str | Path, *, observed: str | Path | None = None
) -> Path:
    """Write a self-contained HTML report of ``source``; returns the written path.

    Parameters
    ----------
    source
        A results directory (holding ``results.json``), a ``results.json`` file,
        or a predictions ``.h5ad``.
    out
        The HTML file to write (atomically: a temporary file, then a rename);
        its name must end in ``.html`` and its folder must exist (it is checked
        before any work, and no folder is created).
    observed
        For predictions: measured cells to compare with, as a registered
        dataset name or an ``.h5ad`` path (raw counts and the model's schema).

    Raises
    ------
    ValueError
        ``out`` does not end in ``.html``, or ``source`` is of no known kind.
    FileNotFoundError
        The folder of ``out``, or ``source``, does not exist.
    """
    out = _check_out(Path(out))
    source = Path(source)
    if source.is_dir():
        results = source / "results.json"
        if not results.exists():
            msg = f"{str(source)!r} holds no results.json; pass a results directory of `aivc benchmark`."
            raise FileNotFoundError(msg)
        title, sections = _results_sections(results)
    elif source.suffix == ".json":
        title, sections = _results_sections(source)
    elif source.suffix == ".h5ad":
        title, sections = _prediction_sections(source, observed)
    elif not source.exists():
        msg = f"No such file or directory: {str(source)!r}."
        raise FileNotFoundError(msg)
    else:
        msg = f"Cannot report on {str(source)!r}: expected a results directory, results.json or an .h5ad file."
        raise ValueError(msg)
    page = _page(title, sections, source)
    return write_text_atomic(out, page)


def _check_out(out: Path) -> Path:
    """``out`` when it names an ``.html`` file in an existing folder; a clear error otherwise."""
    if out.suffix.lower() not in (".html", ".htm"):
        msg = (
            f"The report is an HTML page; its file name must end in .html. Got {str(out)!r} "
            f"instead; use e.g. {str(out.with_suffix('.html'))!r}."
        )
        raise ValueError(msg)
    if not out.parent.is_dir():
        msg = (
            f"The folder {str(out.parent)!r} of the report does not exist; create it first "
            f"(mkdir -p {out.parent}) or write the report elsewhere."
        )
        raise FileNotFoundError(msg)
    return out


# ----------------------------------------------------------------------------- page
def _page(title: str, sections: list[tuple[str, str]], source: Path) -> str:
    from plotly.offline import get_plotlyjs

    from aivc._version import __version__

    body = "\n".join(
        f"<section><h2>{html.escape(h)}</h2>\n{content}\n</section>" for h, content in sections
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; color: #1f2933; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .2rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .5rem 0; }}
th, td {{ border-bottom: 1px solid #d9e2ec; padding: .2rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.note {{ color: #616e7c; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Source: {html.escape(source.name)} · aivc {html.escape(__version__)} · plots are interactive (plotly.js is embedded; no network needed).</p>
{body}
</body></html>
"""


def _fig_html(fig: Any) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _table_html(df: pd.DataFrame, digits: int = 3) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    rows = "".join(
        "<tr>"
        + f"<td>{html.escape(str(i))}</td>"
        + "".join(f"<td>{cell(v)}</td>" for v in r)
        + "</tr>"
        for i, r in zip(df.index, df.itertuples(index=False), strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _color(model: str, i: int) -> str:
    return _GREY.get(model, _PALETTE[i % len(_PALETTE)])


# ----------------------------------------------------------------------------- results
def _metric_tables(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """Every ``{model: {metric: {"mean": ...}}}`` mapping inside the results, with where it was found."""
    found = []
    if isinstance(obj, dict):
        models = obj.get("models")
        if (
            isinstance(models, dict)
            and models
            and all(
                isinstance(v, dict) and any(isinstance(m, dict) and "mean" in m for m in v.values())
                for v in models.values()
            )
        ):
            found.append((path, obj))
        for k, v in obj.items():
            if k != "models" and isinstance(v, dict):
                found += _metric_tables(v, (*path, str(k)))
    return found


def _mean(v: Any) -> float:
    if isinstance(v, dict) and v.get("mean") is not None:
        return float(v["mean"])
    return math.nan


def _sd(v: Any) -> float:
    if isinstance(v, dict) and v.get("sd") is not None:
        return float(v["sd"])
    return 0.0


def _results_sections(path: Path) -> tuple[str, list[tuple[str, str]]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        msg = f"{str(path)!r} is not valid JSON ({e})."
        raise ValueError(msg) from None
    tables = _metric_tables(result)
    if not tables:
        msg = f"{str(path)!r} holds no per-model metrics (expected models -> metric -> mean)."
        raise ValueError(msg)
    task = str(result.get("task", "benchmark"))
    dataset = result.get("dataset")
    dataset_text = (
        dataset
        if isinstance(dataset, str)
        else ", ".join(f"{k}: {v}" for k, v in (dataset or {}).items())
    )
    title = f"aivc report: {task}" + (f" on {dataset_text}" if dataset_text else "")
    info = result.get("metrics", {})
    sections: list[tuple[str, str]] = []
    overview = []
    for key in ("split", "seeds", "levels", "aggregation", "target", "baseline_for_scaling"):
        if key in result:
            overview.append(f"<li><b>{key}</b>: {html.escape(json.dumps(result[key]))}</li>")
    if overview:
        sections.append(("Setup", "<ul>" + "".join(overview) + "</ul>"))

    for where, block in progress(tables, desc="report sections", unit="table"):
        label = " / ".join(where) if where else task
        models = list(block["models"])
        metrics = sorted(
            {
                m
                for v in block["models"].values()
                for m, s in v.items()
                if isinstance(s, dict) and "mean" in s
            }
        )
        shown = [m for m in metrics if not m.endswith("_scaled")] or metrics
        means = pd.DataFrame(
            {m: [_mean(block["models"][k].get(m)) for k in models] for m in shown}, index=models
        )
        means.index.name = "model"
        replicate = block.get("replicate") or result.get("replicate") or {}
        n = len(shown)
        cols = min(3, n)
        rows = math.ceil(n / cols)
        fig = make_subplots(
            rows=rows, cols=cols, subplot_titles=[_metric_title(m, info) for m in shown]
        )
        for j, m in enumerate(shown):
            r, c = j // cols + 1, j % cols + 1
            fig.add_trace(
                go.Bar(
                    x=models,
                    y=[_mean(block["models"][k].get(m)) for k in models],
                    error_y={
                        "type": "data",
                        "array": [_sd(block["models"][k].get(m)) for k in models],
                    },
                    marker_color=[_color(k, i) for i, k in enumerate(models)],
                    showlegend=False,
                    name=m,
                ),
                row=r,
                col=c,
            )
            ceiling = _mean(replicate.get(m)) if isinstance(replicate, dict) else math.nan
            if np.isfinite(ceiling):
                fig.add_hline(
                    y=ceiling,
                    line_dash="dash",
                    line_color="#000",
                    row=r,
                    col=c,
                    annotation_text="replicate",
                    annotation_position="top left",
                )
        fig.update_layout(height=320 * rows, margin={"t": 60, "l": 40, "r": 20, "b": 40})
        content = _fig_html(fig) + _table_html(means)
        times = {k: block.get(k) or result.get(k) for k in ("wall_seconds", "peak_memory_mb")}
        if all(isinstance(t, dict) and t for t in times.values()):
            cost = pd.DataFrame(times).reindex(models)
            cost.index.name = "model"
            content += (
                "<p class='note'>Cost (fit + predict, summed over splits):</p>"
                + _table_html(cost, 1)
            )
        sections.append((f"Metrics: {label}", content))
        curves = _calibration_figure(block["models"], label)
        if curves is not None:
            sections.append((f"Calibration: {label}", _fig_html(curves)))

    per_condition = path.parent / "per_condition.csv"
    if per_condition.exists():
        order = list(tables[0][1]["models"])
        sections.append(("Per condition", _per_condition(per_condition, order)))
    return title, sections


def _metric_title(metric: str, info: dict) -> str:
    d = info.get(metric)
    if isinstance(d, dict) and "higher_is_better" in d:
        return f"{metric} ({'higher' if d['higher_is_better'] else 'lower'} is better)"
    return metric


def _calibration_figure(models: dict, label: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    any_curve = False
    for i, (name, metrics) in enumerate(models.items()):
        points = sorted(
            (int(mt.group(1)) / 100, _mean(v))
            for k, v in metrics.items()
            if (mt := _COVERAGE.match(k)) and np.isfinite(_mean(v))
        )
        if len(points) < 2:
            continue
        any_curve = True
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines+markers",
                name=name,
                line={"color": _color(name, i)},
            )
        )
    if not any_curve:
        return None
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="ideal", line={"dash": "dot", "color": "#000"}
        )
    )
    fig.update_layout(
        title=f"interval coverage vs nominal level ({label})",
        xaxis={"title": "nominal level", "range": [0.4, 1.0]},
        yaxis={"title": "observed coverage", "range": [0.4, 1.0]},
        height=420,
    )
    return fig


def _per_condition(path: Path, order: list[str]) -> str:
    import plotly.graph_objects as go

    table = pd.read_csv(path)
    metric = next(
        (m for m in ("pearson_delta_de20", "mse_de20") if m in table.columns),
        next((c for c in table.columns if table[c].dtype.kind == "f"), None),
    )
    if metric is None or "model" not in table.columns:
        return "<p class='note'>per_condition.csv has no model column or numeric metric.</p>"
    fig = go.Figure()
    for name, rows in table.groupby("model", sort=False):
        i = order.index(str(name)) if str(name) in order else len(order)
        fig.add_trace(
            go.Box(
                y=rows[metric],
                name=str(name),
                marker_color=_color(str(name), i),
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
            )
        )
    fig.update_layout(
        title=f"{metric} of every test condition and seed", height=420, showlegend=False
    )
    return _fig_html(fig)


# ----------------------------------------------------------------------------- predictions
def _prediction_sections(
    path: Path, observed: str | Path | None
) -> tuple[str, list[tuple[str, str]]]:
    from aivc.data import DataValidationError, PerturbationSchema, read_h5ad

    pred = read_h5ad(path)
    meta = pred.uns.get("aivc")
    if not isinstance(meta, dict) or "schema" not in meta:
        msg = (
            f"{str(path)!r} carries no uns['aivc'] with a schema; expected predictions written by "
            "`aivc predict` or PerturbationModel.predict."
        )
        raise DataValidationError(msg)
    schema = PerturbationSchema.from_dict(dict(meta["schema"]))
    genes = [str(g) for g in pred.var_names]
    conditions, delta = _predicted_changes(pred, schema, meta)
    lower = meta.get("delta_lower")
    upper = meta.get("delta_upper")
    model = str(meta.get("model") or (meta.get("model_dir") or {}).get("instrument") or "model")
    title = f"aivc report: predictions of {model} ({len(conditions)} conditions)"
    sections: list[tuple[str, str]] = []
    steps = ["top", "observed", "embedding"]
    for step in progress(steps, desc="report sections", unit="section"):
        if step == "top":
            sections.append(
                ("Predicted changes", _top_changes(conditions, genes, delta, lower, upper, meta))
            )
        elif step == "observed" and observed is not None:
            content = _versus_observed(conditions, genes, delta, schema, observed)
            trained_on = str((meta.get("model_dir") or {}).get("dataset") or "")
            if trained_on and trained_on == str(observed):
                content = (
                    f"<p class='note'>The model was trained on {html.escape(trained_on)}: "
                    "perturbations measured there were seen in training, so this comparison is "
                    "not a test of unseen perturbations.</p>" + content
                )
            sections.append(("Predicted vs observed", content))
        elif step == "embedding":
            sections.append(("Cells", _embedding(pred, schema)))
    return title, sections


def _predicted_changes(pred: AnnData, schema: Any, meta: dict) -> tuple[list[str], np.ndarray]:
    if "predicted_delta" in meta and "conditions" in meta:
        return [str(c) for c in meta["conditions"]], np.asarray(
            meta["predicted_delta"], dtype=float
        )
    from aivc.data import pseudobulk

    means, info = pseudobulk(pred, schema)
    is_ctrl = info["perturbation"].to_numpy() == schema.control_label
    if not is_ctrl.any():
        msg = (
            "The predictions hold no predicted_delta and no control cells to compute changes from."
        )
        raise ValueError(msg)
    base = means.to_numpy()[is_ctrl].mean(axis=0)
    return list(means.index[~is_ctrl]), means.to_numpy()[~is_ctrl] - base


def _top_changes(
    conditions: list[str],
    genes: list[str],
    delta: np.ndarray,
    lower: Any,
    upper: Any,
    meta: dict,
    k: int = 15,
) -> str:
    import plotly.graph_objects as go

    parts = []
    level = meta.get("interval_level")
    for i, cond in enumerate(conditions[:12]):
        order = np.argsort(-np.abs(delta[i]), kind="stable")[:k]
        fig = go.Figure(
            go.Bar(
                x=[genes[j] for j in order],
                y=delta[i, order],
                error_y=(
                    {
                        "type": "data",
                        "symmetric": False,
                        "array": np.asarray(upper)[i, order] - delta[i, order],
                        "arrayminus": delta[i, order] - np.asarray(lower)[i, order],
                    }
                    if lower is not None and upper is not None
                    else None
                ),
                marker_color=["#e53935" if v > 0 else "#1e88e5" for v in delta[i, order]],
            )
        )
        fig.update_layout(
            title=f"{cond}: top {k} predicted changes"
            + (
                f" with {float(level):.0%} intervals"
                if level is not None and lower is not None
                else ""
            ),
            yaxis={"title": "predicted change (log-normalised)"},
            height=330,
            margin={"t": 50, "b": 60},
        )
        parts.append(_fig_html(fig))
    if len(conditions) > 12:
        parts.append(f"<p class='note'>{len(conditions) - 12} more conditions not plotted.</p>")
    return "\n".join(parts)


def _versus_observed(
    conditions: list[str], genes: list[str], delta: np.ndarray, schema: Any, observed: str | Path
) -> str:
    import plotly.graph_objects as go

    from aivc.data import load, read_h5ad
    from aivc.experiments import measured_changes

    if Path(str(observed)).suffix == ".h5ad":
        measured = measured_changes(read_h5ad(observed), schema, counts=True)
    else:
        measured = measured_changes(load(str(observed)), counts=True)
    changes = measured.delta.reindex(columns=genes)
    shared = [c for c in conditions if c in changes.index]
    if not shared:
        return (
            f"<p class='note'>None of the predicted conditions ({', '.join(map(html.escape, conditions[:8]))}) "
            "was measured in the observed data.</p>"
        )
    fig = go.Figure()
    rows = []
    for i, cond in enumerate(conditions):
        if cond not in shared:
            continue
        o = changes.loc[cond].to_numpy(dtype=float)
        ok = np.isfinite(o)
        r = float(np.corrcoef(delta[i][ok], o[ok])[0, 1]) if delta[i][ok].std() > 0 else math.nan
        rows.append(
            {
                "condition": cond,
                "pearson_r": r,
                "rmse": float(np.sqrt(np.mean((delta[i][ok] - o[ok]) ** 2))),
            }
        )
        fig.add_trace(
            go.Scatter(
                x=o[ok],
                y=delta[i][ok],
                mode="markers",
                name=f"{cond} (r={r:.2f})",
                text=[g for g, keep in zip(genes, ok, strict=True) if keep],
                marker={"size": 5, "opacity": 0.7},
            )
        )
    lim = float(np.nanmax(np.abs(changes.loc[shared].to_numpy()))) * 1.05
    fig.add_trace(
        go.Scatter(
            x=[-lim, lim],
            y=[-lim, lim],
            mode="lines",
            name="y = x",
            line={"color": "#000", "width": 1},
        )
    )
    fig.update_layout(
        title="predicted vs observed change, every measured gene",
        xaxis={"title": "observed change"},
        yaxis={"title": "predicted change"},
        height=520,
    )
    table = pd.DataFrame(rows).set_index("condition")
    missing = [c for c in conditions if c not in shared]
    note = (
        f"<p class='note'>Not measured: {html.escape(', '.join(missing))}.</p>" if missing else ""
    )
    return _fig_html(fig) + _table_html(table) + note


def _embedding(pred: AnnData, schema: Any) -> str:
    import plotly.graph_objects as go

    keys = [k for k in pred.obsm if str(k).startswith("X_")]
    if keys:
        key = keys[0]
        xy = np.asarray(pred.obsm[key])[:, :2]
        method = f"obsm['{key}']"
        axes = [f"{str(key).removeprefix('X_')} {i}" for i in (1, 2)]
    else:
        from sklearn.decomposition import PCA

        x = pred.X.toarray() if hasattr(pred.X, "toarray") else np.asarray(pred.X)
        if x.shape[0] < 3:
            return "<p class='note'>Too few cells for an embedding.</p>"
        pca = PCA(n_components=2, random_state=0)
        xy = pca.fit_transform(x)
        method = "PCA of the predicted and control cells"
        axes = [
            f"PC{i + 1} ({ratio:.1%} of variance)"
            for i, ratio in enumerate(pca.explained_variance_ratio_)
        ]
    labels = pred.obs[schema.perturbation_key].astype(str).to_numpy()
    fig = go.Figure()
    for i, lab in enumerate(pd.unique(labels)):
        m = labels == lab
        fig.add_trace(
            go.Scatter(
                x=xy[m, 0],
                y=xy[m, 1],
                mode="markers",
                name=str(lab),
                marker={
                    "size": 4,
                    "opacity": 0.6,
                    "color": _color(str(lab), i) if lab != schema.control_label else "#9e9e9e",
                },
            )
        )
    fig.update_layout(
        title=f"cells: {method}",
        xaxis={"title": axes[0]},
        yaxis={"title": axes[1]},
        height=480,
    )
    return _fig_html(fig)
