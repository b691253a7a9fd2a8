"""CCT: cross-consistency training (Ouali et al., CVPR 2020), on the shared U-Net.

A shared encoder feeds a main decoder and one auxiliary decoder per listed perturbation. Labelled data
trains the encoder and the main decoder with the supervised loss; on unlabelled data the auxiliary
decoders, each given a perturbed copy of the encoder's outputs, are pulled towards the main decoder's
(detached) prediction: L = L_s + w_u · (1/N) Σ_i MSE(p_main, p_aux_i), w_u ramped up (sigmoid, to 30 by 10 %
of training, the CCT defaults).

U-Net adaptation: the "encoder output" a decoder reads is every skip plus the bottleneck, so by default
all of them are perturbed (``perturb_skips``); perturbing only the bottleneck would let the auxiliary
decoders bypass the perturbation through the skips. The perturbations are the prediction-free ones of
CCT (F-Noise = ``uniform_noise``, F-Drop = ``feature_dropout``, DropOut = ``spatial_dropout``; plus
``gaussian_noise``); the prediction-guided ones (VAT, object/context masking, guided cutout) are not ported.

Defaults: three auxiliary decoders; F-Noise U(−0.3, 0.3), F-Drop with γ ∈ U(0.7, 0.9), spatial dropout 0.5;
weight 30, sigmoid ramp over 10 % of the run; the main decoder predicts at test time.

Measurements behind the defaults: ``docs/evidence/cct.md``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from semiseg.methods._options import PassesOption, RampedWeight, RampKind
from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.nets.unet import UNet
from semiseg.ssl.consistency import probability_mse
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.perturbations import PerturbationName, fixed_hook
from semiseg.ssl.pseudo_labels import probabilities


def cross_consistency(main_probs: Tensor, aux_probs: list[Tensor]) -> Tensor:
    """(1/N) Σ_i MSE(p_main, p_aux_i) with the main prediction as a fixed (detached) target."""
    target = main_probs.detach()
    return torch.stack([probability_mse(p, target) for p in aux_probs]).mean()


class CCTConfig(RampedWeight, PassesOption):
    weight: float = Field(30.0, ge=0)  # max w_u (CCT: 30)
    rampup: RampKind = "sigmoid"
    rampup_fraction: float = Field(0.1, ge=0, le=1)  # CCT: ramp over the first 10 % of training
    perturbations: list[PerturbationName] = Field(
        default_factory=lambda: ["uniform_noise", "feature_dropout", "spatial_dropout"]
    )  # one auxiliary decoder each
    perturb_skips: bool = True  # perturb the skips too, not only the bottleneck (see module docstring)
    aux_upsample: Literal["transpose", "interp"] = "transpose"  # auxiliary decoders' upsampling

    @field_validator("perturbations")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("CCT needs at least one auxiliary decoder (one per perturbation)")
        return value


@register
class CCT(Method):
    name = "cct"
    summary = "Cross-consistency: auxiliary decoders on perturbed encoder features match the main decoder."
    Config = CCTConfig
    cfg: CCTConfig
    uses_unlabelled = True

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        roles = ("skip", "bottleneck") if self.cfg.perturb_skips else ("bottleneck",)
        self.hooks = [fixed_hook(name, roles) for name in self.cfg.perturbations]

    def networks(self) -> dict[str, NetSpec]:
        aux = [self.cfg.aux_upsample] * len(self.cfg.perturbations)
        return {"model": NetSpec(overrides={"aux_decoders": aux})}

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        net, w = nets["model"], self.cfg.weight_at(progress)
        logs = {"consistency_weight": w}
        if w == 0:  # no unlabelled term: the auxiliary decoders and the unlabelled images are not needed
            return StepOut(self.supervised_step(nets, labelled, progress).losses, logs)
        (_, main_l), (skips_u, main_u) = joint_forward(partial(self.main_pass, net), labelled.image, unlabelled.image,
                                                         self.unlabelled_pass(progress))
        sup = self.ctx.supervised_loss(main_l, labelled.label)
        aux = self.aux_logits(net, skips_u)
        mode = self.ctx.label_mode
        cons = cross_consistency(probabilities(main_u, mode), [probabilities(a, mode) for a in aux])
        return StepOut({"sup": sup, "consistency": w * cons}, logs, targets={"main": main_u.detach()},
                       unlabelled=frozenset({"consistency"}))

    @staticmethod
    def main_pass(net: UNet, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The shared encoder's features and the main decoder's logits, from one pass."""
        skips = net.encode(x)
        return skips, net.head(net.decode(skips)[0])

    def aux_logits(self, net: UNet, skips: list[Tensor]) -> list[Tensor]:
        """Each auxiliary decoder's logits on its perturbed copy of the (unlabelled) encoder features."""
        return [net.head(net.decode(skips, i + 1, hook)[0], i + 1) for i, hook in enumerate(self.hooks)]
