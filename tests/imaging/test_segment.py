"""Segmentation, its scores, and per-object features."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from aivc.imaging import ImageError, match_scores, object_features, read_image, segment


def _disks(shape=(96, 96), centres=((20, 20), (20, 60), (65, 40)), radius=8):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for i, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    rng = np.random.default_rng(0)
    image = 100 + 800 * (labels > 0) + rng.normal(0, 10, shape)
    return image, labels


def test_classical_segmenter_finds_separate_disks():
    image, truth = _disks()
    labels, used = segment(image, "classical")
    assert used == "classical"
    scores = match_scores(truth, labels)
    assert scores["ap50"] == 1.0 and scores["f1_50"] == 1.0


def test_a_stub_segmenter_returning_the_truth_scores_perfectly():
    image, truth = _disks()

    def truth_segmenter(im):
        return truth

    labels, used = segment(image, truth_segmenter)
    assert used == "truth_segmenter"
    s = match_scores(truth, labels, (0.5, 0.9))
    assert s["ap50"] == s["ap90"] == 1.0 and s["mean_matched_iou50"] == 1.0


def test_scores_count_misses_and_false_objects():
    _image, truth = _disks()
    pred = truth.copy()
    pred[pred == 3] = 0  # one nucleus missed
    pred[80:90, 80:90] = 9  # one false object
    s = match_scores(truth, pred)
    assert s["ap50"] == pytest.approx(2 / 4)  # TP 2, FP 1, FN 1
    assert s["f1_50"] == pytest.approx(4 / 6)


def test_an_image_with_no_objects_gives_an_empty_table():
    flat = np.full((64, 64), 7.0)
    labels, _ = segment(flat, "classical")
    assert labels.max() == 0
    table = object_features(labels, flat)
    assert table.n_obs == 0 and table.n_vars > 10
    assert match_scores(np.zeros((8, 8), int), np.zeros((8, 8), int))["ap50"] == 1.0


def test_object_features_measure_each_object():
    image, truth = _disks()
    table = object_features(truth, image, image_id="disks")
    assert table.n_obs == 3 and list(table.obs["label"]) == [1, 2, 3]
    area = table[:, "area"].X.ravel()
    assert np.allclose(area, (truth == 1).sum(), rtol=0.02)
    assert (table[:, "intensity_mean"].X > 800).all()
    assert table.obsm["spatial"].shape == (3, 2)
    assert set(table.var["feature_group"]) == {"AreaShape", "Intensity", "Texture"}


def test_bad_images_are_refused_clearly(tmp_path):
    with pytest.raises(ImageError, match="2-D"):
        segment(np.zeros((4, 4, 4, 4)))
    with pytest.raises(ValueError, match="Unknown segmenter"):
        segment(np.zeros((16, 16)), "magic")
    with pytest.raises(ImageError, match="differ in shape"):
        match_scores(np.zeros((4, 4), int), np.zeros((5, 5), int))
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.tif")


def test_real_nuclei_image_is_segmented_well(data_dir):
    folder = data_dir / "nuclei_dsb2018_stardist_example"
    image, truth = read_image(folder / "img2d.tif"), read_image(folder / "mask2d.tif")
    labels, _ = segment(image, "classical")
    s = match_scores(truth, labels)
    assert s["ap50"] > 0.5, s  # 0.59 measured; a guard against regressions, not a target
