"""EMA half-life: conversion to the decay, and the option reaching the teachers' NetSpecs."""

from __future__ import annotations

import pytest

from semiseg.methods.base import MethodContext, NetSpec
from semiseg.methods.registry import get_method
from semiseg.ssl.ema import decay_for_half_life, ema_half_life, resolve_half_life


def test_half_life_to_decay_hand_computed() -> None:
    assert decay_for_half_life(1) == pytest.approx(0.5)  # one update halves the old weights
    assert decay_for_half_life(2) == pytest.approx(0.5**0.5)  # two: 0.7071…
    assert decay_for_half_life(69.0) == pytest.approx(0.990005, abs=1e-6)  # the mean teacher's α = 0.99
    assert ema_half_life(decay_for_half_life(30)) == pytest.approx(30)
    with pytest.raises(ValueError, match="positive"):
        decay_for_half_life(0)


def test_fraction_resolves_against_run_length() -> None:
    assert resolve_half_life(0.05, 600) == pytest.approx(30)
    assert resolve_half_life(30, 600) == 30  # ≥ 1: already steps
    spec = NetSpec(ema_of=("student",), ema_half_life=0.05)
    assert spec.decay(600) == pytest.approx(0.5 ** (1 / 30))  # 0.97716
    assert spec.decay(6000) == pytest.approx(0.5 ** (1 / 300))
    assert NetSpec(ema_of=("student",), ema_decay=0.999).decay(600) == 0.999  # unset: α as given


def context() -> MethodContext:
    return MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=2, in_channels=1,
                         supervised_loss=lambda *a, **k: None)


@pytest.mark.parametrize("name", ["mean_teacher", "ua_mt", "cutmix", "cmt", "ucmt"])
def test_option_reaches_the_teacher_netspec(name: str) -> None:
    teacher = get_method(name)(context(), {"ema_half_life": 0.05}).networks()["teacher"]
    assert teacher.ema_half_life == 0.05
    updates = 2 if name == "ucmt" else 1  # UCMT updates its teacher twice per step
    assert teacher.decay(600) == pytest.approx(0.5 ** (1 / (30 * updates)))
    default = get_method(name)(context(), {}).networks()["teacher"]
    assert default.ema_half_life is None and default.decay(600) == default.ema_decay  # the paper's α stays


def test_half_life_must_be_positive() -> None:
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match="method.ema_half_life"):
        get_method("mean_teacher")(context(), {"ema_half_life": 0})


def test_half_life_replaces_a_too_long_decay_in_the_warning(capsys) -> None:
    from semiseg.engine.checks import print_ema_warnings

    print_ema_warnings(get_method("mean_teacher")(context(), {"ema_decay": 0.999}), 600)
    assert "method.ema_half_life" in capsys.readouterr().err
    print_ema_warnings(get_method("mean_teacher")(context(), {"ema_decay": 0.999, "ema_half_life": 0.05}), 600)
    assert capsys.readouterr().err == ""  # half-life 30 steps: α ≈ 0.977, horizon ~44 < 600


def test_plan_shows_the_resolved_decay() -> None:
    from semiseg.engine.plan import _net_note

    assert _net_note(NetSpec(ema_of=("s",), ema_half_life=0.05, trainable=False), 600) == \
        "  (EMA α 0.9772, half-life 30 updates, not trained)"
    assert _net_note(NetSpec(ema_of=("s",), ema_decay=0.999), 600) == "  (EMA α 0.999, half-life 693 updates)"
    assert _net_note(NetSpec(), 600) == ""
