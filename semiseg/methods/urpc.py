"""URPC: uncertainty-rectified pyramid consistency (Luo et al., MICCAI 2021), on the shared U-Net.

The U-Net's scale heads give one prediction per decoder level; each is upsampled to full resolution
(linear interpolation of the logits), giving the pyramid p_1 … p_S. Labelled images supervise every scale
(``train.loss`` averaged over scales). On unlabelled images every scale is pulled towards the pyramid's mean
p̄, rectified by its own uncertainty D_s = KL(p_s ‖ p̄) per pixel (``semiseg.ssl.rectification``, shared with
dual-uncertainty self-training):

    L_urpc = (1/S) Σ_s [ mean(exp(−D_s) · ‖p_s − p̄‖²) / mean(exp(−D_s)) + mean(D_s) ],

with ‖·‖² the squared difference averaged over channels, and total loss L_sup + λ(t)·L_urpc, λ a Gaussian
warm-up to 0.1 over the whole run (the authors' setting). Nothing is detached: the mean and the uncertainty
are learnt with the scales.

Adaptation to this U-Net: the pyramid is the decoder levels 0 … K (the bottleneck's prediction joins only with
``include_bottleneck``, or when the network has a single decoder level, as a pyramid needs two scales). The
authors' code measures D_s as KL(p̄ ‖ p_s) (``kl_direction=mean_to_scale``) and perturbs the auxiliary
features with dropout and noise; neither is the default here.

Defaults: λ 0.1, Gaussian ramp over the whole run, ``kl_direction=scale_to_mean`` (``mean_to_scale`` is the
authors' code), every scale supervised.

Measurements behind the defaults: ``docs/evidence/urpc.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from semiseg.methods._options import PassesOption, RampedWeight, RampKind
from semiseg.methods.base import Batch, Method, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import probabilities
from semiseg.ssl.rectification import rectified_loss
from semiseg.ssl.uncertainty import kl_from_log, log_distribution, log_mean_distribution

KLDirection = Literal["scale_to_mean", "mean_to_scale"]


def pyramid_consistency(
    scale_logits: Sequence[Tensor], label_mode: str, kl_direction: KLDirection = "scale_to_mean",
) -> Tensor:
    """L_urpc of same-resolution ``(B, K, *spatial)`` logits, one per scale (see the module docstring).

    D_s is KL(p_s ‖ p̄) from log-probabilities; the squared difference is taken on probabilities.
    """
    if len(scale_logits) < 2:
        raise ValueError("pyramid consistency needs at least two scales")
    probs = [probabilities(z, label_mode).float() for z in scale_logits]
    mean = torch.stack(probs).mean(dim=0)
    logs = [log_distribution(z, label_mode) for z in scale_logits]
    log_mean = log_mean_distribution(logs)
    terms = []
    for i, p in enumerate(probs):
        pair = (logs[i], log_mean) if kl_direction == "scale_to_mean" else (log_mean, logs[i])
        d = kl_from_log(*pair)
        terms.append(rectified_loss((p - mean).pow(2).mean(dim=1), d, normalise=True))
    return torch.stack(terms).mean()


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bring a coarse scale's logits to full resolution (bilinear in 2D, trilinear in 3D)."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    mode = "bilinear" if logits.ndim == 4 else "trilinear"
    return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


class URPCConfig(RampedWeight, PassesOption):
    # λ's maximum and warm-up: Gaussian exp(−5(1 − t/t_max)²) to 0.1 over the whole run (the authors' code).
    weight: float = Field(0.1, ge=0)
    rampup: RampKind = "gaussian"
    rampup_fraction: float = Field(1.0, ge=0, le=1)
    # KL(p_s ‖ p̄) as written in the paper, or KL(p̄ ‖ p_s) as in the authors' code.
    kl_direction: KLDirection = "scale_to_mean"
    # Add the bottleneck's prediction to the pyramid (always done when there is a single decoder level).
    include_bottleneck: bool = False
    # Supervise every scale (the paper) or the full-resolution output only.
    deep_supervision: bool = True


@register
class URPC(Method):
    name = "urpc"
    summary = "Uncertainty-rectified pyramid consistency: decoder scales agree with their mean, weighted by exp(-KL)."
    Config = URPCConfig
    uses_unlabelled = True
    cfg: URPCConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"model": NetSpec(overrides={"scale_heads": True})}

    def pyramid(self, scales: Sequence[Tensor], size: Sequence[int]) -> list[Tensor]:
        """Full-resolution logits of the pyramid's scales (``scales`` as ``NetOutput.scales``, bottleneck last)."""
        levels = scales if self.cfg.include_bottleneck or len(scales) < 3 else scales[:-1]
        return [upsample_logits(s, size) for s in levels]

    def pyramid_pass(self, net: nn.Module, x: Tensor) -> list[Tensor]:
        """The pyramid of one forward pass over ``x``."""
        return self.pyramid(net(x, return_scales=True).scales, x.shape[2:])

    def supervised(self, scales: Sequence[Tensor], label: Tensor) -> Tensor:
        """``train.loss`` averaged over the supervised scales (all of them with deep supervision)."""
        supervised = scales if self.cfg.deep_supervision else scales[:1]
        return torch.stack([self.ctx.supervised_loss(s, label) for s in supervised]).mean()

    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        return StepOut({"sup": self.supervised(self.pyramid_pass(nets["model"], labelled.image), labelled.label)})

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        forward = partial(self.pyramid_pass, nets["model"])
        scales_l, scales_u = joint_forward(forward, labelled.image, unlabelled.image, self.unlabelled_pass(progress))
        losses = {"sup": self.supervised(scales_l, labelled.label)}
        w = self.cfg.weight_at(progress)
        if self.cfg.weight == 0:
            return StepOut(losses, {"consistency_weight": w})
        mode = self.ctx.label_mode
        losses["consistency"] = w * pyramid_consistency(scales_u, mode, self.cfg.kl_direction)
        with torch.no_grad():  # p̄, what every scale is pulled towards
            mean = torch.stack([probabilities(s.detach(), mode).float() for s in scales_u]).mean(dim=0)
        return StepOut(losses, {"consistency_weight": w}, targets={"pyramid_mean": mean},
                       unlabelled=frozenset({"consistency"}))
