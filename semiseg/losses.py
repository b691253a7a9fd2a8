"""Segmentation losses on network logits, for both label modes.

Conventions shared by every loss here:

* ``logits``: ``(B, K, *spatial)`` with 2 or 3 spatial axes, raw network outputs.
* ``label_mode="multiclass"``: softmax over the K channels. ``target`` is either a long tensor of
  class indices ``(B, *spatial)`` (``(B, 1, *spatial)`` is accepted too) — a *hard* target — or a
  float tensor ``(B, K, *spatial)`` of class probabilities — a *soft* target (one-hot labels,
  pseudo-labels, teacher predictions). A one-hot soft target gives exactly the hard-target loss.
* ``label_mode="multilabel"``: an independent sigmoid per channel; ``target`` is ``(B, K, *spatial)``
  with values in [0, 1] (any dtype).
* ``mask``: ``(B, *spatial)`` bool or 0/1. Only masked pixels count, e.g. the confident pixels of a
  pseudo-label. An all-zero mask gives a loss of exactly 0 that is still connected to ``logits``
  (zero gradients, never NaN), so a batch without confident pixels needs no special case.
* ``weight``: ``(B, *spatial)`` float >= 0, per-pixel weights (e.g. confidence). A pixel of weight 2
  counts like two copies of that pixel. Mask and weight may be combined; they multiply.

Definitions, with ``w`` the per-pixel weight (1 when neither mask nor weight is given):

* Dice loss ``= 1 - mean_k (2 I_k + smooth) / (S_k + smooth)`` with ``I_k = sum w p_k y_k`` and
  ``S_k = sum w p_k + sum w y_k``. With ``batch_dice=True`` the sums run over the batch and space
  together (stable with 2D slices where a class is absent from one sample); with ``False`` each
  sample gets its own Dice and the losses are averaged. ``include_background=False`` drops class 0
  from the mean in multiclass mode; multilabel has no background channel, so it is ignored there.
* Cross-entropy, per pixel: multiclass ``-sum_k y_k log softmax_k``; multilabel the binary
  cross-entropy averaged over the K channels. Reduced by the weighted mean
  ``sum(w l) / max(sum(w), eps)`` (a plain mean without mask and weight).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg.errors import ConfigError

LABEL_MODES = ("multiclass", "multilabel")
_EPS = 1e-8

LossFn = Callable[..., Tensor]

# Sums a batch Dice's statistics over the processes of a distributed run (None: one process).
_batch_total: Callable[[Tensor], Tensor] | None = None


@contextmanager
def batch_totals(total: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, batch Dice sums its intersections and sizes with ``total`` (a differentiable sum over
    the processes that share a global batch), so each process's loss is the Dice of the whole batch: a
    shard's Dice would be another loss, and averaging its gradients would not give one process's gradient."""
    global _batch_total
    previous, _batch_total = _batch_total, total
    try:
        yield
    finally:
        _batch_total = previous


def _check_label_mode(label_mode: str) -> None:
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode {label_mode!r} is not one of {LABEL_MODES}")


def _spatial_map(values: Tensor, logits: Tensor, name: str) -> Tensor:
    """Accept ``(B, *spatial)`` or ``(B, 1, *spatial)`` and return ``(B, *spatial)``."""
    expected = (logits.shape[0], *logits.shape[2:])
    if values.ndim == logits.ndim and values.shape[1] == 1:
        values = values[:, 0]
    if tuple(values.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(values.shape)}; expected {expected} for logits {tuple(logits.shape)}"
        )
    return values


def _is_hard(target: Tensor, label_mode: str) -> bool:
    """Multiclass integer targets are class indices; everything else is per-channel values."""
    return label_mode == "multiclass" and not (target.is_floating_point() or target.dtype == torch.bool)


def _soft_target(logits: Tensor, target: Tensor, label_mode: str) -> Tensor:
    """The target as a float ``(B, K, *spatial)`` tensor in the logits' dtype."""
    if _is_hard(target, label_mode):
        indices = _spatial_map(target, logits, "target").long()
        return one_hot(indices, logits.shape[1]).to(logits.dtype)
    if target.shape != logits.shape:
        raise ValueError(f"target has shape {tuple(target.shape)}; expected {tuple(logits.shape)} like the logits")
    return target.to(logits.dtype)


def _pixel_weights(logits: Tensor, mask: Tensor | None, weight: Tensor | None) -> Tensor | None:
    """Combined ``(B, *spatial)`` weight of mask and weight, or None when every pixel counts once."""
    combined = None
    if mask is not None:
        combined = _spatial_map(mask, logits, "mask").to(logits.dtype)
    if weight is not None:
        weight = _spatial_map(weight, logits, "weight").to(logits.dtype)
        combined = weight if combined is None else combined * weight
    return combined


