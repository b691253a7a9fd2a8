"""Every recipe runs its paper's protocol (one joint pass, no gate) and the dry run names any departure."""

from pathlib import Path

import pytest

from semiseg.cli import main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "experiments" / "recipes").glob("*.yaml"))
PHANTOM = ["--set", "data.source=phantom", "--set", "model.widths=[4, 8]", "--set", "data.options={n_cases: 6, dim: 2}"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_runs_the_papers_protocol(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "protocol:   the papers' (one joint pass, unlabelled terms from step 0)" in out
    assert "(one joint pass)" in out and "gate:" not in out


@pytest.mark.parametrize("method", ["segpl", "segpl_vi", "fixmatch_mix", "rpg", "ucmt"])
def test_one_switch_is_the_papers_way_for_every_method(method, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dry-run", "--method", method, *PHANTOM]
    assert main(base) == 0
    assert "protocol:   departs from the papers' (one joint pass, no gate): separate passes" in capsys.readouterr().out
    assert main([*base, "--set", "train.unlabelled_pass=joint", "--set", "train.unlabelled_gate=off"]) == 0
    assert "protocol:   the papers'" in capsys.readouterr().out
