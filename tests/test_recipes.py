"""The papers' recipes: each passes ``semiseg train --dry-run`` without its data; the dry run writes nothing."""

from pathlib import Path

import pytest
import yaml

from semiseg.cli import main
from semiseg.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "experiments" / "recipes").glob("*.yaml"))
EXPECTED = {"segpl_brats2018", "segpl_carve", "ucmt_isic", "ucmt_kvasir", "ucmt_la", "dual_uncertainty_acdc",
            "dual_uncertainty_prostate", "rpg_jsrt", "rpg_retouch", "must_brats", "must_wmh",
            "bcp_acdc", "bcp_la", "unimatch_acdc", "ad_mt_acdc", "ad_mt_la"}


def test_one_recipe_per_experiment_of_the_papers():
    assert {p.stem for p in RECIPES} == EXPECTED


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_the_dry_run_without_its_data(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    notes = yaml.safe_load(recipe.read_text())["recipe"]
    assert {"paper", "experiment", "metric", "reported", "network", "differences", "dataset", "data"} <= set(notes)
    assert main(["train", "--config", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MISSING" in out and "parameters" in out and f"method:     {load_config(recipe).train.method}" in out
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_dry_run_with_data_builds_everything_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dry-run", "--method", "ucmt", "--set", "data.source=phantom", "--set", "model.widths=[4, 8]",
            "--set", "data.options={n_cases: 6, dim: 2}", "--output", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "found: phantom" in out and "student1" in out and "teacher" in out
    # today's defaults for UCMT, shown before training
    assert "(separate passes until the gate opens, then one joint pass)" in out and "gate:" in out
    assert "steps:      1000 " in out and "auto: 2000 updates" in out  # the default length and why
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, match", [
    (["--set", "data.source=nnunet", "--set", "data.path=nowhere"], "recipe.dataset"),
    (["--set", "method.nonsense=1"], "nonsense"),
    (["--set", "model.widths=[4, 8]", "--set", "train.patch_size=[33, 32]"], "multiples of 2"),
])
def test_dry_run_reports_what_training_would(extra, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dry-run", "--set", "data.source=phantom", *extra]) == 2
    assert match in capsys.readouterr().err


def test_the_config_loader_ignores_the_recipe_block():
    cfg = load_config(RECIPES[0])
    assert "recipe" not in cfg.model_dump()
