"""Tests for the built-in demo brain: small (4 subjects at 4 mm) so the whole file runs in seconds."""

from __future__ import annotations

import importlib.resources
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.case import Case, DatasetSpec
from semiseg.data.sources.demo_brain import (
    CLASS_NAMES,
    TEMPLATE_FILES,
    DemoDifficulty,
    demo_brain_info,
    open_demo_brain,
)
from semiseg.errors import ConfigError, DataError

SMALL = {"n_subjects": 4, "spacing_mm": 4.0, "progress": False}


def _open(cache: Path, **kwargs: object) -> DatasetSpec:
    return open_demo_brain(cache_dir=str(cache), **{**SMALL, **kwargs})


def _load_all(spec: DatasetSpec) -> list[Case]:
    return [ref.load() for ref in spec.cases]


def _mtimes(root: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(root).iterdir()}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    return _open(tmp_path_factory.mktemp("demo_cache"))


@pytest.fixture(scope="module")
def cases(spec: DatasetSpec) -> list[Case]:
    return _load_all(spec)


def test_spec_describes_a_3d_multiclass_dataset(spec: DatasetSpec) -> None:
    assert (spec.name, spec.dim, spec.channels, spec.label_mode) == ("demo_brain", 3, 1, "multiclass")
    assert spec.class_names == CLASS_NAMES == ["background", "grey matter", "white matter"]
    assert [c.case_id for c in spec.cases] == [f"subject_{i:03d}" for i in range(4)]
    assert all(c.has_label for c in spec.cases) and spec.test_cases == []


def test_shapes_dtypes_and_sites(cases: list[Case]) -> None:
    shape = cases[0].spatial_shape
    assert len(shape) == 3 and all(30 <= n <= 60 for n in shape)  # ~41 x 50 x 44 at 4 mm
    for i, case in enumerate(cases):
        assert case.image.dtype == np.float32 and case.image.shape == (1, *shape)
        assert case.label.dtype == np.uint8 and case.label.shape == shape
        assert case.spacing == (4.0, 4.0, 4.0)
        assert case.meta == {"site": i % 4}
        assert np.isfinite(case.image).all()
        low, high = np.percentile(case.image, [1, 99])
        assert low == pytest.approx(0, abs=1e-4) and high == pytest.approx(1, abs=1e-4)


def test_labels_hold_all_three_classes(cases: list[Case]) -> None:
    for case in cases:
        counts = np.bincount(case.label.ravel(), minlength=3)
        assert len(counts) == 3 and (counts > 0).all()
        assert counts[0] > counts[1] > counts[2]  # background > cortex-rich GM > WM


def test_affine_keeps_template_world_coordinates(cases: list[Case]) -> None:
    template = importlib.resources.files("nilearn") / "datasets" / "data" / TEMPLATE_FILES["wm"]
    wm_nii = nib.load(str(template))
    wm_world = _world_centroid(np.asarray(wm_nii.dataobj) > 127, wm_nii.affine)
    for case in cases:
        np.testing.assert_allclose(case.affine[:3, :3], 4.0 * np.eye(3))
        centre = case.affine @ np.array([*((np.array(case.spatial_shape) - 1) / 2), 1.0])
        assert np.abs(centre[:3] - [0, -17, 5]).max() < 8  # MNI brain centre, small deformations only
        assert np.linalg.norm(_world_centroid(case.label == 2, case.affine) - wm_world) < 8


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine @ np.array([*np.argwhere(mask).mean(axis=0), 1.0]))[:3]


def test_nifti_files_carry_the_same_geometry(spec: DatasetSpec, cases: list[Case]) -> None:
    image_nii = nib.load(Path(spec.root) / "subject_000_image.nii.gz")
    np.testing.assert_allclose(image_nii.affine, cases[0].affine)
    assert image_nii.header.get_zooms() == (4.0, 4.0, 4.0)


