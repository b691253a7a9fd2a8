"""Pixel-wise uncertainty maps from probabilities, for both label modes.

Entropies are in nats. Multiclass: −Σ_k p_k ln p_k, at most ln K. Multilabel: the binary entropies of
the K channels summed, at most K ln 2. ``max_entropy`` gives that bound so thresholds can be written as
a fraction of it (UA-MT's threshold, scaled with ln C rather than hard-wired to ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8


def entropy(probs: Tensor, label_mode: str) -> Tensor:
    """(B, K, *spatial) probabilities → (B, *spatial) entropy."""
    p = probs.float()
    if label_mode == "multiclass":
        return -(p * torch.log(p + _EPS)).sum(dim=1)
    q = 1.0 - p
    return -(p * torch.log(p + _EPS) + q * torch.log(q + _EPS)).sum(dim=1)


def mutual_information(samples: Tensor, label_mode: str) -> Tensor:
    """(S, B, K, *spatial) samples or ensemble members → (B, *spatial) H(mean) − mean_s H(s), in nats.

    The part of the predictive entropy that comes from disagreement between samples (BALD): zero where every
    sample says the same, large where confident samples contradict each other. Clipped at 0 against rounding.
    """
    p = samples.float()
    expected = torch.stack([entropy(s, label_mode) for s in p]).mean(dim=0)
    return (entropy(p.mean(dim=0), label_mode) - expected).clamp_min(0.0)


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


def log_distribution(logits: Tensor, label_mode: str) -> Tensor:
    """Log-probabilities of every outcome, exact at any confidence, with outcomes along dim 1.

    Multiclass: log-softmax over the K classes. Multilabel: [log σ(z); log σ(−z)], the log-probabilities of each
    channel's two outcomes (2K entries), so a sum over dim 1 of p·(log p − log q) is the sum of Bernoulli KLs.
    """
    z = logits.float()
    if label_mode == "multiclass":
        return F.log_softmax(z, dim=1)
    return torch.cat([F.logsigmoid(z), F.logsigmoid(-z)], dim=1)


def kl_from_log(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Pixel-wise KL(p ‖ q) = Σ p (log p − log q) over dim 1 of two ``log_distribution`` maps."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kl_divergence_logits(logits_p: Tensor, logits_q: Tensor, label_mode: str) -> Tensor:
    """Pixel-wise KL(p ‖ q) of two (B, K, *spatial) logit maps → (B, *spatial), exact at any confidence."""
    return kl_from_log(log_distribution(logits_p, label_mode), log_distribution(logits_q, label_mode))


def log_mean_distribution(log_distributions: Sequence[Tensor]) -> Tensor:
    """log of the mean of several distributions (URPC's p̄), from their logs: logsumexp − log S, exact."""
    stacked = torch.stack(list(log_distributions))
    return torch.logsumexp(stacked, dim=0) - math.log(stacked.shape[0])
