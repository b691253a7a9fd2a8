"""UCMT (Section 3.4, Algorithm 1): collaborative mean teacher + uncertainty-guided region mix (UMIX).

Each iteration makes two updates. Step 1 is CMT on the batch. Step 2 builds UMIX samples — for student m
the uncertainty U^m is the entropy of the mean of its and the teacher's softmax (Eq. 8); on a grid of
regions the top-k most uncertain regions by U¹ (by U²) receive the top-k most certain ones by U² (by
U¹) — in the labelled images and labels and in the unlabelled images and the teacher's pseudo labels,
then runs CMT again on them. Following the paper's footnote 3, a UCMT run of N steps makes 2N updates:
compare it with other methods at half their step count. The second update is chained through
``StepOut.followup`` and runs after the first update and the EMA, as in Algorithm 1.

Defaults: k = 2, 16 regions per axis in 2D (8 in 3D), uncertain regions replaced by certain ones.

Paper vs authors' code. Two places differ, and both are options:

* The paper's teacher is the EMA of the students' *average* (Eq. 6, ``teacher_update=paper``); the code
  follows 0.99·student1 + 0.01·student2 (``teacher_update=code``, the default here, see below) and gives the
  teacher no supervised loss (``teacher_supervised=false``; Eq. 3 and Algorithm 1 train all three).
* UMIX. The paper *replaces* the top-k uncertain regions by the top-k certain ones (``umix=replace``,
  default): a certain region is copied over an uncertain one and also stays where it was, and every region is
  read from the image as it was before the mix. The code does the same with one indexed assignment per map,
  but pairs the i-th most uncertain region with the (k − i + 1)-th most certain one (its sort order):
  ``umix=code``.

Two further choices: the uncertainty maps of step 2 come from step 1's predictions (as in the code;
Algorithm 1 would recompute three passes after the update), and the students share a random body and differ in
their heads (``student_init=shared_body``, see ``cmt``).

Deviation, measured: the teacher follows student 1 (``teacher_update=code``), as in the authors' code and in
``cmt``. Trained from scratch, cross pseudo supervision drives the two students as far apart in weight space as
two unrelated networks, and Eq. 6's teacher, near their midpoint, segments worse than either: on heart_sites it
ended far below supervised training on every site while its students did not
(``experiments/dev_ucmt_teacher_heart.yaml``); the authors' students share an ImageNet-pretrained backbone and
stay close, where averaging them is sound.

Deviation, measured: the mean of the two students' probabilities predicts (``predict_with=students``; the paper
needs "only the teacher model" at test time, ``predict_with=teacher``), and so also opens the reliability gate and
picks the best checkpoint. An EMA teacher of α = 0.999 remembers a third of a 2000-update run and ended below both
students in every seed on heart_sites; trained this way UCMT holds against supervised training there and on the
demo (``experiments/dev_ucmt_predict_heart.yaml``, ``_demo.yaml``).

Pass layout, measured: separate passes while the reliability gate is closed, then the papers' one joint pass
(``separate_until_gate``, as ``rpg`` and ``dual_uncertainty``). Ahead of separate passes throughout on the
validation cases of heart_sites and the demo (``experiments/dev_ucmt_layout_heart.yaml``,
``dev_ucmt_until_gate_demo.yaml``); the papers' way (no gate, one joint pass) ends below supervised training on
heart_sites.

Measurements behind the defaults: ``docs/evidence/ucmt.md``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from semiseg.errors import ConfigError
from semiseg.methods.base import Batch, Nets, NetSpec, Progress, StepOut
from semiseg.methods.cmt import CMT, CMTConfig, CMTOutputs
from semiseg.methods.registry import register
from semiseg.ssl.joint import Passes
from semiseg.ssl.mixing import umix
from semiseg.ssl.uncertainty import mean_prediction_entropy

DEFAULT_GRID = {2: 16, 3: 8}  # regions per axis: 1/16 of the side in 2D (r = 16), 1/8 in 3D (authors' code)


class UCMTConfig(CMTConfig):
    top_k: int = Field(2, ge=1)
    grid: int | None = Field(None, ge=1, description="regions per axis; default 16 in 2D, 8 in 3D")
    umix: Literal["replace", "code"] = "replace"
    # the paper predicts with the teacher; the students' mean is chosen on validation (module docstring)
    predict_with: Literal["teacher", "students"] = "students"
    # teacher_update is CMT's "code" (the teacher follows student 1); for UCMT chosen on validation on heart_sites
    # and the demo (module docstring)

    @model_validator(mode="after")
    def _needs_both_students_and_teacher(self) -> UCMTConfig:
        if self.architecture != "sts" or not (self.cps and self.mts):
            raise ValueError("ucmt is the full student-teacher-student model; use method 'cmt' for ablations")
        return self


@register
class UCMT(CMT):
    """CMT's networks and loss plus the UMIX update; the students' mean predicts."""

    name = "ucmt"
    summary = "CMT + UMIX: a second update per step on images whose uncertain regions got certain ones."
    Config = UCMTConfig
    cfg: UCMTConfig
    updates_per_step = 2  # step 1 (CMT) and step 2 (UMIX): train.steps=auto gives half the steps (footnote 3)
    # separate passes while the gate is closed, the papers' joint pass after (module docstring)
    default_unlabelled_pass = "separate_until_gate"

    def networks(self) -> dict[str, NetSpec]:
        """CMT's nets; the teacher's ``ema_half_life`` counts in steps of two EMA updates (Algorithm 1)."""
        specs = super().networks()
        specs["teacher"] = replace(specs["teacher"], ema_updates_per_step=self.updates_per_step)
        return specs

    def grid(self, spatial: tuple[int, ...]) -> list[int]:
        per_axis = self.cfg.grid or DEFAULT_GRID[len(spatial)]
        grid = [min(per_axis, size) for size in spatial]
        regions = math.prod(grid)
        if self.cfg.top_k > regions // 2:
            raise ConfigError(f"method.top_k={self.cfg.top_k} is more than half of the {regions} UMIX regions "
                              f"of a {list(spatial)} patch; lower it or raise method.grid")
        return grid

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        weight = self.cfg.weight_at(progress)
        passes = self.unlabelled_pass(progress)
        out = self.core.step(nets, labelled.image, labelled.label, unlabelled.image, weight, passes,
                             need_teacher_l=True)
        return StepOut(losses=out.losses, logs={"unsup_weight": weight, **out.agreement()}, targets=out.taught,
                       unlabelled=out.unlabelled,
                       followup=lambda: self.umix_step(nets, labelled, unlabelled, out, weight, passes))

    def umix_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, first: CMTOutputs, weight: float,
                  passes: Passes) -> StepOut:
        """Algorithm 1, lines 10–17: uncertainty maps, UMIX, and CMT on the mixed samples."""
        mode = self.ctx.label_mode
        grid = self.grid(tuple(labelled.image.shape[2:]))
        (s1_l, s1_u), (s2_l, s2_u) = first.student_probs["student1"], first.student_probs["student2"]
        u1_l = mean_prediction_entropy([s1_l, first.teacher_probs_l], mode)
        u2_l = mean_prediction_entropy([s2_l, first.teacher_probs_l], mode)
        u1_u = mean_prediction_entropy([s1_u, first.teacher_probs_u], mode)
        u2_u = mean_prediction_entropy([s2_u, first.teacher_probs_u], mode)
        options = {"k": self.cfg.top_k, "grid": grid, "mode": self.cfg.umix}
        x_l, y_l = umix([labelled.image, labelled.label], u1_l, u2_l, **options)
        x_u, pseudo_u = umix([unlabelled.image, first.teacher_pseudo_u], u1_u, u2_u, **options)
        second = self.core.step(nets, x_l, y_l, x_u, weight, passes, teacher_pseudo_u=pseudo_u)
        changed = float((x_u != unlabelled.image).any(dim=1).float().mean())  # share of pixels UMIX moved
        return StepOut(losses=second.losses, logs={"umix_changed": changed}, unlabelled=second.unlabelled)
