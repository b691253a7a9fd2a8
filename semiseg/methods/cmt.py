"""Collaborative mean teacher (UCMT paper, Section 3.3): two students and a teacher.

"Initialised with different weights" needs care when training from scratch: the authors' students share
an ImageNet-pretrained backbone and only their classifiers are initialised afresh, so the average of
their weights (Eq. 6) is a sensible network. Averaging two independently initialised networks is not
(the teacher collapses: Dice 0 on the demo). ``student_init="shared_body"`` (default) reproduces the
authors' situation — one common random body, different heads; ``"independent"`` initialises everything
apart.

Table 4's ablation is configuration: ``architecture`` "sts" (two students + teacher, CMT), "ts" (one
student + teacher: MT with hard labels) or "ss" (two students: CPS); ``cps`` / ``mts`` switch the terms.
``teacher_update="code"`` reproduces the authors' code, whose teacher follows 0.99·student1 +
0.01·student2 instead of the average, with ``teacher_supervised=False`` (their teacher has no loss).

The teacher's BatchNorm statistics are its own (its train-mode passes; the EMA moves only weights), as in the
reference mean-teacher code: a teacher blending two students has activations neither has, and the mix of their
statistics normalises them wrongly in eval mode (the teacher collapsed).

Measurements behind the defaults: ``docs/evidence/cmt.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from semiseg.methods._options import PassesOption, RampedWeight, RampKind
from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.cps import agreement
from semiseg.methods.ensemble import mean_prediction
from semiseg.methods.registry import register
from semiseg.ssl.joint import Passes, joint_forward
from semiseg.ssl.pseudo_labels import hard_labels, probabilities

TEACHER_WEIGHTS = {"paper": (0.5, 0.5), "code": (0.99, 0.01)}


class CMTConfig(RampedWeight, PassesOption):
    architecture: Literal["sts", "ts", "ss"] = "sts"
    cps: bool = True
    mts: bool = True
    weight: float = Field(1.0, ge=0)  # λ_m; the paper does not give it
    rampup: RampKind = "gaussian"
    rampup_fraction: float = Field(1.0, ge=0, le=1)  # t_m: "the maximum iteration in training"
    ema_decay: float = Field(0.999, gt=0, lt=1)  # half-life ln 2 / −ln α ≈ 693 updates
    ema_half_life: float | None = Field(None, gt=0)  # steps, or a fraction of the run when < 1; overrides ema_decay
    # "paper": Eq. 6, the EMA of the students' weight average; "code" (default): the authors' code, 0.99·student1 +
    # 0.01·student2. Two students drifting apart early in a run average into a poor teacher (module docstring).
    # UCMT inherits it.
    teacher_update: Literal["paper", "code"] = "code"
    teacher_supervised: bool = True
    loss: Literal["dice", "ce", "dice_ce"] = "dice"  # L_seg of the paper: Dice ("we choose dice loss")
    # which loss the labelled terms use: "method" is ``loss`` above, as in the paper (L_s and L_u both Dice);
    # "train" is the run's ``train.loss``, the supervised term every other method and the supervised baseline share
    supervised_loss: Literal["method", "train"] = "method"
    # which network segments at test time: "teacher" (the paper: "only the teacher model is required in the testing
    # stage"; student 1 in architecture "ss") or "students", the mean of the students' probabilities
    predict_with: Literal["teacher", "students"] = "teacher"
    student_init: Literal["shared_body", "independent"] = "shared_body"

    @model_validator(mode="after")
    def _terms_fit_architecture(self) -> CMTConfig:
        if self.architecture == "ts" and self.cps:
            raise ValueError("method.cps needs two students; with architecture 'ts' set method.cps=false")
        if self.architecture == "ss" and self.mts:
            raise ValueError("method.mts needs a teacher; with architecture 'ss' set method.mts=false")
        if not (self.cps or self.mts):
            raise ValueError("enable method.cps or method.mts (with neither, this is the supervised baseline)")
        return self


@dataclass
class CMTOutputs:
    """What one pass of the three nets leaves behind (UCMT's UMIX reads the probabilities)."""

    losses: dict[str, Tensor]
    student_probs: dict[str, tuple[Tensor, Tensor]]  # net name → detached probabilities (labelled, unlabelled)
    teacher_probs_l: Tensor | None
    teacher_probs_u: Tensor | None
    teacher_pseudo_u: Tensor | None
    taught: dict[str, Tensor] = field(default_factory=dict)  # each net's hard labels on x_u (StepOut.targets)

    @property
    def unlabelled(self) -> frozenset[str]:
        """The terms on unlabelled images (StepOut.unlabelled): CPS between the students, MTS from the teacher."""
        return frozenset(self.losses) & {"cps", "mts"}

    def agreement(self) -> dict[str, float]:
        """Share of unlabelled pixels where the two students' hard labels agree (absent with one student)."""
        students = [v for k, v in self.taught.items() if k != "teacher"]
        return {"agreement": agreement(*students)} if len(students) == 2 else {}


class CMTCore:
    """The loss of Eq. 2–7 for any architecture of Table 4, shared by ``cmt`` and ``ucmt``."""

    def __init__(self, method: Method, cfg: CMTConfig) -> None:
        self.ctx, self.cfg = method.ctx, cfg
        self.students = ["student1"] if cfg.architecture == "ts" else ["student1", "student2"]
        self.has_teacher = cfg.architecture != "ss"

    def networks(self) -> dict[str, NetSpec]:
        if self.cfg.student_init == "shared_body":
            specs = {name: NetSpec(init_seed_offset=1, head_seed_offset=i + 1) for i, name in enumerate(self.students)}
        else:
            specs = {name: NetSpec(init_seed_offset=i + 1) for i, name in enumerate(self.students)}
        if self.has_teacher:
            weights = TEACHER_WEIGHTS[self.cfg.teacher_update] if len(self.students) == 2 else (1.0,)
            specs["teacher"] = NetSpec(trainable=self.cfg.teacher_supervised, ema_of=tuple(self.students),
                                       ema_decay=self.cfg.ema_decay, ema_weights=weights, init_seed_offset=3,
                                       ema_half_life=self.cfg.ema_half_life,
                                       ema_buffers="own")  # BN statistics from its own passes (module docstring)
        return specs

    def prediction_nets(self) -> list[str]:
        """The networks whose mean probability is the prediction."""
        if self.cfg.predict_with == "students":
            return list(self.students)
        return ["teacher"] if self.has_teacher else ["student1"]

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        names = self.prediction_nets()
        return nets[names[0]](x) if len(names) == 1 else mean_prediction(nets, names, x, self.ctx.label_mode)

    def step(self, nets: Nets, x_l: Tensor, y_l: Tensor, x_u: Tensor, weight: float, passes: Passes,
             teacher_pseudo_u: Tensor | None = None, need_teacher_l: bool = False) -> CMTOutputs:
        """Losses on one batch; ``teacher_pseudo_u`` replaces the teacher's pass on x_u (UMIX step)."""
        mode, loss = self.ctx.label_mode, self.ctx.loss(self.cfg.loss)
        sup_loss = self.ctx.supervised_loss if self.cfg.supervised_loss == "train" else loss
        logits = {s: joint_forward(nets[s], x_l, x_u, passes) for s in self.students}
        sup = sum(sup_loss(out_l, y_l) for out_l, _ in logits.values())
        teacher_l = teacher_u = None
        if self.has_teacher:
            if self.cfg.teacher_supervised:
                teacher_logits_l = nets["teacher"](x_l)
                sup = sup + sup_loss(teacher_logits_l, y_l)
                teacher_l = probabilities(teacher_logits_l.detach(), mode)
            elif need_teacher_l:
                with torch.no_grad():
                    teacher_l = probabilities(nets["teacher"](x_l), mode)
            if teacher_pseudo_u is None:
                with torch.no_grad():
                    teacher_u = probabilities(nets["teacher"](x_u), mode)
                teacher_pseudo_u = hard_labels(teacher_u, mode)
        losses = {"sup": sup}
        unl = {s: out_u for s, (_, out_u) in logits.items()}
        if self.cfg.cps:
            (a, la), (b, lb) = unl.items()
            pseudo_a = hard_labels(probabilities(la, mode), mode)
            pseudo_b = hard_labels(probabilities(lb, mode), mode)
            losses["cps"] = weight * (loss(la, pseudo_b) + loss(lb, pseudo_a))
        if self.cfg.mts:
            losses["mts"] = weight * sum(loss(out, teacher_pseudo_u) for out in unl.values())
        probs = {s: tuple(probabilities(out.detach(), mode) for out in pair) for s, pair in logits.items()}
        taught = {s: hard_labels(p_u, mode) for s, (_, p_u) in probs.items()}
        if teacher_pseudo_u is not None:
            taught["teacher"] = teacher_pseudo_u
        return CMTOutputs(losses, probs, teacher_l, teacher_u, teacher_pseudo_u, taught)


@register
class CMT(Method):
    name = "cmt"
    summary = "Collaborative mean teacher: two students co-train (CPS) under an EMA teacher of their average."
    Config = CMTConfig
    uses_unlabelled = True
    needs_unlabelled_batch = True
    cfg: CMTConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.core = CMTCore(self, self.cfg)

    def networks(self) -> dict[str, NetSpec]:
        return self.core.networks()

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        weight = self.cfg.weight_at(progress)
        out = self.core.step(nets, labelled.image, labelled.label, unlabelled.image, weight,
                             self.unlabelled_pass(progress))
        return StepOut(losses=out.losses, logs={"unsup_weight": weight, **out.agreement()}, targets=out.taught,
                       unlabelled=out.unlabelled)

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return self.core.predict(nets, x)

    def state_dict(self) -> dict[str, Any]:
        """The networks that predicted during training, so a checkpoint predicts as it was validated even after
        the default changes."""
        return {"predict_with": self.cfg.predict_with}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a checkpoint older than this record predicted with the option it was given, else with the teacher
        given = "predict_with" in self.cfg.model_fields_set
        predict_with = state.get("predict_with", self.cfg.predict_with if given else "teacher")
        if predict_with != self.cfg.predict_with:
            self.cfg = self.core.cfg = self.cfg.model_copy(update={"predict_with": predict_with})
