"""Learnt pseudo-label thresholds (SegPL-VI, Xu et al. 2022, Section 3): the head φ, sampling, the KL, thresholding.

A threshold ``T`` turns probabilities into pseudo labels (Eq. 1). SegPL-VI treats ``T`` as a latent
variable with an approximate posterior ``N(μ, σ)`` predicted by a small head φ (Eqs. 5-6), samples it by
reparameterisation and pulls the posterior towards a prior ``N(μ_β, σ_β)`` with the closed-form KL of Eq. 8.

How ``T`` acts on a prediction, in both label modes:

* ``multilabel`` (the paper's multi-channel sigmoid view): every channel is a binary segmentation and
  ``y'_k = 1(p_k > T)`` (Eq. 1).
* ``multiclass`` (softmax): the pseudo label is the argmax and ``T`` is a confidence threshold, a pixel
  takes part in the unsupervised loss only where ``max_k p_k > T``.

A hard comparison has no gradient with respect to ``T``, so with it the head only ever learns from the KL
term and drifts to the prior. ``threshold`` therefore offers two differentiable forms built on the surrogate
``sigmoid((p − T) / τ)``: ``soft`` uses the surrogate itself, ``straight_through`` keeps the hard value in
the forward pass (the loss is exactly the paper's) and takes the surrogate's gradient in the backward pass.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg.losses import one_hot

ThresholdMode = Literal["hard", "straight_through", "soft"]
THRESHOLD_MODES: tuple[str, ...] = ("hard", "straight_through", "soft")


class ThresholdHead(nn.Module):
    """φ of Eq. 5 (footnote 4): average pooling, one 3×3 conv block (conv, norm, ReLU), two 1×1 convs.

    Maps a ``(B, C, *spatial)`` input to one ``(μ, log σ)`` pair per image, shape ``(B,)`` each: the 1×1
    outputs are averaged over space. GroupNorm keeps the head independent of the batch size (one or two
    unlabelled images per step are common). The outputs start at the prior (biases at ``μ_β``, ``log σ_β``,
    small random weights), so training starts from ``T ~ N(μ_β, σ_β)`` while the posterior can already
    differ between images.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int,
        *,
        hidden: int = 16,
        pool: int = 4,
        prior_mean: float = 0.5,
        prior_std: float = 0.1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims, self.pool = spatial_dims, pool
        self.block = nn.Sequential(
            conv(in_channels, hidden, 3, padding=1), nn.GroupNorm(min(8, hidden), hidden), nn.ReLU(inplace=True)
        )
        self.mu = conv(hidden, 1, 1)
        self.log_sigma = conv(hidden, 1, 1)
        for out, bias in ((self.mu, prior_mean), (self.log_sigma, math.log(prior_std))):
            nn.init.normal_(out.weight, std=0.01)
            nn.init.constant_(out.bias, bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kernel = max(1, min(self.pool, *x.shape[2:]))
        pooled = (F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d)(x, kernel, ceil_mode=True)
        h = self.block(pooled)
        return self.mu(h).flatten(1).mean(1), self.log_sigma(h).flatten(1).mean(1)


def reparameterise(mu: Tensor, log_sigma: Tensor, eps: Tensor | None = None) -> Tensor:
    """``T = μ + σ ε`` with ``ε ~ N(0, 1)`` (Kingma & Welling), so gradients reach μ and log σ."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(log_sigma) * eps


def gaussian_kl(mu: Tensor, log_sigma: Tensor, prior_mean: float, prior_std: float) -> Tensor:
    """Eq. 8: ``KL(N(μ, σ) ‖ N(μ_β, σ_β)) = log σ_β − log σ + (σ² + (μ − μ_β)²) / (2 σ_β²) − 1/2``, elementwise."""
    if prior_std <= 0:
        raise ValueError(f"prior_std must be > 0, got {prior_std}")
    variance = torch.exp(2.0 * log_sigma)
    return math.log(prior_std) - log_sigma + (variance + (mu - prior_mean) ** 2) / (2.0 * prior_std**2) - 0.5


def _per_image(t: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or ``(B,)`` threshold shaped to broadcast against ``(B, ...)``."""
    t = t.to(like.dtype) if isinstance(t, Tensor) else torch.tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


def threshold(values: Tensor, t: Tensor | float, mode: ThresholdMode = "hard", temperature: float = 0.05) -> Tensor:
    """``1(values > t)`` in one of three forms (see module docstring); ``t`` is a scalar or one per image.

    ``values`` never receive gradient here (the E-step holds the model fixed); ``t`` does, except in ``hard``.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(THRESHOLD_MODES)}")
    values = values.detach()
    t = _per_image(t, values)
    hard = (values > t).to(values.dtype)
    if mode == "hard":
        return hard
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    soft = torch.sigmoid((values - t) / temperature)
    return soft if mode == "soft" else hard + (soft - soft.detach())  # exactly `hard` in the forward pass


def threshold_pseudo_labels(
    probs: Tensor, t: Tensor | float, label_mode: str, mode: ThresholdMode = "hard", temperature: float = 0.05
) -> tuple[Tensor, Tensor | None]:
    """Pseudo labels under threshold ``t``: ``(target, pixel_weight)`` in the layout the losses take.

    Multilabel: ``target = threshold(p, t)`` per channel (Eq. 1), no weight. Multiclass: ``target`` is the
    argmax and ``pixel_weight = threshold(max_k p_k, t)`` keeps the pixels confident beyond ``t``.
    """
    probs = probs.detach()
    if label_mode == "multilabel":
        return threshold(probs, t, mode, temperature), None
    confidence, target = probs.max(dim=1)
    return target, threshold(confidence, t, mode, temperature)


def threshold_samples(probs: Tensor, thresholds: Tensor, label_mode: str) -> Tensor:
    """Monte-Carlo predictions under sampled thresholds: ``(S, B)`` thresholds → ``(S, B, K, *spatial)``.

    Each sample is the E-step's pseudo label under one threshold draw, as a probability map: multilabel
    ``1(p_k > T_s)``; multiclass the one-hot argmax where ``max_k p_k > T_s`` and ``p`` itself where the
    model would not commit. Their mean estimates ``P_T(p > T)``, their variance the threshold uncertainty.
    """
    probs = probs.detach().float()
    out = []
    for t in thresholds.float():
        target, weight = threshold_pseudo_labels(probs, t, label_mode)
        if weight is None:
            out.append(target)
            continue
        onehot = one_hot(target, probs.shape[1]).to(probs.dtype)
        keep = weight.unsqueeze(1)
        out.append(keep * onehot + (1.0 - keep) * probs)
    return torch.stack(out)
