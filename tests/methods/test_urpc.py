"""URPC: the rectified pyramid consistency on hand-made inputs, the pyramid's scales and the step's wiring."""

import math

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method
from semiseg.methods.urpc import pyramid_consistency, upsample_logits


def _pixels(*columns):
    """(1, K, P, 1) probabilities from one K-vector per pixel."""
    return torch.tensor(columns, dtype=torch.float32).T.reshape(1, len(columns[0]), len(columns), 1)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_pyramid_consistency_by_hand():
    # pixel 0: the scales disagree; pixel 1: they agree (D = 0, squared difference 0). Logits = log p.
    s1, s2 = _pixels([0.8, 0.2], [0.5, 0.5]).log(), _pixels([0.4, 0.6], [0.5, 0.5]).log()
    mean = [0.6, 0.4]
    expected = 0.0
    for p in ([0.8, 0.2], [0.4, 0.6]):
        d = _kl(p, mean)  # D_s = KL(p_s ‖ p̄)
        sq = sum((a - b) ** 2 for a, b in zip(p, mean, strict=True)) / 2  # averaged over channels: 0.04
        w = math.exp(-d)
        expected += (w * sq / 2) / ((w + 1) / 2) + d / 2  # mean over the two pixels, normalised by mean(w)
    expected /= 2  # averaged over the S = 2 scales
    assert pyramid_consistency([s1, s2], "multiclass").item() == pytest.approx(expected, rel=1e-5)
    code = (
        sum(
            _kl(mean, p) / 2 + (math.exp(-_kl(mean, p)) * 0.02) / ((math.exp(-_kl(mean, p)) + 1) / 2)
            for p in ([0.8, 0.2], [0.4, 0.6])
        )
        / 2
    )  # the authors' code: KL(p̄ ‖ p_s)
    assert pyramid_consistency([s1, s2], "multiclass", "mean_to_scale").item() == pytest.approx(code, rel=1e-5)
    assert pyramid_consistency([s1, s1], "multiclass").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="two scales"):
        pyramid_consistency([s1], "multiclass")


def test_pyramid_consistency_multilabel_is_finite_and_zero_when_scales_agree():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert pyramid_consistency([a, b], "multilabel").item() > 0
    assert pyramid_consistency([a, a, a], "multilabel").item() == pytest.approx(0.0, abs=1e-6)


def test_pyramid_divergence_is_exact_when_a_scale_is_confidently_wrong():
    # Two scales at logits ±30 and one at ∓30: the mean p̄ ≈ [2/3, 1/3]. D of the odd scale is
    # KL([~0, ~1] ‖ [2/3, 1/3]) = log 3, computed from log-probabilities: finite, and the loss is positive.
    confident = torch.tensor([30.0, -30.0]).view(1, 2, 1, 1)
    scales = [confident, confident, -confident]
    exact = pyramid_consistency(scales, "multiclass").item()
    assert math.isfinite(exact) and exact > 0


def _setup(widths, options=None, dims=2):
    cfg = load_config(None, [f"model.widths={widths}", "train.method=urpc", f"model.dim={dims}"])
    ctx = MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode="multiclass",
        num_classes=3,
        spatial_dims=dims,
        in_channels=1,
        supervised_loss=supervised_loss("dice_ce", "multiclass", False),
    )
    method = get_method("urpc")(ctx, options or {})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def test_pyramid_is_the_decoder_levels_at_full_resolution():
    x = torch.randn(2, 1, 16, 16)
    method, nets = _setup("[4, 8, 16]")
    scales = nets["model"](x, return_scales=True).scales  # level 0, level 1, bottleneck
    pyramid = method.pyramid(scales, x.shape[2:])
    assert len(pyramid) == 2 and all(p.shape == (2, 3, 16, 16) for p in pyramid)
    assert torch.equal(pyramid[0], scales[0])
    assert len(_setup("[4, 8, 16]", {"include_bottleneck": True})[0].pyramid(scales, x.shape[2:])) == 3
    one_level, nets1 = _setup("[4, 8]")  # a single decoder level: the bottleneck completes the pyramid
    assert len(one_level.pyramid(nets1["model"](x, return_scales=True).scales, x.shape[2:])) == 2
    assert upsample_logits(torch.ones(1, 2, 2, 2, 2), (4, 4, 4)).shape == (1, 2, 4, 4, 4)


def test_training_step_wiring():
    method, nets = _setup("[4, 8, 16]")
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g))
    unl = Batch(torch.randn(2, 1, 16, 16, generator=g))
    progress = Progress(50, 100)
    out = method.training_step(nets, lab, unl, progress)
    w = 0.1 * math.exp(-5 * 0.5**2)  # Gaussian warm-up over the whole run
    assert out.logs["consistency_weight"] == pytest.approx(w)
    with torch.no_grad():
        x = torch.cat([lab.image, unl.image])
        pyramid = method.pyramid(nets["model"](x, return_scales=True).scales, x.shape[2:])
        sup = sum(method.ctx.supervised_loss(s[:2], lab.label) for s in pyramid) / len(pyramid)
        cons = pyramid_consistency([s[2:] for s in pyramid], "multiclass")
    assert out.losses["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert out.losses["consistency"].item() == pytest.approx(w * cons.item(), rel=1e-4)
    assert set(method.supervised_step(nets, lab, progress).losses) == {"sup"}
    plain, plain_nets = _setup("[4, 8, 16]", {"deep_supervision": False})
    plain_nets["model"].load_state_dict(nets["model"].state_dict())
    with torch.no_grad():
        main = nets["model"](x)[:2]  # BatchNorm in train mode: the same batch as the step
    sup_main = plain.training_step(plain_nets, lab, unl, progress).losses["sup"]
    assert sup_main.item() == pytest.approx(method.ctx.supervised_loss(main, lab.label).item(), rel=1e-4)
