"""UniMatch: mixed pseudo labels follow the images' boxes, the loss weights, the feature-perturbation stream."""

import dataclasses

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets, trainable_parameters
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress
from semiseg.methods.unimatch import UniMatch, cutmix_boxes

K = 3


def _ctx(label_mode="multiclass", dims=2):
    return MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=dims, in_channels=1,
                         supervised_loss=supervised_loss("dice_ce", label_mode, False))


def _nets(method, dims=2):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", "train.method=unimatch"])
    return build_nets(method, cfg, method.ctx, torch.device("cpu"))


def test_boxes_are_drawn_with_their_probability_and_area():
    images = torch.zeros(6, 1, 20, 20)
    assert not cutmix_boxes(images, (0.02, 0.4), 0.0).any()
    boxes = cutmix_boxes(images, (0.1, 0.2), 1.0)
    areas = boxes.flatten(1).float().mean(1)
    assert ((areas > 0.05) & (areas < 0.25)).all()


def test_each_strong_view_and_its_labels_are_mixed_by_the_same_box_with_the_previous_image():
    torch.manual_seed(0)
    method = UniMatch(_ctx(), {"n_ops": 0, "box_probability": 1.0, "box_area": (0.2, 0.4)})
    image = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 12, 12).clone()  # image i is the constant i
    target = torch.arange(4).view(4, 1, 1).expand(4, 12, 12).clone() % K
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(4, 1, 1).expand(4, 12, 12).clone()
    x, t, m, box = method.mixed_view(image, target, mask)
    for i in range(4):
        partner = (i - 1) % 4
        pasted = x[i, 0] == partner
        assert torch.equal(pasted, box[i]) and pasted.any() and (~pasted).any()
        assert (t[i][pasted] == partner % K).all() and (t[i][~pasted] == i % K).all()
        assert (m[i][pasted] == mask[partner, 0, 0]).all() and (m[i][~pasted] == mask[i, 0, 0]).all()


def test_weak_labels_keep_pixels_whose_top_probability_reaches_tau():
    method = UniMatch(_ctx(), {"tau": 0.95})
    p = torch.tensor([[0.96, 0.02, 0.02], [0.90, 0.05, 0.05], [0.01, 0.01, 0.98]])  # three pixels
    logits = p.log().T.reshape(1, K, 1, 3)
    target, mask = method.weak_labels(logits)
    assert target.tolist() == [[[0, 0, 2]]] and mask.tolist() == [[[1.0, 0.0, 1.0]]]


class _Ctx(MethodContext):
    def loss(self, name):
        assert name == self.expected  # type: ignore[attr-defined]
        return self.dice  # type: ignore[attr-defined]


@pytest.mark.parametrize("loss", ["dice", "ce"])
def test_the_loss_is_the_codes_weighted_sum_halved(loss):
    values = iter([1.0, 2.0, 4.0])  # L_s1, L_s2, L_fp in the order the step computes them

    def dice(logits, target, mask=None):
        return logits.sum() * 0 + next(values)

    ctx = _Ctx(**dataclasses.asdict(_ctx()) | {"supervised_loss": lambda logits, target: logits.sum() * 0 + 8.0})
    object.__setattr__(ctx, "dice", dice)
    object.__setattr__(ctx, "expected", loss)  # the unlabelled terms use the loss the option names
    method = UniMatch(ctx, {} if loss == "dice" else {"loss": loss})
    nets = _nets(method)
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.randn(2, 1, 8, 8, generator=g), torch.randint(0, K, (2, 8, 8), generator=g))
    out = method.training_step(nets, lab, Batch(torch.randn(3, 1, 8, 8, generator=g)), Progress(1, 10))
    losses = {k: float(v.detach()) for k, v in out.losses.items()}
    assert losses == {"sup": 0.5 * 8.0, "unsup_strong": 0.5 * 0.25 * (1.0 + 2.0), "unsup_fp": 0.5 * 0.5 * 4.0}


def test_without_dropout_the_perturbed_stream_is_the_weak_prediction():
    method = UniMatch(_ctx(), {"fp_dropout": 0.0, "unlabelled_pass": "separate"})
    net = _nets(method)["model"]
    x_l, x_u = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 8, 8)
    _, weak, perturbed = method.weak_pass(net, x_l, x_u, "separate")
    assert torch.allclose(weak, perturbed)
    method = UniMatch(_ctx(), {"fp_dropout": 0.5, "unlabelled_pass": "separate"})
    _, weak, perturbed = method.weak_pass(net, x_l, x_u, "separate")
    assert not torch.allclose(weak, perturbed)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("dims", [2, 3])
def test_every_term_reaches_the_network_once_pixels_are_confident(dims, label_mode):
    method = UniMatch(_ctx(label_mode, dims), {"tau": 0.34 if label_mode == "multiclass" else 0.51})
    nets = _nets(method, dims)
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, *([8] * dims))
    label = (torch.randint(0, K, (2, *([8] * dims)), generator=g) if label_mode == "multiclass"
             else (torch.rand(2, K, *([8] * dims), generator=g) > 0.5).float())
    out = method.training_step(nets, Batch(torch.randn(shape, generator=g), label),
                               Batch(torch.randn(shape, generator=g)), Progress(1, 10))
    assert out.logs["confident"] > 0
    params = trainable_parameters(nets, method.networks())
    for term, value in out.losses.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), term
