"""Nucleus and cell segmentation, and its scores against a ground-truth mask.

:func:`segment` turns a 2-D fluorescence image into an instance label image
(0 = background, 1..n = objects) with one of :data:`SEGMENTERS`:

- ``classical`` (the default; needs no weights): Gaussian smoothing, Otsu's
  threshold, small objects and holes removed, then touching objects split
  by a watershed on the distance transform, seeded at its local maxima.
  The seed distance is set from the image itself (half the median
  equivalent radius of the thresholded objects), so nothing is tuned on a
  ground-truth mask.
- ``stardist`` / ``cellpose``: the published deep models, used when their
  package and pretrained weights are already on this machine (aivc never
  downloads them). ``auto`` takes StarDist, then Cellpose, when available,
  and the classical pipeline otherwise.

Any callable ``image -> label image`` is accepted as a segmenter too.
:func:`match_scores` scores a label image against a ground truth the way
StarDist and Cellpose report it: objects are matched one to one at IoU >=
threshold, and ``ap = TP / (TP + FP + FN)`` (the Data Science Bowl's
average precision at that threshold) and ``f1 = 2TP / (2TP + FP + FN)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SEGMENTERS",
    "ImageError",
    "available_segmenters",
    "match_scores",
    "read_image",
    "segment",
]

logger = logging.getLogger(__name__)

#: Segmenter names :func:`segment` accepts.
SEGMENTERS = ("auto", "classical", "stardist", "cellpose")

Segmenter = Callable[[np.ndarray], np.ndarray]


class ImageError(ValueError):
    """An image or mask that cannot be segmented or scored as given."""


def read_image(path: str | Path) -> np.ndarray:
    """A 2-D image from a TIFF (or PNG/JPEG) file; a colour image is averaged to one channel."""
    path = Path(path)
    if not path.is_file():
        msg = f"No image file at {str(path)!r}."
        raise FileNotFoundError(msg)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        image = tifffile.imread(path)
    else:
        from skimage.io import imread

        image = imread(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].mean(-1)
    if image.ndim != 2:
        msg = f"{str(path)!r} holds an image of shape {image.shape}; aivc segments 2-D images (one channel)."
        raise ImageError(msg)
    return image


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        msg = f"Segmentation needs a 2-D image (one channel); got shape {image.shape}."
        raise ImageError(msg)
    if image.size == 0 or min(image.shape) < 3:
        msg = f"The image is too small to segment (shape {image.shape})."
        raise ImageError(msg)
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        msg = "The image must hold finite numbers."
        raise ImageError(msg)
    return image.astype(np.float64)


def _classical(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology, segmentation
    from skimage.feature import peak_local_max

    lo, hi = np.percentile(image, [1, 99.8])
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.int32)  # a flat image holds no objects
    scaled = np.clip((image - lo) / (hi - lo), 0, 1)
    smooth = filters.gaussian(scaled, sigma=1.0)
    threshold = filters.threshold_otsu(smooth)
    mask = smooth > threshold
    mask = morphology.remove_small_objects(mask, max_size=15)
    mask = ndi.binary_fill_holes(mask)
    if not mask.any():
        return np.zeros(image.shape, dtype=np.int32)
    areas = np.array([r.area for r in measure.regionprops(measure.label(mask))])
    radius = float(np.sqrt(np.median(areas) / np.pi))
    distance = ndi.distance_transform_edt(mask)
    distance = filters.gaussian(distance, sigma=1.0)
    min_distance = max(2, round(radius / 2))
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=measure.label(mask), exclude_border=False
    )
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    # objects the watershed left without a seed (thin pieces) keep their own label
    unseeded = measure.label(mask & (labels == 0))
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels)
    labels = morphology.remove_small_objects(labels, max_size=15)
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    return relabelled.astype(np.int32)


def _stardist_model() -> Any | None:
    """StarDist's 2-D fluorescence model when the package and its weights are on this machine."""
    try:
        from stardist.models import StarDist2D
    except ImportError:
        return None
    folder = os.environ.get("AIVC_STARDIST_MODEL")
    if folder and Path(folder).is_dir():
        path = Path(folder)
        return StarDist2D(None, name=path.name, basedir=str(path.parent))
    cached = Path.home() / ".keras" / "models" / "StarDist2D" / "2D_versatile_fluo"
    if cached.is_dir():
        return StarDist2D.from_pretrained("2D_versatile_fluo")
    return None


def _cellpose_model() -> Any | None:
    """Cellpose's nuclei model when the package and its weights are on this machine."""
    try:
        from cellpose import models
    except ImportError:
        return None
    folder = Path(
        os.environ.get("CELLPOSE_LOCAL_MODELS_PATH", Path.home() / ".cellpose" / "models")
    )
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    return models.CellposeModel(model_type="nuclei", gpu=False)


def available_segmenters() -> list[str]:
    """The segmenters that can run on this machine now (``classical`` always can)."""
    out = ["classical"]
    if _stardist_model() is not None:
        out.append("stardist")
    if _cellpose_model() is not None:
        out.append("cellpose")
    return out


