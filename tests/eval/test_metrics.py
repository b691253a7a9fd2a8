"""Metrics must reproduce medpy exactly where medpy is defined, and follow our convention where not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy.ndimage import gaussian_filter

from semiseg.errors import ConfigError, DataError
from semiseg.eval import metrics as m

# medpy's private helper, reachable by its literal name at module level (no mangling outside classes).
medpy_surface_distances = getattr(mb, "__surface_distances")


def smooth_blob(shape: tuple[int, ...], seed: int, sigma: float = 3.0, level: float = 0.3) -> np.ndarray:
    """A few irregular, smooth objects: thresholded gaussian-filtered noise."""
    field = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field > level * field.std()


def medpy_all(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {
        "dice": mb.dc(pred, gt),
        "jaccard": mb.jc(pred, gt),
        "hd95": mb.hd95(pred, gt, voxelspacing=spacing, connectivity=1),
        "asd": mb.asd(pred, gt, voxelspacing=spacing, connectivity=1),
    }


def assert_matches_medpy(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> None:
    expected = medpy_all(pred, gt, spacing)
    ours = m.binary_metrics(pred, gt, spacing)
    singles = {
        "dice": m.dice(pred, gt),
        "jaccard": m.jaccard(pred, gt),
        "hd95": m.hd95(pred, gt, spacing),
        "asd": m.asd(pred, gt, spacing),
    }
    for name in m.METRIC_COLUMNS:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
        assert singles[name] == pytest.approx(expected[name], abs=1e-6), name


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.3)])
def test_2d_blobs_match_medpy(seed: int, spacing: tuple[float, float]) -> None:
    shape = (64, 80)
    pred, gt = smooth_blob(shape, seed), smooth_blob(shape, seed + 100)
    pred[:4], gt[:4] = False, False  # keep a background band so the crop actually shrinks the arrays
    assert_matches_medpy(pred, gt, spacing)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 3.0)])
def test_3d_blobs_match_medpy(seed: int, spacing: tuple[float, float, float]) -> None:
    shape = (40, 48, 32)
    pred = smooth_blob(shape, seed, level=0.8)
    gt = smooth_blob(shape, seed + 50, level=0.8)
    assert_matches_medpy(pred, gt, spacing)


def test_small_objects_in_large_volume_match_medpy() -> None:
    """The cropping path: objects far from the border, much smaller than the array."""
    spacing = (0.7, 1.3, 3.0)
    pred, gt = np.zeros((60, 60, 40), bool), np.zeros((60, 60, 40), bool)
    pred[20:30, 22:35, 10:18] = smooth_blob((10, 13, 8), 3, sigma=1.5, level=-0.5)
    gt[24:36, 18:30, 12:20] = smooth_blob((12, 12, 8), 4, sigma=1.5, level=-0.5)
    assert_matches_medpy(pred, gt, spacing)


@pytest.mark.parametrize("ndim", [2, 3])
def test_objects_touching_every_border_match_medpy(ndim: int) -> None:
    """Outside the array counts as background, so voxels on the edge are surface voxels."""
    shape = (24, 30, 18)[:ndim]
    spacing = (0.7, 1.3, 3.0)[:ndim]
    pred = smooth_blob(shape, 7, sigma=2.0, level=-1.0)
    gt = smooth_blob(shape, 8, sigma=2.0, level=-1.0)
    for axis in range(ndim):
        edge = [slice(None)] * ndim
        edge[axis] = 0
        gt[tuple(edge)] = True
        edge[axis] = -1
        pred[tuple(edge)] = True
    assert_matches_medpy(pred, gt, spacing)


def test_full_array_masks_match_medpy() -> None:
    pred = np.ones((8, 9, 10), bool)
    gt = pred.copy()
    gt[0] = False
    assert_matches_medpy(pred, gt, (0.7, 1.3, 3.0))


@pytest.mark.parametrize(
    ("pred_at", "gt_at"),
    [((0, 0, 0), (0, 0, 0)), ((0, 0, 0), (11, 13, 9)), ((5, 6, 4), (5, 7, 4)), ((11, 0, 9), (3, 13, 0))],
)
def test_single_voxel_objects_match_medpy(pred_at: tuple[int, ...], gt_at: tuple[int, ...]) -> None:
    pred, gt = np.zeros((12, 14, 10), bool), np.zeros((12, 14, 10), bool)
    pred[pred_at], gt[gt_at] = True, True
    assert_matches_medpy(pred, gt, (0.7, 1.3, 3.0))


def test_single_voxel_distance_is_anisotropic_euclidean() -> None:
    pred, gt = np.zeros((5, 5, 5), bool), np.zeros((5, 5, 5), bool)
    pred[0, 0, 0], gt[1, 2, 3] = True, True
    expected = math.sqrt(0.7**2 + (2 * 1.3) ** 2 + (3 * 3.0) ** 2)
    assert m.hd95(pred, gt, (0.7, 1.3, 3.0)) == pytest.approx(expected)
    assert m.asd(pred, gt, (0.7, 1.3, 3.0)) == pytest.approx(expected)


def test_cropped_surface_distances_equal_full_array_ones() -> None:
    """Same values in the same (C) order as medpy's uncropped computation, both directions."""
    spacing = (0.7, 1.3, 3.0)
    pred, gt = np.zeros((50, 50, 30), bool), np.zeros((50, 50, 30), bool)
    pred[10:30, 5:25, 0:12] = smooth_blob((20, 20, 12), 11, sigma=2.0, level=-0.3)
    gt[15:40, 8:30, 3:15] = smooth_blob((25, 22, 12), 12, sigma=2.0, level=-0.3)
    to_gt, to_pred = m.surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(to_gt, medpy_surface_distances(pred, gt, spacing), atol=1e-9)
    np.testing.assert_allclose(to_pred, medpy_surface_distances(gt, pred, spacing), atol=1e-9)


