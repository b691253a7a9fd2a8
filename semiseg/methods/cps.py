"""Cross pseudo supervision (Chen et al., 2021): two differently initialised networks, each trained on
the other's hard pseudo labels (cross-entropy, constant weight λ = 1.5 as in the paper).

Defaults: cross-entropy, λ = 1.5 constant from step 0, on labelled and unlabelled images; ``net1`` predicts at
test time.

Measurements behind the defaults: ``docs/evidence/cps.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods._options import PassesOption, RampedWeight, RampKind
from semiseg.methods.base import Batch, Method, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import hard_labels, probabilities


def agreement(labels_a: Tensor, labels_b: Tensor) -> float:
    """Share of pixels (multilabel: pixel-channels) where two networks' hard labels agree."""
    return float((labels_a == labels_b).float().mean())


class CPSConfig(RampedWeight, PassesOption):
    weight: float = Field(1.5, ge=0)
    rampup: RampKind = "none"
    loss: Literal["ce", "dice", "dice_ce"] = "ce"
    on_labelled: bool = True  # the paper applies the cross supervision to labelled images too
    predict_with: Literal["net1", "net2"] = "net1"


@register
class CPS(Method):
    name = "cps"
    summary = "Cross pseudo supervision: two differently initialised nets teach each other with hard labels."
    Config = CPSConfig
    uses_unlabelled = True
    needs_unlabelled_batch = True
    cfg: CPSConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"net1": NetSpec(init_seed_offset=1), "net2": NetSpec(init_seed_offset=2)}

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        # the cross term may read every row, so each net's two parts are put back together
        n = labelled.image.shape[0]
        passes = self.unlabelled_pass(progress)
        logits1, logits2 = (torch.cat(joint_forward(nets[name], labelled.image, unlabelled.image, passes))
                            for name in ("net1", "net2"))
        sup = sum(self.ctx.supervised_loss(logits[:n], labelled.label) for logits in (logits1, logits2))
        start = 0 if self.cfg.on_labelled else n
        cross = self.cross_loss(logits1[start:], logits2[start:])
        weight = self.cfg.weight_at(progress)
        mode = self.ctx.label_mode
        # what each net teaches the other on the unlabelled rows, and how often the two agree there
        taught = {name: hard_labels(probabilities(logits[n:].detach(), mode), mode)
                  for name, logits in (("net1", logits1), ("net2", logits2))}
        return StepOut(losses={"sup": sup, "cps": weight * cross},
                       logs={"cps_weight": weight, "agreement": agreement(taught["net1"], taught["net2"])},
                       targets=taught, unlabelled=frozenset({"cps"}))

    def cross_loss(self, logits1: Tensor, logits2: Tensor) -> Tensor:
        mode, loss = self.ctx.label_mode, self.ctx.loss(self.cfg.loss)
        pseudo1 = hard_labels(probabilities(logits1, mode), mode)
        pseudo2 = hard_labels(probabilities(logits2, mode), mode)
        return loss(logits1, pseudo2) + loss(logits2, pseudo1)

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predict_with](x)
