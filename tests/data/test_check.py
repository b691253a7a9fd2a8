"""validate_case and check_dataset: one clear error per case, all problems collected per dataset."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.case import Case, CaseRef, DatasetSpec
from semiseg.data.check import check_dataset, format_report, validate_case
from semiseg.data.sources.nnunet import open_nnunet
from semiseg.data.sources.phantom import make_phantoms
from semiseg.errors import DataError

SHAPE = (6, 7, 4)


def case(image: np.ndarray | None = None, label: np.ndarray | None = None, spacing=(1.0, 1.0, 1.0)) -> Case:
    image = np.zeros((1, *SHAPE), np.float32) if image is None else image
    return Case("c", image, label, spacing)


def check(c: Case, mode: str = "multiclass", k: int = 3) -> None:
    validate_case(c, label_mode=mode, num_classes=k, origin="/data/c.nii.gz")


def test_valid_cases_pass() -> None:
    check(case(label=np.ones(SHAPE, np.int16)))
    check(case(label=np.ones((2, *SHAPE), np.uint8)), mode="multilabel", k=2)


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (case(image=np.zeros((6, 7), np.float32)), r"image has shape \(6, 7\); expected \(channels"),
        (case(image=np.full((1, *SHAPE), np.nan, np.float32)), r"168 NaN and 0 Inf"),
        (case(label=np.zeros((6, 7, 5), np.int16)), r"label shape \(6, 7, 5\) differs from image shape \(6, 7, 4\)"),
        (case(label=np.full(SHAPE, 7, np.int16)), r"label values \[7\] are outside the declared classes 0\.\.2"),
        (case(label=np.full(SHAPE, -1, np.int16)), r"label values \[-1\]"),
        (case(spacing=(1.0, 0.0, 1.0)), r"spacing \(1\.0, 0\.0, 1\.0\) is not positive"),
        (case(spacing=(1.0, 1.0)), r"has 2 entries for 3 spatial axes"),
    ],
)
def test_each_problem_names_the_origin(bad: Case, pattern: str) -> None:
    with pytest.raises(DataError, match=r"^/data/c\.nii\.gz: .*" + pattern):
        check(bad)


def test_nan_and_inf_are_counted() -> None:
    image = np.zeros((1, *SHAPE), np.float32)
    image[0, 0, 0, :2] = np.nan
    image[0, 1, 0, 0] = -np.inf
    with pytest.raises(DataError, match="2 NaN and 1 Inf"):
        check(case(image=image))


def test_multilabel_shape_and_values() -> None:
    with pytest.raises(DataError, match=r"shape \(6, 7, 4\), expected \(2, 6, 7, 4\)"):
        check(case(label=np.ones(SHAPE, np.uint8)), mode="multilabel", k=2)
    with pytest.raises(DataError, match=r"values \[2\]; channels must be 0/1"):
        check(case(label=np.full((2, *SHAPE), 2, np.uint8)), mode="multilabel", k=2)


def test_phantom_dataset_report_is_ok_and_summarised() -> None:
    spec = make_phantoms(n_cases=3, n_unlabelled=2)
    report = check_dataset(spec)
    assert report.ok
    assert (report.n_labelled, report.n_unlabelled, report.n_test) == (3, 2, 0)
    assert report.spacing_median == (1.0, 1.0) and report.size_max == (64, 64)
    assert report.intensity_min < report.intensity_max
    assert set(report.class_fraction) == {"background", "class_1", "class_2"}
    assert sum(report.class_fraction.values()) == pytest.approx(1.0)
    text = format_report(report)
    assert "3 labelled, 2 unlabelled, 0 test" in text and "No problems found." in text


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def hostile_nnunet(root: Path) -> Path:
    """Five cases: one good, then corrupt image, label value 7, NaN, missing channel."""
    (root / "labelsTr").mkdir(parents=True)
    meta = {"channel_names": {"0": "A", "1": "B"}, "labels": {"background": 0, "a": 1, "b": 2}}
    (root / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    for name in ("good", "corrupt", "seven", "nan", "nochan"):
        for ch in range(2):
            _save(root / "imagesTr" / f"{name}_{ch:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        _save(root / "labelsTr" / f"{name}.nii.gz", rng.integers(0, 3, SHAPE).astype(np.uint8))
    (root / "imagesTr" / "corrupt_0000.nii.gz").write_bytes(rng.bytes(200))
    _save(root / "labelsTr" / "seven.nii.gz", np.full(SHAPE, 7, np.uint8))
    img = rng.normal(size=SHAPE).astype(np.float32)
    img[0, 0, 0] = np.nan
    _save(root / "imagesTr" / "nan_0001.nii.gz", img)
    (root / "imagesTr" / "nochan_0001.nii.gz").unlink()
    return root


def test_check_dataset_collects_every_problem(tmp_path: Path) -> None:
    report = check_dataset(open_nnunet(hostile_nnunet(tmp_path / "ds")))
    assert not report.ok
    messages = [p.message for p in report.problems]
    assert len(messages) == 4
    expected = [r"corrupt_0000\.nii\.gz: cannot be read", r"seven\.nii\.gz: label values \[7\]",
                r"nan_0001\.nii\.gz: image contains 1 NaN", r"nochan_0001\.nii\.gz"]
    for pattern in expected:
        assert any(__import__("re").search(pattern, m) for m in messages), pattern
    assert report.n_labelled == 1  # only the good case loaded
    text = format_report(report)
    assert "4 problem(s):" in text and text.index("4 problem(s):") > text.index("cases")


def _ref(case_id: str, channels: int, dim: int = 2) -> CaseRef:
    def load() -> Case:
        return Case(case_id, np.zeros((channels,) + (8,) * dim, np.float32), None, (1.0,) * dim)

    return CaseRef(case_id, False, f"mem:{case_id}", load)


def test_cross_case_channel_dim_and_duplicate_problems() -> None:
    spec = DatasetSpec(
        name="mixed", dim=2, channels=1, label_mode="multiclass", class_names=["bg", "fg"],
        cases=[_ref("a", 1), _ref("b", 3), _ref("c", 1, dim=3)], test_cases=[_ref("a", 1)],
    )
    report = check_dataset(spec)
    text = "\n".join(f"{p.origin}: {p.message}" for p in report.problems)
    assert "mem:b: has 3 channels but the dataset declares 1" in text
    assert "mem:c: is 3D but the dataset is 2D" in text
    assert "case ids occur more than once: [a]" in text
    assert "no training case has a label" in text
    assert report.channels == {1: 3, 3: 1} and report.dims == {2: 3, 3: 1}
    assert "(found 1: 3 cases, 3: 1 cases)" in format_report(report)
