"""SSL4MIS h5 layouts: ACDC lists, slice stacking, axis order; LA; hostile files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from semiseg.data.sources.h5 import open_acdc, open_la
from semiseg.errors import ConfigError, DataError

D, H, W = 4, 10, 12


def save_h5(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) image and label, as SSL4MIS stores ACDC volumes."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(D, H, W)).astype(np.float32), rng.integers(0, 4, (D, H, W)).astype(np.uint8)


def make_acdc(root: Path) -> Path:
    """Training cases only as slices; val/test as volumes; one extra slice-only case in train.list."""
    for case, seed in (("patient001_frame01", 1), ("patient002_frame01", 2)):
        image, label = volume(seed)
        for i in range(D):
            save_h5(root / "data" / "slices" / f"{case}_slice_{i}.h5", image=image[i], label=label[i])
    for case, seed in (("patient003_frame01", 3), ("patient004_frame01", 4)):
        image, label = volume(seed)
        save_h5(root / "data" / f"{case}.h5", image=image, label=label)
    slices = [f"patient00{p}_frame01_slice_{i}" for p in (1, 2) for i in range(D)]
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("patient003_frame01.h5\n")
    (root / "test.list").write_text("patient004_frame01\n\n")
    return root


def test_acdc_lists_give_cases_and_fixed_split(tmp_path: Path) -> None:
    spec = open_acdc(make_acdc(tmp_path / "acdc"))
    assert spec.class_names == ["background", "RV", "Myo", "LV"]
    assert (spec.dim, spec.channels, spec.label_mode) == (3, 1, "multiclass")
    assert [r.case_id for r in spec.cases] == ["patient001_frame01", "patient002_frame01", "patient003_frame01"]
    assert [r.case_id for r in spec.test_cases] == ["patient004_frame01"]
    assert spec.fixed_split == {
        "train": ["patient001_frame01", "patient002_frame01"],
        "val": ["patient003_frame01"],
        "test": ["patient004_frame01"],
    }


def test_acdc_volumes_are_transposed_slice_axis_last(tmp_path: Path) -> None:
    spec = open_acdc(make_acdc(tmp_path / "acdc"))
    case = spec.cases[2].load()  # patient003, read from data/{case}.h5
    image, label = volume(3)
    assert case.image.shape == (1, H, W, D) and case.label.shape == (H, W, D)
    np.testing.assert_allclose(case.image[0, :, :, 1], image[1])
    np.testing.assert_array_equal(case.label[:, :, 2], label[2])
    assert case.meta["spacing_known"] is False and case.spacing == (1.0, 1.0, 1.0)


def test_acdc_training_case_is_stacked_from_slices(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    for i in range(D, 12):  # slices sort numerically: slice_10 comes after slice_9, not after slice_1
        save_h5(root / "data" / "slices" / f"patient001_frame01_slice_{i}.h5",
                image=np.full((H, W), float(i), np.float32), label=np.zeros((H, W), np.uint8))
    case = open_acdc(root, spacing=(1.5, 1.5, 8.0)).cases[0].load()
    image, label = volume(1)
    assert case.image.shape == (1, H, W, 12)
    np.testing.assert_allclose(case.image[0, :, :, 1], image[1])
    np.testing.assert_allclose(case.image[0, :, :, 3], image[3])
    np.testing.assert_array_equal(case.label[:, :, :D], label.transpose(1, 2, 0))
    assert [case.image[0, 0, 0, i] for i in (4, 10, 11)] == [4.0, 10.0, 11.0]
    assert case.spacing == (1.5, 1.5, 8.0) and case.meta["spacing_known"] is True


def test_acdc_without_lists_uses_every_volume(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    for name in ("train_slices.list", "val.list", "test.list"):
        (root / name).unlink()
    spec = open_acdc(root)
    assert spec.fixed_split is None and len(spec.cases) == 4 and not spec.test_cases


def test_acdc_missing_slice_is_reported(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    (root / "data" / "slices" / "patient002_frame01_slice_1.h5").unlink()
    with pytest.raises(DataError, match=r"patient002_frame01_slice_\*\.h5: slices \[1\] are missing"):
        open_acdc(root).cases[1].load()


def test_acdc_missing_key_and_corrupt_file(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    save_h5(root / "data" / "patient003_frame01.h5", image=volume(3)[0])
    spec = open_acdc(root)
    with pytest.raises(DataError, match=r"patient003_frame01\.h5: has no dataset 'label' \(found \['image'\]\)"):
        spec.cases[2].load()
    (root / "data" / "patient004_frame01.h5").write_bytes(b"\x00garbage" * 40)
    with pytest.raises(DataError, match=r"patient004_frame01\.h5: cannot be read as HDF5"):
        spec.test_cases[0].load()


def test_acdc_label_out_of_range_and_overlapping_lists(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    image, label = volume(3)
    label[0, 0, 0] = 7
    save_h5(root / "data" / "patient003_frame01.h5", image=image, label=label)
    with pytest.raises(DataError, match=r"patient003_frame01\.h5: label values \[7\]"):
        open_acdc(root).cases[2].load()
    (root / "test.list").write_text("patient003_frame01\n")
    with pytest.raises(DataError, match="both the val and test list files"):
        open_acdc(root)


def test_acdc_missing_data_folder_and_bad_spacing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data: folder not found"):
        open_acdc(tmp_path)
    with pytest.raises(ConfigError, match="spacing"):
        open_acdc(make_acdc(tmp_path / "acdc"), spacing=(1.0, 0.0, 1.0))


# --------------------------------------------------------------------------------------------------
# LA


def make_la(root: Path, names: tuple[str, ...] = ("A1", "B2", "C3")) -> Path:
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        save_h5(root / name / "mri_norm2.h5", image=rng.normal(size=(W, H, D)).astype(np.float32),
                label=rng.integers(0, 2, (W, H, D)).astype(np.uint8))
    return root


def test_la_loads_with_lists_and_spacing(tmp_path: Path) -> None:
    root = make_la(tmp_path / "la")
    (root / "train.list").write_text("A1\nB2\n")
    (root / "test.list").write_text("C3\n")
    spec = open_la(root)
    assert spec.class_names == ["background", "left atrium"]
    assert [r.case_id for r in spec.cases] == ["A1", "B2"] and [r.case_id for r in spec.test_cases] == ["C3"]
    assert spec.fixed_split == {"train": ["A1", "B2"], "test": ["C3"]}
    case = spec.cases[1].load()
    assert case.image.shape == (1, W, H, D) and case.label.shape == (W, H, D)
    assert case.spacing == (0.625, 0.625, 0.625)
    np.testing.assert_allclose(case.image[0], np.random.default_rng(1).normal(size=(W, H, D)).astype(np.float32))


def test_la_without_lists_and_empty(tmp_path: Path) -> None:
    spec = open_la(make_la(tmp_path / "la"))
    assert spec.fixed_split is None and [r.case_id for r in spec.cases] == ["A1", "B2", "C3"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no cases found matching \*/mri_norm2\.h5"):
        open_la(tmp_path / "empty")


def test_la_listed_case_missing_on_disk(tmp_path: Path) -> None:
    root = make_la(tmp_path / "la")
    (root / "train.list").write_text("A1\nZZ\n")
    with pytest.raises(DataError, match=r"ZZ/mri_norm2\.h5: file not found"):
        open_la(root).cases[1].load()
