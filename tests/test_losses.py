"""Losses: hand-computed values, target forms, mask/weight semantics, and a MONAI cross-check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from semiseg.errors import ConfigError
from semiseg.losses import LOSSES, ce_loss, dice_ce_loss, dice_loss, segmentation_loss


def tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """1x2x2x2 logits: pixel (0,0) has p0 = 3/4, every other pixel p0 = 1/2. Target [[0, 1], [1, 1]]."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = math.log(3.0)
    target = torch.tensor([[[0, 1], [1, 1]]])
    return logits, target


def onehot(target: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(target, k).movedim(-1, 1).float()


def random_case(shape: tuple[int, ...], k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], k, *shape[1:]), generator=gen) * 2
    target = torch.randint(0, k, shape, generator=gen)
    return logits, target


def test_dice_hand_computed() -> None:
    logits, target = tiny()
    # class 0: I = 3/4, S = (3/4 + 3 * 1/2) + 1 = 3.25; class 1: I = 1.5, S = (1/4 + 3 * 1/2) + 3 = 4.75
    dice0, dice1 = 1.5 / 3.25, 3.0 / 4.75
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - (dice0 + dice1) / 2)
    assert dice_loss(logits, target, smooth=0.0, include_background=False).item() == pytest.approx(1 - dice1)
    smooth = 0.5
    expected = 1 - ((1.5 + smooth) / (3.25 + smooth) + (3.0 + smooth) / (4.75 + smooth)) / 2
    assert dice_loss(logits, target, smooth=smooth).item() == pytest.approx(expected)


def test_ce_hand_computed() -> None:
    logits, target = tiny()
    expected = (math.log(4 / 3) + 3 * math.log(2.0)) / 4
    assert ce_loss(logits, target).item() == pytest.approx(expected)
    assert dice_ce_loss(logits, target, smooth=0.0).item() == pytest.approx(
        expected + 1 - (1.5 / 3.25 + 3.0 / 4.75) / 2
    )


def test_soft_target_cross_entropy_formula() -> None:
    logits, _ = tiny()
    soft = torch.full((1, 2, 2, 2), 0.5)
    soft[0, :, 0, 0] = torch.tensor([0.2, 0.8])
    logp = torch.log_softmax(logits, 1)
    expected = -(soft * logp).sum(1).mean()
    assert ce_loss(logits, soft).item() == pytest.approx(expected.item())
    # pixel (0, 0): -(0.2 log 3/4 + 0.8 log 1/4); the others: -log 1/2
    by_hand = (-(0.2 * math.log(0.75) + 0.8 * math.log(0.25)) + 3 * math.log(2.0)) / 4
    assert ce_loss(logits, soft).item() == pytest.approx(by_hand)


@pytest.mark.parametrize("shape", [(2, 5, 6), (2, 4, 5, 3)])
def test_hard_and_onehot_targets_agree(shape: tuple[int, ...]) -> None:
    logits, target = random_case(shape)
    soft = onehot(target, 3)
    for loss in LOSSES.values():
        hard_value = loss(logits, target)
        assert loss(logits, soft).item() == pytest.approx(hard_value.item(), rel=1e-6)
        assert loss(logits, target[:, None]).item() == pytest.approx(hard_value.item(), rel=1e-6)


def test_mask_restricts_to_masked_pixels() -> None:
    logits, target = random_case((2, 6, 8))
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[..., :3] = True
    for loss in LOSSES.values():
        masked = loss(logits, target, mask=mask)
        subset = loss(logits[..., :3], target[..., :3])
        assert masked.item() == pytest.approx(subset.item(), rel=1e-5)
        assert masked.item() != pytest.approx(loss(logits, target).item(), rel=1e-3)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_zero_mask_gives_exact_zero_with_grad(name: str, label_mode: str) -> None:
    logits, target = random_case((2, 4, 4))
    if label_mode == "multilabel":
        target = onehot(target, 3)
    logits.requires_grad_(True)
    loss = LOSSES[name](logits, target, label_mode=label_mode, mask=torch.zeros(2, 4, 4))
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_integer_weight_equals_duplicated_pixels(label_mode: str) -> None:
    """Weight 2 on the first column counts like that column appearing twice."""
    logits, target = random_case((1, 4, 5))
    if label_mode == "multilabel":
        target = onehot(target, 3)
    weight = torch.ones(1, 4, 5)
    weight[..., 0] = 2.0
    dup_logits = torch.cat([logits[..., :1], logits], dim=-1)
    dup_target = torch.cat([target[..., :1], target], dim=-1)
    for loss in LOSSES.values():
        weighted = loss(logits, target, label_mode=label_mode, weight=weight)
        duplicated = loss(dup_logits, dup_target, label_mode=label_mode)
        assert weighted.item() == pytest.approx(duplicated.item(), rel=1e-5)


def test_mask_and_weight_multiply() -> None:
    logits, target = random_case((2, 4, 4))
    mask = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5
    weight = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(2))
    for loss in LOSSES.values():
        both = loss(logits, target, mask=mask, weight=weight)
        assert both.item() == pytest.approx(loss(logits, target, weight=weight * mask).item(), rel=1e-6)


