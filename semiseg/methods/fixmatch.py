"""FixMatch for segmentation (Sohn et al. 2020, as extended in the RPG paper, Eqs. 9-10).

Pseudo labels come from the weak view (the loader's flips and intensity jitter): the argmax where the top
probability reaches τ (Eq. 9; FixMatch's 1(max q ≥ τ)), or per channel the rounded probability where
|p − 0.5| ≥ |0.5 − τ| (Eq. 10, multilabel; every other pixel and channel is ignored;
``semiseg.ssl.pseudo_labels.confidence_mask``). The strong view applies RandAugment-style operations
(``semiseg.ssl.strong_augment``): intensity operations to the image, geometric ones to image and pseudo label
alike, then CutOut, whose box becomes background in the pseudo label. The network learns the pseudo labels
on the strong view with (binary) cross-entropy averaged over the pixels that are not ignored.

The weak pass runs under ``no_grad``; labelled and strong images then share one training pass by default
(``default_unlabelled_pass = "joint"``, as the paper's code: with separate passes FixMatch lost test Dice on the
converged protocol; ``separate``: one pass each).
``strong_augment: false`` is Lee's (2013) Pseudo-Label instead: the weak view's confident labels train that
same view, from the same (single) pass, the "Pseudolabel τ" baseline of the RPG paper.

``predict_average`` (a half-life, e.g. 0.1 of the run) lets an EMA of the weights predict, as FixMatch's code
evaluates (``WeightAverageOption``); off by default.

Defaults: τ 0.95, 2 RandAugment operations per image, CutOut on, weight 1, and, unlike the paper, half the
strong views start with a random intensity remap (``strong_remap`` 0.5; GIN-IPA, ``semiseg.data.remap``): the
student answers on the unlabelled scans under contrasts no scanner gave, against labels from the clean weak view.
Chosen on validation: on heart_sites, whose unlabelled subjects come from other scanners than the labelled one,
FixMatch ends at 0.724 against 0.579 without it; level on the demo and liver_lesions (``strong_remap=0``: the
paper's view). ``strong_augment=false`` with ``tau=0.8`` or ``0.95`` gives the RPG paper's Pseudo-Label
baselines.

Measurements behind the defaults: ``docs/evidence/fixmatch.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from semiseg.losses import ce_loss
from semiseg.methods._options import PassesOption, RandAugmentOptions, WeightAverageOption
from semiseg.methods.base import Batch, Method, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import confidence_mask, hard_labels, probabilities
from semiseg.ssl.strong_augment import (
    StrongAugment,
    StrongView,
    strong_augment,
    strong_view,
)

Taught = tuple[Tensor, Tensor]  # the weak view's pseudo labels and mask (what the term teaches)


class FixMatchOptions(RandAugmentOptions, PassesOption):
    # τ of Eqs. 9-10 (FixMatch: 0.95; the RPG paper reports 0.8 and 0.95).
    tau: float = Field(0.95, gt=0, lt=1)
    # False: no strong view, the weak view's pseudo labels train the weak view (Lee 2013's Pseudo-Label).
    strong_augment: bool = True
    # RandAugment (n_ops, ops: magnitudes uniform in each op's range), then CutOut.
    cutout: bool = True

    def augmentation(self) -> StrongAugment:
        return self.strong_settings(self.cutout)


class FixMatchConfig(FixMatchOptions, WeightAverageOption):
    weight: float = Field(1.0, ge=0)  # λ_u (FixMatch: 1)
    # Half the strong views start with a random intensity remap (another scanner's contrast; module docstring).
    # FixMatch's own default: RPG+ builds its FixMatch from FixMatchOptions, where it stays off.
    strong_remap: float = Field(0.5, ge=0, le=1)


def weak_targets(probs: Tensor, label_mode: str, tau: float) -> tuple[Tensor, Tensor]:
    """Eq. 9 / Eq. 10: hard pseudo labels and the float mask of what is not ignored.

    Multiclass: argmax, mask (B, *spatial) where max_c p_c ≥ τ. Multilabel: ⌊p⌉ per channel, mask
    (B, K, *spatial) where |p − 0.5| ≥ |0.5 − τ|, so each channel of a pixel is kept or ignored on its own
    (``semiseg.ssl.pseudo_labels.confidence_mask``).
    """
    probs = probs.detach().float()
    mask = confidence_mask(probs, label_mode, tau, per_channel=True).float()
    return hard_labels(probs, label_mode), mask


def masked_ce(logits: Tensor, target: Tensor, mask: Tensor, label_mode: str) -> Tensor:
    """Cross-entropy averaged over the kept pixels (multiclass) or kept pixel-channels (multilabel).

    Nothing kept gives an exact 0 that is still connected to ``logits``.
    """
    if label_mode == "multiclass":
        return ce_loss(logits, target, label_mode=label_mode, mask=mask)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (bce * mask).sum() / mask.sum().clamp_min(1e-8)


@register
class FixMatch(Method):
    # joint, as FixMatch's code: labelled and strong images share BatchNorm statistics (module docstring)
    default_unlabelled_pass = "joint"
    name = "fixmatch"
    summary = "FixMatch for segmentation: confident weak-view pseudo labels train a RandAugment + CutOut view."
    Config = FixMatchConfig
    uses_unlabelled = True
    default_unlabelled_gate = "off"  # measured: the gate costs it on the converged protocol
    cfg: FixMatchConfig

    def networks(self) -> dict[str, NetSpec]:
        return self.cfg.with_average(super().networks(), "model")

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predictor("model")](x)

    def term(self, logits: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, float]:
        """The unlabelled loss on pseudo labels and the share of pixels it keeps (logged as ``confident``)."""
        return masked_ce(logits, target, mask, self.ctx.label_mode), float(mask.mean())

    def weak_labels(self, probs_weak: Tensor) -> Taught:
        """Eq. 9 / Eq. 10 at this method's τ: the weak view's pseudo labels and the mask of what is kept."""
        return weak_targets(probs_weak, self.ctx.label_mode, self.cfg.tau)

    def views(self, image: Tensor, probs_weak: Tensor) -> tuple[Taught, tuple[Tensor, Tensor, Tensor]]:
        """The weak view's pseudo labels and mask (what the term teaches), and the strong image carrying them."""
        taught = self.weak_labels(probs_weak)
        return taught, self.augment(image, *taught)

    def strong_image(self, image: Tensor) -> StrongView:
        """The strong view of ``image`` before any pseudo label exists; ``carry`` moves the labels over later."""
        return strong_view(image, self.cfg.augmentation())

    def augment(self, image: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The strong view of the weak image with its pseudo labels and mask carried along."""
        return strong_augment(image, target, mask, self.cfg.augmentation())

    def weak_term(self, logits_weak: Tensor) -> tuple[Tensor, float, Taught]:
        """Without strong augmentation: the weak view's confident labels train its own logits (Pseudo-Label)."""
        target, mask = self.weak_labels(probabilities(logits_weak, self.ctx.label_mode))
        return *self.term(logits_weak, target, mask), (target, mask)

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        model = nets["model"]
        if self.cfg.strong_augment:
            with torch.no_grad():
                probs_weak = probabilities(model(unlabelled.image), self.ctx.label_mode)
            (target, mask), (x, strong_target, strong_mask) = self.views(unlabelled.image, probs_weak)
            logits_l, logits_strong = joint_forward(model, labelled.image, x, self.unlabelled_pass(progress))
            unsup, kept = self.term(logits_strong, strong_target, strong_mask)
        else:
            logits_l, logits_weak = joint_forward(model, labelled.image, unlabelled.image,
                                                  self.unlabelled_pass(progress))
            unsup, kept, (target, mask) = self.weak_term(logits_weak)
        losses = {"sup": self.ctx.supervised_loss(logits_l, labelled.label), "unsup": self.cfg.weight * unsup}
        return StepOut(losses=losses, logs={"confident": kept}, targets={"pseudo": target}, masks={"pseudo": mask},
                       unlabelled=frozenset({"unsup"}))
