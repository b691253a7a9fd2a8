"""SegPL and SegPL-VI (Xu et al., "Bayesian Pseudo Labels", MICCAI 2022): pseudo-labelling as EM.

E-step (Eq. 1): pseudo labels ``y'_u`` from the current model's prediction on the unlabelled batch, held
fixed. M-step (Eq. 3): the supervised loss on labelled images plus ``α`` × Dice on the pseudo-labelled
unlabelled ones. The pseudo labels are the unlabelled images' own training pass, detached, so the E-step
costs no extra pass; one backward follows.

SegPL-VI (Section 3) replaces the fixed ``T`` by a sample from ``N(μ, σ)`` predicted by a threshold head φ
(Eqs. 5-6) and adds the KL to the prior (Eq. 8). ``threshold_mode`` selects the paper's hard comparison
(φ then learns from the KL alone) or a straight-through / soft threshold through which the pseudo-label
term trains φ as well; see ``semiseg.ssl.thresholds`` for how ``T`` acts in each label mode.

Deviations, on purpose: the supervised term is the configured ``train.loss`` so that every method of a
comparison shares it (``--set train.loss=dice`` gives Eq. 3 exactly), and Dice is the project's batch Dice
rather than a per-image mean (stable when a class is absent from a slice); α is ``method.weight``, the
name every method uses for its unsupervised weight. φ reads the network's detached output probabilities,
i.e. φ(θ(X)) of Eq. 5: a net builder only knows the task (``MethodContext``), not the width of the U-Net's
hidden features, and the detached input keeps the KL from reshaping the segmentation network.

Any pseudo-label source plugs into the same EM step: ``pseudo_labels: reference`` takes SegPL's E-step labels
from reference-guided matching (RPG paper, Eqs. 1-7, ``semiseg.ssl.reference``) on the penultimate features
of the same pass instead of from the prediction, with RPG's W as the per-pixel weight of the M-step loss
(``weighting: false``: unweighted nearest-reference labels).

How the EM step runs. The E-step's pseudo labels are per channel p > T in multilabel mode and the argmax in
multiclass mode; the unlabelled/labelled ratio is ``train.unlabelled_batch_size / train.batch_size`` (paper:
2–10). SegPL-VI's φ follows footnote 4 (average pooling, 3×3 conv + norm + ReLU, two 1×1 convs); in multiclass
mode T is a confidence threshold on max_k p_k. With the paper's hard comparison φ learns from the KL only and
stays at the prior N(0.5, 0.1) (``threshold_mode=hard``, default); ``straight_through`` keeps the hard forward
value but lets the pseudo-label term train φ; ``soft`` uses sigmoid((p − T)/τ). The KL's pull (∝ 1/σ_β²)
dominates at α = 0.05, so use ``kl_weight=0.01`` to let the data move T. μ, σ and the sampled T are logged and
plotted in the report (``figures/threshold.png``); at test time S = 5 threshold samples give the mean
prediction and its uncertainty.

Defaults: α (``weight``) 0.05 (the paper's CARVE setting is 1.0), T 0.5, no warm-up. The reference-guided
options (``pool_size``, ``reference_size``, ``k``, ``k_fraction``, ``weighting``) are one shared block
(``ReferenceOptions``) with the matcher in ``semiseg.ssl.reference``, so another consumer needs only the call.

Deviation, measured: the default pass layout is separate passes (``default_unlabelled_pass``), so BatchNorm
labels the unlabelled images with their own batch statistics; with the paper's joint pass the E-step's labels
were worse than the network's own prediction and SegPL ended below supervised training
(``segpl_joint`` in ``experiments/converged_one_seed.yaml`` against ``segpl`` in ``experiments/converged.yaml``).

Deviation, measured: the M-step trains on an intensity view of the unlabelled batch (``student_view:
intensity``, ``semiseg.ssl.strong_augment.intensity_view``) while the E-step labels the clean batch in a pass
of its own (no gradient, batch statistics, running statistics untouched); ``student_view: clean`` is the
paper's single image. On multi-site data the view carries what the labelled site teaches to the other scanners.
The view draws from the intensity ops that keep each tissue's grey level roughly in place (no brightness, no
gamma): on CT-like data, where that level is what tells the liver from the soft tissue around it, those two erase
it from the view. Half the views start with a random intensity remap (``view_remap: 0.5``, GIN-IPA,
``semiseg.data.remap``), which, unlike the ops above, may reorder tissues' grey levels as another scanner's contrast
does: the student learns the labelled site's answer on the other scanners' images under contrasts none of them gave.

Deviation, measured: BatchNorm's running statistics, the ones evaluation normalises with, come from the clean
images' passes (``running_stats: clean``: the labelled batch and the E-step's pass over the clean unlabelled
batch); the student's pass over the view normalises with its own batch statistics and leaves them be, as
evaluation never sees a view. With every training pass setting them (``every_pass``, the view's included) SegPL's
last networks on liver_lesions scored higher once their statistics were re-estimated from clean patches, weights
untouched (``benchmarks/labelled_norm_stats.py``), and the lesion they had lost came back.

Measurements behind the defaults: ``docs/evidence/segpl.md``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from semiseg.methods._options import (
    PassesOption,
    RampedWeight,
    RampKind,
    ReferenceOptions,
    StudentView,
    StudentViewOption,
)
from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.nets.unet import frozen_norm_stats
from semiseg.ssl.joint import Passes, joint_forward
from semiseg.ssl.pseudo_labels import confidence_mask, hard_labels, probabilities
from semiseg.ssl.reference import ReferenceSettings, reference_pseudo_labels
from semiseg.ssl.strong_augment import INTENSITY_OPS
from semiseg.ssl.thresholds import (
    ThresholdHead,
    gaussian_kl,
    reparameterise,
    threshold_pseudo_labels,
    threshold_samples,
)

EStep = tuple[Tensor, Tensor | None, dict[str, Tensor], dict[str, Tensor]]  # target, weight, losses, logs
LEVEL_MOVING_OPS = ("brightness", "gamma")  # left out of the student's view (PseudoLabelConfig.view_pool)


class PseudoLabelConfig(RampedWeight, PassesOption, StudentViewOption):
    # α of Eq. 3. Paper: 5e-3 … 0.1 suits BRATS (0.05 in its appendix), 1.0 suits CARVE.
    weight: float = Field(0.05, ge=0)
    # Optional warm-up of α over rampup_fraction of training (paper: SegPL is not sensitive to it; off by default).
    rampup: RampKind = "linear"
    rampup_fraction: float = Field(0.0, ge=0, le=1)
    # Loss on the pseudo labels: Eq. 3's Dice (foreground classes unless train.include_background), or ce / dice_ce.
    loss: Literal["dice", "ce", "dice_ce"] = "dice"
    # The M-step trains on an intensity view of the unlabelled batch, the E-step labels the clean one; "clean" is
    # the paper (one image for both). Chosen on validation: heart_sites 0.591 → 0.703, the demo level (docstring).
    student_view: StudentView = "intensity"
    # The view's ops without brightness and gamma, which move a tissue's grey level: where that level is what tells
    # an organ from its surroundings (liver_lesions) they erase it from the view. Chosen on validation (evidence).
    view_pool: list[str] = Field(default_factory=lambda: [op for op in INTENSITY_OPS if op not in LEVEL_MOVING_OPS])
    # Half the views start with a random intensity remap (GIN-IPA), a contrast no scanner gave. Chosen on validation:
    # heart_sites 0.625 → 0.696 (right ventricle 0.35 → 0.56), the demo and liver_lesions level (evidence).
    view_remap: float = Field(0.5, ge=0, le=1)
    # Which passes set BatchNorm's running statistics, the ones evaluation normalises with: the clean images'
    # passes (the labelled one and the E-step's pass over the clean unlabelled batch), the view's pass normalising
    # with its own batch statistics and leaving them be, or every training pass (the labelled one and the view's).
    # Only with separate passes and a view: a joint pass is one batch of both, and without a view the student's pass
    # is the clean one. Chosen on validation: evaluation never sees a view (docstring, evidence).
    running_stats: Literal["every_pass", "clean"] = "clean"


class SegPLConfig(PseudoLabelConfig, ReferenceOptions):
    # Where the E-step's labels come from: the model's prediction (Eq. 1) or reference-guided matching of its
    # features (RPG; options pool_size, reference_size, k, k_fraction, weighting, block_mb).
    pseudo_labels: Literal["model", "reference"] = "model"
    # T of Eq. 1, applied per channel in multilabel mode; multiclass pseudo labels are the argmax.
    threshold: float = Field(0.5, gt=0, lt=1)
    # Optional confidence filter (None: every pixel counts, as in the paper); see ssl.pseudo_labels.confidence_mask.
    confidence: float | None = Field(None, gt=0, lt=1)


class SegPLVIConfig(PseudoLabelConfig):
    # Prior N(μ_β, σ_β) of the threshold (paper: N(0.5, 0.1) for BRATS, N(0.4, 0.1) for CARVE).
    prior_mean: float = Field(0.5, gt=0, lt=1)
    prior_std: float = Field(0.1, gt=0)
    # Weight of the KL term; Eq. 8 adds it with weight 1. Its pull on μ, (μ − μ_β)/σ_β², dwarfs the pseudo-label
    # gradient at α = 0.05: with a differentiable threshold, ~0.01 lets the data move T (see the README).
    kl_weight: float = Field(1.0, ge=0)
    # "hard": the paper's comparison (φ learns from the KL only); "straight_through": hard forward, gradient of
    # sigmoid((p − T)/temperature) backward; "soft": the sigmoid itself.
    threshold_mode: Literal["hard", "straight_through", "soft"] = "hard"
    temperature: float = Field(0.05, gt=0)


class _PseudoLabelling(Method):
    """The shared EM step; subclasses define the E-step's pseudo labels (``e_step``)."""

    # separate: labelled and unlabelled images pass the network apart, so the E-step's labels come from
    # unlabelled-only BatchNorm statistics (the paper: one joint pass; see the module docstring)
    default_unlabelled_pass = "separate"

    uses_unlabelled = True
    cfg: PseudoLabelConfig

    @abstractmethod
    def e_step(self, nets: Nets, probs_u: Tensor) -> EStep:
        """Pseudo labels of the unlabelled batch from its detached probabilities, plus extra loss terms and logs."""

    def reference(self) -> ReferenceSettings | None:
        """Settings of reference-guided pseudo labels when they replace ``e_step`` (None: they do not)."""
        return None

    def reference_e_step(self, features_l: Tensor, labelled: Batch, features_u: Tensor,
                         settings: ReferenceSettings) -> EStep:
        """E-step from reference matching: nearest-reference labels, W as the pixel weight (RPG, Eqs. 1-7)."""
        ref = reference_pseudo_labels(features_l, labelled.label, features_u, label_mode=self.ctx.label_mode,
                                      num_classes=self.ctx.num_classes, settings=settings)
        weight = ref.weight if settings.weighting else None
        return ref.target, weight, {}, {"reference_w_mean": ref.weight.mean()}

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        settings, model = self.reference(), nets["model"]
        forward = model if settings is None else partial(model, return_features=True)
        student_u, passes = self.cfg.student_image(unlabelled.image), self.unlabelled_pass(progress)
        clean_stats = self.cfg.running_stats == "clean" and passes == "separate" and student_u is not unlabelled.image
        out_l, out_u = self._training_passes(model, forward, labelled.image, student_u, passes, clean_stats)
        # the E-step reads the clean image: the training pass itself, or one more pass when the student saw a view
        clean_u = (out_u if student_u is unlabelled.image
                   else self._labelling_pass(model, forward, unlabelled.image, updates_stats=clean_stats))
        if settings is None:
            logits_l, logits_u = out_l, out_u
            target, weight, extra, logs = self.e_step(nets, probabilities(clean_u.detach(), self.ctx.label_mode))
        else:
            logits_l, logits_u = out_l.logits, out_u.logits
            target, weight, extra, logs = self.reference_e_step(out_l.features, labelled, clean_u.features, settings)
        losses = {
            "sup": self.ctx.supervised_loss(logits_l, labelled.label),
            "unsup": self.cfg.weight_at(progress) * self.ctx.loss(self.cfg.loss)(logits_u, target, weight=weight),
            **extra,
        }
        values = torch.stack([v.detach().float() for v in logs.values()]).tolist() if logs else []
        masks = {} if weight is None else {"pseudo": weight.detach()}
        return StepOut(losses=losses, logs=dict(zip(logs, values, strict=True)), targets={"pseudo": target.detach()},
                       masks=masks, unlabelled=frozenset({"unsup", *extra}))  # the E-step's terms (KL) too

    @staticmethod
    def _training_passes(model: nn.Module, forward: Callable[[Tensor], Any], labelled: Tensor, student: Tensor,
                         passes: Passes, clean_stats: bool) -> tuple[Any, Any]:
        """The labelled and the student's unlabelled pass; with ``clean_stats`` (separate passes) the student's pass
        over the view leaves BatchNorm's running statistics alone (``frozen_norm_stats``)."""
        if not clean_stats:
            return joint_forward(forward, labelled, student, passes)
        out_l = forward(labelled)
        with frozen_norm_stats(model):
            return out_l, forward(student)

    @staticmethod
    @torch.no_grad()
    def _labelling_pass(model: nn.Module, forward: Callable[[Tensor], Any], image: Tensor, *,
                        updates_stats: bool) -> Any:
        """The clean unlabelled images' pass that labels the student's view, with batch statistics as the training
        pass would use them; it moves the running statistics only where they come from clean images
        (``running_stats: clean``), else leaves them to the training passes (``frozen_norm_stats``)."""
        with nullcontext() if updates_stats else frozen_norm_stats(model):
            return forward(image)


