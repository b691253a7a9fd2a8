"""CutMix consistency for segmentation (French et al., 2020): the student sees two unlabelled images
mixed by a box mask and must match the EMA teacher's predictions mixed by the same box.

Defaults: one box covering 25–50 % of the image, MSE consistency, weight 1, sigmoid ramp; the EMA teacher
predicts at test time.

Measurements behind the defaults: ``docs/evidence/cutmix.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from semiseg.methods.base import Batch, Nets, Progress, StepOut
from semiseg.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from semiseg.methods.registry import register
from semiseg.ssl.consistency import probability_mse
from semiseg.ssl.mixing import box_masks, mix
from semiseg.ssl.pseudo_labels import hard_labels, probabilities


class CutMixConfig(MeanTeacherConfig):
    weight: float = Field(1.0, ge=0)
    noise_std: float = Field(0.0, ge=0)
    box_area: tuple[float, float] = (0.25, 0.5)
    boxes: int = Field(1, ge=1)
    consistency: Literal["mse", "dice", "ce", "dice_ce"] = "mse"  # a loss name means hard pseudo labels


@register
class CutMix(MeanTeacher):
    name = "cutmix"
    summary = "Mean teacher whose student sees box-mixed unlabelled pairs and the same mix of teacher outputs."
    Config = CutMixConfig
    cfg: CutMixConfig

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        mode, x = self.ctx.label_mode, unlabelled.image
        with torch.no_grad():
            teacher_probs = probabilities(nets["teacher"](x), mode)
            masks = box_masks(x.shape[0], x.shape[2:], area=self.cfg.box_area, n_boxes=self.cfg.boxes,
                              device=x.device)
            # pair every image with the next one in the batch: one teacher pass covers both partners
            mixed_x = mix(x, x.roll(1, dims=0), masks)
            target = mix(teacher_probs, teacher_probs.roll(1, dims=0), masks)
        sup, student_logits = self.student_forward(nets, labelled, mixed_x, progress)
        if self.cfg.consistency == "mse":
            consistency = probability_mse(probabilities(student_logits, mode), target)
        else:
            consistency = self.ctx.loss(self.cfg.consistency)(student_logits, hard_labels(target, mode))
        weight = self.cfg.weight_at(progress)
        return StepOut(losses={"sup": sup, "consistency": weight * consistency},
                       logs={"consistency_weight": weight, "mixed_fraction": float(masks.float().mean())},
                       targets={"teacher": teacher_probs},  # before mixing, aligned with the batch as drawn
                       unlabelled=frozenset({"consistency"}))
