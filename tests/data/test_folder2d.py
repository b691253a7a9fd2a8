"""2D image folders: pairing by stem, colour handling, class inference and hostile inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semiseg.data.sources.folder2d import open_folder2d
from semiseg.errors import ConfigError, DataError

H, W = 12, 16


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return path


def grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)


def rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def mask(seed: int, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    out = np.random.default_rng(seed).choice(values, (H, W)).astype(np.uint8)
    out.flat[: len(values)] = values  # every value present, so inference sees all classes
    return out


def make_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        save(root / "images" / f"img{i}.png", grey(i))
        save(root / "masks" / f"img{i}.png", mask(i))
    return root


def test_grey_pairs_load_with_inferred_classes(tmp_path: Path) -> None:
    spec = open_folder2d(make_folder(tmp_path / "ds"))
    assert (spec.dim, spec.channels, spec.label_mode) == (2, 1, "multiclass")
    assert spec.class_names == ["background", "class_1", "class_2"]
    case = spec.cases[1].load()
    assert case.case_id == "img1" and case.image.shape == (1, H, W) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image[0], grey(1))
    np.testing.assert_array_equal(case.label, mask(1))
    assert case.spacing == (1.0, 1.0) and case.affine is None
    assert case.meta["size"] == (W, H) and case.meta["mode"] == "L"
    assert case.meta["image_path"].endswith("img1.png")


def test_mask_may_have_another_extension(tmp_path: Path) -> None:
    save(tmp_path / "ds" / "images" / "a.jpg", rgb(0))
    save(tmp_path / "ds" / "masks" / "a.png", mask(0, (0, 1)))
    spec = open_folder2d(tmp_path / "ds")
    assert spec.labelled[0].case_id == "a" and spec.channels == 3


def test_mixed_grey_and_colour_load_as_rgb_and_alpha_is_dropped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", n=1)
    rgba = np.dstack([rgb(5), np.full((H, W), 7, np.uint8)])
    save(root / "images" / "col.png", rgba)
    spec = open_folder2d(root)
    assert spec.channels == 3
    by_id = {r.case_id: r for r in spec.cases}
    grey_case, colour_case = by_id["img0"].load(), by_id["col"].load()
    assert grey_case.image.shape == (3, H, W)
    np.testing.assert_array_equal(grey_case.image[2], grey(0))
    np.testing.assert_array_equal(colour_case.image.transpose(1, 2, 0), rgb(5))
    assert colour_case.meta["mode"] == "RGBA"


def test_binary_0_255_masks_map_to_0_1(tmp_path: Path) -> None:
    save(tmp_path / "ds" / "images" / "a.png", grey(0))
    save(tmp_path / "ds" / "masks" / "a.png", mask(0, (0, 255)))
    spec = open_folder2d(tmp_path / "ds")
    assert spec.class_names == ["background", "class_1"]
    np.testing.assert_array_equal(spec.cases[0].load().label, mask(0, (0, 255)) // 255)


def test_rgb_mask_with_equal_channels_is_accepted_and_colour_mask_is_not(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", n=2)
    save(root / "masks" / "img0.png", np.repeat(mask(0)[..., None], 3, axis=2))
    colour = np.repeat(mask(1)[..., None], 3, axis=2)
    colour[0, 0] = (1, 2, 0)
    save(root / "masks" / "img1.png", colour)
    spec = open_folder2d(root, class_names=["bg", "a", "b"])
    np.testing.assert_array_equal(spec.cases[0].load().label, mask(0))
    with pytest.raises(DataError, match=r"img1\.png: colour mask"):
        spec.cases[1].load()


def test_classes_from_dataset_json_and_class_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    assert open_folder2d(root, class_names=["bg", "x", "y", "z"]).class_names == ["bg", "x", "y", "z"]
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "cell": 1, "nucleus": 2}}))
    assert open_folder2d(root).class_names == ["background", "cell", "nucleus"]
    with pytest.raises(ConfigError, match="disagree"):
        open_folder2d(root, class_names=["bg", "x", "y"])


def test_unlabelled_images_and_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", n=2)
    save(root / "images" / "nomask.png", grey(8))
    save(root / "unlabelled" / "u1.png", grey(9))
    spec = open_folder2d(root)
    assert [r.case_id for r in spec.labelled] == ["img0", "img1"]
    assert [r.case_id for r in spec.unlabelled] == ["nomask", "u1"]
    assert spec.unlabelled[1].load().label is None


# --------------------------------------------------------------------------------------------------
# hostile folders


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    save(root / "masks" / "img2.png", np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DataError, match=r"masks/img2\.png: mask size 17x12 differs from image .*images/img2\.png"):
        open_folder2d(root).cases[2].load()


def test_corrupt_image_is_named_on_load(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "images" / "img1.png").write_bytes(b"\x89PNG garbage" * 10)
    spec = open_folder2d(root)
    with pytest.raises(DataError, match=r"img1\.png: cannot be read as an image"):
        spec.cases[1].load()


def test_label_value_beyond_declared_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    bad = mask(0)
    bad[3, 3] = 7
    save(root / "masks" / "img0.png", bad)
    with pytest.raises(DataError, match=r"img0\.png: label values \[7\]"):
        open_folder2d(root, class_names=["bg", "a", "b"]).cases[0].load()


def test_inferred_values_must_be_contiguous(tmp_path: Path) -> None:
    save(tmp_path / "ds" / "images" / "a.png", grey(0))
    save(tmp_path / "ds" / "masks" / "a.png", mask(0, (0, 2)))
    with pytest.raises(DataError, match=r"masks: mask values \[0, 2\] are not contiguous"):
        open_folder2d(tmp_path / "ds")


@pytest.mark.parametrize(
    ("breakage", "pattern"),
    [
        (lambda r: [p.unlink() for p in (r / "images").iterdir()], r"images: no images found matching \*\.png"),
        (lambda r: save(r / "masks" / "ghost.png", mask(0)), r"ghost\.png: mask has no image"),
        (lambda r: save(r / "images" / "img0.jpg", rgb(0)), r"share the name 'img0'"),
        (lambda r: save(r / "unlabelled" / "img1.png", grey(0)), r"case id 'img1' is also used"),
    ],
)
def test_broken_structure_fails_at_open(tmp_path: Path, breakage, pattern: str) -> None:
    root = make_folder(tmp_path / "ds")
    breakage(root)
    with pytest.raises(DataError, match=pattern):
        open_folder2d(root)


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: folder not found"):
        open_folder2d(tmp_path / "nope")
    save(tmp_path / "ds" / "images" / "a.png", grey(0))
    with pytest.raises(DataError, match=r"ds/masks: folder not found"):
        open_folder2d(tmp_path / "ds")
