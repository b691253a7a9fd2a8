"""Exponential moving averages of network weights (mean teachers and their variants)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def ema_update(
    target: nn.Module, sources: Sequence[nn.Module], decay: float, weights: Sequence[float] | None = None,
    buffers: str = "copy",
) -> None:
    """θ_t ← decay·θ_t + (1 − decay)·Σ_i w_i·θ_i, for parameters; with ``buffers="copy"`` the buffers (BN
    statistics) are copied from the weighted source mix too, so the teacher's normalisation follows the students.
    ``buffers="own"`` leaves them to the target's own train-mode passes, as most reference mean-teacher code
    does: a teacher whose weights blend several students (UCMT) has activations no student has, and the mix of
    the students' statistics normalises them wrongly in eval mode. ``buffers="average"`` averages the float
    buffers with the same decay as the weights (a weight average that only predicts and never runs in train
    mode, as FixMatch's code averages every variable), so its statistics match the weights they normalise.

    With one source and ``weights=None`` this is the classic mean teacher; several sources with equal
    weights give UCMT's teacher, the EMA of the students' average.
    """
    if not sources:
        raise ValueError("ema_update needs at least one source network")
    w = list(weights) if weights is not None else [1.0 / len(sources)] * len(sources)
    if len(w) != len(sources):
        raise ValueError(f"{len(w)} weights for {len(sources)} sources")
    if buffers not in ("copy", "own", "average"):  # checked before any weight moves
        raise ValueError(f"buffers must be 'copy', 'own' or 'average', got {buffers!r}")
    src_params = [dict(s.named_parameters()) for s in sources]
    for name, param in target.named_parameters():
        mixed = sum(wi * sp[name].detach() for wi, sp in zip(w, src_params, strict=True))
        param.mul_(decay).add_(mixed, alpha=1.0 - decay)
    if buffers == "own":
        return
    src_buffers = [dict(s.named_buffers()) for s in sources]
    for name, buf in target.named_buffers():
        if buf.dtype.is_floating_point:
            mixed = sum(wi * sb[name] for wi, sb in zip(w, src_buffers, strict=True))
            if buffers == "average":
                buf.mul_(decay).add_(mixed, alpha=1.0 - decay)
            else:
                buf.copy_(mixed)
        else:
            buf.copy_(src_buffers[0][name])


def ema_horizon(decay: float) -> float:
    """Updates an EMA with this decay effectively averages over, 1 / (1 − α): its mean age of weights.

    α = 0.99 looks back ~100 updates, α = 0.999 ~1000; a run shorter than that leaves the teacher weighted
    towards the early, still-random students (the warm-up min(1 − 1/(t + 1), α) only shortens the first steps).
    """
    return 1.0 / (1.0 - decay)


def ema_half_life(decay: float) -> float:
    """Updates after which a weight's share in the EMA has halved: ln 2 / −ln α."""
    return math.log(2.0) / -math.log(decay)


def decay_for_horizon(updates: float) -> float:
    """The α whose horizon 1 / (1 − α) is ``updates`` (e.g. a tenth of the run)."""
    return 1.0 - 1.0 / max(updates, 1.0)


def decay_for_half_life(updates: float) -> float:
    """The α after whose ``updates`` updates a weight's share has halved: 2^(−1/h), the inverse of ``ema_half_life``."""
    if updates <= 0:
        raise ValueError(f"an EMA half-life must be positive, got {updates}")
    return 0.5 ** (1.0 / updates)


def resolve_half_life(half_life: float, total_steps: int) -> float:
    """Steps of a half-life given in steps (≥ 1) or as a fraction of the run (< 1, e.g. 0.05 of ``train.steps``).

    A fraction keeps the teacher's memory the same share of the run at any run length, which a fixed α cannot.
    """
    return half_life * total_steps if half_life < 1 else half_life