@register
class SegPL(_PseudoLabelling):
    name = "segpl"
    summary = "Pseudo-labelling as EM with a fixed threshold (Xu et al. 2022, Eqs. 1-3)."
    Config = SegPLConfig
    cfg: SegPLConfig

    def reference(self) -> ReferenceSettings | None:
        return self.cfg.reference_settings() if self.cfg.pseudo_labels == "reference" else None

    def e_step(self, nets: Nets, probs_u: Tensor) -> EStep:
        """Eq. 1: ``y' = 1(p > T)`` per channel (multilabel) or the argmax (multiclass), optionally filtered."""
        target = hard_labels(probs_u, self.ctx.label_mode, self.cfg.threshold)
        mask = None
        if self.cfg.confidence is not None:
            mask = confidence_mask(probs_u, self.ctx.label_mode, self.cfg.confidence).to(probs_u.dtype)
        return target, mask, {}, {}


@register
class SegPLVI(_PseudoLabelling):
    """SegPL's EM step with the threshold T sampled from φ's N(μ, σ) (measurements: ``docs/evidence/segpl.md``)."""

    name = "segpl_vi"
    summary = "SegPL with a threshold learnt by variational inference (Xu et al. 2022, Eqs. 4-8)."
    Config = SegPLVIConfig
    cfg: SegPLVIConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"model": NetSpec(), "threshold": NetSpec(builder=self._build_head)}

    def _build_head(self, ctx: MethodContext) -> nn.Module:
        return ThresholdHead(ctx.num_classes, ctx.spatial_dims, prior_mean=self.cfg.prior_mean,
                             prior_std=self.cfg.prior_std)

    def e_step(self, nets: Nets, probs_u: Tensor) -> EStep:
        """Eqs. 5-6: ``(μ, log σ) = φ(p)``, ``T = μ + σ ε``; Eq. 1 under ``T``; Eq. 8's KL as an extra term."""
        mu, log_sigma = nets["threshold"](probs_u)
        t = reparameterise(mu, log_sigma)
        cfg = self.cfg
        target, weight = threshold_pseudo_labels(probs_u, t, self.ctx.label_mode, cfg.threshold_mode, cfg.temperature)
        kl = cfg.kl_weight * gaussian_kl(mu, log_sigma, cfg.prior_mean, cfg.prior_std).mean()
        logs = {"threshold_mu": mu.mean(), "threshold_sigma": log_sigma.exp().mean(), "threshold_sample": t.mean()}
        return target, weight, {"kl": kl}, logs

    @torch.no_grad()
    def predict_samples(self, nets: Nets, x: Tensor, n: int) -> Tensor:
        """``n`` predictions under thresholds ``T_s ~ N(μ, σ)`` (Section 4.4), ``(n, B, K, *spatial)``.

        The noise ``ε_s`` is drawn from a fixed seed, so the s-th draw is the same for every slice or window
        of a case and evaluation is reproducible.
        """
        probs = probabilities(nets["model"](x), self.ctx.label_mode)
        mu, log_sigma = nets["threshold"](probs)
        eps = torch.randn(n, 1, generator=torch.Generator().manual_seed(0)).to(x.device)
        return threshold_samples(probs, reparameterise(mu[None].float(), log_sigma[None].float(), eps),
                                 self.ctx.label_mode)
