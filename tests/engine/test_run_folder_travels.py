"""A run folder travels (issue 32): trained on data given by a relative path, moved with or without its data,
it still exports, predicts and suggests from another working directory; ``--data`` finds moved data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from semiseg.cli import main

SHAPE = (32, 32, 4)


def _nnunet(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "ct"}, "labels": {"background": 0, "a": 1},
                                                   "file_ending": ".nii.gz", "name": "toy"}))
    for i in range(n):
        rng = np.random.default_rng(i)
        label = np.zeros(SHAPE, np.uint8)
        label[8 + i:20 + i, 10:22] = 1
        image = (rng.normal(size=SHAPE) * 20 + 100 * label).astype(np.float32)
        for folder, name, array in (("imagesTr", f"c{i}_0000", image), ("labelsTr", f"c{i}", label)):
            (root / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / folder / f"{name}.nii.gz"))
    return root


@pytest.fixture
def trained(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A 2-step run on ``ds/toy`` given relative to ``tmp_path/start``; returns (run folder, data folder)."""
    start = tmp_path / "start"
    _nnunet(start / "ds" / "toy")
    monkeypatch.chdir(start)
    assert main(["train", "--data", "ds/toy", "--output", "runs/r", "--quiet", "--set", "train.steps=2",
                 "--set", "train.val_every=2", "--set", "train.batch_size=2", "--set", "model.widths=[4, 8]",
                 "--set", "model.dim=2", "--set", "split.labelled=2", "--set", "split.val=1", "--set", "split.test=1",
                 "--set", "train.method=supervised", "--set", "train.warmup_steps=1", "--set", "train.threads=1",
                 "--set", "data.cache=off"]) == 0
    return start / "runs" / "r", start / "ds" / "toy"


def test_the_config_records_absolute_paths_and_what_they_were_given_as(trained):
    run, data = trained
    text = (run / "config.yaml").read_text()
    assert yaml.safe_load(text)["data"]["path"] == str(data.absolute())
    assert f"# data.path was given as 'ds/toy' in {data.parent.parent}" in text


def test_a_moved_run_without_its_data_exports_predicts_and_suggests_from_another_folder(trained, tmp_path,
                                                                                      monkeypatch, capsys):
    run, data = trained
    images = tmp_path / "scans"
    shutil.copytree(data / "imagesTr", images)
    moved = tmp_path / "elsewhere" / "r"
    shutil.move(str(run), moved)
    shutil.rmtree(data)  # the training data is gone
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["export", "--run", str(moved), "--output", "exp"]) == 0
    assert json.loads((other / "exp" / "export.json").read_text())["spacing"] is None  # only the data knew it
    assert main(["predict", "--run", str(moved), "--input", str(images), "--output", "pred"]) == 0
    assert main(["predict", "--model", "exp", "--input", str(images), "--output", "pred_export"]) == 0
    assert len(list((other / "pred").glob("*.nii.gz"))) == len(list((other / "pred_export").glob("*.nii.gz"))) == 6
    assert main(["suggest", "--run", str(moved), "--input", str(images), "--output", "sug", "--quiet"]) == 0
    assert (other / "sug" / "suggest.csv").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(moved), "--quiet"]) == 2  # the test cases need the data
    err = capsys.readouterr().err
    assert "does not exist" in err and "if it moved, pass --data PATH" in err


def test_data_points_a_moved_run_at_its_moved_data(trained, tmp_path, monkeypatch):
    run, data = trained
    new_data = tmp_path / "archive" / "toy"
    shutil.move(str(data), new_data)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--run", str(run), "--data", str(new_data), "--quiet"]) == 0
    assert main(["export", "--run", str(run), "--data", str(new_data), "--output", "exp"]) == 0
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["spacing"] == [1.0, 1.0, 1.0]
