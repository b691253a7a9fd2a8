"""Per-case, per-class segmentation metrics, with distances in millimetres.

Overlap metrics (Dice, Jaccard) and surface-distance metrics (HD95, ASD) follow the definitions of
``medpy.metric.binary`` (``dc``, ``jc``, ``hd95``, ``asd`` with ``connectivity=1``) so that numbers
are comparable with the literature:

* the *surface* of a mask is ``mask XOR erosion(mask)`` with the face-connected (cross) structuring
  element and everything outside the array counted as background;
* HD95 is the 95th percentile of the pooled distances from each surface voxel of the prediction to
  the ground-truth surface and from each ground-truth surface voxel to the prediction surface;
* ASD is the mean distance from the prediction surface to the ground-truth surface only (it is
  *not* symmetric, exactly as in medpy).

They are computed faster than medpy because both masks are cropped to the bounding box of their
union (plus one background voxel on every side, so the erosion sees the same zero border), and each
surface and each distance transform is computed once and shared by HD95 and ASD.

Empty-mask convention (medpy raises on empty masks; these functions never do):

* prediction and ground truth both empty: Dice = 1, Jaccard = 1, HD95 = 0, ASD = 0 (a correctly
  predicted absence is a perfect result);
* exactly one of them empty: Dice = 0, Jaccard = 0, and HD95 = ASD = the diagonal of the image
  extent in millimetres, ``sqrt(sum((shape_i * spacing_i) ** 2))``, the worst distance possible in
  that image, so a missed (or hallucinated) structure is penalised instead of silently dropped from
  the average.

Calibration metrics (Brier score, ECE) take probability maps with the class axis first, the same
``(K, *spatial)`` layout as :func:`semiseg.data.case.label_to_onehot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from semiseg.data.case import LabelMode, label_to_onehot
from semiseg.errors import ConfigError, DataError

METRIC_COLUMNS = ("dice", "jaccard", "hd95", "asd")
LABEL_MODES = ("multiclass", "multilabel")


def _check_pair(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return both masks as bool, refusing shape or spacing mismatches that would give wrong numbers."""
    pred, gt = np.asarray(pred).astype(bool, copy=False), np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    if len(spacing) != pred.ndim:
        raise DataError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred.ndim}D mask")
    if any(s <= 0 for s in spacing):
        raise DataError(f"spacing {tuple(spacing)} must be positive millimetres per axis")
    return pred, gt


def worst_distance(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the image extent in mm: the distance reported when one mask is empty."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _overlap(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Counts (|P & G|, |P|, |G|) from which both Dice and Jaccard follow."""
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)), int(np.count_nonzero(gt))


def foreground_overlaps(pred: Any, label: Any, label_mode: str, num_classes: int) -> list[tuple[int, int]]:
    """(|P & G|, |P| + |G|) of every foreground class of two label maps, NumPy arrays or torch tensors alike.

    Multiclass maps hold class indices; multilabel ones are channels-first ``(K, …)``. The training loop's
    validation Dice and the teaching diagnostics both count overlaps here and differ only in absent classes.
    """
    classes = range(1, num_classes) if label_mode == "multiclass" else range(num_classes)
    counts = []
    for k in classes:
        p = pred == k if label_mode == "multiclass" else pred[k] > 0
        g = label == k if label_mode == "multiclass" else label[k] > 0
        counts.append((int((p & g).sum()), int(p.sum() + g.sum())))
    return counts


def foreground_dice(pred: Any, label: Any, label_mode: str, num_classes: int) -> list[float]:
    """Dice of each foreground class; a class absent from both counts as 1 (fast: validation, the gate)."""
    return [1.0 if size == 0 else 2.0 * inter / size
            for inter, size in foreground_overlaps(pred, label, label_mode, num_classes)]


def mean_foreground_dice(pred: Any, label: Any, label_mode: str, num_classes: int) -> float:
    """Mean of ``foreground_dice`` over the foreground classes."""
    return float(np.mean(foreground_dice(pred, label, label_mode, num_classes)))


def _dice_from(inter: int, n_pred: int, n_gt: int) -> float:
    return 1.0 if n_pred + n_gt == 0 else 2.0 * inter / (n_pred + n_gt)