def test_same_seed_is_identical_and_other_seed_differs(tmp_path: Path, cases: list[Case]) -> None:
    again = _load_all(_open(tmp_path / "again"))
    for a, b in zip(cases, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    other = _open(tmp_path / "other", seed=1).cases[0].load()
    assert not np.array_equal(other.image, cases[0].image)
    assert not np.array_equal(other.label, cases[0].label)


def test_subject_does_not_depend_on_dataset_size(tmp_path: Path, cases: list[Case]) -> None:
    fewer = _open(tmp_path, n_subjects=2).cases[1].load()
    np.testing.assert_array_equal(fewer.image, cases[1].image)


def test_second_call_reuses_the_cache(tmp_path: Path) -> None:
    first = _open(tmp_path)
    before = _mtimes(first.root)
    second = _open(tmp_path)
    assert second.root == first.root and _mtimes(second.root) == before
    assert sorted(before) == sorted(
        ["meta.json"] + [f"subject_{i:03d}_{kind}.nii.gz" for i in range(4) for kind in ("image", "label")]
    )  # no temp files left behind


def test_changing_a_knob_regenerates(tmp_path: Path, cases: list[Case]) -> None:
    base = _open(tmp_path)
    harder = _open(tmp_path, difficulty=replace(DemoDifficulty(), max_noise=0.2))
    assert harder.root != base.root
    assert not np.array_equal(harder.cases[1].load().image, cases[1].image)
    assert _open(tmp_path, spacing_mm=5.0).root not in (base.root, harder.root)


def test_missing_file_is_regenerated_alone(tmp_path: Path) -> None:
    spec = _open(tmp_path)
    root = Path(spec.root)
    (root / "subject_002_label.nii.gz").unlink()
    (root / ".subject_003_image.nii.gz.123.dead.tmp.nii.gz").write_bytes(b"half a file")
    before = _mtimes(spec.root)
    _open(tmp_path)
    after = _mtimes(spec.root)
    assert "subject_002_label.nii.gz" in after
    assert after["subject_000_image.nii.gz"] == before["subject_000_image.nii.gz"]


def test_meta_records_params_and_site_effects(spec: DatasetSpec) -> None:
    meta = json.loads((Path(spec.root) / "meta.json").read_text())
    assert meta["n_subjects"] == 4 and meta["spacing_mm"] == 4.0 and meta["seed"] == 0
    assert meta["difficulty"] == asdict(DemoDifficulty())
    assert [s["site"] for s in meta["subjects"]] == [0, 1, 2, 3]
    assert {"gamma", "contrast", "bias", "blur_mm", "noise", "scale"} <= set(meta["subjects"][0])
    assert len({s["name"] for s in meta["sites"]}) == 4


def test_sites_look_different(cases: list[Case]) -> None:
    """The near-template site has a clearly higher GM/WM contrast-to-noise than every other site."""
    cnr = []
    for case in cases:
        gm, wm = case.image[0][case.label == 1], case.image[0][case.label == 2]
        cnr.append((wm.mean() - gm.mean()) / np.sqrt((wm.var() + gm.var()) / 2))
    assert all(c > 0 for c in cnr)  # tissue order is kept everywhere
    assert cnr[0] > 1.4 * max(cnr[1:])
    assert len({round(float(c), 2) for c in cnr}) == 4


def test_missing_nilearn_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)  # makes importlib.resources.files fail to import it
    with pytest.raises(DataError, match=r'pip install "semiseg\[demo\]"'):
        _open(tmp_path)


def test_bad_knobs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_contrast"):
        DemoDifficulty(min_contrast=0.0)
    with pytest.raises(ConfigError, match="n_sites"):
        DemoDifficulty(n_sites=0)
    with pytest.raises(ConfigError, match="spacing_mm"):
        _open(tmp_path, spacing_mm=0.3)


def test_more_sites_than_archetypes(tmp_path: Path) -> None:
    spec = _open(tmp_path, n_subjects=6, difficulty=DemoDifficulty(n_sites=6))
    assert [ref.load().meta["site"] for ref in spec.cases[4:]] == [4, 5]


def test_info_names_the_source_and_the_sites() -> None:
    info = demo_brain_info()
    assert "ICBM152" in info and "nilearn" in info and "site" in info
