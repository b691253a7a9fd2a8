"""MuST: multi-scale consistency training (layer-wise teacher-student consistency in feature space).

Paper: "A MuST for Consistency Regularization in Semi-Supervised Medical Image Segmentation".

Layers are numbered as in the paper and in ``semiseg.nets.unet``: layer k ∈ 0..K+1, where 0 is the
full-resolution output f = f_0, k ≤ K is decoder level k (2^k times coarser) and K + 1 = len(model.widths) − 1
is the bottleneck. Every layer g_k gets a classifier a_k (the U-Net's main head for 0, its scale heads
otherwise), so one forward pass yields all f_k = (a_k ∘ g_k)(z_k).

* ``multiscale_supervised`` is Eq. 4 alone on labelled data (the multi-scale supervised baseline).
* ``must`` adds Eq. 2, 3, 5: per layer, the teacher g_k(z_k) is the clean forward pass (whose output feeds
  the next layer), the student g_k(z̃_k) runs the same weights on z̃_k = π1(h_k) ∥ ↑(π2(g_{k+1}(z_{k+1}))),
  with π1, π2 drawn uniformly by the stochastic perturbation module (Sec. 2.2; the bottleneck has a single
  input, perturbed by one draw). Sharpened teacher probabilities are the targets of an MSE per layer.

Choices the paper leaves open, made here: π2 acts before the upsampling ↑, as Sec. 2.2 writes it; targets are
detached but the students' gradients reach the teacher features they read (so the shared encoder learns
perturbation-robust features); student passes are normalised with the BatchNorm running statistics, as the clean
path is at test time, and leave them alone (``student_norm``); by default one teacher pass covers labelled +
unlabelled images and both losses form one update.
``alternate=true`` is the paper's practical setting instead: each step makes a supervised update, then (via
``StepOut.followup``) an unsupervised one. The engine has one optimiser, so the paper's separate learning rates
become ``unsupervised_lr_scale``, a factor on the unsupervised loss: exactly lr_u / lr_s for plain SGD, the
same ratio blended by momentum for SGD with momentum, and nearly no effect under Adam/AdamW (scale-invariant).

Defaults: weight 10, linear ramp over 50 % of the run, T 0.5, all layers; ``temperature=null`` switches
sharpening off; ``label_pooling`` max (paper) or avg shrinks the labels 2× per level for Eq. 4.

Deviation, measured: the consistency weight is 10, half the paper's BraTS value (20; 30 for WMH, both in the
recipes). With one labelled subject, a consistency term 20 times the supervised one outweighed what that subject
teaches: on multi-site data (heart_sites) the labelled site itself fell from 0.84 to 0.58 Dice and the run drifted
below supervised training; at 10 it holds there and is level on the demo (``experiments/dev_must_weight_*.yaml``).

Students are normalised with the running statistics (``student_norm=running``): with their own batch statistics
the network learnt a consistency that holds only under batch normalisation of the perturbed features, and its
eval-mode predictions collapsed.

Measurements behind the defaults: ``docs/evidence/must.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from semiseg.errors import ConfigError
from semiseg.losses import one_hot
from semiseg.methods._options import PassesOption, RampedWeight, RampKind, StudentViewOption
from semiseg.methods.base import Batch, Method, MethodConfig, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.nets.unet import NetOutput, UNet, frozen_norm_stats, running_norm_stats
from semiseg.ssl.consistency import probability_mse
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.perturbations import PerturbationName, StochasticPerturbation
from semiseg.ssl.pseudo_labels import probabilities, sharpen

LabelPooling = Literal["max", "avg"]


# ----------------------------------------------------------------------------------------------
# Equations as plain functions (tested against hand-computed values)


def downsample_label(label: Tensor, label_mode: str, pooling: LabelPooling = "max") -> Tensor:
    """One 2× step of the target pyramid, y_k = ↓(y_{k−1}) (Eq. 4).

    ``max`` is the paper's 2×2 max-pooling of the label map: multiclass class indices keep the largest
    index of each window (foreground wins, so small structures survive at coarse scales) and multilabel
    channels keep any positive. ``avg`` averages per-channel maps into soft targets (class fractions), so
    hard multiclass labels must be one-hot encoded first (``label_pyramid`` does it).
    """
    hard = label_mode == "multiclass" and not label.is_floating_point()
    maps = label.unsqueeze(1).float() if hard else label.float()
    if pooling == "avg":
        if hard:
            raise ValueError("average pooling needs one-hot (B, K, *spatial) labels, not class indices")
        return (F.avg_pool2d if maps.ndim == 4 else F.avg_pool3d)(maps, 2)
    pooled = (F.max_pool2d if maps.ndim == 4 else F.max_pool3d)(maps, 2)
    return pooled.squeeze(1).long() if hard else pooled


def label_pyramid(
    label: Tensor, levels: int, label_mode: str, num_classes: int, pooling: LabelPooling = "max"
) -> list[Tensor]:
    """Targets y_0..y_{levels−1}, y_0 = label and each level 2× coarser than the previous (Eq. 4)."""
    if pooling == "avg" and label_mode == "multiclass" and not label.is_floating_point():
        label = one_hot(label, num_classes)
    pyramid = [label]
    for _ in range(levels - 1):
        pyramid.append(downsample_label(pyramid[-1], label_mode, pooling))
    return pyramid


def multiscale_supervised_loss(
    scales: Sequence[Tensor], label: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], label_mode: str,
    num_classes: int, pooling: LabelPooling = "max",
) -> Tensor:
    """L_s = Σ_k ℓ(f_k, y_k) over all layers k = 0..K+1 (Eq. 4); ℓ is the configured supervised loss."""
    targets = label_pyramid(label, len(scales), label_mode, num_classes, pooling)
    return torch.stack([loss_fn(f, y) for f, y in zip(scales, targets, strict=True)]).sum()


def consistency_target(teacher_logits: Tensor, label_mode: str, temperature: float | None) -> Tensor:
    """Sharpen(f_k, T) of the teacher's probabilities (Eq. 2), detached; ``None`` skips sharpening."""
    probs = probabilities(teacher_logits.detach(), label_mode)
    return probs if temperature is None else sharpen(probs, label_mode, temperature)