def _jaccard_from(inter: int, n_pred: int, n_gt: int) -> float:
    union = n_pred + n_gt - inter
    return 1.0 if union == 0 else inter / union


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P & G| / (|P| + |G|); 1 when both masks are empty."""
    pred, gt = _check_pair(pred, gt, (1.0,) * np.ndim(pred))
    return _dice_from(*_overlap(pred, gt))


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index |P & G| / |P | G|; 1 when both masks are empty."""
    pred, gt = _check_pair(pred, gt, (1.0,) * np.ndim(pred))
    return _jaccard_from(*_overlap(pred, gt))


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box plus one voxel, zero-padding at the array edge.

    Every surface voxel lies inside the box, so distances between surfaces are unchanged. The
    one-voxel background rim (padded where the box meets the array edge) makes the surface
    independent of how the erosion treats the array border: outside always counts as background.
    """
    union = pred | gt
    slices, pads = [], []
    for axis, n in enumerate(union.shape):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(np.any(union, axis=others))
        lo, hi = int(hits[0]), int(hits[-1])
        slices.append(slice(max(lo - 1, 0), min(hi + 2, n)))
        pads.append((int(lo == 0), int(hi == n - 1)))
    box = tuple(slices)
    return np.pad(pred[box], pads), np.pad(gt[box], pads)


def _surface(mask: np.ndarray) -> np.ndarray:
    """One-voxel-thick border of a mask (medpy's definition, face connectivity)."""
    structure = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> gt surface, gt surface -> pred surface).

    Both masks must be non-empty; the public metrics handle empty masks by the module convention.
    """
    pred, gt = _check_pair(pred, gt, spacing)
    if not pred.any() or not gt.any():
        raise ValueError("surface_distances needs two non-empty masks")
    pred, gt = _crop_to_union(pred, gt)
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    sampling = np.asarray(spacing, dtype=np.float64)
    to_gt = distance_transform_edt(~gt_surface, sampling=sampling)[pred_surface]
    to_pred = distance_transform_edt(~pred_surface, sampling=sampling)[gt_surface]
    return to_gt, to_pred


def _distance_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD95, ASD) sharing one pair of distance transforms, with the empty-mask convention."""
    pred_any, gt_any = bool(pred.any()), bool(gt.any())
    if not pred_any and not gt_any:
        return 0.0, 0.0
    if not pred_any or not gt_any:
        worst = worst_distance(pred.shape, spacing)
        return worst, worst
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.concatenate((to_gt, to_pred)), 95)), float(to_gt.mean())


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the pooled symmetric surface distances, in mm."""
    pred, gt = _check_pair(pred, gt, spacing)
    return _distance_metrics(pred, gt, spacing)[0]


def asd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Mean distance from the prediction surface to the ground-truth surface, in mm (directed)."""
    pred, gt = _check_pair(pred, gt, spacing)
    return _distance_metrics(pred, gt, spacing)[1]


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All of ``METRIC_COLUMNS`` for one binary mask pair, computing the surfaces only once."""
    pred, gt = _check_pair(pred, gt, spacing)
    counts = _overlap(pred, gt)
    hd, mean_sd = _distance_metrics(pred, gt, spacing)
    return {"dice": _dice_from(*counts), "jaccard": _jaccard_from(*counts), "hd95": hd, "asd": mean_sd}


def _to_onehot(label: np.ndarray, label_mode: LabelMode, num_classes: int, what: str) -> np.ndarray:
    """Check a label array against its declared layout before converting it to (K, *spatial)."""
    label = np.asarray(label)
    if label_mode == "multilabel" and (label.ndim < 1 or label.shape[0] != num_classes):
        raise DataError(f"{what} has shape {label.shape}; multilabel needs ({num_classes}, *spatial)")
    if label_mode == "multiclass" and label.size and (label.min() < 0 or label.max() >= num_classes):
        raise DataError(
            f"{what} has values {label.min()}..{label.max()}, outside 0..{num_classes - 1} of the class list"
        )
    return label_to_onehot(label, label_mode, num_classes)


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    class_names: list[str],
    label_mode: str,
    include_background: bool = False,
) -> list[dict]:
    """One row per evaluated class of one case: the metrics plus which masks were empty.

    The emptiness flags let a report tell a missed structure (gt present, pred empty) apart from a
    genuinely absent one. Multiclass background (class 0) is skipped unless ``include_background``.
    """
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode {label_mode!r} is not one of {LABEL_MODES}")
    num_classes = len(class_names)
    pred_1h = _to_onehot(pred, label_mode, num_classes, "prediction")
    gt_1h = _to_onehot(gt, label_mode, num_classes, "ground truth")
    if pred_1h.shape != gt_1h.shape:
        raise DataError(f"prediction shape {np.shape(pred)} does not match ground-truth shape {np.shape(gt)}")
    first = 1 if label_mode == "multiclass" and not include_background else 0
    rows = []
    for index in range(first, num_classes):
        p, g = pred_1h[index].astype(bool), gt_1h[index].astype(bool)
        row = {"class": class_names[index], "class_index": index, **binary_metrics(p, g, spacing)}
        row.update(gt_empty=not g.any(), pred_empty=not p.any())
        rows.append(row)
    return rows


def _check_probs(probs: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, onehot = np.asarray(probs, dtype=np.float64), np.asarray(onehot, dtype=np.float64)
    if probs.shape != onehot.shape or probs.ndim < 2:
        raise DataError(
            f"probabilities {probs.shape} and one-hot labels {onehot.shape} must both be (K, *spatial)"
        )
    return probs, onehot


def brier_score(probs: np.ndarray, onehot: np.ndarray) -> float:
    """Brier score ``mean_voxels sum_k (p_k - y_k)^2`` for ``(K, *spatial)`` arrays.

    Summing over classes (rather than averaging) keeps the classic multiclass definition, whose
    range is [0, 2] for one-hot targets.
    """
    probs, onehot = _check_probs(probs, onehot)
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=0)))


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """``sum_b (n_b / N) |acc_b - conf_b|`` over equal-width bins ``((b-1)/n, b/n]`` (0 goes to bin 1)."""
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / confidence.size)


def expected_calibration_error(
    probs: np.ndarray, onehot: np.ndarray, n_bins: int = 15, label_mode: LabelMode = "multiclass"
) -> float:
    """Expected calibration error ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over ``n_bins`` bins.

    Multiclass: one prediction per voxel, confidence ``max_k p_k`` and accuracy
    ``argmax_k p_k == argmax_k y_k``. Multilabel: every (channel, voxel) is a binary prediction
    ``p >= 0.5`` with confidence ``max(p, 1 - p)``, correct when it equals ``y >= 0.5``.
    """
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode {label_mode!r} is not one of {LABEL_MODES}")
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, got {n_bins}")
    probs, onehot = _check_probs(probs, onehot)
    if label_mode == "multiclass":
        confidence = probs.max(axis=0)
        correct = probs.argmax(axis=0) == onehot.argmax(axis=0)
    else:
        confidence = np.maximum(probs, 1.0 - probs)
        correct = (probs >= 0.5) == (onehot >= 0.5)
    return _binned_gap(confidence.ravel(), correct.ravel(), n_bins)
