"""UniMatch (Yang, Qi, Feng, Zhang & Shi, CVPR 2023, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
Semantic Segmentation"; code: LiheYoung/UniMatch, ``more-scenarios/medical/unimatch.py``), the medical variant.

FixMatch's weak-to-strong consistency widened in two directions. Image level: two strong views x_s1, x_s2 of each
unlabelled image, each CutMix-ed with another unlabelled image (a box of 2-40 % of the image, drawn with
probability 0.5), the weak-view pseudo labels of the two images mixed by the same box. Feature level: the
encoder features of the weak view, perturbed by channel dropout (p 0.5, every skip and the bottleneck), are
decoded once more, and that prediction p_fp must match the weak view's own pseudo labels. With p_w the weak view's
prediction, ŷ = argmax p_w and the confident pixels max p_w ≥ τ (Eq. 1-3; the medical code's losses)::

    L = (L_x + 0.25 · L_s1 + 0.25 · L_s2 + 0.5 · L_fp) / 2
    L_x = supervised loss on labelled images;  L_s·, L_fp = Dice against ŷ (mixed for L_s·) over confident pixels

Defaults: τ 0.95 (``configs/acdc.yaml``), weights 0.25 / 0.25 / 0.5, overall scale 0.5, dropout 0.5, CutMix box area
2-40 % with probability 0.5. The labelled and the weak unlabelled images share one training pass, whose decoder
also decodes the perturbed features (``unlabelled_pass: joint``, as the code; ``separate``: the labelled images in
a pass of their own); the two strong views share a second pass, as the code.

Pieces reused: the strong view is FixMatch's (``semiseg.ssl.strong_augment``: pseudo labels follow any geometric
operation); the box and the mix are CutMix's (``semiseg.ssl.mixing``); the perturbation is CCT's channel dropout
(``semiseg.ssl.perturbations.spatial_dropout``) on the U-Net's encoder features.

Where the pseudo labels come from: the weak view's prediction of the training pass (train mode, detached), which
is also what the code uses for the image's own labels. The code labels the CutMix partners, drawn from a second
unlabelled loader, with an extra pass in eval mode; here the partner of image i is image i − 1 of the same batch
(as ``fixmatch_mix``), so its labels already exist and no extra pass is needed.

Departures, each for one reason:
- Strong view: the code's ColorJitter (p 0.8) and blur (p 0.5) on 8-bit images; here two RandAugment draws from
  brightness, contrast and sharpness (which blurs below a factor of 1), no CutOut, on images of any range.
- CutMix partners from the same batch (see above); the box's aspect ratio is within ~±50 % (``box_masks``) where
  the code draws it in [0.3, 3.3].
- The perturbed features are decoded in a decoder pass of their own, unlabelled rows only: the code decodes clean
  and dropped-out features as one batch, so the decoder's BatchNorm normalises the clean features, whose prediction
  becomes the pseudo labels, with statistics of half-zeroed, doubled channels that no test-time pass sees (at
  initialisation no pixel then reaches τ). Same decoder work; the code also perturbs, then discards, labelled rows.
- The supervised term is the run's loss (``train.loss``: Dice + CE, where the code halves it as (CE + Dice) / 2);
  Dice honours the run's ``include_background`` (the code's Dice includes the background class).
- ``loss``: the unlabelled terms' loss, the medical code's Dice by default; ``ce`` (the natural-image code's
  masked cross-entropy, FixMatch's) and ``dice_ce`` are options, to test whether the Dice-only objective is what
  lets confident wrong labels take over on small data (``docs/evidence/unimatch.md``).
- Multilabel (not in the paper): ŷ = p > 0.5 per channel, a pixel counts where every channel is confident.

Gate default ``off``: UniMatch is FixMatch's weak-to-strong scheme, which measured lower with the reliability gate
on the converged protocol (``fixmatch``'s page); τ = 0.95 already keeps unconfident early labels out.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods._options import PassesOption, RandAugmentOptions
from semiseg.methods.base import Batch, Method, MethodContext, Nets, Progress, StepOut
from semiseg.methods.fixmatch_mix import mix_pairs
from semiseg.nets.unet import UNet
from semiseg.ssl.joint import Passes
from semiseg.ssl.mixing import box_masks
from semiseg.ssl.perturbations import spatial_dropout
from semiseg.ssl.pseudo_labels import confidence_mask, hard_labels, probabilities
from semiseg.ssl.strong_augment import strong_augment


class UniMatchConfig(RandAugmentOptions, PassesOption):
    tau: float = Field(0.95, gt=0, lt=1)  # conf_thresh of configs/acdc.yaml
    strong_weight: float = Field(0.25, ge=0)  # weight of each of L_s1, L_s2
    fp_weight: float = Field(0.5, ge=0)  # weight of L_fp
    scale: float = Field(0.5, gt=0)  # the code's "/ 2" over the whole loss
    fp_dropout: float = Field(0.5, ge=0, lt=1)  # channel dropout on the encoder features (nn.Dropout2d(0.5))
    box_area: tuple[float, float] = (0.02, 0.4)  # share of the image a CutMix box covers (obtain_cutmix_box)
    box_probability: float = Field(0.5, ge=0, le=1)  # chance that a strong view is CutMix-ed at all
    ops: list[str] = Field(default_factory=lambda: ["brightness", "contrast", "sharpness"])  # intensity only
    loss: Literal["dice", "ce", "dice_ce"] = "dice"  # of L_s1, L_s2, L_fp: the medical code's Dice (docstring)


def cutmix_boxes(images: Tensor, area: tuple[float, float], probability: float) -> Tensor:
    """(B, *spatial) bool CutMix boxes, each image's box kept with ``probability`` (else no mixing for it)."""
    boxes = box_masks(images.shape[0], images.shape[2:], area=area, device=images.device)
    drawn = torch.rand(images.shape[0], device=images.device) < probability
    return boxes & drawn.view(-1, *([1] * (boxes.ndim - 1)))


