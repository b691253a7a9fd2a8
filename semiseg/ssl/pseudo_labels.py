"""Pseudo labels from predictions, for both label modes.

Hard pseudo labels come out in the layout the losses take as targets: multiclass ``(B, *spatial)`` long
class indices, multilabel ``(B, K, *spatial)`` float 0/1. Confidence masks are ``(B, *spatial)`` bool.
"""

from __future__ import annotations

from torch import Tensor

from semiseg.losses import probabilities

__all__ = ["confidence_mask", "hard_labels", "probabilities", "sharpen"]  # probabilities: defined in losses


def hard_labels(probs: Tensor, label_mode: str, threshold: float = 0.5) -> Tensor:
    """Argmax (multiclass) or ``p > threshold`` per channel (multilabel); never carries gradient."""
    probs = probs.detach()
    if label_mode == "multiclass":
        return probs.argmax(dim=1)
    return (probs > threshold).float()


def confidence_mask(probs: Tensor, label_mode: str, tau: float, per_channel: bool = False) -> Tensor:
    """Pixels confident enough to trust: the one confidence mask every method uses.

    Multiclass ``(B, *spatial)``: ``max_k p_k ≥ τ``, FixMatch's ``1(max(q_b) ≥ τ)`` (Sohn et al. 2020, Eq. 4;
    its code keeps ``max ≥ τ`` too). Multilabel: a channel is confident when ``|p − 0.5| ≥ |0.5 − τ|``, the
    same comparison on the channel's binary distribution (``max(p, 1 − p) ≥ τ`` for τ ≥ 0.5); the mask is
    ``(B, K, *spatial)`` with ``per_channel`` (each channel kept or ignored on its own, FixMatch's Eq. 10), else
    ``(B, *spatial)`` with every channel confident. τ = 0.5 keeps every pixel.
    """
    probs = probs.detach()
    if label_mode == "multiclass":
        return probs.max(dim=1).values >= tau
    confident = (probs - 0.5).abs() >= abs(0.5 - tau)
    return confident if per_channel else confident.all(dim=1)


def sharpen(probs: Tensor, label_mode: str, temperature: float) -> Tensor:
    """Temperature sharpening p_k^{1/T} / Σ_j p_j^{1/T} (per channel against its complement in multilabel).

    T < 1 pushes predictions towards one-hot; T = 1 leaves them unchanged.
    """
    if temperature <= 0:
        raise ValueError(f"sharpening temperature must be > 0, got {temperature}")
    powered = probs.clamp_min(1e-12) ** (1.0 / temperature)
    if label_mode == "multiclass":
        return powered / powered.sum(dim=1, keepdim=True)
    complement = (1.0 - probs).clamp_min(1e-12) ** (1.0 / temperature)
    return powered / (powered + complement)

