"""Segmentation benchmark: nuclei found in a real fluorescence image, scored against its mask.

``aivc benchmark segmentation --out DIR`` segments ``img2d.tif`` of the
``nuclei_dsb2018`` folder (2018 Data Science Bowl, StarDist's example) with
every available segmenter (``classical`` always; ``stardist`` / ``cellpose``
when their weights are on this machine, see :mod:`aivc.imaging`) and scores
each against ``mask2d.tif``: ``ap50`` (TP / (TP + FP + FN) with objects
matched one to one at IoU >= 0.5, the Data Science Bowl's measure), ``f1_50``,
precision, recall, and ``ap`` at IoU 0.5-0.9 (``ap_mean``). It then measures
the found objects (:func:`aivc.imaging.object_features`) and reports how well
per-object features agree with those measured on the true objects (median
relative error of area and mean intensity of matched objects). The
``--dataset`` option takes a folder holding ``img2d.tif`` and ``mask2d.tif``
(or any ``image.tif`` + ``mask.tif``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivc._settings import settings
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task

__all__ = ["run_segmentation"]

_FOLDER = "nuclei_dsb2018_stardist_example"
_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _files(dataset: str | None) -> tuple[Path, Path, str]:
    folder = settings.data_dir / _FOLDER if dataset in (None, "nuclei_dsb2018") else Path(dataset)
    for image, mask in (("img2d.tif", "mask2d.tif"), ("image.tif", "mask.tif")):
        if (folder / image).is_file() and (folder / mask).is_file():
            return folder / image, folder / mask, folder.name
    msg = (
        f"No image and mask in {str(folder)!r} (expected img2d.tif + mask2d.tif or image.tif + mask.tif). "
        "Set AIVC_DATA_DIR to the folder holding nuclei_dsb2018_stardist_example, or pass --dataset FOLDER."
    )
    raise FileNotFoundError(msg)


def run_segmentation(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the segmentation benchmark (see the module docstring); writes results into ``out``."""
    from scipy.optimize import linear_sum_assignment

    from aivc.imaging import (
        available_segmenters,
        match_scores,
        object_features,
        read_image,
        segment,
    )
    from aivc.imaging._segment import _iou_matrix

    out = Path(out)
    image_path, mask_path, name = _files(dataset)
    from skimage.segmentation import relabel_sequential

    image = read_image(image_path)
    truth = relabel_sequential(read_image(mask_path).astype(np.int64))[0]
    segmenters = list(models or available_segmenters())
    true_features = object_features(truth, image, image_id="truth")
    result_models: dict[str, Any] = {}
    wall, peak = {}, {}
    for seg in segmenters:
        with ResourceMeter() as meter:
            labels, used = segment(image, seg)
        scores = match_scores(truth, labels, _THRESHOLDS)
        scores["ap_mean"] = float(np.mean([scores[f"ap{round(100 * t)}"] for t in _THRESHOLDS]))
        feats = object_features(labels, image, image_id=used)
        iou = _iou_matrix(truth, labels)
        agreement: dict[str, float] = {}
        if iou.size:
            r, c = linear_sum_assignment(-iou)
            ok = iou[r, c] >= 0.5
            for f in ("area", "intensity_mean"):
                t_vals = true_features[:, f].X.ravel()[r[ok]]
                p_vals = feats[:, f].X.ravel()[c[ok]]
                agreement[f"{f}_median_rel_error"] = (
                    float(np.median(np.abs(p_vals - t_vals) / np.maximum(np.abs(t_vals), 1e-12)))
                    if ok.any()
                    else float("nan")
                )
        # one image, one run: each number as a summary over one value, as every task reports them
        result_models[used] = {
            k: summarize([v])
            for k, v in {**scores, **agreement}.items()
            if k not in ("n_true", "n_pred")
        }
        result_models[used].update(
            n_true=int(scores["n_true"]), n_pred=int(scores["n_pred"]), n_features=int(feats.n_vars)
        )
        wall[used], peak[used] = round(meter.wall_seconds, 3), round(meter.peak_increase_mb, 1)
    result = {
        "task": "segmentation",
        "dataset": name,
        "description": "Segment the nuclei of a fluorescence image and score them against the human-made instance mask",
        "image": {
            "shape": list(image.shape),
            "n_true_objects": int(truth.max()),
            "file": image_path.name,
        },
        "models": result_models,
        "thresholds": list(_THRESHOLDS),
        "metrics": {
            "ap50": {
                "higher_is_better": True,
                "description": "TP/(TP+FP+FN), objects matched one to one at IoU >= 0.5",
            },
            "f1_50": {"higher_is_better": True, "description": "2TP/(2TP+FP+FN) at IoU >= 0.5"},
            "ap_mean": {
                "higher_is_better": True,
                "description": "ap averaged over IoU 0.5, 0.6, 0.7, 0.8, 0.9",
            },
        },
        "wall_seconds": wall,
        "peak_memory_mb": peak,
        "machine": machine_info(),
    }
    write_results(out, result, segmentation_markdown(result))
    return result


def segmentation_markdown(result: dict[str, Any]) -> str:
    """A readable table of a ``segmentation`` ``results.json``."""
    img = result["image"]
    lines = [
        f"# segmentation on {result['dataset']}",
        "",
        result["description"]
        + f" ({img['file']}, {img['shape'][0]} × {img['shape'][1]}, {img['n_true_objects']} true nuclei).",
        "",
        "| segmenter | ap50 ↑ | f1_50 ↑ | precision50 | recall50 | ap (IoU .5–.9) ↑ | objects found | area rel. err. | intensity rel. err. | wall s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["models"].items():
        lines.append(
            f"| {name} | {fmt_summary(e['ap50'])} | {fmt_summary(e['f1_50'])} | {fmt_summary(e['precision50'])} | "
            f"{fmt_summary(e['recall50'])} | {fmt_summary(e['ap_mean'])} | {e['n_pred']} | "
            f"{fmt_summary(e.get('area_median_rel_error'))} | {fmt_summary(e.get('intensity_mean_median_rel_error'))} | {result['wall_seconds'][name]:.2f} | {result['peak_memory_mb'][name]:.0f} |"
        )
    m = result["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {m['aivc']}.", ""]
    return "\n".join(lines)


register_task(
    Task(
        name="segmentation",
        description="Segment nuclei in a real fluorescence image; AP and F1 at IoU 0.5 against its mask",
        datasets=("nuclei_dsb2018",),
        models=("classical",),
        seeds=(0,),
        run=run_segmentation,
    )
)
