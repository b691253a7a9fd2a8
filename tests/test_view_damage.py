"""benchmarks/view_damage.py: each intensity op's per-class overlaps on validation cases; the test split refused."""

import importlib
from pathlib import Path

import numpy as np
import pytest

from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import foreground_overlaps

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "view_damage.py"


@pytest.fixture
def view_damage(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("view_damage")


def test_identity_counts_the_clean_prediction_of_every_validation_case(view_damage, tiny_heart_run):
    run = tiny_heart_run
    loaded = view_damage.LoadedRun.open(run, "last")
    overlaps = view_damage.op_overlaps(loaded, ["val"], ("identity", "solarize"), draws=2)
    refs = {ref.case_id: ref for ref in loaded.spec.cases}
    expected = 0
    for case_id in loaded.split["val"]:  # by hand: the plain prediction of every validation case, summed
        case = refs[case_id].load()
        predicted = probs_to_label(loaded.model.probabilities(case), loaded.spec.label_mode)
        expected = expected + np.array(foreground_overlaps(predicted, case.label, "multiclass", 4))
    assert np.array_equal(overlaps["identity"], expected) and overlaps["identity"].shape == (3, 2)
    assert overlaps["solarize"].shape == (3, 2)


def test_an_op_is_pooled_over_its_draws(view_damage, tiny_heart_run, monkeypatch):
    run = tiny_heart_run
    loaded = view_damage.LoadedRun.open(run, "last")
    monkeypatch.setattr(view_damage, "intensity_op", lambda name, image, generator: image)  # every op a no-op
    overlaps = view_damage.op_overlaps(loaded, ["val"], ("identity", "gamma"), draws=3)
    assert np.array_equal(overlaps["gamma"], 3 * overlaps["identity"])  # identity is drawn once


def test_prints_one_row_per_op_against_the_clean_image(view_damage, tiny_heart_run, capsys):
    run = tiny_heart_run
    view_damage.main([str(run), "--draws", "1", "--ops", "contrast,noise"])
    out = capsys.readouterr().out
    assert "| op | right ventricle | myocardium | left ventricle | mean | − clean |" in out
    assert "| identity |" in out and "| contrast |" in out and "| noise |" in out and "| gamma |" not in out
    assert "| identity | " in out and out.split("| identity |")[1].split("\n")[0].endswith("| +0.000 |")


def test_refuses_the_test_split_and_unknown_ops(view_damage, tmp_path):
    with pytest.raises(SystemExit):
        view_damage.main([str(tmp_path), "--parts", "val,test"])
    with pytest.raises(SystemExit):
        view_damage.main([str(tmp_path), "--ops", "rot90"])
