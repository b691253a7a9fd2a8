"""UA-MT (Yu et al., 2019): Mean Teacher whose consistency only counts where the teacher is certain.

The teacher sees the unlabelled batch T times under input noise, run as one batched forward; the
entropy of the mean prediction is the uncertainty, and a pixel enters the consistency loss when it is
below a threshold that ramps from ``threshold_start`` to ``threshold_end`` times the largest possible
entropy. The usual code writes that bound as ln 2 whatever the class count; here it is ln C (multiclass)
or K ln 2 (multilabel), so the threshold means the same share of "maximally unsure" for any task. The
consistency target is the mean of the T teacher predictions.

Defaults: T = 8 teacher passes, run as one batch; the threshold ramps from 0.75 to 1 × ln C (K ln 2 in
multilabel mode) instead of the usual fixed ln 2.

Measurements behind the defaults: ``docs/evidence/ua_mt.md``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from semiseg.methods.base import Batch, Nets, Progress, StepOut
from semiseg.methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from semiseg.methods.registry import register
from semiseg.ssl.consistency import input_noise, probability_mse
from semiseg.ssl.pseudo_labels import probabilities
from semiseg.ssl.ramps import rampup
from semiseg.ssl.uncertainty import entropy, max_entropy


class UAMTConfig(MeanTeacherConfig):
    passes: int = Field(8, ge=2, description="T stochastic teacher passes")
    threshold_start: float = Field(0.75, gt=0, le=1)
    threshold_end: float = Field(1.0, gt=0, le=1)


@register
class UAMT(MeanTeacher):
    name = "ua_mt"
    summary = "Uncertainty-aware Mean Teacher: consistency masked by the entropy of T noisy teacher passes."
    Config = UAMTConfig
    cfg: UAMTConfig

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        sup, student_logits = self.student_forward(nets, labelled, unlabelled.image, progress)
        student_probs = probabilities(student_logits, self.ctx.label_mode)
        t = self.cfg.passes
        with torch.no_grad():
            x = unlabelled.image
            noisy = input_noise(x.repeat(t, *([1] * (x.ndim - 1))), self.cfg.noise_std, self.cfg.noise_clip)
            samples = probabilities(nets["teacher"](noisy), self.ctx.label_mode).view(t, *student_probs.shape)
            target = samples.mean(dim=0)
            uncertainty = entropy(target, self.ctx.label_mode)
        ramp = rampup(self.cfg.rampup, progress.step, self.cfg.rampup_fraction * progress.total_steps)
        share = self.cfg.threshold_start + (self.cfg.threshold_end - self.cfg.threshold_start) * ramp
        threshold = share * max_entropy(self.ctx.num_classes, self.ctx.label_mode)
        mask = uncertainty < threshold
        weight = self.cfg.weight * ramp
        return StepOut(
            losses={"sup": sup, "consistency": weight * probability_mse(student_probs, target, mask)},
            logs={"consistency_weight": weight, "uncertainty_threshold": threshold,
                  "certain_fraction": float(mask.float().mean())},
            targets={"teacher": target}, masks={"teacher": mask}, unlabelled=frozenset({"consistency"}),
        )
