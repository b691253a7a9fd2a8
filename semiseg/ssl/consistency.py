"""Consistency losses and input noise shared by teacher–student methods."""

from __future__ import annotations

import torch
from torch import Tensor


def input_noise(x: Tensor, std: float, clip: float) -> Tensor:
    """x + clamp(N(0, std²), −clip, clip): the small input perturbation of Mean Teacher / UA-MT."""
    if std <= 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


def probability_mse(student: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared difference of two (B, K, *spatial) probability maps, averaged over channels.

    With a (B, *spatial) ``mask`` only masked pixels count (mean over them; an empty mask gives 0 that is
    still connected to ``student``).
    """
    per_pixel = (student.float() - target.float()).pow(2).mean(dim=1)
    if mask is None:
        return per_pixel.mean()
    m = mask.to(per_pixel.dtype)
    return (per_pixel * m).sum() / m.sum().clamp_min(1.0)
