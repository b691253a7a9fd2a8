"""Pseudo labels from predictions, for both label modes.

Hard pseudo labels come out in the layout the losses take as targets: multiclass ``(B, *spatial)`` long
class indices, multilabel ``(B, K, *spatial)`` float 0/1. Confidence masks are ``(B, *spatial)`` bool.
"""

from __future__ import annotations

import torch
from torch import Tensor


def probabilities(logits: Tensor, label_mode: str) -> Tensor:
    """Softmax over classes (multiclass) or a sigmoid per channel (multilabel), in float32."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if label_mode == "multiclass" else torch.sigmoid(logits)


def hard_labels(probs: Tensor, label_mode: str, threshold: float = 0.5) -> Tensor:
    """Argmax (multiclass) or ``p > threshold`` per channel (multilabel); never carries gradient."""
    probs = probs.detach()
    if label_mode == "multiclass":
        return probs.argmax(dim=1)
    return (probs > threshold).float()


def confidence_mask(probs: Tensor, label_mode: str, tau: float) -> Tensor:
    """Pixels confident enough to trust.

    Multiclass: ``max_k p_k ≥ τ``. Multilabel: every channel is far enough from 0.5, i.e.
    ``|p − 0.5| > |0.5 − τ|`` (FixMatch's multi-label form; τ = 0.5 keeps every pixel).
    """
    probs = probs.detach()
    if label_mode == "multiclass":
        return probs.max(dim=1).values >= tau
    return ((probs - 0.5).abs() > abs(0.5 - tau)).all(dim=1)


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


def to_onehot(labels: Tensor, label_mode: str, num_classes: int) -> Tensor:
    """Hard labels as float ``(B, K, *spatial)`` one-hot maps (multilabel labels pass through)."""
    if label_mode == "multilabel":
        return labels.float()
    return torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).float()
