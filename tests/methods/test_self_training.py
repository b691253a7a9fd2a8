"""Self-training: rounds as stages, a frozen snapshot teacher, and a stage that survives checkpoint/resume."""

import csv

import pytest
import torch
from _weights import nudge, same_weights

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method


def _setup(options=None, label_mode="multiclass"):
    cfg = load_config(None, ["model.widths=[4, 8]", "train.method=self_training"])
    ctx = MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode=label_mode, num_classes=3, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = get_method("self_training")(ctx, options or {})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def _batches():
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.randn(2, 1, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g))
    return lab, Batch(torch.randn(2, 1, 8, 8, generator=g))


def test_round_boundaries():
    method, _ = _setup({"rounds": 2, "supervised_fraction": 0.4})
    assert method.round_starts(100) == [40, 70]
    assert [method.round_at(Progress(s, 100)) for s in (0, 39, 40, 69, 70, 99)] == [0, 0, 1, 1, 2, 2]


def test_supervised_stage_then_pseudo_labels_from_a_frozen_snapshot():
    method, nets = _setup({"rounds": 2, "supervised_fraction": 0.4})
    lab, unl = _batches()
    assert set(method.training_step(nets, lab, unl, Progress(10, 100)).losses) == {"sup"}
    out = method.training_step(nets, lab, unl, Progress(40, 100))
    assert set(out.losses) == {"sup", "unsup"} and out.logs["round"] == 1.0
    assert same_weights(nets["teacher"], nets["model"])
    buffers = {k: v.clone() for k, v in nets["teacher"].named_buffers()}
    nudge(nets["model"])  # a student update within the round leaves the teacher alone
    out = method.training_step(nets, lab, unl, Progress(50, 100))
    assert not same_weights(nets["teacher"], nets["model"])
    assert all(torch.equal(v, buffers[k]) for k, v in nets["teacher"].named_buffers())  # eval-mode labeller
    nets["teacher"].eval()
    target = nets["teacher"](unl.image).argmax(1)
    student_u = nets["model"](torch.cat([lab.image, unl.image]))[2:]
    assert out.losses["unsup"].item() == pytest.approx(method.ctx.supervised_loss(student_u, target).item(), rel=1e-5)
    method.training_step(nets, lab, unl, Progress(70, 100))
    assert method.round == 2 and same_weights(nets["teacher"], nets["model"])


def test_state_round_trip_does_not_resnapshot():
    method, nets = _setup()
    lab, unl = _batches()
    method.training_step(nets, lab, unl, Progress(45, 100))
    restored, nets2 = _setup()
    restored.load_state_dict(method.state_dict())
    assert restored.round == 1
    nudge(nets2["model"])
    restored.training_step(nets2, lab, unl, Progress(50, 100))  # still round 1: the teacher is not replaced
    assert not same_weights(nets2["teacher"], nets2["model"])
    fresh, nets3 = _setup()
    nudge(nets3["model"])
    fresh.training_step(nets3, lab, unl, Progress(50, 100))  # round 0 → 1: snapshot
    assert same_weights(nets3["teacher"], nets3["model"])
    with pytest.raises(ValueError, match="round"):
        restored.load_state_dict({"stage": 1})


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="method.rounds"):
        _setup({"rounds": 0})
    with pytest.raises(ConfigError, match="method.supervised_fraction"):
        _setup({"supervised_fraction": 1.0})


def _cfg(root):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 8, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=2", "model.widths=[4, 8]", "train.steps=8", "train.val_every=8", "train.log_every=1",
        "train.batch_size=2", "train.unlabelled_batch_size=2", "train.warmup_steps=1", "train.method=self_training",
        "method.rounds=2", "method.supervised_fraction=0.25", f"output.root={root}", "output.name=run",
    ])


def test_rounds_in_the_log_and_exact_resume_mid_round(tmp_path):
    straight = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    with (straight.run_dir / "log.csv").open() as fh:
        rounds = [float(r["round"]) for r in csv.DictReader(fh)]
    assert rounds == [0, 0, 1, 1, 1, 2, 2, 2]  # starts at steps 2 and 5 (0-based)

    def stop(step):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b"), progress=False, evaluate=False, on_step=stop)
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert a["method_state"] == b["method_state"] == {"round": 2}
    for net in ("model", "teacher"):
        assert all(torch.equal(a["nets"][net][k], b["nets"][net][k]) for k in a["nets"][net])