def multiscale_consistency(targets: Sequence[Tensor], student_probs: Sequence[Tensor]) -> Tensor:
    """L_MSC = Σ_k d(f_k, f̃_k) with d the mean squared error (Eq. 3); the mean runs over the batch too."""
    terms = [probability_mse(s, t) for t, s in zip(targets, student_probs, strict=True)]
    return torch.stack(terms).sum()


def resolve_layers(spec: Sequence[int] | str, num_layers: int) -> list[int]:
    """Config layer list → sorted layer indices in 0..K+1 (``"all"``; negative indices count from the bottleneck)."""
    if spec == "all":
        return list(range(num_layers))
    top = num_layers - 1
    valid = (f"valid layers for this network are 0..{top} (0 = full-resolution output, {top} = K+1 = bottleneck; "
             f"-1 also names the bottleneck, K+1 = len(model.widths) - 1)")
    out = []
    for k in spec:
        if not -num_layers <= k <= top:
            raise ConfigError(f"method.consistency_layers: layer {k} is out of range; {valid}")
        out.append(k % num_layers)
    if len(set(out)) != len(out):
        raise ConfigError(f"method.consistency_layers: {list(spec)} names a layer twice; {valid}")
    return sorted(out)


# ----------------------------------------------------------------------------------------------
# Methods


class MultiscaleSupervisedConfig(MethodConfig):
    label_pooling: LabelPooling = "max"  # ↓ of Eq. 4: 2×2 max-pooling (paper) or soft class fractions


