"""The EMA horizon a user can reason about: 1 / (1 − α) updates, the half-life, and the α for a horizon."""

import math

import pytest

from semiseg.ssl.ema import decay_for_horizon, ema_half_life, ema_horizon


def test_horizon_half_life_and_inverse_by_hand():
    assert ema_horizon(0.99) == pytest.approx(100.0)
    assert ema_horizon(0.999) == pytest.approx(1000.0)
    assert ema_half_life(0.5) == pytest.approx(1.0)
    assert ema_half_life(0.99) == pytest.approx(math.log(2) / -math.log(0.99))  # ≈ 69 updates
    assert decay_for_horizon(100) == pytest.approx(0.99)
    assert decay_for_horizon(0.5) == 0.0  # a horizon under one update means "follow the student"
