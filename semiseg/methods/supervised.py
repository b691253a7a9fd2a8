"""Supervised baseline: the configured loss on labelled data only.

The reference every comparison is measured against: ``train.loss`` (Dice + CE by default) on the labelled
batch, one U-Net. Every other method falls back to this step when a batch holds no unlabelled images.
"""

from __future__ import annotations

from semiseg.methods.base import Batch, Method, Nets, Progress, StepOut
from semiseg.methods.registry import register


@register
class Supervised(Method):
    name = "supervised"
    summary = "Labelled data only (Dice + CE by default); the lower bound every method must beat."

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        return self.supervised_step(nets, labelled, progress)
