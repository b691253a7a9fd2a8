"""Supervised baseline: the configured loss on labelled data only.

The reference every comparison is measured against: ``train.loss`` (Dice + CE by default) on the labelled
batch, one U-Net. Every other method falls back to this step when a batch holds no unlabelled images.
``predict_average`` lets an average of its weights predict (``WeightAverageOption``), as FixMatch's may, so a
gain from averaging is measured on both sides of a comparison.
"""

from __future__ import annotations

from torch import Tensor

from semiseg.methods._options import WeightAverageOption
from semiseg.methods.base import Batch, Method, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register


class SupervisedConfig(WeightAverageOption):
    pass


@register
class Supervised(Method):
    name = "supervised"
    summary = "Labelled data only (Dice + CE by default); the lower bound every method must beat."
    Config = SupervisedConfig
    cfg: SupervisedConfig

    def networks(self) -> dict[str, NetSpec]:
        return self.cfg.with_average(super().networks(), "model")

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        return self.supervised_step(nets, labelled, progress)

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predictor("model")](x)
