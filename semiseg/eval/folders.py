"""Scoring a folder of predictions from any tool against a folder of ground-truth labels.

Users run this on predictions they did not make with semiseg, so every way the two folders can disagree
is an error naming the file rather than a number: a label that is not integral or holds NaN, a value
outside the declared classes, a prediction on another grid (same tolerance as ``semiseg data check``,
with an ``ignore_geometry`` opt-out for headers known to be wrong). A prediction without ground truth
cannot be scored; it is reported by case name through ``on_warning`` instead of being dropped unseen.

Without class names the classes are inferred from the ground truth alone (background, then one class per
value up to the largest), so a prediction cannot add classes the truth never had. Ground truth whose values
skip most of that range (0, 1, 2 and 255) is refused rather than scored as 256 classes: 255 is usually an
ignore label, which ``ignore`` declares (its voxels leave every metric), or the user names the classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.check import geometry_mismatch, list_values, present_values
from semiseg.errors import DataError
from semiseg.eval.evaluate import score_case, summarize
from semiseg.eval.io import LabelFile, label_files, read_label

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, *, class_names: list[str] | None = None,
                     label_mode: str = "multiclass", ignore_geometry: bool = False, ignore: int | None = None,
                     on_warning: Warn | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metrics of label files in ``pred_dir`` against same-named files in ``gt_dir`` (spacing from the GT).

    ``ignore``: a ground-truth value (often 255) whose voxels are left out of every metric (multiclass).
    """
    if ignore is not None and label_mode != "multiclass":
        raise DataError(f"--ignore {ignore} marks voxels of a multiclass label map; multilabel files hold 0/1 "
                        "channels: drop --ignore")
    preds, gts = label_files(Path(pred_dir)), label_files(Path(gt_dir))
    if not gts:
        raise DataError(f"{gt_dir} holds no label files (.nii.gz, .nii, .mha, .nrrd, .png, ...)")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise DataError(f"{pred_dir} has no prediction for {list_values(missing, 5)} (ground truth in {gt_dir})")
    extra = sorted(set(preds) - set(gts))
    if extra:
        (on_warning or _warn)(f"{len(extra)} prediction(s) in {pred_dir} have no ground truth in {gt_dir} and "
                              f"were not scored: {list_values(extra, 10)}")
    pairs = {cid: (read_label(preds[cid]), read_label(gts[cid])) for cid in gts}
    for pred, gt in pairs.values():
        check_pair(pred, gt, ignore_geometry=ignore_geometry)
    if ignore is not None:
        pairs = {cid: _without_ignored(pred, gt, ignore) for cid, (pred, gt) in pairs.items()}
    inferred = not class_names
    class_names = class_names or _inferred_classes([gt for _, gt in pairs.values()], label_mode, Path(gt_dir))
    hint = (f"classes inferred from the ground truth in {gt_dir}; name every class with --classes" if inferred
            else "give every class with --classes")
    for pred, gt in pairs.values():
        for label in (gt, pred):
            check_classes(label, class_names, label_mode, hint=hint)
    rows = []
    for cid, (pred, gt) in pairs.items():
        rows += score_case(case_id=cid, checkpoint="given", pred=pred.data, probs=None, gt=gt.data,
                           spacing=gt.spacing, class_names=class_names, label_mode=label_mode)
    return rows, summarize(rows)


def check_pair(pred: LabelFile, gt: LabelFile, *, ignore_geometry: bool = False) -> None:
    """Refuse a prediction whose shape, spacing or orientation/origin differs from its ground truth."""
    if pred.data.shape != gt.data.shape:
        raise DataError(f"{pred.path} has shape {pred.data.shape} but {gt.path} has {gt.data.shape}; "
                        "predict on the ground truth's grid")
    if ignore_geometry:
        return
    diff = geometry_mismatch(pred.spacing, pred.affine, gt.spacing, gt.affine)
    if diff:
        raise DataError(f"{pred.path} and {gt.path} differ in geometry ({diff}); resample the prediction onto "
                        "the ground-truth grid, or pass --ignore-geometry if one header is known to be wrong")


def _without_ignored(pred: LabelFile, gt: LabelFile, ignore: int) -> tuple[LabelFile, LabelFile]:
    """Both maps with the ignored voxels set to background, which no metric scores (multiclass)."""
    left_out = gt.data == ignore
    return (replace(pred, data=np.where(left_out, 0, pred.data)), replace(gt, data=np.where(left_out, 0, gt.data)))


def _inferred_classes(gts: list[LabelFile], label_mode: str, gt_dir: Path) -> list[str]:
    """Background plus one class per ground-truth value up to the largest (channels for multilabel).

    At least one foreground class (an all-empty ground truth still scores a binary task); values that leave
    most of that range unused are not class indices (a 255 ignore label, a 0/255 mask saved as a volume).
    """
    if label_mode == "multilabel":
        return [f"class_{k}" for k in range(max(gt.data.shape[0] for gt in gts))]
    present = sorted({int(v) for gt in gts for v in np.unique(gt.data) if v >= 0})
    top = max(present, default=0)
    if top > 1 and 2 * len(present) < top + 1:
        holder = next(gt.path for gt in gts if (gt.data == top).any())
        raise DataError(f"{holder}: label value {top} is not a plausible class: the ground truth in {gt_dir} holds "
                        f"only the values {list_values(present)}, which would make {top + 1} classes, most never "
                        f"present; if {top} marks voxels to leave out, pass --ignore {top}, else name every class "
                        "with --classes")
    return ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)]


def check_classes(label: LabelFile, class_names: list[str], label_mode: str,
                  hint: str = "give every class with --classes") -> None:
    """Label values (multiclass) or channels (multilabel) must fit the classes being scored."""
    n = len(class_names)
    data = label.data
    if label_mode == "multilabel":
        if data.ndim < 3 or data.shape[0] != n:
            raise DataError(f"{label.path}: multilabel file has shape {data.shape}, expected {n} channels "
                            f"(one per class of {class_names}) on a 4th axis")
        if data.size and (data.min() < 0 or data.max() > 1):
            outside = [v for v in np.unique(data) if v not in (0, 1)]
            raise DataError(f"{label.path}: multilabel channels must hold 0/1 only; found {list_values(outside)}")
        return
    if data.size and (data.min() < 0 or data.max() >= n):
        values = present_values(data) if data.min() >= 0 else np.unique(data)
        outside = values[(values < 0) | (values >= n)]
        raise DataError(f"{label.path}: label values {list_values(outside)} are outside the {n} classes "
                        f"0..{n - 1} ({', '.join(class_names)}); {hint}, or pass --ignore VALUE for a "
                        "ground-truth value that marks voxels to leave out")