def probabilities(logits: Tensor, label_mode: str) -> Tensor:
    """Softmax over classes (multiclass) or a sigmoid per channel (multilabel), in float32.

    The one place logits become probabilities: losses, pseudo labels and whole-case inference all call it.
    """
    logits = logits.float()
    return torch.softmax(logits, dim=1) if label_mode == "multiclass" else torch.sigmoid(logits)


def one_hot(indices: Tensor, num_classes: int) -> Tensor:
    """Class indices ``(B, *spatial)`` as float ``(B, K, *spatial)`` one-hot maps (channels first)."""
    return F.one_hot(indices.long(), num_classes).movedim(-1, 1).float()


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    label_mode: str = "multiclass",
    include_background: bool = True,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    batch_dice: bool = True,
    smooth: float = 1e-5,
) -> Tensor:
    """Soft Dice loss ``1 - mean_k (2 I_k + smooth) / (S_k + smooth)`` (see module docstring)."""
    _check_label_mode(label_mode)
    logits = logits.float()  # under AMP, sums over every pixel need float32 (a no-op without AMP)
    probs = probabilities(logits, label_mode)
    onehot = _soft_target(logits, target, label_mode)
    pixel_w = _pixel_weights(logits, mask, weight)
    if pixel_w is not None:
        pixel_w = pixel_w.unsqueeze(1)
        probs_w, onehot_w = probs * pixel_w, onehot * pixel_w
    else:
        probs_w, onehot_w = probs, onehot
    dims = (0, *range(2, logits.ndim)) if batch_dice else tuple(range(2, logits.ndim))
    intersection = (probs_w * onehot).sum(dims)
    sums = probs_w.sum(dims) + onehot_w.sum(dims)
    if batch_dice and _batch_total is not None:
        intersection, sums = _batch_total(torch.stack([intersection, sums]))
    per_class = (2.0 * intersection + smooth) / (sums + smooth)  # (K,) or (B, K)
    if label_mode == "multiclass" and not include_background:
        if logits.shape[1] < 2:
            raise ValueError("include_background=False needs at least one foreground channel")
        per_class = per_class[..., 1:]
    return 1.0 - per_class.mean()


def ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    label_mode: str = "multiclass",
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    include_background: bool = True,
    batch_dice: bool = True,
    smooth: float = 1e-5,
) -> Tensor:
    """Cross-entropy (softmax or per-channel sigmoid), weighted mean over pixels.

    ``include_background``, ``batch_dice`` and ``smooth`` are accepted and ignored so that every
    entry of ``LOSSES`` can be called with the same keywords whichever one a config picks.
    """
    del include_background, batch_dice, smooth
    _check_label_mode(label_mode)
    logits = logits.float()  # under AMP, log-softmax and the mean need float32 (a no-op without AMP)
    if _is_hard(target, label_mode):
        per_pixel = F.cross_entropy(logits, _spatial_map(target, logits, "target").long(), reduction="none")
    elif label_mode == "multiclass":
        per_pixel = F.cross_entropy(logits, _soft_target(logits, target, label_mode), reduction="none")
    else:
        soft = _soft_target(logits, target, label_mode)
        per_pixel = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(1)
    pixel_w = _pixel_weights(logits, mask, weight)
    if pixel_w is None:
        return per_pixel.mean()
    return (pixel_w * per_pixel).sum() / pixel_w.sum().clamp_min(_EPS)


def dice_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    label_mode: str = "multiclass",
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    include_background: bool = True,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    batch_dice: bool = True,
    smooth: float = 1e-5,
) -> Tensor:
    """``dice_weight * Dice + ce_weight * CE``: Dice handles class imbalance, CE gives smooth gradients."""
    dice = dice_loss(
        logits,
        target,
        label_mode=label_mode,
        include_background=include_background,
        mask=mask,
        weight=weight,
        batch_dice=batch_dice,
        smooth=smooth,
    )
    ce = ce_loss(logits, target, label_mode=label_mode, mask=mask, weight=weight)
    return dice_weight * dice + ce_weight * ce


LOSSES: dict[str, LossFn] = {"dice": dice_loss, "ce": ce_loss, "dice_ce": dice_ce_loss}


def segmentation_loss(name: str) -> LossFn:
    """The loss function a config string names (``model.loss`` style: dice | ce | dice_ce)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def supervised_loss(name: str, label_mode: str, include_background: bool) -> Callable[..., Tensor]:
    """The configured supervised loss as ``loss(logits, target, mask=None, weight=None)``."""
    return partial(segmentation_loss(name), label_mode=label_mode, include_background=include_background)
