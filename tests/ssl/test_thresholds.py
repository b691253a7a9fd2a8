"""Learnt thresholds: Eq. 8 by hand, reparameterisation, the three thresholding forms, the head φ."""

import math

import pytest
import torch

from semiseg.ssl.thresholds import (
    ThresholdHead,
    gaussian_kl,
    reparameterise,
    threshold,
    threshold_pseudo_labels,
    threshold_samples,
)


def test_gaussian_kl_eq8_by_hand():
    mu, log_sigma = torch.tensor(0.6, requires_grad=True), torch.tensor(math.log(0.2), requires_grad=True)
    kl = gaussian_kl(mu, log_sigma, prior_mean=0.5, prior_std=0.1)
    # log 0.1 − log 0.2 + (0.2² + 0.1²) / (2·0.1²) − 0.5
    assert kl.item() == pytest.approx(math.log(0.5) + 0.05 / 0.02 - 0.5, abs=1e-6)
    normal = torch.distributions.Normal
    reference = torch.distributions.kl_divergence(normal(0.6, 0.2), normal(0.5, 0.1))
    assert kl.item() == pytest.approx(reference.item(), abs=1e-6)
    kl.backward()
    assert mu.grad.item() == pytest.approx(0.1 / 0.01, rel=1e-5)  # (μ − μ_β) / σ_β²
    assert log_sigma.grad.item() == pytest.approx(-1 + 0.04 / 0.01, rel=1e-5)  # −1 + σ² / σ_β²


def test_gaussian_kl_is_zero_at_the_prior_and_refuses_bad_prior():
    assert gaussian_kl(torch.tensor(0.4), torch.tensor(math.log(0.1)), 0.4, 0.1).item() == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="prior_std"):
        gaussian_kl(torch.tensor(0.4), torch.tensor(0.0), 0.4, 0.0)


def test_reparameterise_is_mu_plus_sigma_eps_with_gradients():
    mu = torch.tensor([0.5, 0.3], requires_grad=True)
    log_sigma = torch.tensor([math.log(0.1), math.log(0.2)], requires_grad=True)
    eps = torch.tensor([1.0, -2.0])
    t = reparameterise(mu, log_sigma, eps)
    assert torch.allclose(t, torch.tensor([0.6, -0.1]))
    t.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(2))
    assert torch.allclose(log_sigma.grad, torch.tensor([0.1, -0.4]))  # σ ε


def _values():
    return torch.tensor([0.2, 0.45, 0.55, 0.9]).reshape(1, 1, 4, 1)


def test_hard_threshold_has_no_gradient():
    t = torch.tensor(0.5, requires_grad=True)
    out = threshold(_values(), t, "hard")
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    assert not out.requires_grad


def test_straight_through_is_hard_forward_soft_backward():
    t = torch.tensor(0.5, requires_grad=True)
    out = threshold(_values(), t, "straight_through", temperature=0.1)
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    out.sum().backward()
    s = torch.sigmoid((_values() - 0.5) / 0.1)
    assert t.grad.item() == pytest.approx(-(s * (1 - s) / 0.1).sum().item(), rel=1e-5)
    assert t.grad.item() < 0  # raising T removes foreground


def test_soft_threshold_values_and_per_image_thresholds():
    values = torch.tensor([[0.3, 0.6], [0.3, 0.6]]).reshape(2, 1, 2, 1)
    t = torch.tensor([0.25, 0.65])
    out = threshold(values, t, "soft", temperature=0.05)
    expected = torch.sigmoid((values - t.reshape(2, 1, 1, 1)) / 0.05)
    assert torch.allclose(out, expected)
    assert threshold(values, t, "hard").flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_threshold_refuses_unknown_mode_and_bad_temperature():
    with pytest.raises(ValueError, match="straight_through"):
        threshold(_values(), 0.5, "fuzzy")
    with pytest.raises(ValueError, match="temperature"):
        threshold(_values(), 0.5, "soft", temperature=0.0)


def test_pseudo_labels_multiclass_argmax_with_confidence_weight():
    probs = torch.tensor([[0.7, 0.4], [0.2, 0.35], [0.1, 0.25]]).reshape(1, 3, 2, 1)
    target, weight = threshold_pseudo_labels(probs, 0.5, "multiclass")
    assert target.flatten().tolist() == [0, 0]
    assert weight.flatten().tolist() == [1.0, 0.0]  # max p = 0.7 > T, 0.4 < T


def test_pseudo_labels_multilabel_eq1_per_channel():
    probs = torch.tensor([[0.7, 0.4], [0.2, 0.65]]).reshape(1, 2, 2, 1)
    target, weight = threshold_pseudo_labels(probs, 0.6, "multilabel")
    assert weight is None
    assert target.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_threshold_samples_by_hand():
    probs = torch.tensor([[0.7, 0.4], [0.3, 0.6]]).reshape(1, 2, 2, 1)
    thresholds = torch.tensor([[0.5], [0.65]])  # S = 2 draws for B = 1 image
    multilabel = threshold_samples(probs, thresholds, "multilabel")
    assert multilabel.shape == (2, 1, 2, 2, 1)
    assert multilabel[0].flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert multilabel[1].flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    multiclass = threshold_samples(probs, thresholds, "multiclass")
    # draw 0: both pixels commit (max 0.7, 0.6 > 0.5); draw 1: pixel 2 keeps its probabilities
    assert multiclass[0, 0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert torch.allclose(multiclass[1, 0, :, :, 0], torch.tensor([[1.0, 0.4], [0.0, 0.6]]))
    assert torch.allclose(multiclass.sum(2), torch.ones(2, 1, 2, 1))


def test_threshold_sample_mean_estimates_normal_cdf():
    probs = torch.tensor([0.35, 0.5, 0.62]).reshape(1, 1, 3, 1)
    g = torch.Generator().manual_seed(0)
    thresholds = reparameterise(torch.full((4000, 1), 0.5), torch.full((4000, 1), math.log(0.1)),
                                torch.randn(4000, 1, generator=g))
    mean = threshold_samples(probs, thresholds, "multilabel").mean(0).flatten()
    normal = torch.distributions.Normal(0.5, 0.1)
    assert torch.allclose(mean, normal.cdf(probs.flatten()), atol=0.03)


@pytest.mark.parametrize("dims", [2, 3])
def test_head_gives_one_posterior_per_image_starting_at_the_prior(dims):
    torch.manual_seed(0)
    head = ThresholdHead(3, dims, prior_mean=0.4, prior_std=0.1)
    x = torch.softmax(torch.randn(2, 3, *([6] * dims)), dim=1)
    mu, log_sigma = head(x)
    assert mu.shape == log_sigma.shape == (2,)
    assert torch.allclose(mu, torch.full((2,), 0.4), atol=0.05)
    assert torch.allclose(log_sigma.exp(), torch.full((2,), 0.1), rtol=0.1)
    assert not torch.equal(mu[0], mu[1])  # depends on the image
    assert head(x[:1, :, :2, :2])[0].shape == (1,)  # one image, smaller than the pooling window
    assert sum(p.numel() for p in head.parameters()) < 2000
