"""TensorBoard event files: the scalars of log.csv read back, validation overlays, and the off switch."""

import csv

import numpy as np
import pytest

from semiseg import api
from semiseg.config import load_config
from semiseg.engine import tensorboard
from semiseg.engine.tensorboard import overlay
from semiseg.errors import ConfigError


def _train(root, mode: str):
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 5, dim: 2, seed: 0}", "split.labelled=2", "split.val=2",
        "split.test=1", "model.widths=[4, 8]", "train.steps=4", "train.val_every=2", "train.log_every=1",
        "train.batch_size=2", f"train.tensorboard={mode}", f"output.root={root}", "output.name=run",
    ])
    return api.train(cfg, progress=False, evaluate=False).run_dir


def test_event_files_hold_the_scalars_of_log_csv_and_overlays(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, "on")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    np.testing.assert_allclose([e.value for e in loss], [float(r["loss"]) for r in rows], rtol=1e-6)
    val = events.Scalars("val_dice")
    assert [e.step for e in val] == [2, 4]
    np.testing.assert_allclose([e.value for e in val], [float(r["val_dice"]) for r in rows if r["val_dice"]],
                               rtol=1e-6)
    images = events.Tags()["images"]
    assert len(images) == 2 and all(tag.startswith("validation/") for tag in images)
    assert [e.step for e in events.Images(images[0])] == [2, 4]


def test_off_writes_no_event_files(tmp_path):
    assert not (_train(tmp_path, "off") / "tensorboard").exists()


def test_on_without_the_package_fails_before_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "tensorboard_installed", lambda: False)
    with pytest.raises(ConfigError, match=r'pip install "semiseg\[tensorboard\]"'):
        _train(tmp_path, "on")
    assert not (tmp_path / "run").exists()


def test_overlay_marks_truth_green_and_prediction_red():
    image = np.zeros((1, 6, 5, 3), dtype=np.float32)
    label = np.zeros((6, 5, 3), dtype=np.int64)
    label[1:3, 1:3, 2] = 1
    pred = np.zeros_like(label)
    pred[4, 4, 2] = 2
    rgb = overlay(image, label, pred, "multiclass")
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    assert rgb[1, 1, 1] > 0 and rgb[1, 1, 0] == 0 and rgb[4, 4, 0] > 0 and rgb[4, 4, 1] == 0
