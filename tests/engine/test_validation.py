"""Validation during training: the per-class columns beside the mean, and the mean unchanged by them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.validation import ValidationHandler


def _cfg(tmp_path, *extra):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 7, dim: 2, seed: 0}", "split.labelled=2", "split.val=2",
        "split.test=1", "model.dim=2", "model.widths=[4, 8]", "train.steps=4", "train.val_every=2",
        "train.log_every=1", "train.batch_size=2", "train.warmup_steps=1", "train.method=supervised",
        f"output.root={tmp_path}", "train.threads=1", "eval.report_cases=0", *extra,
    ])


def test_each_class_is_logged_beside_the_mean_it_makes_up(tmp_path):
    run = api.train(_cfg(tmp_path), progress=False, evaluate=False).run_dir
    with (run / "log.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["val_dice"]]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for row in rows:  # every case holds both classes' columns, so the mean of the case means is the class mean
        classes = [float(row["val_class/class_1"]), float(row["val_class/class_2"])]
        assert float(row["val_dice"]) == pytest.approx(np.mean(classes))


def test_one_foreground_class_or_a_mismatch_logs_no_class_columns():
    assert ValidationHandler(class_names=["background", "organ"])._class_columns("multiclass", np.array([0.5])) == {}
    two = ValidationHandler(class_names=["background", "Liver", "lesion"])
    assert two._class_columns("multiclass", np.array([0.9, 0.1])) == {"val_class/liver": 0.9, "val_class/lesion": 0.1}
    assert two._class_columns("multiclass", np.array([0.9])) == {}
    wt_tc = ValidationHandler(class_names=["wt", "tc"])  # multilabel: one name per channel
    assert wt_tc._class_columns("multilabel", np.array([0.7, 0.6])) == {"val_class/wt": 0.7, "val_class/tc": 0.6}
