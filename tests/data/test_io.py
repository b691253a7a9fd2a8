"""semiseg.data.io: one suffix registry, geometry-preserving round trips, atomic writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.io import (
    atomic_write,
    output_suffix,
    read_mask,
    read_volume,
    split_suffix,
    write_nifti,
    write_png,
    write_volume,
)
from semiseg.data.io import volume as volume_module
from semiseg.errors import DataError


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic, shifted grid: any axis or sign mix-up changes it."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = (12.0, -30.5, 7.25)
    return affine


def volume_array() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 6, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scan.NII.GZ", ("scan", ".NII.GZ", "nifti")),
        ("a.b.nii", ("a.b", ".nii", "nifti")),
        ("ct.mha", ("ct", ".mha", "sitk")),
        ("ct.gipl.gz", ("ct", ".gipl.gz", "sitk")),
        ("slice.JPG", ("slice", ".JPG", "image2d")),
        ("ct.raw", None),
        ("notes.gz", None),
    ],
)
def test_one_registry_names_every_readable_file(name: str, expected: tuple | None) -> None:
    assert split_suffix(Path(name)) == expected


def test_detached_headers_are_written_as_single_files() -> None:
    assert [output_suffix(s) for s in (".mhd", ".nhdr", ".nii", ".MHA", ".nrrd")] == [
        ".mha", ".nrrd", ".nii.gz", ".mha", ".nrrd"
    ]


def test_nifti_round_trip_keeps_data_affine_and_spacing(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    write_nifti(path, volume_array(), oblique_affine(), np.float32)
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, volume_array())
    np.testing.assert_allclose(vol.affine, oblique_affine(), atol=1e-6)
    np.testing.assert_allclose(vol.spacing, (0.8, 1.2, 2.5), rtol=1e-6)
    assert nib.load(path).header.get_xyzt_units()[0] == "mm"


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii.gz"])
def test_volume_round_trip_keeps_geometry_in_every_format(tmp_path: Path, suffix: str) -> None:
    if suffix != ".nii.gz":
        pytest.importorskip("SimpleITK")
    path = tmp_path / f"v{suffix}"
    write_volume(path, volume_array(), oblique_affine(), np.float32)
    vol = read_volume(path)
    np.testing.assert_allclose(vol.data, volume_array())
    np.testing.assert_allclose(vol.affine, oblique_affine(), atol=1e-5)


def test_simpleitk_and_nibabel_agree_on_world_coordinates(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    write_volume(tmp_path / "v.mha", volume_array(), oblique_affine(), np.float32)
    image = sitk.ReadImage(str(tmp_path / "v.mha"))
    voxel = (3, 1, 2)
    lps = np.array(image.TransformIndexToPhysicalPoint(voxel))
    ras = (oblique_affine() @ np.array([*voxel, 1.0]))[:3]
    np.testing.assert_allclose(lps * (-1, -1, 1), ras, atol=1e-5)


def test_vector_pixels_hold_components(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    probs = np.random.default_rng(1).random((5, 6, 4, 3)).astype(np.float32)
    write_volume(tmp_path / "p.mha", probs, oblique_affine(), np.float32, components=True)
    vol = read_volume(tmp_path / "p.mha")
    assert vol.components == 3 and vol.spatial_shape == (5, 6, 4)
    np.testing.assert_allclose(vol.data, probs)


def test_png_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(2).integers(0, 3, size=(7, 9)).astype(np.uint8)
    write_png(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_writing_other_formats_without_simpleitk_names_the_file_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(volume_module, "_import_sitk", lambda: None)
    with pytest.raises(DataError, match=r"out\.nrrd.*writing.*pip install SimpleITK"):
        write_volume(tmp_path / "out.nrrd", volume_array(), np.eye(4), np.float32)


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "pred.nii.gz"
    target.write_text("previous")

    def half_write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]
    assert target.read_text() == "previous"


def test_atomic_write_keeps_the_suffix_that_picks_the_format(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "a.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].startswith(".a.nii.gz.") and seen[0].endswith(".nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == b"x"
