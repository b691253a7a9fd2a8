"""Ramp-up schedules for unsupervised loss weights, as functions of training progress.

Every ramp takes the current step ``t`` and the ramp length ``t_max`` (steps) and returns a factor in
[0, 1]; past ``t_max`` the factor is 1. A zero-length ramp is already at 1. Methods multiply the factor by
their maximum weight (λ_m in UCMT, w_u in MuST).
"""

from __future__ import annotations

import math
from collections.abc import Callable

Ramp = Callable[[float, float], float]


def _phase(t: float, t_max: float) -> float | None:
    """t / t_max clipped to [0, 1]; None means the ramp is over (or has zero length)."""
    if t_max <= 0 or t >= t_max:
        return None
    return max(0.0, t / t_max)


def linear_rampup(t: float, t_max: float) -> float:
    """t / t_max (MuST, Eq. 5)."""
    phase = _phase(t, t_max)
    return 1.0 if phase is None else phase


def sigmoid_rampup(t: float, t_max: float) -> float:
    """exp(−5 (1 − t/t_max)²): the "sigmoid" ramp of Laine & Aila, used by Mean Teacher and UA-MT code."""
    phase = _phase(t, t_max)
    return 1.0 if phase is None else math.exp(-5.0 * (1.0 - phase) ** 2)


def gaussian_rampup(t: float, t_max: float) -> float:
    """UCMT's Gaussian ramp-up λ(t)/λ_m = exp[−5 (1 − t/t_m)²] — the same curve as ``sigmoid_rampup``."""
    return sigmoid_rampup(t, t_max)


def cosine_rampup(t: float, t_max: float) -> float:
    """(1 − cos(π t/t_max)) / 2: smooth at both ends."""
    phase = _phase(t, t_max)
    return 1.0 if phase is None else 0.5 * (1.0 - math.cos(math.pi * phase))


RAMPS: dict[str, Ramp] = {
    "linear": linear_rampup,
    "sigmoid": sigmoid_rampup,
    "gaussian": gaussian_rampup,
    "cosine": cosine_rampup,
    "none": lambda t, t_max: 1.0,
}


def rampup(kind: str, t: float, t_max: float) -> float:
    """Look a ramp up by name (config values: linear, sigmoid, gaussian, cosine, none)."""
    if kind not in RAMPS:
        raise ValueError(f"unknown ramp {kind!r}; choose one of {', '.join(RAMPS)}")
    return RAMPS[kind](t, t_max)
