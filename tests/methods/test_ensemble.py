"""Deep ensemble: independent members, prediction = the members' mean probabilities."""

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method


def _setup(label_mode, members=3, dims=2):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", "train.method=ensemble"])
    ctx = MethodContext(label_mode=label_mode, num_classes=3, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = get_method("ensemble")(ctx, {"members": members})
    nets = build_nets(method, cfg, ctx, torch.device("cpu"))
    for net in nets.values():
        net.eval()
    return method, nets


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_prediction_is_the_mean_of_member_probabilities(label_mode):
    method, nets = _setup(label_mode)
    x = torch.randn(2, 1, 8, 8)
    members = [nets[f"member{i}"](x) for i in range(3)]
    act = (lambda z: torch.softmax(z, 1)) if label_mode == "multiclass" else torch.sigmoid
    expected = torch.stack([act(z) for z in members]).mean(0)
    assert torch.allclose(act(method.predict(nets, x)), expected, atol=1e-5)
    samples = method.predict_samples(nets, x, 7)
    assert samples.shape == (3, 2, 3, 8, 8)  # the M members, whatever n
    assert torch.allclose(samples.mean(0), expected)


def test_members_start_different_and_train_independently():
    method, nets = _setup("multiclass")
    w = [nets[f"member{i}"].heads[0].weight for i in range(3)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.randn(2, 1, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g))
    out = method.training_step(nets, lab, None, Progress(0, 10))
    assert set(out.losses) == {"member0", "member1", "member2"}
    grads = torch.autograd.grad(out.losses["member1"], list(nets["member0"].parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_member_count_is_validated():
    with pytest.raises(ConfigError, match="method.members"):
        _setup("multiclass", members=1)
