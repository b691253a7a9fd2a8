"""open_dataset: dispatch by name, layout auto-detection and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from semiseg.data import sources
from semiseg.data.case import DatasetSpec
from semiseg.data.sources import SOURCES, detect_source, open_dataset
from semiseg.errors import ConfigError, DataError


def nnunet_folder(root: Path) -> Path:
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir()
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), str(root / "imagesTr" / "a_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), str(root / "labelsTr" / "a.nii.gz"))
    return root


def h5_file(path: Path, shape: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros(shape, np.float32))
        f.create_dataset("label", data=np.zeros(shape, np.uint8))


def acdc_folder(root: Path) -> Path:
    h5_file(root / "data" / "p1.h5", (2, 5, 5))
    (root / "val.list").write_text("p1\n")
    return root


def la_folder(root: Path) -> Path:
    h5_file(root / "case1" / "mri_norm2.h5", (5, 5, 2))
    return root


def folder2d(root: Path) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        Image.fromarray(np.eye(6, dtype=np.uint8)).save(root / sub / "x.png")
    return root


@pytest.mark.parametrize(
    ("builder", "name"),
    [(nnunet_folder, "nnunet"), (acdc_folder, "acdc"), (la_folder, "la"), (folder2d, "folder2d")],
)
def test_auto_detects_each_layout_and_opens_it(tmp_path: Path, builder, name: str) -> None:
    root = builder(tmp_path / "ds")
    assert detect_source(root) == name
    spec = open_dataset("auto", str(root))
    assert isinstance(spec, DatasetSpec) and spec.cases
    spec.cases[0].load()
    assert open_dataset(name, root).num_classes == spec.num_classes


def test_unknown_layout_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(DataError, match=r"random: cannot tell the dataset layout; known layouts are: nnunet"):
        open_dataset(path=tmp_path / "random")


def test_missing_path_and_missing_argument(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: path does not exist"):
        open_dataset("auto", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere: path does not exist"):
        open_dataset("nnunet", tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs a dataset path"):
        open_dataset("folder2d")


def test_generated_sources_and_options() -> None:
    spec = open_dataset("phantom", n_cases=2, dim=3, size=16)
    assert spec.dim == 3 and len(spec.cases) == 2
    with pytest.raises(ConfigError, match=r"source 'phantom' has no option\(s\) \['colour'\]; it accepts: n_cases"):
        open_dataset("phantom", colour=True)
    with pytest.raises(ConfigError, match="unknown dataset source 'mnist'"):
        open_dataset("mnist")


def test_option_names_are_checked_for_folder_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no option\(s\) \['spacing'\]; it accepts: images, masks"):
        open_dataset("folder2d", folder2d(tmp_path / "ds"), spacing=(1, 1))


def test_demo_brain_is_imported_lazily_and_gets_options(monkeypatch) -> None:
    import semiseg.data.sources.demo_brain as demo

    seen = {}

    def fake(**options) -> DatasetSpec:
        seen.update(options)
        return DatasetSpec("demo", 3, 1, "multiclass", ["bg", "gm", "wm"], [])

    monkeypatch.setattr(demo, "open_demo_brain", fake)
    assert open_dataset("demo_brain", n_subjects=3).name == "demo"
    assert seen == {"n_subjects": 3}


def test_every_listed_source_is_dispatchable() -> None:
    assert set(SOURCES) == {"auto", *sources._DISPATCH}
    assert all(isinstance(text, str) and text for text in SOURCES.values())
