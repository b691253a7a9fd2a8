"""Probabilities ↔ labels in the package's two label modes (the Inferer and every evaluation share these)."""

from __future__ import annotations

import numpy as np

from semiseg.losses import probabilities

logits_to_probs = probabilities  # the one definition, in semiseg.losses


def probs_to_label(probs: np.ndarray, label_mode: str) -> np.ndarray:
    """Hard labels in the package's label layout from ``(K, *spatial)`` probabilities."""
    if label_mode == "multiclass":
        return probs.argmax(axis=0).astype(np.uint8)
    return (probs > 0.5).astype(np.uint8)
