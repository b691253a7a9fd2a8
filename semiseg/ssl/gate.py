"""Reliability gate: unlabelled loss terms act only once the supervised part has become reliable.

Ramps are fractions of the run, so a short run switches its unlabelled terms on while the model is still poor,
and they then teach it its own early mistakes (every method tried ends below supervised at 100 steps). The gate
measures reliability without any label of the unlabelled data: the Dice of the predicting network on the
labelled training batch (eval mode, smoothed over observations). Until it crosses a threshold the unlabelled
terms are multiplied by 0; from then on the factor rises linearly to 1 over a ramp and stays there (the gate
never closes again, so a later dip does not make the schedule oscillate). The method's own ramp multiplies on
top of it.

Which terms are unlabelled is the method's own declaration, ``StepOut.unlabelled``; every other term is
labelled and never gated.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from torch import Tensor


def gate_unlabelled_terms(losses: dict[str, Tensor], unlabelled: Collection[str], gate: float) -> dict[str, Tensor]:
    """The loss terms with each one named in ``unlabelled`` multiplied by ``gate`` (labelled terms untouched)."""
    if gate >= 1.0:
        return losses
    return {name: value * gate if name in unlabelled else value for name, value in losses.items()}


@dataclass
class ReliabilityGate:
    """Opens when the smoothed labelled-batch Dice reaches ``threshold``, then ramps to 1 over ``ramp_steps``."""

    threshold: float
    ramp_steps: float
    smoothing: float = 0.5  # weight of the previous estimate at each observation
    reliability: float | None = None
    opened_at: int | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def observe(self, step: int, dice: float) -> None:
        """Fold one labelled-batch Dice into the estimate; open the gate at ``step`` when it is reached."""
        previous = self.reliability
        self.reliability = dice if previous is None else self.smoothing * previous + (1 - self.smoothing) * dice
        if not self.is_open and self.reliability >= self.threshold:
            self.opened_at = step

    def value(self, step: int) -> float:
        """The factor on unlabelled terms at ``step``: 0 while closed, then linear to 1."""
        if self.opened_at is None or step < self.opened_at:
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.opened_at) / self.ramp_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"reliability": self.reliability, "opened_at": self.opened_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reliability, self.opened_at = state["reliability"], state["opened_at"]
