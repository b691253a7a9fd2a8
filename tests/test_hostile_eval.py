"""``semiseg evaluate --pred --gt`` on hostile folders: one ``error:`` line naming the file, or a named warning.

Each case writes a prediction folder and a ground-truth folder that agree except for one thing, runs the
CLI, and checks exit status 2, a single ``error:`` line naming the offending file(s), no traceback, and
that no file the user wrote was changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg import cli

SHAPE = (12, 10, 8)


def _label(seed: int = 0) -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2 + seed: 8, 3:7, 2:6] = 1
    label[8:10, 3:7, 2:6] = 2
    return label


def _affine(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), flip: bool = False) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    if flip:
        affine[0, 0] = -affine[0, 0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), str(path))


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases, prediction equal to the ground truth: a clean evaluation."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for case in ("a", "b"):
        _save(gt / f"{case}.nii.gz", _label())
        _save(pred / f"{case}.nii.gz", _label())
    return pred, gt


def _float_gt(pred: Path, gt: Path) -> list[str]:
    _save(gt / "a.nii.gz", _label().astype(np.float32) * 0.4)
    return ["a.nii.gz"]


def _nan_gt(pred: Path, gt: Path) -> list[str]:
    data = _label().astype(np.float32)
    data[0, 0, 0] = np.nan
    _save(gt / "b.nii.gz", data)
    return [str(gt / "b.nii.gz")]


def _gt_outside_classes(pred: Path, gt: Path) -> list[str]:
    data = _label()
    data[0, 0, 0] = 7
    _save(gt / "a.nii.gz", data)
    return [str(gt / "a.nii.gz")]


def _pred_outside_classes(pred: Path, gt: Path) -> list[str]:
    data = _label()
    data[0, 0, 0] = 5
    _save(pred / "b.nii.gz", data)
    return [str(pred / "b.nii.gz")]


def _pred_at_wrong_spacing(pred: Path, gt: Path) -> list[str]:
    _save(pred / "a.nii.gz", _label(), _affine(spacing=(2.0, 2.0, 4.0)))
    return [str(pred / "a.nii.gz"), str(gt / "a.nii.gz")]


def _pred_at_wrong_origin(pred: Path, gt: Path) -> list[str]:
    _save(pred / "b.nii.gz", _label(), _affine(origin=(30.0, 0.0, 0.0)))
    return [str(pred / "b.nii.gz"), str(gt / "b.nii.gz")]


def _pred_flipped(pred: Path, gt: Path) -> list[str]:
    _save(pred / "a.nii.gz", _label(), _affine(flip=True))
    return [str(pred / "a.nii.gz"), str(gt / "a.nii.gz")]


def _pred_missing(pred: Path, gt: Path) -> list[str]:
    (pred / "b.nii.gz").unlink()
    return [str(pred), "b"]


def _pred_other_shape(pred: Path, gt: Path) -> list[str]:
    _save(pred / "a.nii.gz", _label()[:, :, :4])
    return [str(pred / "a.nii.gz"), str(gt / "a.nii.gz")]


def _corrupt_gt(pred: Path, gt: Path) -> list[str]:
    (gt / "a.nii.gz").write_bytes(b"not a nifti file")
    return [str(gt / "a.nii.gz")]


def _gt_folder_empty(pred: Path, gt: Path) -> list[str]:
    for file in gt.iterdir():
        file.rename(gt / f"{file.name}.txt")
    return [str(gt)]


def _multilabel_gt_not_binary(pred: Path, gt: Path) -> list[str]:
    for folder in (pred, gt):
        for case in ("a", "b"):
            _save(folder / f"{case}.nii.gz", np.stack([_label() == 1, _label() == 2], axis=-1).astype(np.uint8))
    _save(gt / "b.nii.gz", np.stack([_label(), _label()], axis=-1))
    return [str(gt / "b.nii.gz")]


HOSTILE: dict[str, tuple[Callable[[Path, Path], list[str]], list[str]]] = {
    "float ground truth (0.4)": (_float_gt, []),
    "NaN in ground truth": (_nan_gt, []),
    "ground-truth value outside --classes": (_gt_outside_classes, ["--classes", "bg,one,two"]),
    "prediction value outside --classes": (_pred_outside_classes, ["--classes", "bg,one,two"]),
    "prediction at another spacing": (_pred_at_wrong_spacing, []),
    "prediction at another origin": (_pred_at_wrong_origin, []),
    "prediction with a flipped axis": (_pred_flipped, []),
    "ground truth without a prediction": (_pred_missing, []),
    "prediction of another shape": (_pred_other_shape, []),
    "corrupt ground-truth file": (_corrupt_gt, []),
    "ground-truth folder without label files": (_gt_folder_empty, []),
    "multilabel ground truth with a value 2": (_multilabel_gt_not_binary, ["--label-mode", "multilabel"]),
}


def _digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_evaluation_is_one_error_naming_the_file(tmp_path, capsys, name):
    spoil, options = HOSTILE[name]
    pred, gt = _folders(tmp_path)
    named = spoil(pred, gt)
    before = _digests(tmp_path)
    status = cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), *options])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    assert all(part in lines[0] for part in named), (named, lines[0])
    assert _digests(tmp_path) == before


def test_prediction_without_ground_truth_is_named_and_repeated_under_the_table(tmp_path, capsys):
    pred, gt = _folders(tmp_path)
    _save(pred / "stray.nii.gz", _label())
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 0
    out, err = capsys.readouterr()
    assert "stray" in err and "warning:" in err
    assert out.rstrip().splitlines()[-1].startswith("warning:") and "stray" in out


def test_ignore_geometry_scores_a_prediction_on_another_grid(tmp_path, capsys):
    pred, gt = _folders(tmp_path)
    _pred_at_wrong_spacing(pred, gt)
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--ignore-geometry"]) == 0
    assert "1.000 ± 0.000" in capsys.readouterr().out


def test_prediction_within_the_data_check_tolerance_is_scored(tmp_path, capsys):
    pred, gt = _folders(tmp_path)
    _save(pred / "a.nii.gz", _label(), _affine(spacing=(1.0, 1.0, 2.0005)))  # 2.5e-4 relative: header rounding
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 0
