"""Prediction files: every format training reads can be predicted on, and predictions keep the geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.io import read_volume, write_png
from semiseg.errors import DataError
from semiseg.eval.io import label_files, read_inputs, read_label_file, write_label, write_probabilities

sitk = pytest.importorskip("SimpleITK")

SHAPE = (6, 5, 4)  # x, y, z


def _affine() -> np.ndarray:
    affine = np.diag([-0.9, -1.1, 2.0, 1.0])  # identity ITK direction, seen in RAS
    affine[:3, 3] = (4.0, -8.0, 1.5)
    return affine


def _array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _write_sitk(path: Path, xyz: np.ndarray) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    image.SetSpacing((0.9, 1.1, 2.0))
    image.SetOrigin((-4.0, 8.0, 1.5))  # LPS of the RAS origin in _affine()
    sitk.WriteImage(image, str(path))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """One case per format training reads, plus files predict must ignore."""
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(_array(0), _affine()), str(folder / "a.nii.gz"))
    _write_sitk(folder / "b.mha", _array(1))
    _write_sitk(folder / "c.nrrd", _array(2))
    _write_sitk(folder / "d.mhd", _array(3))  # writes d.raw beside it, which is not a case
    write_png(folder / "e.png", np.arange(35, dtype=np.uint8).reshape(5, 7))
    (folder / "notes.txt").write_text("ignored")
    (folder / ".f.nii.gz.123.tmp.nii.gz").write_bytes(b"half-written")
    return folder


def test_every_training_format_is_read_with_its_geometry(inputs: Path) -> None:
    cases = {c.case_id: c for c in read_inputs(inputs, channels=1)}
    assert sorted(cases) == ["a", "b", "c", "d", "e"]
    for cid, seed in zip("abcd", range(4), strict=True):
        np.testing.assert_allclose(cases[cid].image[0], _array(seed))
        np.testing.assert_allclose(cases[cid].affine, _affine(), atol=1e-6)
        np.testing.assert_allclose(cases[cid].spacing, (0.9, 1.1, 2.0), rtol=1e-6)
    assert cases["e"].image.shape == (1, 5, 7) and cases["e"].affine is None


def test_predictions_keep_the_input_format_and_grid(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = {}
    for case in read_inputs(inputs, channels=1):
        label = (case.image[0] > 0).astype(np.uint8)
        written[case.case_id] = write_label(case, label, out)
    assert {k: p.name for k, p in written.items()} == {
        "a": "a.nii.gz", "b": "b.mha", "c": "c.nrrd", "d": "d.mha", "e": "e.png"
    }
    for cid, seed in zip("abcd", range(4), strict=True):
        vol = read_volume(written[cid], as_label=True)
        np.testing.assert_array_equal(vol.data, _array(seed) > 0)
        np.testing.assert_allclose(vol.affine, _affine(), atol=1e-6)
    assert sorted(label_files(out)) == ["a", "b", "c", "d", "e"]


def test_multilabel_and_probabilities_round_trip_channels_first(inputs: Path, tmp_path: Path) -> None:
    case = next(c for c in read_inputs(inputs, channels=1) if c.case_id == "b")
    multilabel = np.stack([case.image[0] > 0, case.image[0] > 1]).astype(np.uint8)
    path = write_label(case, multilabel, tmp_path)
    label, spacing = read_label_file(path)
    np.testing.assert_array_equal(label, multilabel)
    np.testing.assert_allclose(spacing, (0.9, 1.1, 2.0))
    probs = np.stack([np.full(SHAPE, 0.25), np.full(SHAPE, 0.75)]).astype(np.float32)
    probs_path = write_probabilities(case, probs, tmp_path)
    assert probs_path.name == "b_probs.mha" and sorted(label_files(tmp_path)) == ["b"]
    np.testing.assert_allclose(np.moveaxis(read_volume(probs_path).data, -1, 0), probs)


def test_channels_from_nnunet_names_and_from_a_4th_axis(tmp_path: Path) -> None:
    for ch in range(2):
        _write_sitk(tmp_path / f"m_{ch:04d}.mha", _array(ch))
    nib.save(nib.Nifti1Image(np.stack([_array(0), _array(1)], axis=-1), _affine()), str(tmp_path / "n.nii.gz"))
    cases = {c.case_id: c for c in read_inputs(tmp_path, channels=2)}
    for case in cases.values():
        np.testing.assert_allclose(case.image, np.stack([_array(0), _array(1)]))
    with pytest.raises(DataError, match="expects 3"):
        read_inputs(tmp_path, channels=3)


def test_label_folders_of_every_format_are_scored_alike(tmp_path: Path) -> None:
    label = (_array(0) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, _affine()), str(tmp_path / "a.nii.gz"))
    _write_sitk(tmp_path / "b.nrrd", label)
    for path in label_files(tmp_path).values():
        data, spacing = read_label_file(path)
        np.testing.assert_array_equal(data, label)
        np.testing.assert_allclose(spacing, (0.9, 1.1, 2.0), rtol=1e-6)


def test_no_readable_file_lists_the_endings(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"\.mha.*\.png"):
        read_inputs(tmp_path, channels=1)
