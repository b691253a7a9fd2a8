"""train --init-from: a new run starts from a trained run's weights, or says why it cannot."""

import json

import pytest
import torch

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import Run
from semiseg.errors import ConfigError


def _cfg(tmp_path, name, *extra):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", "train.steps=2", "train.val_every=2", "train.batch_size=2",
        "train.unlabelled_batch_size=2", "train.warmup_steps=1", f"output.root={tmp_path}", f"output.name={name}",
        *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    Run.build(_cfg(root, "src"), progress=False).fit()
    return root / "src"


def _assert_same(net, weights):
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_init_from_gives_the_source_weights_to_same_named_and_predicting_nets(source, tmp_path):
    weights = load_checkpoint(source / "checkpoints" / "best.pt")["nets"]["model"]
    fresh = Run.build(_cfg(tmp_path, "fresh", "seed=5"), progress=False).trainer.nets["model"]
    assert not all(torch.equal(v, weights[k]) for k, v in fresh.state_dict().items())
    run = Run.build(_cfg(tmp_path, "tuned", "seed=5", f"model.init_from={source}"), progress=False)
    _assert_same(run.trainer.nets["model"], weights)
    cps = Run.build(_cfg(tmp_path, "cps", "train.method=cps", f"model.init_from={source}"), progress=False)
    for name in ("net1", "net2"):
        _assert_same(cps.trainer.nets[name], weights)
    assert run.fit()["steps"] == 2


def test_init_from_a_run_with_other_widths_or_no_run_is_a_clear_error(source, tmp_path):
    with pytest.raises(ConfigError, match="net 'model' of method 'supervised' does not match"):
        Run.build(_cfg(tmp_path, "wide", "model.widths=[4, 16]", f"model.init_from={source}"), progress=False)
    with pytest.raises(ConfigError, match="give a trained run folder"):
        Run.build(_cfg(tmp_path, "none", f"model.init_from={tmp_path / 'nothing'}"), progress=False)
    assert not (tmp_path / "wide").exists()
    assert main(["train", "--resume", str(source), "--init-from", str(source)]) == 2


def test_init_from_says_which_nets_came_from_where_and_the_report_names_source_and_split(source, tmp_path, capsys):
    split_file = source / "split.json"
    run = Run.build(_cfg(tmp_path, "vi", "train.method=segpl_vi", f"model.init_from={source}",
                         f"split.file={split_file}"), progress=False)
    said = capsys.readouterr().err
    assert f"initialised from {source.resolve()} (best.pt of a 'supervised' run): model <- model" in said
    assert "not matched, initialised fresh: threshold" in said
    run.fit()
    run.evaluate()
    report = (tmp_path / "vi" / "report.md").read_text()
    assert f"- initialised from: {source.resolve()}" in report and "model <- model" in report
    assert f"- split file: {split_file}" in report


def test_init_from_cps_run_names_the_source_nets_it_did_not_use(tmp_path):
    cps_root = tmp_path / "cps_src"
    Run.build(_cfg(cps_root, "cps", "train.method=cps"), progress=False).fit()
    run = Run.build(_cfg(tmp_path, "sup", f"model.init_from={cps_root / 'cps'}"), progress=False)
    record = json.loads((run.run_dir / "init_from.json").read_text())
    assert record["nets"] == {"model": "net1"} and record["unused"] == ["net2"] and record["fresh"] == []


@pytest.mark.parametrize(("override", "named"), [
    ("model.dim=3", "model.dim=2 in the source, 3 here"),
    ("model.widths=[4, 16]", "model.widths=[4, 8] in the source, [4, 16] here"),
    ("data.options={n_cases: 6, dim: 2, seed: 0, channels: 2}", "the data differs (image channels or classes)"),
])
def test_a_mismatch_names_the_setting_that_differs(source, tmp_path, override, named):
    extra = ["model.widths=[4, 8, 8, 8]", "data.options={n_cases: 6, dim: 3, size: 16, seed: 0}"] \
        if override == "model.dim=3" else []
    with pytest.raises(ConfigError) as error:
        Run.build(_cfg(tmp_path, "bad", override, *extra, f"model.init_from={source}"), progress=False)
    assert named in str(error.value)


@pytest.mark.parametrize(("recorded", "expected"), [({"predict_with": "students"}, "student1"), ({}, "teacher")])
def test_init_from_a_ucmt_run_starts_from_the_network_that_predicted_there(source, tmp_path, recorded, expected):
    from semiseg.engine.checkpoint import save_checkpoint

    state = load_checkpoint(source / "checkpoints" / "best.pt")
    weights = state["nets"]["model"]
    nets = {name: {k: v + i if v.is_floating_point() else v for k, v in weights.items()}
            for i, name in enumerate(("student1", "student2", "teacher"))}
    fake = tmp_path / "ucmt_run"
    (fake / "checkpoints").mkdir(parents=True)
    save_checkpoint({**state, "method": "ucmt", "nets": nets, "method_state": recorded,
                     "config": {**state["config"], "method": {}}}, fake / "checkpoints" / "best.pt")
    run = Run.build(_cfg(tmp_path, "tuned", f"model.init_from={fake}"), progress=False)
    _assert_same(run.trainer.nets["model"], nets[expected])
