"""Imaging: from microscopy images to per-object morphology profiles.

:func:`segment` finds nuclei or cells with a pluggable segmenter (a classical
scikit-image pipeline by default; StarDist or Cellpose when their weights are
on this machine; any callable), :func:`match_scores` scores a segmentation
against a ground-truth mask (AP and F1 at an IoU threshold), and
:func:`object_features` measures every object into an AnnData of objects x
features that aivc's other parts read.
"""

from __future__ import annotations

from aivc.imaging._features import object_features
from aivc.imaging._segment import (
    SEGMENTERS,
    ImageError,
    available_segmenters,
    match_scores,
    read_image,
    segment,
)

__all__ = [
    "SEGMENTERS",
    "ImageError",
    "available_segmenters",
    "match_scores",
    "object_features",
    "read_image",
    "segment",
]
