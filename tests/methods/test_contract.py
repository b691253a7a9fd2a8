"""The contract every registered method must pass, in 2D and 3D, for both label modes."""

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.checkpoint import load_checkpoint, save_checkpoint
from semiseg.engine.networks import build_nets, trainable_parameters, update_ema_net
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods

METHODS = sorted(available_methods())
K = 3


def _setup(name, dims, label_mode, options=None):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", f"train.method={name}"])
    ctx = MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=dims, in_channels=2,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = available_methods()[name](ctx, options or {})
    return cfg, ctx, method, build_nets(method, cfg, ctx, torch.device("cpu"))


def _batches(dims, label_mode, with_label=True):
    g = torch.Generator().manual_seed(0)
    shape = (2, 2, *([8] * dims))
    image = torch.randn(shape, generator=g)
    if label_mode == "multiclass":
        label = torch.randint(0, K, (2, *([8] * dims)), generator=g)
    else:
        label = (torch.rand((2, K, *([8] * dims)), generator=g) > 0.5).float()
    lab = Batch(image, label, ["a", "b"])
    unl = Batch(image.flip(-1), None, ["c", "d"])
    return lab, unl


def _nothing_confident(out):
    """Whether the step reports masks of what its targets keep and every one is empty."""
    return bool(out.masks) and not any(bool(mask.any()) for mask in out.masks.values())


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", METHODS)
def test_losses_finite_and_reach_trainable_parameters(name, dims, label_mode):
    cfg, ctx, method, nets = _setup(name, dims, label_mode)
    lab, unl = _batches(dims, label_mode)
    trainable = trainable_parameters(nets, method.networks())
    out = method.training_step(nets, lab, unl if method.uses_unlabelled else None, Progress(5, 10))
    while out is not None:  # every update of the step (UCMT chains a second one)
        assert out.losses, "a method must return at least one loss term"
        for term, value in out.losses.items():
            assert value.ndim == 0 and torch.isfinite(value), term
            if _nothing_confident(out) and float(value.detach()) == 0:
                continue  # an untrained net's step may keep no pixel (τ 0.95): an exact 0 teaches nothing, rightly
            grads = torch.autograd.grad(value, trainable, retain_graph=True, allow_unused=True)
            assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{term} reaches no trainable parameter"
        out = out.followup() if out.followup is not None else None


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["segpl", "dual_uncertainty", "must"])
def test_a_remapped_student_view_trains_in_2d_and_3d(name, dims):
    """``view_remap`` on every image (two channels, 2D and 3D): the step's losses stay finite."""
    _, _, method, nets = _setup(name, dims, "multiclass", {"student_view": "intensity", "view_remap": 1.0})
    lab, unl = _batches(dims, "multiclass")
    out = method.training_step(nets, lab, unl, Progress(9, 10))
    assert out.losses and all(torch.isfinite(value) for value in out.losses.values())


def _train(method, nets, lab, unl) -> None:
    """An early and a late step (staged methods snapshot their teacher in between), each an optimiser step per
    update, the EMA and the validation the engine makes: every net moves off its initial weights."""
    specs = method.networks()
    optimiser = torch.optim.SGD(trainable_parameters(nets, specs), lr=0.5)
    for step in (0, 9):
        out = method.training_step(nets, lab, unl if method.uses_unlabelled else None, Progress(step, 10))
        while out is not None:
            optimiser.zero_grad()
            sum(out.losses.values()).backward()
            optimiser.step()
            out = out.followup() if out.followup is not None else None
        for name, spec in specs.items():
            if spec.ema_of:
                update_ema_net(nets, name, spec, step=step + 1, total_steps=10)
        method.on_validation(nets, step + 1, 0.5 + step / 100)  # as the engine does (a method may keep a copy)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_round_trip_and_prediction_shape(name, dims, tmp_path):
    """Trained weights and method state survive a save and a load into freshly built (init-seeded) networks."""
    cfg, ctx, method, nets = _setup(name, dims, "multiclass")
    _train(method, nets, *_batches(dims, "multiclass"))
    x = torch.randn(2, 2, *([8] * dims))
    for net in nets.values():
        net.eval()
    expected = method.predict(nets, x)
    assert expected.shape == (2, K, *([8] * dims))
    save_checkpoint({"nets": {n: net.state_dict() for n, net in nets.items()}, "method": method.state_dict()},
                    tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    _, _, method2, nets2 = _setup(name, dims, "multiclass")
    for n, net in nets2.items():
        net.eval()
        fresh = {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(state["nets"][n])
        moved = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, fresh[k])]
        assert moved, f"net {n!r}: loading changed no weight, so the round trip would test nothing"
    method2.load_state_dict(state["method"])
    assert torch.allclose(method2.predict(nets2, x), expected)
