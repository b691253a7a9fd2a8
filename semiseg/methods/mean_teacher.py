"""Mean Teacher (Tarvainen & Valpola, 2017): an EMA teacher's predictions on a noisy copy of the
unlabelled images are the consistency target of the student (MSE of probabilities, ramped weight).

Defaults: weight 0.1, sigmoid ramp over 40 % of the run, EMA decay 0.99, input noise σ 0.1 clipped at 0.2.
The teacher is declared as an EMA network and updated by the engine after every optimiser update; its decay
warms up as min(1 − 1/(t+1), decay), as in the authors' code, so the teacher never sticks near its random
initialisation. The teacher predicts at test time (``predict_with``).

``ema_half_life`` states the teacher's memory directly: after that many steps (or that share of the run, when
below 1, e.g. 0.05) a student's weight in the teacher has halved; it overrides ``ema_decay`` and is converted
to α = 2^(−1/h) when the run is built. The paper's α = 0.99 is a half-life of ~69 steps, whatever the run length.

Measurements behind the defaults: ``docs/evidence/mean_teacher.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods._options import PassesOption, RampedWeight
from semiseg.methods.base import Batch, Method, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.consistency import input_noise, probability_mse
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import probabilities


class MeanTeacherConfig(RampedWeight, PassesOption):
    weight: float = Field(0.1, ge=0)  # the value of the UA-MT / SSL4MIS code
    ema_decay: float = Field(0.99, gt=0, lt=1)  # half-life ln 2 / −ln α ≈ 69 updates
    ema_half_life: float | None = Field(None, gt=0)  # steps, or a fraction of the run when < 1; overrides ema_decay
    noise_std: float = Field(0.1, ge=0)
    noise_clip: float = Field(0.2, ge=0)
    predict_with: Literal["teacher", "student"] = "teacher"


@register
class MeanTeacher(Method):
    name = "mean_teacher"
    summary = "EMA teacher on noisy unlabelled images; MSE consistency of probabilities, sigmoid ramp."
    Config = MeanTeacherConfig
    uses_unlabelled = True
    needs_unlabelled_batch = True
    cfg: MeanTeacherConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"student": NetSpec(),
                "teacher": NetSpec(trainable=False, ema_of=("student",), ema_decay=self.cfg.ema_decay,
                                   ema_half_life=self.cfg.ema_half_life)}

    def student_forward(self, nets: Nets, labelled: Batch, unlabelled_images: Tensor,
                        progress: Progress) -> tuple[Tensor, Tensor]:
        """Supervised loss and the student's logits on the unlabelled images, from one batched pass."""
        logits_l, logits_u = joint_forward(nets["student"], labelled.image, unlabelled_images,
                                           self.unlabelled_pass(progress))
        return self.ctx.supervised_loss(logits_l, labelled.label), logits_u

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        sup, student_logits = self.student_forward(nets, labelled, unlabelled.image, progress)
        student_probs = probabilities(student_logits, self.ctx.label_mode)
        with torch.no_grad():
            noisy = input_noise(unlabelled.image, self.cfg.noise_std, self.cfg.noise_clip)
            target = probabilities(nets["teacher"](noisy), self.ctx.label_mode)
        weight = self.cfg.weight_at(progress)
        return StepOut(losses={"sup": sup, "consistency": weight * probability_mse(student_probs, target)},
                       logs={"consistency_weight": weight}, targets={"teacher": target},
                       unlabelled=frozenset({"consistency"}))

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predict_with](x)
