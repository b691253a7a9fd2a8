import math

import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods
from semiseg.methods.cct import cross_consistency
from semiseg.nets import UNet

K = 3


def _method(options=None, dims=2, label_mode="multiclass"):
    ctx = MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    return available_methods()["cct"](ctx, options or {})


def _net(method, dims=2):
    torch.manual_seed(0)
    return UNet(dims, 1, K, widths=(4, 8, 16), **method.networks()["model"].overrides)


def _batches(dims=2, n=2):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, *([16] * dims), generator=g)
    label = torch.randint(0, K, (n, *([16] * dims)), generator=g)
    unl = torch.randn(n, 1, *([16] * dims), generator=g)
    return Batch(image, label), Batch(unl)


def test_cross_consistency_by_hand():
    main = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)
    aux = [torch.tensor([0.4, 0.6]).view(1, 2, 1, 1), torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)]
    # (0.04 + 0.0) / 2 decoders
    assert math.isclose(float(cross_consistency(main, aux)), 0.02, rel_tol=1e-6)


def test_one_auxiliary_decoder_per_perturbation():
    method = _method({"perturbations": ["uniform_noise", "gaussian_noise"], "aux_upsample": "interp"})
    assert method.networks()["model"].overrides == {"aux_decoders": ["interp", "interp"]}
    assert _net(method).num_decoders == 3


@pytest.mark.parametrize("dims", [2, 3])
def test_auxiliary_outputs_have_the_main_shape_and_differ(dims):
    method = _method(dims=dims)
    net = _net(method, dims)
    skips = net.encode(torch.randn(2, 1, *([16] * dims)))
    aux = method.aux_logits(net, skips)
    main = net.head(net.decode(skips)[0])
    assert len(aux) == 3
    for a in aux:
        assert a.shape == main.shape == (2, K, *([16] * dims))
        assert not torch.allclose(a, main)


def test_target_is_detached_and_the_encoder_learns_from_consistency():
    method = _method()
    net = _net(method)
    lab, unl = _batches()
    out = method.training_step({"model": net}, lab, unl, Progress(5, 10))
    assert set(out.losses) == {"sup", "consistency"} and out.logs["consistency_weight"] == pytest.approx(30.0)
    main_head, aux_head, encoder = net.heads[0].weight, net.heads[1].weight, net.encoder[0][0].weight
    grads = torch.autograd.grad(out.losses["consistency"], [main_head, aux_head, encoder], allow_unused=True)
    assert grads[0] is None  # the main decoder's prediction is a fixed target
    assert grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0


def test_perturb_skips_off_leaves_the_skips_clean():
    method = _method({"perturb_skips": False, "perturbations": ["spatial_dropout"]})
    net, seen = _net(method), []
    hook = method.hooks[0]
    method.hooks = [lambda level, x, role: seen.append((role, not torch.equal(hook(level, x, role), x))) or x]
    method.aux_logits(net, net.encode(torch.randn(2, 1, 16, 16)))
    changed = {role for role, differs in seen if differs}
    assert changed <= {"bottleneck"} and ("skip", False) in seen


def test_ramp_and_no_unlabelled_batch():
    method = _method()
    assert method.cfg.weight_at(Progress(0, 100)) == pytest.approx(30.0 * math.exp(-5.0))  # sigmoid ramp
    assert method.cfg.weight_at(Progress(5, 100)) == pytest.approx(30.0 * math.exp(-5.0 * 0.25))
    assert method.cfg.weight_at(Progress(10, 100)) == pytest.approx(30.0)
    lab, _ = _batches()
    out = method.supervised_step({"model": _net(method)}, lab, Progress(5, 10))
    assert set(out.losses) == {"sup"} and out.losses["sup"] > 0


def test_bad_options():
    with pytest.raises(ConfigError, match=r"method\.perturbations"):
        _method({"perturbations": []})
    with pytest.raises(ConfigError, match=r"method\.rampup"):
        _method({"rampup": "step"})


def test_zero_weight_is_supervised_only():
    method = _method({"weight": 0})
    lab, unl = _batches()
    out = method.training_step({"model": _net(method)}, lab, unl, Progress(5, 10))
    assert set(out.losses) == {"sup"}