def test_asd_is_directed_like_medpy() -> None:
    """A 1-voxel line against a 2x2 block: 0 from the line to the block, 1 voxel back."""
    pred, gt = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    pred[0:2, 0] = True
    gt[0:2, 0:2] = True
    assert m.asd(pred, gt, (1.0, 2.0)) == 0.0
    assert m.asd(gt, pred, (1.0, 2.0)) == pytest.approx(1.0)  # half the block is 2 mm away
    assert m.hd95(pred, gt, (1.0, 2.0)) == pytest.approx(2.0)


def test_both_empty_is_a_perfect_score() -> None:
    empty = np.zeros((6, 7, 8), bool)
    perfect = {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    assert m.binary_metrics(empty, empty, (1.0, 2.0, 3.0)) == perfect


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_gets_the_image_diagonal(empty_side: str) -> None:
    spacing = (0.5, 2.0, 3.0)
    present = np.zeros((6, 7, 8), bool)
    present[2:4, 2:4, 2:4] = True
    empty = np.zeros_like(present)
    pred, gt = (empty, present) if empty_side == "pred" else (present, empty)
    diagonal = math.sqrt((6 * 0.5) ** 2 + (7 * 2.0) ** 2 + (8 * 3.0) ** 2)
    assert m.worst_distance((6, 7, 8), spacing) == pytest.approx(diagonal)
    assert m.binary_metrics(pred, gt, spacing) == pytest.approx(
        {"dice": 0.0, "jaccard": 0.0, "hd95": diagonal, "asd": diagonal}
    )
    assert m.hd95(pred, gt, spacing) == pytest.approx(diagonal)
    assert m.asd(pred, gt, spacing) == pytest.approx(diagonal)


def test_surface_distances_refuses_empty_masks() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        m.surface_distances(np.zeros((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0))


def test_mismatched_shapes_and_spacing_raise_data_errors() -> None:
    with pytest.raises(DataError, match="shape"):
        m.dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(DataError, match="spacing"):
        m.hd95(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="positive"):
        m.asd(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 0.0))


def test_metric_columns_order_is_fixed() -> None:
    assert m.METRIC_COLUMNS == ("dice", "jaccard", "hd95", "asd")
    assert tuple(m.binary_metrics(np.ones((2, 2)), np.ones((2, 2)), (1.0, 1.0))) == m.METRIC_COLUMNS


def tiny_multiclass() -> tuple[np.ndarray, np.ndarray]:
    """gt: class 1 a 2x2 block, class 2 a 2x2 block; pred: half of class 1, no class 2."""
    gt = np.zeros((4, 4), np.int64)
    gt[0:2, 0:2] = 1
    gt[2:4, 2:4] = 2
    pred = np.zeros((4, 4), np.int64)
    pred[0:2, 0] = 1
    return pred, gt


def test_case_metrics_multiclass_hand_checked() -> None:
    pred, gt = tiny_multiclass()
    rows = m.case_metrics(pred, gt, (1.0, 2.0), ["background", "lv", "rv"], "multiclass")
    assert [(r["class"], r["class_index"]) for r in rows] == [("lv", 1), ("rv", 2)]
    lv, rv = rows
    assert lv["dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert lv["jaccard"] == pytest.approx(2 / 4)
    assert lv["hd95"] == pytest.approx(2.0)  # pooled distances [0, 0, 0, 0, 2, 2]
    assert lv["asd"] == 0.0
    assert (lv["gt_empty"], lv["pred_empty"]) == (False, False)
    assert rv["dice"] == 0.0 and rv["jaccard"] == 0.0
    assert rv["hd95"] == pytest.approx(math.sqrt(4.0**2 + 8.0**2))
    assert rv["asd"] == pytest.approx(math.sqrt(4.0**2 + 8.0**2))
    assert (rv["gt_empty"], rv["pred_empty"]) == (False, True)


def test_case_metrics_multiclass_include_background() -> None:
    pred, gt = tiny_multiclass()
    rows = m.case_metrics(pred, gt, (1.0, 2.0), ["bg", "lv", "rv"], "multiclass", include_background=True)
    assert [r["class_index"] for r in rows] == [0, 1, 2]
    # background: gt has 8 voxels, pred 14, all 8 shared.
    assert rows[0]["dice"] == pytest.approx(2 * 8 / (8 + 14))
    assert set(rows[0]) == {"class", "class_index", *m.METRIC_COLUMNS, "gt_empty", "pred_empty"}


def test_case_metrics_multilabel_overlapping_channels() -> None:
    gt = np.zeros((3, 4, 4), np.uint8)
    gt[0, 0:3, 0:3] = 1  # whole tumour
    gt[1, 1, 1] = 1  # core, inside the whole tumour
    pred = gt.copy()
    pred[1] = 0  # core missed
    # channel 2 absent from both
    rows = m.case_metrics(pred, gt, (1.0, 1.0), ["whole", "core", "enhancing"], "multilabel")
    assert [r["class"] for r in rows] == ["whole", "core", "enhancing"]
    whole, core, enhancing = rows
    assert whole == {**whole, "dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    assert core["dice"] == 0.0 and core["hd95"] == pytest.approx(math.sqrt(32.0))
    assert (core["gt_empty"], core["pred_empty"]) == (False, True)
    assert enhancing == {**enhancing, "dice": 1.0, "hd95": 0.0, "gt_empty": True, "pred_empty": True}


def test_case_metrics_rejects_bad_labels() -> None:
    pred, gt = tiny_multiclass()
    with pytest.raises(DataError, match="outside"):
        m.case_metrics(pred + 2, gt, (1.0, 1.0), ["bg", "lv", "rv"], "multiclass")
    with pytest.raises(DataError, match="multilabel"):
        m.case_metrics(pred, gt, (1.0, 1.0), ["bg", "lv", "rv"], "multilabel")
    with pytest.raises(DataError, match="shape"):
        m.case_metrics(pred[:3], gt, (1.0, 1.0), ["bg", "lv", "rv"], "multiclass")
    with pytest.raises(ConfigError):
        m.case_metrics(pred, gt, (1.0, 1.0), ["bg", "lv", "rv"], "binary")


def test_brier_score_hand_computed() -> None:
    probs = np.array([[0.8, 0.3], [0.2, 0.7]])
    onehot = np.array([[1, 1], [0, 0]])
    assert m.brier_score(probs, onehot) == pytest.approx((0.08 + 0.98) / 2)
    assert m.brier_score(onehot, onehot) == 0.0


def test_ece_multiclass_hand_computed() -> None:
    probs = np.array([[0.85, 0.35], [0.15, 0.65]])
    onehot = np.array([[1, 1], [0, 0]])
    # voxel 0: conf 0.85, right; voxel 1: conf 0.65, wrong; different bins with 10 bins.
    assert m.expected_calibration_error(probs, onehot, n_bins=10) == pytest.approx(0.5 * 0.15 + 0.5 * 0.65)
    # one bin: |mean accuracy - mean confidence| = |0.5 - 0.75|
    assert m.expected_calibration_error(probs, onehot, n_bins=1) == pytest.approx(0.25)


def test_ece_multilabel_hand_computed() -> None:
    probs = np.array([[0.9, 0.4]])
    onehot = np.array([[1, 1]])
    # voxel 0: predicts 1 with conf 0.9, right; voxel 1: predicts 0 with conf 0.6, wrong.
    ece = m.expected_calibration_error(probs, onehot, n_bins=10, label_mode="multilabel")
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert m.brier_score(probs, onehot) == pytest.approx((0.01 + 0.36) / 2)


def test_ece_matches_a_loop_over_bins() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 9, 11))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    labels = rng.integers(0, 4, (9, 11))
    onehot = (labels[None] == np.arange(4)[:, None, None]).astype(float)
    conf, correct = probs.max(0).ravel(), (probs.argmax(0) == labels).ravel()
    expected = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert m.expected_calibration_error(probs, onehot) == pytest.approx(expected)
    assert m.expected_calibration_error(onehot, onehot) == pytest.approx(0.0)


def test_foreground_dice_scores_each_class_and_an_absent_one_as_one():
    label = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    pred = np.array([[1, 0, 0, 0], [0, 0, 0, 0]])
    assert m.foreground_dice(pred, label, "multiclass", 3) == pytest.approx([2 / 3, 1.0])  # class 2 absent from both
    assert m.mean_foreground_dice(pred, label, "multiclass", 3) == pytest.approx(5 / 6)
    wrong = np.array([[0, 0, 2, 2], [0, 0, 0, 0]])
    assert m.foreground_dice(wrong, label, "multiclass", 3) == [0.0, 0.0]
    channels = np.stack([label > 0, pred > 0])  # multilabel: channels first
    assert m.foreground_dice(channels, np.stack([label > 0, label > 0]), "multilabel", 2) == pytest.approx([1.0, 2 / 3])
