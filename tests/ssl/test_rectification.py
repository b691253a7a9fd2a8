"""Uncertainty rectification (dual-uncertainty Eq. 2-4, URPC's normalised form) against hand-computed values."""

import math

import pytest
import torch

from semiseg.ssl.rectification import cross_entropy_map, rectified_loss
from semiseg.ssl.uncertainty import kl_divergence_logits


def _maps(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, len(values), 1)


def test_rectified_loss_eq4_by_hand():
    loss, d = _maps([1.0, 2.0]), _maps([0.0, math.log(2.0)])
    # exp(−D) = (1, 1/2): mean(w·L) = (1 + 1) / 2 = 1; mean(D) = ln 2 / 2
    assert rectified_loss(loss, d).item() == pytest.approx(1.0 + math.log(2.0) / 2)
    # URPC divides by mean(w) = 3/4
    assert rectified_loss(loss, d, normalise=True).item() == pytest.approx(1.0 / 0.75 + math.log(2.0) / 2)


def test_rectified_loss_gradients_reach_both_maps():
    loss, d = _maps([1.0, 2.0]).requires_grad_(), _maps([0.0, math.log(2.0)]).requires_grad_()
    rectified_loss(loss, d).backward()
    # ∂/∂L = exp(−D)/N, ∂/∂D = (1 − exp(−D)·L)/N with N = 2 pixels
    assert loss.grad.flatten().tolist() == pytest.approx([0.5, 0.25])
    assert d.grad.flatten().tolist() == pytest.approx([0.0, 0.0])  # 1 − 1·1 and 1 − ½·2
    with pytest.raises(ValueError, match="differ"):
        rectified_loss(_maps([1.0]), _maps([1.0, 2.0]))


def test_eq2_kl_between_decoders_by_hand():
    main = torch.tensor([0.8, 0.2]).reshape(1, 2, 1, 1).log()  # logits whose softmax is (0.8, 0.2)
    aux = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1).log()
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert kl_divergence_logits(main, aux, "multiclass").item() == pytest.approx(expected, abs=1e-6)
    assert kl_divergence_logits(main, main, "multiclass").item() == pytest.approx(0.0, abs=1e-6)
    # multilabel: the channels are Bernoulli variables and their KLs add up (sigmoid(log 4) = 0.8)
    bern = 2 * (0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5))
    assert kl_divergence_logits(torch.full((1, 2, 1, 1), math.log(4.0)), torch.zeros(1, 2, 1, 1),
                                "multilabel").item() == pytest.approx(bern, abs=1e-6)


def test_eq3_cross_entropy_map_by_hand():
    logits = torch.log(torch.tensor([[0.8, 0.5], [0.2, 0.5]])).reshape(1, 2, 2, 1)
    target = torch.tensor([[1, 0]]).reshape(1, 2, 1)
    ce = cross_entropy_map(logits, target, "multiclass")
    assert ce.shape == (1, 2, 1)
    assert ce.flatten().tolist() == pytest.approx([-math.log(0.2), -math.log(0.5)])
    # multilabel: binary CE averaged over channels; logit 0 costs ln 2 whatever the label
    ml = cross_entropy_map(
        torch.zeros(1, 3, 2, 1), torch.tensor([1.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 1), "multilabel"
    )
    assert ml.flatten().tolist() == pytest.approx([math.log(2.0)] * 2)


@pytest.mark.parametrize("scale", [4.0, 20.0, 60.0])
def test_kl_from_logits_is_exact_at_confident_disagreeing_decoders(scale):
    # Two decoders, logits ±scale with opposite signs: p = softmax([s, -s]), q = softmax([-s, s]).
    # KL(p ‖ q) = (p1 − p2)·2s exactly, however confident (a p·log(q + ε) form would cap it near 18.4).
    main = torch.tensor([scale, -scale]).view(1, 2, 1, 1)
    aux = -main
    p1 = 1 / (1 + math.exp(-2 * scale))
    expected = (2 * p1 - 1) * 2 * scale
    exact = kl_divergence_logits(main, aux, "multiclass")
    assert exact.item() == pytest.approx(expected, rel=1e-6)
    main_ml, aux_ml = 2 * main[:, :1], 2 * aux[:, :1]  # one sigmoid channel at ±2s: the same Bernoulli pair
    assert kl_divergence_logits(main_ml, aux_ml, "multilabel").item() == pytest.approx(expected, rel=1e-6)


def test_kl_from_logits_gradient_flows_at_confident_disagreement():
    main = torch.tensor([40.0, -40.0]).view(1, 2, 1, 1).requires_grad_()
    aux = torch.tensor([-40.0, 40.0]).view(1, 2, 1, 1)
    kl_divergence_logits(main, aux, "multiclass").sum().backward()
    assert main.grad.abs().sum() > 0
