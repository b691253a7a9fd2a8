"""FixMatch with CutMix-ed strong views: a combination of two pieces of this framework, not a paper's method.

FixMatch (``fixmatch``) takes confident pseudo labels from the weak view and trains the strong view
(RandAugment + CutOut) on them. CutMix (French et al. 2020, ``cutmix``) pastes a box of one unlabelled image into
another and asks for the same mix of targets. Here both act on one term: each image's strong view, with its
pseudo label and confidence mask carried along, is mixed with the next image's strong view by a box, and the
network learns the mixed pseudo labels on the mixed image (masked cross-entropy, FixMatch's Eqs. 9-10 for
which pixels count). The box puts an object where the network has never seen it next to content it has, a
stronger perturbation than either piece alone; UniMatch (Yang et al. 2023) mixes strong views the same way.

Composition, not a copy: a ``FixMatch`` instance built from this method's options supplies the pseudo labels,
the strong view and the masked loss; ``semiseg.ssl.mixing`` supplies the boxes and the mix.

Defaults: FixMatch's (τ 0.95, 2 RandAugment operations, CutOut, weight 1) and CutMix's (one box of 25–50 % of
the image); ``box_area`` and ``boxes`` set the mix. Unlike ``fixmatch`` it runs with separate passes and the
reliability gate (the run's defaults): with FixMatch's joint pass and no gate it collapses on short runs.

Measurements behind the defaults: ``docs/evidence/fixmatch_mix.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.fixmatch import FixMatch, FixMatchConfig
from semiseg.methods.registry import register
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.mixing import box_masks, mix
from semiseg.ssl.pseudo_labels import probabilities


class FixMatchMixConfig(FixMatchConfig):
    box_area: tuple[float, float] = (0.25, 0.5)  # share of the image one box covers (CutMix)
    boxes: int = Field(1, ge=1)


def mix_pairs(boxes: Tensor, *maps: Tensor) -> tuple[Tensor, ...]:
    """Each map with image i's box region taken from image i − 1 of the batch (one box mask for every map)."""
    return tuple(mix(m, m.roll(1, dims=0), boxes) for m in maps)


@register
class FixMatchMix(Method):
    # separate, unlike fixmatch: with the joint pass and no gate the mix collapses on short runs (module docstring)
    default_unlabelled_pass = "separate"
    name = "fixmatch_mix"
    summary = "FixMatch whose strong views are CutMix-ed in pairs, pseudo labels and masks mixed alike."
    Config = FixMatchMixConfig
    uses_unlabelled = True
    cfg: FixMatchMixConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        values = self.cfg.model_dump()
        self.fixmatch = FixMatch(ctx, {key: values[key] for key in FixMatchConfig.model_fields})

    def networks(self) -> dict[str, NetSpec]:
        return self.fixmatch.networks()  # the model, and its weight average when predict_average is set

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return self.fixmatch.predict(nets, x)

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        model, x, mode = nets["model"], unlabelled.image, self.ctx.label_mode
        with torch.no_grad():
            probs_weak = probabilities(model(x), mode)
        (target, mask), strong = self.fixmatch.views(x, probs_weak)
        boxes = box_masks(x.shape[0], x.shape[2:], area=self.cfg.box_area, n_boxes=self.cfg.boxes, device=x.device)
        mixed_x, mixed_target, mixed_mask = mix_pairs(boxes, *strong)
        logits_l, logits_mixed = joint_forward(model, labelled.image, mixed_x, self.unlabelled_pass(progress))
        unsup, kept = self.fixmatch.term(logits_mixed, mixed_target, mixed_mask)
        losses = {"sup": self.ctx.supervised_loss(logits_l, labelled.label), "unsup": self.cfg.weight * unsup}
        return StepOut(losses=losses, logs={"confident": kept, "mixed_fraction": float(boxes.float().mean())},
                       targets={"pseudo": target}, masks={"pseudo": mask},  # as drawn, before view and mix
                       unlabelled=frozenset({"unsup"}))
