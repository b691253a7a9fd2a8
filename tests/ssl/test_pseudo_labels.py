import math

import pytest
import torch

from semiseg.ssl.pseudo_labels import confidence_mask, hard_labels, sharpen
from semiseg.ssl.uncertainty import entropy, max_entropy, mean_prediction_entropy


def _probs():
    # two pixels, three classes: a confident one and a uniform one
    return torch.tensor([[0.8, 1 / 3], [0.1, 1 / 3], [0.1, 1 / 3]]).reshape(1, 3, 2, 1)


def test_hard_labels_and_confidence_multiclass():
    p = _probs()
    assert hard_labels(p, "multiclass").flatten().tolist() == [0, 0]
    assert confidence_mask(p, "multiclass", 0.75).flatten().tolist() == [True, False]


def test_multilabel_confidence_ignores_pixels_near_half():
    p = torch.tensor([0.95, 0.85, 0.15, 0.6]).reshape(1, 1, 4, 1)
    # τ = 0.8: keep |p − 0.5| > 0.3
    assert confidence_mask(p, "multilabel", 0.8).flatten().tolist() == [True, True, True, False]
    assert hard_labels(p, "multilabel").flatten().tolist() == [1.0, 1.0, 0.0, 1.0]


def test_sharpen_by_hand():
    p = torch.tensor([0.6, 0.4]).reshape(1, 2, 1, 1)
    s = sharpen(p, "multiclass", 0.5).flatten()
    assert s.tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    m = sharpen(torch.tensor([0.6]).reshape(1, 1, 1, 1), "multilabel", 0.5).flatten()
    assert m.tolist() == pytest.approx([0.36 / 0.52])
    assert torch.allclose(sharpen(p, "multiclass", 1.0), p)


def test_entropy_by_hand_and_bounds():
    e = entropy(_probs(), "multiclass").flatten()
    assert e[0].item() == pytest.approx(-(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1)), rel=1e-5)
    assert e[1].item() == pytest.approx(math.log(3), rel=1e-5)
    assert max_entropy(3, "multiclass") == pytest.approx(math.log(3))
    half = torch.full((1, 2, 1, 1), 0.5)
    assert entropy(half, "multilabel").item() == pytest.approx(max_entropy(2, "multilabel"), rel=1e-5)


def test_entropy_of_mean_prediction():
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    assert mean_prediction_entropy([a, b], "multiclass").item() == pytest.approx(math.log(2), rel=1e-5)
    assert mean_prediction_entropy([a, a], "multiclass").item() == pytest.approx(0.0, abs=1e-6)


def test_probability_mse_by_hand_and_masked():
    from semiseg.ssl.consistency import input_noise, probability_mse

    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 2, 1)  # pixel 0: (1, 0); pixel 1: (0, 1)
    t = torch.full((1, 2, 2, 1), 0.5)
    assert probability_mse(s, t).item() == pytest.approx(0.25)
    mask = torch.tensor([[[True], [False]]])
    assert probability_mse(s, torch.tensor([[[[0.5], [0.0]], [[0.5], [1.0]]]]), mask).item() == pytest.approx(0.25)
    assert probability_mse(s, t, torch.zeros(1, 2, 1, dtype=torch.bool)).item() == 0.0
    x = torch.zeros(1000)
    noisy = input_noise(x, 0.1, 0.2)
    assert noisy.abs().max() <= 0.2 and noisy.std() > 0.05
    assert torch.equal(input_noise(x, 0.0, 0.2), x)