def _resolve(method: str) -> tuple[str, Segmenter]:
    if method not in SEGMENTERS:
        msg = f"Unknown segmenter {method!r}; choose one of {list(SEGMENTERS)} or pass a function."
        raise ValueError(msg)
    if method in ("auto", "stardist"):
        model = _stardist_model()
        if model is not None:
            from csbdeep.utils import normalize

            return "stardist", lambda im: model.predict_instances(normalize(im, 1, 99.8))[0]
        if method == "stardist":
            msg = (
                "StarDist is not available here: install `stardist` and put its pretrained "
                "2D_versatile_fluo weights in ~/.keras/models/StarDist2D/ (or set AIVC_STARDIST_MODEL "
                "to a model folder); or use segmenter='classical'."
            )
            raise RuntimeError(msg)
    if method in ("auto", "cellpose"):
        model = _cellpose_model()
        if model is not None:
            return "cellpose", lambda im: model.eval(im, diameter=None, channels=[0, 0])[0]
        if method == "cellpose":
            msg = (
                "Cellpose is not available here: install `cellpose` and put its nuclei weights in "
                "~/.cellpose/models (or CELLPOSE_LOCAL_MODELS_PATH); or use segmenter='classical'."
            )
            raise RuntimeError(msg)
    return "classical", _classical


def segment(image: np.ndarray, segmenter: str | Segmenter = "auto") -> tuple[np.ndarray, str]:
    """Instance labels of ``image`` and the name of the segmenter that made them.

    Parameters
    ----------
    image
        A 2-D image (one channel) of any numeric type.
    segmenter
        A name in :data:`SEGMENTERS` or a callable ``image -> labels``.

    Returns
    -------
    ``(labels, name)``: an int32 array of the image's shape (0 = background),
    with labels 1..n, and the segmenter's name (a callable's ``__name__``).
    """
    image = _check_image(image)
    if callable(segmenter):
        name, fn = getattr(segmenter, "__name__", "custom"), segmenter
    else:
        name, fn = _resolve(segmenter)
    labels = np.asarray(fn(image))
    if labels.shape != image.shape:
        msg = f"The segmenter {name!r} returned labels of shape {labels.shape} for an image of shape {image.shape}."
        raise ImageError(msg)
    from skimage.segmentation import relabel_sequential

    labels, _, _ = relabel_sequential(labels.astype(np.int64))
    logger.info("%s segmenter found %d objects", name, int(labels.max()))
    return labels.astype(np.int32), name


def _iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object (rows) with every predicted object (columns)."""
    n_t, n_p = int(truth.max()), int(pred.max())
    pairs = np.bincount(
        truth.ravel().astype(np.int64) * (n_p + 1) + pred.ravel().astype(np.int64),
        minlength=(n_t + 1) * (n_p + 1),
    ).reshape(n_t + 1, n_p + 1)
    inter = pairs[1:, 1:].astype(np.float64)
    area_t = pairs[1:, :].sum(1)[:, None]
    area_p = pairs[:, 1:].sum(0)[None, :]
    union = area_t + area_p - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_scores(
    truth: np.ndarray, pred: np.ndarray, thresholds: tuple[float, ...] = (0.5,)
) -> dict[str, float]:
    """Instance-segmentation scores of ``pred`` against ``truth`` at each IoU threshold.

    Returns ``{"ap50": ..., "f1_50": ..., "precision50", "recall50", "n_true", "n_pred",
    "mean_matched_iou50"}`` (the number is the threshold x 100). Matching is
    one to one by the Hungarian algorithm on IoU (at thresholds >= 0.5 it is
    unique anyway).
    """
    from scipy.optimize import linear_sum_assignment
    from skimage.segmentation import relabel_sequential

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        msg = f"The mask ({truth.shape}) and the prediction ({pred.shape}) differ in shape."
        raise ImageError(msg)
    truth = relabel_sequential(truth.astype(np.int64))[0]
    pred = relabel_sequential(pred.astype(np.int64))[0]
    iou = _iou_matrix(truth, pred)
    n_t, n_p = iou.shape
    out: dict[str, float] = {"n_true": float(n_t), "n_pred": float(n_p)}
    for t in thresholds:
        tag = f"{round(100 * t)}"
        if n_t and n_p:
            rows, cols = linear_sum_assignment(-iou)
            keep = iou[rows, cols] >= t
            tp = int(keep.sum())
            matched = float(iou[rows, cols][keep].mean()) if tp else 0.0
        else:
            tp, matched = 0, 0.0
        fp, fn = n_p - tp, n_t - tp
        denom = tp + fp + fn
        out[f"ap{tag}"] = tp / denom if denom else 1.0
        out[f"f1_{tag}"] = 2 * tp / (2 * tp + fp + fn) if denom else 1.0
        out[f"precision{tag}"] = tp / n_p if n_p else float(n_t == 0)
        out[f"recall{tag}"] = tp / n_t if n_t else 1.0
        out[f"mean_matched_iou{tag}"] = matched
    return out
