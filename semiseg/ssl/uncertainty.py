"""Pixel-wise uncertainty maps from probabilities, for both label modes.

Entropies are in nats. Multiclass: −Σ_k p_k ln p_k, at most ln K. Multilabel: the binary entropies of
the K channels summed, at most K ln 2. ``max_entropy`` gives that bound so thresholds can be written as
a fraction of it (UA-MT's threshold, scaled with ln C rather than hard-wired to ln 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-8


def entropy(probs: Tensor, label_mode: str) -> Tensor:
    """(B, K, *spatial) probabilities → (B, *spatial) entropy."""
    p = probs.float()
    if label_mode == "multiclass":
        return -(p * torch.log(p + _EPS)).sum(dim=1)
    q = 1.0 - p
    return -(p * torch.log(p + _EPS) + q * torch.log(q + _EPS)).sum(dim=1)


def max_entropy(num_classes: int, label_mode: str) -> float:
    """The largest value ``entropy`` can take: ln K (multiclass) or K ln 2 (multilabel)."""
    return math.log(num_classes) if label_mode == "multiclass" else num_classes * math.log(2.0)


def mean_prediction_entropy(prob_maps: list[Tensor] | Tensor, label_mode: str) -> Tensor:
    """Entropy of the mean of several predictions (UA-MT's T passes, UCMT's student + teacher, Eq. 8).

    ``prob_maps`` is a list of (B, K, *spatial) tensors or one (S, B, K, *spatial) tensor.
    """
    stacked = torch.stack(list(prob_maps)) if isinstance(prob_maps, list) else prob_maps
    return entropy(stacked.float().mean(dim=0), label_mode)


def predictive_variance(prob_maps: Tensor) -> Tensor:
    """Variance over samples of (S, B, K, *spatial) probabilities, summed over channels → (B, *spatial)."""
    return prob_maps.float().var(dim=0, unbiased=False).sum(dim=1)


def kl_divergence(p: Tensor, q: Tensor, label_mode: str) -> Tensor:
    """Pixel-wise KL(p ‖ q) of two (B, K, *spatial) probability maps → (B, *spatial).

    Multilabel sums the Bernoulli KLs of the channels. Used by URPC and dual-uncertainty rectification.
    """
    p, q = p.float(), q.float()
    if label_mode == "multiclass":
        return (p * (torch.log(p + _EPS) - torch.log(q + _EPS))).sum(dim=1)
    pc, qc = 1.0 - p, 1.0 - q
    return (p * (torch.log(p + _EPS) - torch.log(q + _EPS)) + pc * (torch.log(pc + _EPS) - torch.log(qc + _EPS))).sum(
        dim=1
    )
