"""The reliability gate: which terms it scales, when it opens, that it never closes."""

from __future__ import annotations

import pytest
import torch

from semiseg.ssl.gate import ReliabilityGate, gate_unlabelled_terms


def test_only_the_terms_declared_unlabelled_are_scaled_whatever_their_names() -> None:
    losses = {"sup": torch.tensor(2.0), "sup_aux": torch.tensor(1.0), "consistency": torch.tensor(4.0),
              "member1": torch.tensor(3.0)}
    gated = gate_unlabelled_terms(losses, {"consistency", "sup_aux"}, 0.25)
    assert {k: float(v) for k, v in gated.items()} == {"sup": 2.0, "sup_aux": 0.25, "consistency": 1.0,
                                                       "member1": 3.0}
    assert gate_unlabelled_terms(losses, {"consistency"}, 1.0) is losses


def test_opens_at_threshold_ramps_and_never_closes() -> None:
    gate = ReliabilityGate(threshold=0.7, ramp_steps=10, smoothing=0.5)
    gate.observe(5, 0.6)
    gate.observe(10, 0.9)  # smoothed 0.75 ≥ 0.7: opens at step 10
    assert gate.reliability == pytest.approx(0.75) and gate.opened_at == 10
    assert gate.value(9) == 0.0 and gate.value(10) == 0.0
    assert gate.value(15) == pytest.approx(0.5) and gate.value(20) == 1.0 and gate.value(99) == 1.0
    gate.observe(25, 0.0)  # a later dip does not close it
    assert gate.opened_at == 10 and gate.value(30) == 1.0


def test_closed_gate_is_zero_and_state_round_trips() -> None:
    gate = ReliabilityGate(threshold=0.9, ramp_steps=0)
    gate.observe(5, 0.5)
    assert gate.value(1000) == 0.0
    gate.observe(10, 1.0)
    gate.observe(15, 1.0)  # 0.5 → 0.75 → 0.875 < 0.9: still closed
    assert not gate.is_open
    gate.observe(20, 1.0)  # 0.9375
    assert gate.value(20) == 1.0  # no ramp: full weight at once
    copy = ReliabilityGate(threshold=0.9, ramp_steps=0)
    copy.load_state_dict(gate.state_dict())
    assert copy.opened_at == 20 and copy.reliability == pytest.approx(0.9375)


class _Oracle:
    """A method whose prediction is the batch's own label as logits (a perfect predicting network)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def predict(self, nets, x):
        return self.logits


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_labelled_batch_dice_of_a_perfect_and_an_empty_prediction(label_mode: str) -> None:
    from semiseg.engine.reliability import labelled_batch_dice
    from semiseg.methods.base import Batch

    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[0, :4], label[1, 4:, :2] = 1, 2
    if label_mode == "multiclass":
        target, perfect = label, torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float() * 10
    else:  # channels: class 1, class 2
        target = torch.stack([label == 1, label == 2], dim=1).float()
        perfect = target * 20 - 10
    batch = Batch(image=torch.zeros(2, 1, 8, 8), label=target)
    classes = 3 if label_mode == "multiclass" else 2
    assert labelled_batch_dice(_Oracle(perfect), {}, batch, label_mode, classes) == pytest.approx(1.0)
    background = torch.zeros_like(perfect)
    if label_mode == "multiclass":
        background[:, 0] = 10
    else:
        background -= 10
    assert labelled_batch_dice(_Oracle(background), {}, batch, label_mode, classes) == 0.0
