"""Uncertainty rectification: weight a per-pixel loss by exp(−D) and minimise D itself.

D is a pixel-wise divergence between two predictions of the same image that should agree (two decoders in
dual-uncertainty self-training, one pyramid scale and the mean of all scales in URPC); it is computed with
``semiseg.ssl.uncertainty.kl_divergence_logits`` (both label modes). Pixels where the predictions disagree get a small
weight exp(−D) in the loss, and the added mean(D) keeps the network from buying a small loss with large
disagreement. Both D terms carry gradient: the divergence is learnt, not a fixed mask.

* dual-uncertainty self-training, Eq. 4: ``mean(exp(−D) · L_ce + D)`` (``rectified_loss``);
* URPC (Luo et al. 2021): ``mean(exp(−D) · L) / mean(exp(−D)) + mean(D)`` (``normalise=True``), which keeps
  the scale of the consistency term independent of how uncertain the batch is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8


def rectified_loss(loss_map: Tensor, divergence: Tensor, *, normalise: bool = False) -> Tensor:
    """mean(exp(−D)·L) (÷ mean(exp(−D)) when ``normalise``) + mean(D), for ``(B, *spatial)`` maps L and D."""
    if loss_map.shape != divergence.shape:
        raise ValueError(f"loss map {tuple(loss_map.shape)} and divergence {tuple(divergence.shape)} differ")
    weight = torch.exp(-divergence)
    weighted = (weight * loss_map).mean()
    if normalise:
        weighted = weighted / (weight.mean() + _EPS)
    return weighted + divergence.mean()


def cross_entropy_map(logits: Tensor, target: Tensor, label_mode: str) -> Tensor:
    """Per-pixel cross-entropy ``(B, *spatial)`` against hard (pseudo) labels (Eq. 3 of dual uncertainty).

    Multiclass: −log softmax of the target class (``target`` as class indices ``(B, *spatial)``). Multilabel:
    the binary cross-entropy of the K sigmoid channels, averaged over channels as in ``semiseg.losses``.
    """
    logits = logits.float()
    if label_mode == "multiclass":
        return F.cross_entropy(logits, target.long(), reduction="none")
    return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(dim=1)
