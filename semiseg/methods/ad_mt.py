"""AD-MT: Alternate Diverse Mean Teachers (Zhao, Wang, Qi & Shi, ECCV 2024, "Alternate Diverse Teaching for
Semi-supervised Medical Image Segmentation"; code: ZhenZHAO/AD-MT, ``code/train_post_2d_aut.py``).

A student and two EMA teachers T1, T2 that take turns. The run is cut into periods of a random length drawn
uniformly from 1 … ``period`` steps (the code's ``AlternateUpdate``, 50 on ACDC, 19 on LA); in T1's periods
the student learns a strongly augmented view (intensity operations) and only T1 follows it by EMA, in T2's
periods it learns CutMix-ed weak views and only T2 follows it: two teachers, each the average of a student
trained under a different perturbation (the "random periodic alternate updating" and the diverse augmentations).
The teacher of the current period runs in train mode, the other in eval mode, as in the code.

Pseudo labels, with p1, p2 the teachers' probabilities on the weak view (the "conflict-combating" module):

    H_i = −Σ_k p_i,k log2 p_i,k,    w_1 = e^(−H_1) / (e^(−H_1) + e^(−H_2)),    p = w_1 p_1 + (1 − w_1) p_2
    ŷ = argmax p,  c = max p;  where the teachers disagree (argmax p_1 ≠ argmax p_2), ŷ differs from the
    student's own weak prediction ŷ_s and the student is more confident (c_s > c), ŷ and c are the student's.

The student learns ŷ on its augmented view (mixed by the same box for CutMix), over pixels with c ≥ τ:
L = L_x + λ(t) · Dice(S(x_s), ŷ; c ≥ τ), λ(t) = 2 · exp(−5 (1 − t / t_r)²) over the first quarter of the run
(the code: ``consistency`` 2 and a ramp of 50 × 150 of 30 000 iterations).

Defaults (``cfgs/config_2d_aut.yml``, ACDC): τ 0.95, Dice unlabelled loss, period 50 steps, EMA 0.99, weight 2 with
the ramp over 0.25 of the run, pixel-confidence conflict resolution with the student, one Dice over all confident
pixels. The LA configuration (``cfgs/config_3d_la_aut.yml``) uses τ 0.8, cross-entropy, period 19, a ramp over
0.4, and its cross-entropy branch skips the resolution with the student (``student_resolves: false``).
``conflict_weight`` set to a number splits the loss into agreeing and conflicting pixels, Dice(agree) + w ·
Dice(conflict): the code's branch for a conflict weight other than 1 (at its default of 1 the code takes the
single Dice, as here with ``null``). Labelled, weak and augmented images share one pass, as the code
(``unlabelled_pass: joint``); ``separate`` gives each its own pass. The student predicts at test time.

Departures, each for one reason:
- The conflict resolution with the student compares maps of the same images: the code mixes the teachers' labels
  by CutMix before comparing them with the student's prediction on the unmixed weak view; here the comparison is
  made first and its result mixed.
- The EMA's warm-up is the engine's min(1 − 1/(t + 1), 0.99) in steps of the run; the code copies the student
  for the first 50 of each teacher's updates and warms up from there.
- The alternation is drawn from its own seeded generator (``schedule_seed``), a function of the step, so that
  resuming a run and every process of a distributed run agree on whose turn it is without stored state.
- CutMix partners: image i − 1 of the batch (the code: a random permutation), one box per image of 22–78 % of the
  image (the code: an area drawn from Beta(4, 4), whose middle 90 % that is); the strong view is two RandAugment
  draws from brightness, contrast and sharpness, no CutOut (the code: ColorJitter with p 0.8 and blur with p 0.2).
- The supervised term is the run's loss halved (the code's (CE + Dice) / 2 at the default ``train.loss``).
- Multilabel (not in the paper): every channel is a two-class problem (p, 1 − p) under the same equations; a
  pixel counts where every channel is confident.

Gate default ``labelled_dice`` (the project's): AD-MT belongs to the mean-teacher family, whose members gained by the
reliability gate on the converged protocol (``mean_teacher``, ``cutmix``, ``cps``); unmeasured for AD-MT itself.

Why AD-MT and not ABD (Chi et al., CVPR 2024): ABD's displacement swaps patches between two views chosen by
the confidence of a dual-branch network and needs its own patch-level bookkeeping inside the batch; AD-MT is a
mean teacher whose parts — EMA teachers, a strong view, CutMix, confident pseudo labels — are this framework's
existing pieces, so its file holds only its own equations (the alternation and the conflict resolution).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods._options import PassesOption, RampedWeight, RampKind, RandAugmentOptions
from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.fixmatch_mix import mix_pairs
from semiseg.nets.unet import evaluating
from semiseg.ssl.joint import forward_parts
from semiseg.ssl.mixing import box_masks
from semiseg.ssl.pseudo_labels import probabilities, sharpen
from semiseg.ssl.strong_augment import strong_view

TEACHERS = ("teacher1", "teacher2")


class ADMTConfig(RampedWeight, RandAugmentOptions, PassesOption):
    weight: float = Field(2.0, ge=0)  # λ (consistency: 2.0)
    rampup: RampKind = "sigmoid"
    rampup_fraction: float = Field(0.25, ge=0, le=1)  # ACDC: 50 × 150 of 30 000 iterations; LA 40 × 150 of 15 000
    tau: float = Field(0.95, gt=0, lt=1)  # conf_threshold (ACDC 0.95, LA 0.8)
    loss: Literal["dice", "ce"] = "dice"  # flag_ulb_loss_type (ACDC dice, LA ce)
    student_resolves: bool = True  # pixel_confidence resolution with the student's weak prediction (code: dice branch)
    conflict_weight: float | None = Field(None, ge=0)  # None: one loss over every confident pixel (the code at 1.0)
    temperature: float = Field(1.0, gt=0)  # alt_param_ensemble_temp: sharpening of the fused prediction
    period: int = Field(50, ge=1)  # alt_param_updating_period_iters: longest turn of one teacher, steps
    schedule_seed: int = 0
    ema_decay: float = Field(0.99, gt=0, lt=1)
    box_area: tuple[float, float] = (0.22, 0.78)  # CutMix box area (the code: Beta(4, 4))
    ops: list[str] = Field(default_factory=lambda: ["brightness", "contrast", "sharpness"])  # intensity only
    predict_with: Literal["student", "teacher1", "teacher2"] = "student"


@dataclass
class Alternation:
    """Whose turn a step is: turns of random lengths 1 … ``period``, T1 first (the code's ``AlternateUpdate``).

    A pure function of the step (the turn boundaries come from a generator seeded once), so it needs no state.
    """

    period: int
    seed: int = 0
    _ends: list[int] = field(default_factory=list)  # exclusive end step of each turn drawn so far
    _generator: torch.Generator | None = None

    def first_teachers_turn(self, step: int) -> bool:
        """True when ``step`` (0-based) belongs to T1: the student sees the strong view and T1 follows it."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        while not self._ends or self._ends[-1] <= step:
            start = self._ends[-1] if self._ends else 0
            self._ends.append(start + int(torch.randint(1, self.period + 1, (), generator=self._generator)))
        return bisect_right(self._ends, step) % 2 == 0

    def updates(self, teacher: str, step: int) -> bool:
        """Whether ``teacher`` follows the student after ``step``."""
        return self.first_teachers_turn(step) == (teacher == TEACHERS[0])


def as_two_class(probs: Tensor, label_mode: str) -> Tensor:
    """Probabilities with the classes on dim 1: multiclass as is, multilabel as (1 − p, p) per channel."""
    return probs if label_mode == "multiclass" else torch.stack([1 - probs, probs], dim=1)


def fuse_teachers(p1: Tensor, p2: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Entropy-weighted fusion of two teachers (classes on dim 1): ŷ, its confidence c and the conflict map.

    w_1 = e^(−H_1) / (e^(−H_1) + e^(−H_2)) per pixel with H in bits, p = w_1 p_1 + (1 − w_1) p_2, sharpened by
    ``temperature``; conflict where the teachers' argmax differ.
    """
    h1 = -(p1 * torch.log2(p1 + 1e-10)).sum(1, keepdim=True)
    h2 = -(p2 * torch.log2(p2 + 1e-10)).sum(1, keepdim=True)
    w1 = torch.exp(-h1) / (torch.exp(-h1) + torch.exp(-h2))
    fused = w1 * p1 + (1 - w1) * p2
    if temperature != 1.0:
        fused = sharpen(fused, "multiclass", temperature)
    confidence, labels = fused.max(dim=1)
    return labels, confidence, p1.argmax(1) != p2.argmax(1)


def student_resolves(labels: Tensor, confidence: Tensor, conflict: Tensor, student_labels: Tensor,
                     student_confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Where the teachers conflict, the student disagrees with their fusion and is more confident, take its label."""
    take = conflict & (student_labels != labels) & (student_confidence > confidence)
    return torch.where(take, student_labels, labels), torch.where(take, student_confidence, confidence)


class ADMT(Method):
    name = "ad_mt"
    summary = "Alternate diverse mean teachers: two EMA teachers take turns; entropy-fused, conflict-resolved labels."
    Config = ADMTConfig
    uses_unlabelled = True
    needs_unlabelled_batch = True
    default_unlabelled_pass = "joint"  # labelled, weak and augmented images in one pass, as the code
    cfg: ADMTConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.alternation = Alternation(self.cfg.period, self.cfg.schedule_seed)
        self.augmentation = self.cfg.strong_settings(cutout=False)

    def networks(self) -> dict[str, NetSpec]:
        teachers = {name: NetSpec(trainable=False, ema_of=("student",), ema_decay=self.cfg.ema_decay,
                                  ema_on=partial(self.alternation.updates, name)) for name in TEACHERS}
        return {"student": NetSpec(), **teachers}

    def two_class(self, logits: Tensor) -> Tensor:
        return as_two_class(probabilities(logits.detach(), self.ctx.label_mode), self.ctx.label_mode)

    def teachers_labels(self, nets: Nets, x: Tensor, turn_of_first: bool) -> tuple[Tensor, Tensor, Tensor]:
        """ŷ, c and the conflict map from both teachers; the one off duty runs in eval mode, as the code."""
        off_duty = nets[TEACHERS[1] if turn_of_first else TEACHERS[0]]
        with torch.no_grad(), evaluating([off_duty]):
            p1, p2 = (self.two_class(nets[name](x)) for name in TEACHERS)
        return fuse_teachers(p1, p2, self.cfg.temperature)

    def kept(self, confidence: Tensor, region: Tensor | None = None) -> Tensor:
        """Float mask (B, *spatial) of confident pixels (multilabel: every channel), within ``region`` if given."""
        mask = confidence >= self.cfg.tau
        if self.ctx.label_mode == "multilabel":
            mask = mask.all(dim=1)
        return (mask if region is None else mask & region).float()

    def unlabelled_loss(self, logits: Tensor, labels: Tensor, confidence: Tensor, conflict: Tensor) -> Tensor:
        """One loss over the confident pixels, or agreeing + w · conflicting ones when ``conflict_weight`` is set."""
        loss = self.ctx.loss(self.cfg.loss)
        target = labels if self.ctx.label_mode == "multiclass" else labels.float()
        if self.cfg.conflict_weight is None:
            return loss(logits, target, mask=self.kept(confidence))
        pixel_conflict = conflict if self.ctx.label_mode == "multiclass" else conflict.any(dim=1)
        return (loss(logits, target, mask=self.kept(confidence, ~pixel_conflict))
                + self.cfg.conflict_weight * loss(logits, target, mask=self.kept(confidence, pixel_conflict)))

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        x = unlabelled.image
        first = self.alternation.first_teachers_turn(progress.step)
        labels, confidence, conflict = self.teachers_labels(nets, x, first)
        if first:
            view = strong_view(x, self.augmentation)
            augmented = view.image
        else:
            boxes = box_masks(x.shape[0], x.shape[2:], area=self.cfg.box_area, device=x.device)
            (augmented,) = mix_pairs(boxes, x)
        parts = [labelled.image, x, augmented] if self.cfg.student_resolves else [labelled.image, augmented]
        logits = forward_parts(nets["student"], parts, self.unlabelled_pass(progress))
        targets: dict[str, Tensor] = {}
        if self.cfg.student_resolves:
            student_confidence, student_labels = self.two_class(logits[1]).max(dim=1)
            labels, confidence = student_resolves(labels, confidence, conflict, student_labels, student_confidence)
            targets["student"] = student_labels.float() if self.ctx.label_mode == "multilabel" else student_labels
        taught = (labels.float() if self.ctx.label_mode == "multilabel" else labels, self.kept(confidence))
        if first:  # the labels follow the strong view's geometric operations, if any
            conflict = view.carry(conflict, conflict)[0]
            labels, confidence = view.carry(labels, confidence)
        else:
            labels, confidence, conflict = mix_pairs(boxes, labels, confidence, conflict)
        unsup = self.unlabelled_loss(logits[-1], labels, confidence, conflict)
        weight = self.cfg.weight_at(progress)
        return StepOut(losses={"sup": 0.5 * self.ctx.supervised_loss(logits[0], labelled.label),
                               "unsup": weight * unsup}, unlabelled=frozenset({"unsup"}),
                       logs={"consistency_weight": weight, "teacher1_turn": float(first),
                             "conflict": float(conflict.float().mean()), "confident": float(taught[1].mean())},
                       targets={"pseudo": taught[0], **targets}, masks={"pseudo": taught[1]})

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predict_with](x)
