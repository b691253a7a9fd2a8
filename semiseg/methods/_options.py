"""Config fields several methods share (ramp of the unsupervised weight)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semiseg.methods.base import MethodConfig, Progress
from semiseg.ssl.ramps import rampup

RampKind = Literal["linear", "sigmoid", "gaussian", "cosine", "none"]


class RampedWeight(MethodConfig):
    """λ(t) = weight × ramp(t / (rampup_fraction × total steps))."""

    weight: float = Field(1.0, ge=0)
    rampup: RampKind = "sigmoid"
    rampup_fraction: float = Field(0.4, ge=0, le=1)

    def weight_at(self, progress: Progress) -> float:
        return self.weight * rampup(self.rampup, progress.step, self.rampup_fraction * progress.total_steps)
