"""Probabilities ↔ labels in the package's two label modes (the Inferer and every evaluation share these)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def logits_to_probs(logits: Tensor, label_mode: str) -> Tensor:
    """Softmax over classes (multiclass) or a sigmoid per channel (multilabel)."""
    return torch.softmax(logits, dim=1) if label_mode == "multiclass" else torch.sigmoid(logits)


def probs_to_label(probs: np.ndarray, label_mode: str) -> np.ndarray:
    """Hard labels in the package's label layout from ``(K, *spatial)`` probabilities."""
    if label_mode == "multiclass":
        return probs.argmax(axis=0).astype(np.uint8)
    return (probs > 0.5).astype(np.uint8)
