"""benchmarks/dice_by_site.py: scores validation and unlabelled cases by site, refuses the test split."""

import importlib
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dice_by_site.py"


@pytest.fixture
def dice_by_site(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("dice_by_site")


def test_scores_each_val_and_unlabelled_case_once_by_site(dice_by_site, tiny_heart_run, capsys):
    run = tiny_heart_run
    loaded = dice_by_site.LoadedRun.open(run, "last")
    scores = dice_by_site.run_scores(loaded, ["val", "unlabelled"])
    split = json.loads((run / "split.json").read_text())
    assert sum(len(v) for v in scores["val"].values()) == len(split["val"]) == 4  # one per site
    assert sum(len(v) for v in scores["unlabelled"].values()) == len(split["unlabelled"]) > 1
    assert set(scores["unlabelled"]) <= {"0", "1", "2", "3"} and len(scores["unlabelled"]) > 1
    dice_by_site.main([str(run)])
    assert capsys.readouterr().out.startswith("tiny ")
    # supervised training predicts with its one network, so scoring that network alone changes nothing
    assert dice_by_site.run_scores(loaded, ["val"], "model") == {"val": scores["val"]}
    dice_by_site.main([str(run), "--nets", "--parts", "val"])
    assert capsys.readouterr().out.startswith("tiny[model] ")
    assert dice_by_site.run_scores(loaded, ["val"], "model+model") == {"val": scores["val"]}  # a mean of one net
    dice_by_site.main([str(run), "--mean-of", "model,model", "--parts", "val", "--all"])
    out = capsys.readouterr().out.splitlines()
    every = [d for v in scores["val"].values() for d in v]
    assert out[1].startswith("tiny[model+model] ") and out[1].endswith(f"all {sum(every) / len(every):.3f}")
    with pytest.raises(SystemExit):
        dice_by_site.main([str(run), "--parts", "val,test"])


def test_adapt_bn_scores_every_case_and_labels_the_rows(dice_by_site, tiny_heart_run, capsys):
    run = tiny_heart_run
    loaded = dice_by_site.LoadedRun.open(run, "last")
    plain = dice_by_site.run_scores(loaded, ["val"])
    adapted = dice_by_site.run_scores(loaded, ["val"], adapt_bn=True)
    assert {s: len(v) for s, v in adapted["val"].items()} == {s: len(v) for s, v in plain["val"].items()}
    assert dice_by_site.run_scores(loaded, ["val"]) == plain  # the trained statistics are back
    dice_by_site.main([str(run), "--parts", "val", "--adapt-bn"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny ") and out[1].startswith("tiny{adapted} ")


def test_every_variant_of_a_run_shares_one_loaded_checkpoint(dice_by_site, tiny_heart_run, monkeypatch, capsys):
    run = tiny_heart_run
    loads = []
    real = dice_by_site.load_model
    monkeypatch.setattr(dice_by_site, "load_model", lambda *a: loads.append(a) or real(*a))
    dice_by_site.main([str(run), "--nets", "--mean-of", "model,model", "--adapt-bn", "--parts", "val"])
    assert len(capsys.readouterr().out.splitlines()) == 4  # two networks' views, each plain and adapted
    assert len(loads) == 1
