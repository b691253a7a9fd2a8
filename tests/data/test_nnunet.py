"""nnU-Net v2 / Decathlon v1 folders: correct loading and one clear DataError per hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.io import volume
from semiseg.data.sources import detect_source, open_dataset
from semiseg.data.sources.nnunet import open_nnunet
from semiseg.errors import DataError

SHAPE = (8, 9, 5)
SPACING = (0.8, 0.9, 2.5)


def affine_for(spacing: tuple[float, ...] = SPACING, origin: tuple[float, ...] = (10.0, -4.0, 3.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine_for() if affine is None else affine), str(path))
    return path


def label_array(seed: int, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    return np.random.default_rng(seed).choice(values, size=SHAPE).astype(np.uint8)


def image_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def make_v2(
    root: Path,
    *,
    labelled: tuple[str, ...] = ("c1", "c2"),
    unlabelled: tuple[str, ...] = (),
    channels: int = 2,
    labels: dict | None = None,
    ending: str = ".nii.gz",
) -> Path:
    """A v2 folder with ``labelled`` cases, extra label-less cases in imagesTr, and labelsTr."""
    meta = {
        "channel_names": {str(i): f"mod{i}" for i in range(channels)},
        "labels": labels or {"WM": 2, "background": 0, "GM": 1},
        "file_ending": ending,
        "name": "toy",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "labelsTr").mkdir(exist_ok=True)
    (root / "imagesTr").mkdir(exist_ok=True)
    for i, case in enumerate((*labelled, *unlabelled)):
        for ch in range(channels):
            save_nifti(root / "imagesTr" / f"{case}_{ch:04d}{ending}", image_array(10 * i + ch))
        if case in labelled:
            save_nifti(root / "labelsTr" / f"{case}{ending}", label_array(i))
    return root


# --------------------------------------------------------------------------------------------------
# correct loading


def test_v2_loads_channels_spacing_affine_and_classes(tmp_path: Path) -> None:
    spec = open_nnunet(make_v2(tmp_path / "ds"))
    assert (spec.name, spec.dim, spec.channels, spec.label_mode) == ("toy", 3, 2, "multiclass")
    assert spec.class_names == ["background", "GM", "WM"]  # ordered by label value
    case = spec.cases[0].load()
    assert case.case_id == "c1"
    assert case.image.shape == (2, *SHAPE) and case.image.dtype == np.float32
    np.testing.assert_allclose(case.image[1], image_array(1))
    np.testing.assert_allclose(case.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(case.affine, affine_for())
    assert case.label.dtype == np.int16
    np.testing.assert_array_equal(case.label, label_array(0))


def test_v2_unlabelled_cases_and_test_set(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds", labelled=("a", "b"), unlabelled=("u1",))
    save_nifti(root / "imagesUnlabelled" / "extra_0000.nii.gz", image_array(5))
    save_nifti(root / "imagesUnlabelled" / "extra_0001.nii.gz", image_array(6))
    save_nifti(root / "imagesTs" / "t1_0000.nii.gz", image_array(7))
    save_nifti(root / "imagesTs" / "t1_0001.nii.gz", image_array(8))
    save_nifti(root / "imagesTs" / "t2_0000.nii.gz", image_array(7))
    save_nifti(root / "imagesTs" / "t2_0001.nii.gz", image_array(8))
    save_nifti(root / "labelsTs" / "t1.nii.gz", label_array(3))
    spec = open_nnunet(root)
    assert [r.case_id for r in spec.labelled] == ["a", "b"]
    assert [r.case_id for r in spec.unlabelled] == ["u1", "extra"]
    assert spec.unlabelled[1].load().label is None
    assert [(r.case_id, r.has_label) for r in spec.test_cases] == [("t1", True), ("t2", False)]
    assert spec.test_cases[0].load().label.shape == SHAPE


def test_regions_become_overlapping_multilabel_channels(tmp_path: Path) -> None:
    labels = {"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    root = make_v2(tmp_path / "ds", labels=labels, channels=1, labelled=("b1",))
    raw = label_array(0, values=(0, 1, 2, 3))
    save_nifti(root / "labelsTr" / "b1.nii.gz", raw)
    spec = open_nnunet(root)
    assert spec.label_mode == "multilabel"
    assert spec.class_names == ["whole tumour", "core", "enhancing"]
    label = spec.cases[0].load().label
    assert label.shape == (3, *SHAPE) and label.dtype == np.uint8
    np.testing.assert_array_equal(label[0], np.isin(raw, [1, 2, 3]))
    np.testing.assert_array_equal(label[1], np.isin(raw, [2, 3]))
    np.testing.assert_array_equal(label[2], raw == 3)


def test_plain_labels_can_be_forced_to_multilabel(tmp_path: Path) -> None:
    spec = open_nnunet(make_v2(tmp_path / "ds"), label_mode="multilabel")
    assert spec.class_names == ["GM", "WM"]
    label = spec.cases[0].load().label
    np.testing.assert_array_equal(label[1], label_array(0) == 2)


def test_regions_cannot_be_multiclass(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds", labels={"background": 0, "tumour": [1, 2]})
    with pytest.raises(DataError, match="dataset.json.*regions"):
        open_nnunet(root, label_mode="multiclass")


def test_label_values_must_be_contiguous(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds", labels={"background": 0, "a": 1, "b": 3})
    with pytest.raises(DataError, match=r"dataset\.json.*0\.\.K-1"):
        open_nnunet(root)


def test_decathlon_v1_json_with_4d_images(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    four_d = np.stack([image_array(0), image_array(1)], axis=-1)  # (x, y, z, C)
    save_nifti(root / "imagesTr" / "brain_001.nii.gz", four_d)
    save_nifti(root / "labelsTr" / "brain_001.nii.gz", label_array(0))
    save_nifti(root / "imagesTr" / "brain_002.nii.gz", four_d)  # not in 'training': unlabelled
    save_nifti(root / "imagesTs" / "brain_100.nii.gz", four_d)
    meta = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": [{"image": "./imagesTr/brain_001.nii.gz", "label": "./labelsTr/brain_001.nii.gz"}],
        "test": ["./imagesTs/brain_100.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = open_nnunet(root)
    assert (spec.channels, spec.dim, spec.class_names) == (2, 3, ["background", "edema", "tumour"])
    assert [(r.case_id, r.has_label) for r in spec.cases] == [("brain_001", True), ("brain_002", False)]
    assert [r.case_id for r in spec.test_cases] == ["brain_100"]
    assert spec.warnings == ["1 image(s) in imagesTr have no label and are used as unlabelled: brain_002; move "
                             "them to imagesUnlabelled/ to silence this"]
    case = spec.cases[0].load()
    assert case.image.shape == (2, *SHAPE)
    np.testing.assert_allclose(case.image[1], image_array(1))
    np.testing.assert_allclose(case.spacing, SPACING, rtol=1e-6)


def test_decathlon_has_its_own_source_name_and_nnunet_keeps_opening_it(tmp_path: Path) -> None:
    root = tmp_path / "Task03"
    save_nifti(root / "imagesTr" / "liver_001.nii.gz", image_array(0))
    save_nifti(root / "labelsTr" / "liver_001.nii.gz", label_array(0))
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "training": [{"image": "./imagesTr/liver_001.nii.gz", "label": "./labelsTr/liver_001.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    by_name, by_nnunet = open_dataset("decathlon", root), open_dataset("nnunet", root)
    assert detect_source(root) == "nnunet"
    assert [r.case_id for r in by_name.cases] == [r.case_id for r in by_nnunet.cases] == ["liver_001"]
    a, b = by_name.cases[0].load(), by_nnunet.cases[0].load()
    np.testing.assert_array_equal(a.label, b.label)
    assert a.meta == b.meta and a.meta["source"] == "msd"
    v2 = make_v2(tmp_path / "v2")
    with pytest.raises(DataError, match="nnU-Net v2 folder: use source nnunet"):
        open_dataset("decathlon", v2)


def test_decathlon_missing_label_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "Task02"
    save_nifti(root / "imagesTr" / "la_003.nii.gz", image_array(0))
    meta = {
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = open_nnunet(root)
    with pytest.raises(DataError, match=r"labelsTr/la_003\.nii\.gz.*missing"):
        spec.cases[0].load()


def test_simpleitk_formats_use_nibabel_axis_order_and_ras_affine(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    root = make_v2(tmp_path / "ds", labelled=(), channels=1, ending=".mha")
    zyx = np.random.default_rng(0).normal(size=(4, 6, 7)).astype(np.float32)
    img = sitk.GetImageFromArray(zyx)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(root / "imagesTr" / "m_0000.mha"))
    lab = sitk.GetImageFromArray((zyx > 0).astype(np.uint8))
    lab.CopyInformation(img)
    sitk.WriteImage(lab, str(root / "labelsTr" / "m.mha"))
    case = open_nnunet(root).cases[0].load()
    np.testing.assert_allclose(case.image[0], zyx.transpose(2, 1, 0))
    np.testing.assert_array_equal(case.label, (zyx > 0).transpose(2, 1, 0))
    np.testing.assert_allclose(case.spacing, (0.5, 0.7, 2.0))
    expected = np.diag([-0.5, -0.7, 2.0, 1.0])
    expected[:3, 3] = (-1.0, -2.0, 3.0)  # LPS origin flipped to RAS
    np.testing.assert_allclose(case.affine, expected)


def test_natural_image_png_holds_all_rgb_channels_in_one_file(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    from PIL import Image

    root = make_v2(tmp_path / "ds", labelled=(), channels=3, ending=".png", labels={"background": 0, "road": 1})
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "imagesTr" / "r1_0000.png")
    Image.fromarray((rgb[..., 0] > 128).astype(np.uint8)).save(root / "labelsTr" / "r1.png")
    spec = open_nnunet(root)
    assert (spec.dim, spec.channels) == (2, 3)
    case = spec.cases[0].load()
    assert case.image.shape == (3, 7, 5)  # (x, y) like nibabel, i.e. (width, height)
    np.testing.assert_array_equal(case.image[2], rgb[..., 2].T)
    np.testing.assert_array_equal(case.label, (rgb[..., 0] > 128).T)


def test_other_formats_without_simpleitk_give_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    root = make_v2(tmp_path / "ds", labelled=(), channels=1, ending=".mha")
    (root / "imagesTr" / "m_0000.mha").write_bytes(b"not read")
    monkeypatch.setattr(volume, "_import_sitk", lambda: None)
    with pytest.raises(DataError, match=r"m_0000\.mha.*SimpleITK"):
        open_nnunet(root)


# --------------------------------------------------------------------------------------------------
# hostile folders


def test_corrupt_nifti_is_named_on_load(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    (root / "imagesTr" / "c2_0001.nii.gz").write_bytes(np.random.default_rng(0).bytes(300))
    spec = open_nnunet(root)  # listing still works; the bad file surfaces when its case is read
    spec.cases[0].load()
    with pytest.raises(DataError, match=r"c2_0001\.nii\.gz.*cannot be read as NIfTI"):
        spec.cases[1].load()


def test_label_shape_mismatch_names_label_file(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    save_nifti(root / "labelsTr" / "c2.nii.gz", np.zeros((8, 9, 4), np.uint8))
    with pytest.raises(DataError, match=r"c2\.nii\.gz: label shape \(8, 9, 4\) differs"):
        open_nnunet(root).cases[1].load()


def test_label_geometry_mismatch_names_label_file(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    save_nifti(root / "labelsTr" / "c1.nii.gz", label_array(0), affine_for(spacing=(0.8, 0.9, 3.0)))
    with pytest.raises(DataError, match=r"c1\.nii\.gz: label geometry differs"):
        open_nnunet(root).cases[0].load()
    save_nifti(root / "labelsTr" / "c1.nii.gz", label_array(0), affine_for(spacing=(0.8, 0.9, 2.5001)))
    open_nnunet(root).cases[0].load()  # within the 1e-3 relative tolerance


def test_undeclared_label_value_is_listed(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    bad = label_array(1)
    bad[0, 0, 0] = 7
    save_nifti(root / "labelsTr" / "c2.nii.gz", bad)
    with pytest.raises(DataError, match=r"c2\.nii\.gz: label values \[7\] are not among the declared classes"):
        open_nnunet(root).cases[1].load()


def test_nan_in_image_is_counted(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    img = image_array(0)
    img[1, 2, 3] = np.nan
    img[2, 2, 3] = np.nan
    save_nifti(root / "imagesTr" / "c1_0000.nii.gz", img)
    with pytest.raises(DataError, match=r"c1_0000\.nii\.gz: image contains 2 NaN"):
        open_nnunet(root).cases[0].load()


def test_empty_images_folder_names_the_pattern(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds", labelled=())
    with pytest.raises(DataError, match=r"imagesTr: no cases found matching \{case\}_\{XXXX\}\.nii\.gz"):
        open_nnunet(root)


def test_missing_channel_file_names_case_and_channel(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    (root / "imagesTr" / "c2_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'c2': channel 1 \(mod1\) is missing: expected .*c2_0001\.nii\.gz"):
        open_nnunet(root).cases[1].load()


def test_channel_files_with_different_shapes(tmp_path: Path) -> None:
    root = make_v2(tmp_path / "ds")
    save_nifti(root / "imagesTr" / "c1_0001.nii.gz", np.zeros((8, 9, 6), np.float32))
    with pytest.raises(DataError, match=r"c1_0000\.nii\.gz \(8, 9, 5\), c1_0001\.nii\.gz \(8, 9, 6\)"):
        open_nnunet(root).cases[0].load()


@pytest.mark.parametrize(
    ("breakage", "pattern"),
    [
        (lambda r: (r / "dataset.json").unlink(), r"dataset\.json: dataset\.json not found"),
        (lambda r: (r / "dataset.json").write_text("{oops"), r"dataset\.json: not valid JSON"),
        (lambda r: [p.unlink() for p in (r / "labelsTr").iterdir()] and (r / "labelsTr").rmdir(), r"labelsTr"),
        (lambda r: save_nifti(r / "labelsTr" / "ghost.nii.gz", label_array(0)), r"ghost\.nii\.gz: label has no image"),
        (lambda r: save_nifti(r / "imagesTr" / "plain.nii.gz", image_array(0)), r"plain\.nii\.gz: name does not"),
        (lambda r: save_nifti(r / "imagesTr" / "c1_0002.nii.gz", image_array(0)), r"c1_0002\.nii\.gz: channel 0002"),
    ],
)
def test_broken_structure_fails_at_open(tmp_path: Path, breakage, pattern: str) -> None:
    root = make_v2(tmp_path / "ds")
    breakage(root)
    with pytest.raises(DataError, match=pattern):
        open_nnunet(root)


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: folder not found"):
        open_nnunet(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# what is legal but probably unintended


def test_images_without_label_are_unlabelled_and_named_by_data_check(tmp_path: Path, capsys) -> None:
    from semiseg import cli

    root = make_v2(tmp_path / "ds", labelled=("c1", "c2"), unlabelled=("c3", "c4", "c5"), channels=1)
    spec = open_nnunet(root)
    assert [c.case_id for c in spec.unlabelled] == ["c3", "c4", "c5"]
    cli.main(["data", "check", str(root)])
    out = capsys.readouterr().out
    assert "warning: 3 image(s) in imagesTr have no label and are used as unlabelled: c3, c4, c5; move them to " \
           "imagesUnlabelled/" in out


@pytest.mark.parametrize(("declared", "warned"), [(2, False), (5, False), (4, True)])
def test_num_training_must_agree_with_what_was_found(tmp_path: Path, declared: int, warned: bool) -> None:
    root = make_v2(tmp_path / "ds", labelled=("c1", "c2"), unlabelled=("c3", "c4", "c5"), channels=1)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": declared}))
    notes = [w for w in open_nnunet(root).warnings if "numTraining is 4" in w]
    assert bool(notes) == warned


@pytest.mark.parametrize(("declared", "warned"), [(1, False), (2, False), (3, True)])
def test_decathlon_num_training_must_agree_with_what_was_found(tmp_path: Path, declared: int, warned: bool) -> None:
    root = tmp_path / "Task09"
    for case in ("sp_001", "sp_002"):
        save_nifti(root / "imagesTr" / f"{case}.nii.gz", image_array(0))
    save_nifti(root / "labelsTr" / "sp_001.nii.gz", label_array(0))
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"}, "numTraining": declared,
            "training": [{"image": "./imagesTr/sp_001.nii.gz", "label": "./labelsTr/sp_001.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    warnings = open_dataset("decathlon", root).warnings
    assert any("sp_002" in w and "no label" in w for w in warnings)
    assert any(f"numTraining is {declared}" in w for w in warnings) == warned


@pytest.mark.parametrize("link", ["loop", "broken"])
def test_a_dead_symlink_is_reported_as_what_it_is(tmp_path: Path, link: str) -> None:
    root = make_v2(tmp_path / "ds", labelled=("c1", "c2"), channels=1)
    image = root / "imagesTr" / "c2_0000.nii.gz"
    image.unlink()
    image.symlink_to(image if link == "loop" else tmp_path / "gone.nii.gz")
    with pytest.raises(DataError, match="symlink loop" if link == "loop" else "broken symlink") as info:
        open_nnunet(root)
    assert str(image) in str(info.value) and "has no image" not in str(info.value)