def test_ce_weighted_mean_formula() -> None:
    logits, target = random_case((1, 3, 3))
    weight = torch.arange(9.0).reshape(1, 3, 3)
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    expected = (weight * per_pixel).sum() / weight.sum()
    assert ce_loss(logits, target, weight=weight).item() == pytest.approx(expected.item(), rel=1e-6)


def test_include_background_only_affects_multiclass() -> None:
    logits, target = random_case((2, 5, 5))
    probs = torch.softmax(logits, 1)
    y = onehot(target, 3)
    per_class = 2 * (probs * y).sum((0, 2, 3)) / (probs.sum((0, 2, 3)) + y.sum((0, 2, 3)))
    no_bg = dice_loss(logits, target, include_background=False, smooth=0.0)
    assert no_bg.item() == pytest.approx(1 - per_class[1:].mean().item(), rel=1e-6)
    with_bg = dice_loss(logits, target, include_background=True, smooth=0.0)
    assert with_bg.item() == pytest.approx(1 - per_class.mean().item(), rel=1e-6)
    ml = [dice_loss(logits, y, label_mode="multilabel", include_background=b).item() for b in (True, False)]
    assert ml[0] == ml[1]


def test_multilabel_uses_sigmoid_per_channel() -> None:
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[-math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    # sigmoid: channel 0 -> [1/2, 3/4], channel 1 -> [1/4, 1/2]
    dice0 = 2 * (0.5 + 0.75) / (1.25 + 2)
    dice1 = 2 * 0.5 / (0.75 + 1)
    got = dice_loss(logits, target, label_mode="multilabel", smooth=0.0)
    assert got.item() == pytest.approx(1 - (dice0 + dice1) / 2)
    bce = [-math.log(0.5), -math.log(0.75), -math.log(0.75), -math.log(0.5)]
    assert ce_loss(logits, target, label_mode="multilabel").item() == pytest.approx(sum(bce) / 4)
    overlapping = torch.ones_like(target)  # both channels on at once: impossible in multiclass
    assert torch.isfinite(dice_ce_loss(logits, overlapping, label_mode="multilabel"))


def test_multilabel_accepts_integer_targets() -> None:
    logits, target = random_case((2, 3, 3, 3))
    y = onehot(target, 3)
    for loss in LOSSES.values():
        as_float = loss(logits, y, label_mode="multilabel")
        as_uint8 = loss(logits, y.to(torch.uint8), label_mode="multilabel")
        assert as_uint8.item() == pytest.approx(as_float.item())


def test_batch_dice_false_averages_per_sample() -> None:
    logits, target = random_case((3, 4, 4))
    target[0] = 0  # classes 1 and 2 absent from sample 0: per-sample and batch Dice differ
    per_sample = torch.stack([dice_loss(logits[i : i + 1], target[i : i + 1]) for i in range(3)]).mean()
    assert dice_loss(logits, target, batch_dice=False).item() == pytest.approx(per_sample.item(), rel=1e-6)
    assert dice_loss(logits, target, batch_dice=True).item() != pytest.approx(per_sample.item(), rel=1e-3)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("shape", [(2, 6, 6), (2, 4, 4, 4)])
def test_gradients_finite_even_for_extreme_logits(shape: tuple[int, ...], label_mode: str) -> None:
    logits, target = random_case(shape)
    if label_mode == "multilabel":
        target = onehot(target, 3)
    logits = (logits * 100).requires_grad_(True)
    weight = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    for loss in LOSSES.values():
        value = loss(logits, target, label_mode=label_mode, weight=weight, batch_dice=False)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 5, 6, 4)])
def test_dice_matches_monai(shape: tuple[int, ...]) -> None:
    logits, target = random_case(shape, k=4)
    smooth = 1e-3
    monai_loss = DiceLoss(
        softmax=True, to_onehot_y=True, include_background=True, batch=True, smooth_nr=smooth, smooth_dr=smooth
    )
    expected = monai_loss(logits, target[:, None])
    assert dice_loss(logits, target, smooth=smooth).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_ce_weights_combine_the_two_terms() -> None:
    logits, target = random_case((2, 4, 4))
    dice, ce = dice_loss(logits, target), ce_loss(logits, target)
    combined = dice_ce_loss(logits, target, dice_weight=0.3, ce_weight=2.0)
    assert combined.item() == pytest.approx(0.3 * dice.item() + 2.0 * ce.item(), rel=1e-6)


def test_registry_and_errors() -> None:
    assert segmentation_loss("dice") is dice_loss
    assert segmentation_loss("ce") is ce_loss
    assert segmentation_loss("dice_ce") is dice_ce_loss
    logits, target = random_case((1, 4, 4))
    for name in LOSSES:  # one keyword set works for whichever loss a config picks
        segmentation_loss(name)(logits, target, label_mode="multiclass", include_background=False)
    with pytest.raises(ConfigError, match="dice_ce"):
        segmentation_loss("focal")
    with pytest.raises(ConfigError, match="label_mode"):
        dice_loss(logits, target, label_mode="binary")
    with pytest.raises(ValueError, match="target"):
        ce_loss(logits, target[:, :3])
    with pytest.raises(ValueError, match="mask"):
        dice_loss(logits, target, mask=torch.ones(1, 3, 4))
