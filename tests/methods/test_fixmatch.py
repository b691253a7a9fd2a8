"""FixMatch for segmentation: which pixels Eqs. 9-10 ignore, the masked CE, and the strong view."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method
from semiseg.methods.fixmatch import masked_ce, weak_targets


def _ctx(label_mode="multiclass", k=3):
    return MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode=label_mode,
        num_classes=k,
        spatial_dims=2,
        in_channels=1,
        supervised_loss=supervised_loss("ce", label_mode, False),
    )


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_eq9_multiclass_keeps_only_confident_pixels():
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.90, 0.05, 0.05], [0.3, 0.3, 0.4], [0.01, 0.98, 0.01]])
    probs = probs.T.reshape(1, 3, 4, 1)
    target, mask = weak_targets(probs, "multiclass", 0.95)
    assert target.flatten().tolist() == [0, 0, 2, 1]
    assert mask.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert weak_targets(probs, "multiclass", 0.8)[1].flatten().tolist() == [1.0, 1.0, 0.0, 1.0]


def test_eq10_multilabel_ignores_each_channel_near_one_half():
    probs = torch.tensor([0.97, 0.03, 0.6, 0.5, 0.85, 0.2]).reshape(1, 1, 6, 1)
    target, mask = weak_targets(probs, "multilabel", 0.8)  # keep |p − 0.5| ≥ 0.3: 0.2 is at τ, kept (Eq. 4's ≥)
    assert target.flatten().tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert mask.flatten().tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert torch.equal(weak_targets(probs, "multilabel", 0.2)[1], mask)  # |0.5 − τ| is symmetric in τ
    two = torch.tensor([[0.97, 0.6]]).T.reshape(1, 2, 1, 1)  # one pixel: channel 0 kept, channel 1 ignored
    assert weak_targets(two, "multilabel", 0.8)[1].flatten().tolist() == [1.0, 0.0]


def test_masked_ce_by_hand():
    logits = torch.randn(1, 3, 4, 1, generator=torch.Generator().manual_seed(0))
    target, mask = torch.tensor([[[0], [1], [2], [1]]]), torch.tensor([[[1.0], [0.0], [1.0], [0.0]]])
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    assert masked_ce(logits, target, mask, "multiclass").item() == pytest.approx(
        (per_pixel[0] + per_pixel[2]).item() / 2, abs=1e-6
    )
    ml_logits = torch.randn(1, 2, 3, 1, generator=torch.Generator().manual_seed(1))
    ml_target, ml_mask = torch.ones(1, 2, 3, 1), torch.zeros(1, 2, 3, 1)
    ml_mask[0, 1, 2, 0] = 1
    bce = F.binary_cross_entropy_with_logits(ml_logits[0, 1, 2, 0], torch.tensor(1.0))
    assert masked_ce(ml_logits, ml_target, ml_mask, "multilabel").item() == pytest.approx(bce.item(), abs=1e-6)
    nothing = masked_ce(ml_logits.requires_grad_(), ml_target, torch.zeros_like(ml_mask), "multilabel")
    assert nothing.item() == 0.0 and nothing.requires_grad


def _logit(p):
    p = torch.as_tensor(p)
    return torch.log(p / (1 - p))


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_fixmatch_ignores_the_right_pixels(label_mode):
    """No gradient reaches an ignored pixel (or channel); every kept one gets some."""
    if label_mode == "multiclass":
        probs = torch.tensor([[0.97, 0.02, 0.01], [0.6, 0.3, 0.1], [0.05, 0.9, 0.05], [0.01, 0.01, 0.98]])
        logits_u = probs.log().T.reshape(1, 3, 4, 1)
        kept = torch.tensor([True, False, False, True])[:, None].expand(4, 3)
    else:
        probs = torch.tensor([[0.97, 0.6, 0.02], [0.5, 0.99, 0.7], [0.1, 0.04, 0.96], [0.3, 0.5, 0.01]])
        logits_u = _logit(probs).T.reshape(1, 3, 4, 1)
        kept = (probs - 0.5).abs() > 0.45
    logits = torch.cat([torch.zeros(1, 3, 4, 1), logits_u])
    net = FixedLogits(logits)
    label = torch.zeros(1, 4, 1, dtype=torch.long) if label_mode == "multiclass" else torch.zeros(1, 3, 4, 1)
    method = get_method("fixmatch")(_ctx(label_mode), {"strong_augment": False, "tau": 0.95})
    out = method.training_step(
        {"model": net}, Batch(torch.zeros(1, 1, 4, 1), label), Batch(torch.zeros(1, 1, 4, 1)), Progress(0, 10)
    )
    (grad,) = torch.autograd.grad(out.losses["unsup"], net.logits)
    grad_u = grad[1, :, :, 0].T  # (pixel, channel)
    if label_mode == "multiclass":  # a pixel's softmax couples its channels: whole pixels are kept or ignored
        assert (grad_u[~kept] == 0).all() and (grad_u[kept[:, 0]].abs().sum(1) > 0).all()
    else:
        assert (grad_u[~kept] == 0).all() and (grad_u[kept] != 0).all()
    assert out.logs["confident"] == pytest.approx(
        kept[:, 0].float().mean().item() if label_mode == "multiclass" else kept.float().mean().item()
    )


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_strong_path_trains_on_the_strong_view(label_mode):
    k = 3
    net = nn.Conv2d(1, k, 1)
    calls = []

    def model(x):
        calls.append(x.shape[0])
        return net(x)

    g = torch.Generator().manual_seed(0)
    label = (
        torch.randint(0, k, (2, 8, 8), generator=g)
        if label_mode == "multiclass"
        else (torch.rand(2, k, 8, 8, generator=g) > 0.5).float()
    )
    method = get_method("fixmatch")(_ctx(label_mode, k), {})
    lab, unl = Batch(torch.randn(2, 1, 8, 8), label), Batch(torch.randn(3, 1, 8, 8))
    out = method.training_step({"model": model}, lab, unl, Progress(0, 10))
    assert calls == [3, 5] and torch.isfinite(out.losses["unsup"])
    # a random 1×1 conv is never confident at τ = 0.95: only CutOut's background boxes are kept
    _, (x, target, mask) = method.views(unl.image, torch.full((3, k, 8, 8), 1 / k))
    kept = mask.bool() if label_mode == "multiclass" else mask.bool().all(1)
    assert kept.any()
    background = target[kept] == 0 if label_mode == "multiclass" else target.permute(1, 0, 2, 3)[:, kept] == 0
    assert background.all()


def test_options_are_validated():
    with pytest.raises(ConfigError, match="mosaic"):
        get_method("fixmatch")(_ctx(), {"ops": ["rotate", "mosaic"]})
    with pytest.raises(ConfigError, match="tau"):
        get_method("fixmatch")(_ctx(), {"tau": 1.0})
    assert get_method("fixmatch")(_ctx(), {"ops": ["flip"], "n_ops": 1}).cfg.augmentation().ops == ("flip",)