class UniMatch(Method):
    name = "unimatch"
    summary = "UniMatch: two CutMix-ed strong views and a feature-dropout stream learn the weak view's labels."
    Config = UniMatchConfig
    uses_unlabelled = True
    default_unlabelled_gate = "off"  # FixMatch's weak-to-strong scheme, which loses by the gate (docstring)
    default_unlabelled_pass = "joint"  # labelled and weak images in one pass, as the code
    cfg: UniMatchConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.augmentation = self.cfg.strong_settings(cutout=False)

    def weak_labels(self, logits_weak: Tensor) -> tuple[Tensor, Tensor]:
        """ŷ and the float mask of confident pixels (every channel confident, multilabel)."""
        probs = probabilities(logits_weak.detach(), self.ctx.label_mode)
        return (hard_labels(probs, self.ctx.label_mode),
                confidence_mask(probs, self.ctx.label_mode, self.cfg.tau).float())

    def perturbed_logits(self, net: UNet, skips: list[Tensor]) -> Tensor:
        """p_fp: the decoder on every encoder feature under channel dropout."""
        return net.head(net.decode([spatial_dropout(s, p=self.cfg.fp_dropout) for s in skips])[0])

    def weak_pass(self, net: UNet, labelled: Tensor, unlabelled: Tensor,
                  passes: Passes) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of the labelled images, of the weak view, and of the weak view's perturbed features."""
        n = labelled.shape[0]
        if passes == "joint":
            skips = net.encode(torch.cat([labelled, unlabelled]))
            logits = net.head(net.decode(skips)[0])
            return logits[:n], logits[n:], self.perturbed_logits(net, [s[n:] for s in skips])
        skips = net.encode(unlabelled)
        return net(labelled), net.head(net.decode(skips)[0]), self.perturbed_logits(net, skips)

    def mixed_view(self, image: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One strong view CutMix-ed with its partner (row i − 1), labels and mask carried and mixed alike; the box."""
        boxes = cutmix_boxes(image, self.cfg.box_area, self.cfg.box_probability)
        return (*mix_pairs(boxes, *strong_augment(image, target, mask, self.augmentation)), boxes)

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        net, unsup = nets["model"], self.ctx.loss(self.cfg.loss)
        logits_l, logits_w, logits_fp = self.weak_pass(net, labelled.image, unlabelled.image,
                                                      self.unlabelled_pass(progress))
        target, mask = self.weak_labels(logits_w)
        (x1, t1, m1, box1), (x2, t2, m2, _) = (self.mixed_view(unlabelled.image, target, mask) for _ in range(2))
        logits_s1, logits_s2 = net(torch.cat([x1, x2])).chunk(2)
        scale, strong = self.cfg.scale, unsup(logits_s1, t1, mask=m1) + unsup(logits_s2, t2, mask=m2)
        losses = {
            "sup": scale * self.ctx.supervised_loss(logits_l, labelled.label),
            "unsup_strong": scale * self.cfg.strong_weight * strong,
            "unsup_fp": scale * self.cfg.fp_weight * unsup(logits_fp, target, mask=mask),
        }
        logs = {"confident": float(mask.mean()), "mixed_fraction": float(box1.float().mean())}
        return StepOut(losses=losses, unlabelled=frozenset({"unsup_strong", "unsup_fp"}), logs=logs,
                       targets={"pseudo": target}, masks={"pseudo": mask})
