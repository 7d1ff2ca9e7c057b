"""Per-object morphology features: from a label image to an AnnData of objects x features.

:func:`object_features` measures every labelled object of an intensity image
with scikit-image: shape (area, perimeter, eccentricity, solidity, extent,
axis lengths, orientation-free moments), intensity (mean, sd, min, max,
integrated, quantiles) and texture (Haralick-style contrast, homogeneity,
energy and correlation of the grey-level co-occurrence matrix inside the
object's bounding box). The result is an AnnData the rest of aivc reads:
objects as ``obs`` (with ``label``, ``image`` and the centroid in
``obsm["spatial"]``), features as ``var`` (with ``feature_group``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.imaging._segment import ImageError, _check_image

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["object_features"]

_SHAPE = (
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "extent",
    "major_axis_length",
    "minor_axis_length",
    "equivalent_diameter_area",
)
_INTENSITY = ("intensity_mean", "intensity_max", "intensity_min")
_TEXTURE = ("contrast", "homogeneity", "energy", "correlation")


def _texture(patch: np.ndarray, inside: np.ndarray, levels: int = 16) -> list[float]:
    from skimage.feature import graycomatrix, graycoprops

    values = patch[inside]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo or inside.sum() < 4:
        return [0.0, 1.0, 1.0, 0.0]
    q = np.clip(((patch - lo) / (hi - lo) * (levels - 1)).round(), 0, levels - 1).astype(np.uint8)
    q = np.where(inside, q + 1, 0).astype(np.uint8)  # level 0 marks pixels outside the object
    glcm = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1)
    glcm = glcm[1:, 1:].astype(np.float64)  # pairs inside the object only
    total = glcm.sum(axis=(0, 1), keepdims=True)
    glcm = np.divide(glcm, total, out=np.zeros_like(glcm), where=total > 0)
    out = []
    for prop in _TEXTURE:
        v = graycoprops(glcm, prop).mean()
        out.append(float(np.nan_to_num(v)))
    return out


def object_features(labels: np.ndarray, image: np.ndarray, *, image_id: str = "image") -> AnnData:
    """Morphology features of every object of ``labels`` measured on ``image``.

    Parameters
    ----------
    labels
        Instance label image (0 = background), e.g. from :func:`aivc.imaging.segment`.
    image
        The intensity image the labels were drawn on (same shape).
    image_id
        Written to ``obs["image"]`` (and prefixed to the object names), so the
        objects of several images can be concatenated.

    An image with no objects gives an AnnData with zero rows and every
    feature column, not an error: "nothing found" is a result.
    """
    import anndata as ad
    from skimage.measure import regionprops_table

    image = _check_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape:
        msg = f"The labels ({labels.shape}) and the image ({image.shape}) differ in shape."
        raise ImageError(msg)
    if labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer):
        msg = "Labels must be non-negative integers (0 = background)."
        raise ImageError(msg)
    props = regionprops_table(
        labels.astype(np.int32),
        intensity_image=image,
        properties=("label", "centroid", "bbox", *_SHAPE, *_INTENSITY, "image", "image_intensity"),
    )
    n = len(props["label"])
    table: dict[str, np.ndarray] = {k: np.asarray(props[k], dtype=np.float64) for k in _SHAPE}
    for k in _INTENSITY:
        table[k] = np.asarray(props[k], dtype=np.float64)
    sd, q25, q75, integrated, texture = [], [], [], [], []
    for inside, patch in zip(props["image"], props["image_intensity"], strict=True):
        values = patch[inside]
        sd.append(float(values.std()))
        q25.append(float(np.quantile(values, 0.25)))
        q75.append(float(np.quantile(values, 0.75)))
        integrated.append(float(values.sum()))
        texture.append(_texture(patch, inside))
    table["intensity_sd"] = np.asarray(sd)
    table["intensity_q25"] = np.asarray(q25)
    table["intensity_q75"] = np.asarray(q75)
    table["intensity_integrated"] = np.asarray(integrated)
    tex = np.asarray(texture, dtype=np.float64).reshape(n, len(_TEXTURE))
    for i, k in enumerate(_TEXTURE):
        table[f"texture_{k}"] = tex[:, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        per = table["perimeter"]
        table["form_factor"] = np.where(per > 0, 4 * np.pi * table["area"] / per**2, 0.0)
    names = list(table)
    X = np.column_stack([table[k] for k in names]) if n else np.zeros((0, len(names)))
    groups = [
        "AreaShape"
        if k in _SHAPE or k == "form_factor"
        else "Texture"
        if k.startswith("texture")
        else "Intensity"
        for k in names
    ]
    obs = pd.DataFrame(
        {"label": np.asarray(props["label"], dtype=np.int64), "image": image_id},
        index=[f"{image_id}_{int(v)}" for v in props["label"]],
    )
    adata = ad.AnnData(
        X=X.astype(np.float64), obs=obs, var=pd.DataFrame({"feature_group": groups}, index=names)
    )
    adata.obsm["spatial"] = np.column_stack(
        [np.asarray(props["centroid-1"], float), np.asarray(props["centroid-0"], float)]
    ).reshape(n, 2)
    return adata
