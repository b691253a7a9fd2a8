"""Messages about the gate and EMA teachers read right on runs of a few steps (issue 32)."""

from __future__ import annotations

import pytest

from semiseg.engine.reliability import OBSERVE_EVERY, closed_gate_note
from semiseg.ssl.gate import ReliabilityGate


def test_a_run_that_ended_before_the_gates_first_look_says_so_and_compares_nothing() -> None:
    note = closed_gate_note(ReliabilityGate(threshold=0.8, ramp_steps=0), steps=3)
    assert "never measured" not in note and "below train.unlabelled_gate_threshold" not in note
    assert f"after 3 step(s), before the gate's first labelled-batch Dice (measured every {OBSERVE_EVERY}" in note
    assert "lower the threshold" not in note  # no threshold was missed


def test_a_measured_gate_names_its_dice_and_the_threshold() -> None:
    gate = ReliabilityGate(threshold=0.8, ramp_steps=0)
    gate.observe(5, 0.61)
    note = closed_gate_note(gate, steps=10)
    assert "ended at 0.610, below train.unlabelled_gate_threshold=0.8" in note


@pytest.mark.parametrize(("steps", "expected", "absent"), [
    (2, "set method.ema_decay=0 (the teacher then copies its student", "e.g. 0,"),
    (1000, "e.g. 0.99, an average over ~100 updates, a tenth of the run", "ema_decay=0"),
])
def test_the_ema_warning_offers_a_decay_that_fits_the_run(capsys, steps, expected, absent) -> None:
    from semiseg.engine.checks import print_ema_warnings
    from semiseg.methods import MethodContext, get_method

    ctx = MethodContext(label_mode="multiclass", num_classes=2, spatial_dims=2, in_channels=1,
                        supervised_loss=lambda *a: None, include_background=False, unlabelled_pass="joint")
    method = get_method("mean_teacher")(ctx, {"ema_decay": 0.9999})
    print_ema_warnings(method, steps)
    err = capsys.readouterr().err
    assert expected in err and absent not in err