class MuSTConfig(MultiscaleSupervisedConfig, RampedWeight, PassesOption, StudentViewOption):
    # max w_u (Eq. 5): 20 BraTS, 30 WMH; 10 chosen on validation (module docstring); 0 = Eq. 4 only
    weight: float = Field(10.0, ge=0)
    rampup: RampKind = "linear"  # Eq. 5: linear from 0
    rampup_fraction: float = Field(0.5, ge=0, le=1)  # ramp length (share of the run; not given in the paper)
    temperature: float | None = Field(0.5, gt=0)  # T of Eq. 2: 0.5 BraTS, 0.8 WMH; null = no sharpening
    consistency_layers: list[int] | Literal["all"] = "all"  # layers k of Eq. 3 (Table 2's ablation)
    perturbations: list[PerturbationName] = Field(default_factory=lambda: list(get_args(PerturbationName)))
    alternate: bool = False  # a supervised then an unsupervised update per step (the paper's practice)
    unsupervised_lr_scale: float = Field(1.0, gt=0)  # lr_u / lr_s for the unsupervised update (alternate only)
    # How BatchNorm normalises the students: with the running statistics, as the clean path is at test time
    # (default), or with their own batch statistics. Either way the running statistics stay the clean path's.
    # With "batch" the net learns a consistency that holds only under batch normalisation of the perturbed
    # features: on the demo (1 labelled subject, 300 steps) eval-mode Dice fell to 0.16 vs 0.66 with "running".
    student_norm: Literal["running", "batch"] = "running"
    # How BatchNorm normalises the clean pass over unlabelled images whose outputs are the targets: with its own
    # batch statistics (default, the paper's single training pass), or with the running statistics the students
    # and the test-time path use ("running": the targets are the network's eval-mode answer, and unlabelled images
    # no longer move the running statistics). Labelled images always get their own training pass under "running".
    teacher_norm: Literal["batch", "running"] = "batch"

    @field_validator("consistency_layers", mode="before")
    @classmethod
    def _single_layer(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value  # --set method.consistency_layers=0

    @field_validator("consistency_layers")
    @classmethod
    def _layer_list(cls, value: list[int] | str) -> list[int] | str:
        if value != "all" and (not value or len(set(value)) != len(value)):
            raise ValueError("give distinct layer indices (0 = output, -1 = bottleneck) or 'all'; "
                             "for no consistency set method.weight=0")
        return value

    @field_validator("perturbations")
    @classmethod
    def _perturbation_list(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give one or more distinct perturbations (each is drawn with equal probability)")
        return value

    @field_validator("unsupervised_lr_scale")
    @classmethod
    def _only_when_alternating(cls, value: float, info: ValidationInfo) -> float:
        if value != 1.0 and not info.data.get("alternate", False):
            raise ValueError("only used with method.alternate=true (it scales the unsupervised update)")
        return value


@register
class MultiscaleSupervised(Method):
    name = "multiscale_supervised"
    summary = "Labelled data only, supervised at every decoder scale and the bottleneck (MuST's Eq. 4 baseline)."
    Config = MultiscaleSupervisedConfig
    cfg: MultiscaleSupervisedConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"model": NetSpec(overrides={"scale_heads": True})}

    def supervised(self, scales: Sequence[Tensor], label: Tensor) -> Tensor:
        """Eq. 4 with the configured supervised loss (``train.loss=ce`` is the paper's ℓ_ce)."""
        return multiscale_supervised_loss(scales, label, self.ctx.supervised_loss, self.ctx.label_mode,
                                          self.ctx.num_classes, self.cfg.label_pooling)

    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        """Eq. 4 on the labelled batch."""
        out = nets["model"](labelled.image, return_scales=True)
        return StepOut(losses={"sup": self.supervised(out.scales, labelled.label)})

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        return self.supervised_step(nets, labelled, progress)


@register
class MuST(MultiscaleSupervised):
    name = "must"
    summary = ("Multi-scale consistency: every decoder layer and the bottleneck, fed perturbed features, "
               "match their clean output.")
    Config = MuSTConfig
    cfg: MuSTConfig
    uses_unlabelled = True

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.spm = StochasticPerturbation(self.cfg.perturbations)

    # -- one step ------------------------------------------------------------------------------
    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        net, w = nets["model"], self.cfg.weight_at(progress)
        if self.cfg.weight == 0:  # multi-scale supervised only: unlabelled data untouched
            return self.supervised_step(nets, labelled, progress)
        if self.cfg.alternate:
            followup = partial(self._unsupervised_update, net, unlabelled, w)
            return StepOut(self.supervised_step(nets, labelled, progress).losses, followup=followup)
        if w == 0:  # the ramp has not started: no pass over the unlabelled images
            return StepOut(self.supervised_step(nets, labelled, progress).losses, {"consistency_weight": w})
        out_l, out_u = self._teacher_passes(net, labelled.image, unlabelled.image, progress)
        sup = self.supervised(out_l.scales, labelled.label)
        # The clean output's labels: those of the sharpened layer-0 target (sharpening keeps the argmax).
        taught = {"teacher": out_u.scales[0].detach()}
        cons = self.consistency(net, out_u, self._student_source(net, unlabelled.image, out_u))
        return StepOut({"sup": sup, "consistency": w * cons}, {"consistency_weight": w},
                       targets=taught, unlabelled=frozenset({"consistency"}))

    def _teacher_passes(self, net: UNet, labelled: Tensor, unlabelled: Tensor,
                        progress: Progress) -> tuple[NetOutput, NetOutput]:
        """The clean passes: one for both batches (or one each, ``unlabelled_pass``), or with ``teacher_norm``
        running a training pass for the labelled images and a running-statistics pass for the unlabelled ones."""
        forward = partial(net, return_scales=True)
        if self.cfg.teacher_norm == "batch":
            return joint_forward(forward, labelled, unlabelled, self.unlabelled_pass(progress))
        teacher = self._unlabelled_teacher(net, unlabelled)  # first: the statistics the step started with
        return forward(labelled), teacher

    def _unlabelled_teacher(self, net: UNet, images: Tensor) -> NetOutput:
        """The clean pass over unlabelled images, normalised as ``teacher_norm`` says."""
        if self.cfg.teacher_norm == "running":
            with running_norm_stats(net):
                return net(images, return_scales=True)
        return net(images, return_scales=True)

    def _unsupervised_update(self, net: UNet, unlabelled: Batch, w: float) -> StepOut:
        """The alternating scheme's second update; its lr ratio is a loss scale (exact for plain SGD)."""
        teacher = self._unlabelled_teacher(net, unlabelled.image)
        cons = self.consistency(net, teacher, self._student_source(net, unlabelled.image, teacher))
        return StepOut({"consistency": w * self.cfg.unsupervised_lr_scale * cons}, {"consistency_weight": w},
                       targets={"teacher": teacher.scales[0].detach()}, unlabelled=frozenset({"consistency"}))

    def _student_norms(self, net: UNet) -> AbstractContextManager[None]:
        """How BatchNorm normalises every student-side pass (``student_norm``); the running statistics stay
        the clean path's either way."""
        return (frozen_norm_stats if self.cfg.student_norm == "batch" else running_norm_stats)(net)

    def _student_source(self, net: UNet, images: Tensor, teacher: NetOutput) -> NetOutput:
        """The pass whose features the students perturb: the teacher's own, or a pass over the intensity view
        (``student_view``), normalised as the students are."""
        view = self.cfg.student_image(images)
        if view is images:
            return teacher
        with self._student_norms(net):
            return net(view, return_scales=True)

    def consistency(self, net: UNet, teacher: NetOutput, source: NetOutput | None = None) -> Tensor:
        """L_MSC (Eq. 3) of a teacher pass over unlabelled images; students perturb ``source``'s features
        (default: the teacher pass's own, as in the paper)."""
        layers = resolve_layers(self.cfg.consistency_layers, net.num_layers)
        students = self.student_logits(net, teacher if source is None else source, layers)
        mode, temp = self.ctx.label_mode, self.cfg.temperature
        targets = [consistency_target(teacher.scales[k], mode, temp) for k in layers]
        return multiscale_consistency(targets, [probabilities(students[k], mode) for k in layers])

    def student_logits(self, net: UNet, teacher: NetOutput, layers: Sequence[int]) -> dict[int, Tensor]:
        """f̃_k = (a_k ∘ g_k)(z̃_k) for each layer k, z̃_k built from the teacher's inputs to g_k (Sec. 2.2)."""
        enc, dec = teacher.encoder_features, teacher.decoder_features
        top, out = net.num_layers - 1, {}
        with self._student_norms(net):
            for k in layers:
                if k == top:
                    feats = net.bottleneck(self.spm(k, net.bottleneck_input(enc), "bottleneck"))
                else:
                    coarser = enc[-1] if k + 1 == top else dec[k + 1]  # g_{k+1}(z_{k+1}), the teacher's
                    feats = net.decoder_level(0, k, self.spm(k, coarser, "up"), self.spm(k, enc[k], "skip"))
                out[k] = net.layer_logits(k, feats)
        return out
