"""Self-training with dual uncertainty (Qiu et al., "Self-training with dual uncertainty for semi-supervised
medical image segmentation"), Algorithm 1 as stages of the one training loop.

Stages, at fractions of ``train.steps`` (``stage_starts``; the paper trains each phase equally long):

1. pre-train on labelled data (Eq. 5); K snapshots of the network are kept at fractions of this stage;
2. at the start of stage 3, before its first step, every unlabelled case is predicted whole by each snapshot
   and ranked by its sample-level uncertainty (Eq. 1); the first ``reliable_fraction`` are "reliable";
3. the student (the network itself: "initialise S with T") trains on labelled + reliable cases, with pseudo
   labels from a frozen copy of itself taken at the stage boundary (Eq. 6);
4. the frozen copy is refreshed from the student and training continues on every unlabelled case.

Stage 2 takes no steps, so the ``stage`` logged is 1, 3 or 4. Pseudo labels come from the frozen copy on each
unlabelled batch; as the copy does not change within a stage, this equals labelling the set offline at the
boundary (as ``self_training`` does). The pixel-level uncertainty (Sec. 3.2) is the KL divergence between a
main decoder that upsamples by transposed convolution and a second one that upsamples by interpolation
(Eq. 2); the pseudo-label cross-entropy is rectified as exp(−D)·L_ce + D per pixel (Eq. 4).

``variant`` gives the rows of Table 3: ``st`` (plain self-training: stage 3 on every case, plain CE),
``st_ss`` (+ sample sorting), ``st_ss_unrc`` (+ uncertainty rectification; the full method).

Choices the paper leaves open, made here: the supervised loss is ``train.loss`` (Eq. 5 is (Dice + CE)/2, i.e.
half the default ``dice_ce``, a scale only), shared with every method of a comparison; the second decoder is
also supervised on labelled data (``aux_supervised``), since a decoder trained by the KL alone would make D
meaningless at the start of stage 3; the snapshots are frozen networks, so they are checkpointed with the run.
The curriculum (stage, snapshots taken, ranking) is method state; the ranking is also written to
``artifacts/ranking.json`` in the run folder.

How the stages run in the engine. Stage 1 pre-trains for ``stage_starts[0]`` of ``train.steps`` and keeps K
frozen snapshots at the ``snapshots`` fractions of that stage. Before the first step of stage 3 the engine hands
the method every unlabelled case whole (all slices in 2D, the sliding window in 3D); Eq. 1's sample-level
uncertainty is the mean squared difference of each earlier snapshot's prediction from the last one's,
averaged over the K−1 pairs; cases are sorted ascending. Stage 3 draws unlabelled batches from the reliable
cases only; at ``stage_starts[1]`` the frozen copy is refreshed and every unlabelled case is used. The stage,
snapshots and ranking are method state, so ``--resume`` in the middle of stage 3 keeps the same reliable set
without re-ranking. D and exp(−D)·L + D are ``semiseg.ssl.rectification``, shared with ``urpc``.

Defaults: stages at 1/3 and 2/3 of the run; snapshots at 0.5, 0.75 and 1.0 of pre-training; reliable 50 %;
weight 1; ``variant=st_ss_unrc``; pass layout ``separate_until_gate``: separate passes keep short runs safe while
the gate holds the unlabelled terms off, and the paper's joint pass once it has opened avoids what separate
passes through stages 3-4 cost on the converged protocol (``experiments/converged.yaml``).

Deviation, measured: in stages 3 and 4 the student trains on an intensity view of the unlabelled batch
(``student_view: intensity``, ``semiseg.ssl.strong_augment.intensity_view``; ST++, which the paper compares with,
also re-trains on strongly augmented images) while the frozen copy labels the clean batch; ``student_view:
clean`` is the paper's single image.

Option, measured and not adopted: ``labeller: average`` copies the frozen labeller at each boundary from an
exponential moving average of the network's weights (half-life ``labeller_half_life``) instead of the network
as it is at that step (``snapshot``, the paper): the usual remedy (Mean Teacher, SWA) for a labeller drawn from a
pre-training whose validation Dice still swings; on heart_sites it labelled no better
(``experiments/dev_dual_labeller_heart.yaml``).
``labeller: snapshots`` labels stage 3 with the mean prediction of the K snapshots Eq. 1 already keeps (an
ensemble over those swings; stage 4 as the paper); on heart_sites it ended lower too
(``experiments/dev_dual_snapshots_heart.yaml``).

Deviation, measured (``labeller: best``, the default): each boundary freezes the stage's best network on the
run's validation split (``Method.on_validation``; without a validation set, the network at the boundary), and
stage 3's student starts from it (Algorithm 1, line 4: "initialise S with T"). ST++, whose K-checkpoint ranking
this paper's sample sorting follows, labels with its best model of the phase in the same way; the paper's text
does not say which T, and ``labeller: snapshot`` (the network as it is at the boundary) is its literal reading.
With one labelled case pre-training's validation Dice swings by 0.1–0.15 between checkpoints, and self-training
keeps the student where its labeller was: chosen on validation on heart_sites and the demo
(``experiments/dev_dual_best_heart.yaml``, ``experiments/dev_dual_best_demo.yaml``). The run's validation Dice
takes part in training, so read it as slightly optimistic for this labeller.

Option, measured and not adopted: ``stage_schedule: per_stage`` restarts the learning-rate schedule (warm-up,
then its decay) at stages 3 and 4 (``Method.schedule_restarts``), as the paper's phases of 200 epochs each would
run; with one schedule over the run the copy is frozen while the learning rate is still near its peak. Level on
heart_sites (``experiments/dev_dual_schedule_heart.yaml``).

Measurements behind the defaults: ``docs/evidence/dual_uncertainty.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from semiseg.methods._options import PassesOption, StudentView, StudentViewOption
from semiseg.methods.base import (
    Batch,
    Curriculum,
    Method,
    MethodContext,
    Nets,
    NetSpec,
    Progress,
    StepOut,
    WholeCase,
)
from semiseg.methods.registry import register
from semiseg.nets.unet import UNet
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import hard_labels, probabilities
from semiseg.ssl.rectification import cross_entropy_map, rectified_loss
from semiseg.ssl.uncertainty import kl_divergence_logits

Variant = Literal["st", "st_ss", "st_ss_unrc"]
# Where stage 3's frozen labeller comes from: the network as it is at the boundary (the paper), an exponential
# moving average of its weights over the steps before, the mean prediction of the K snapshots, or the stage's best
# network on validation (ST++'s best model; module docstring).
Labeller = Literal["snapshot", "average", "snapshots", "best"]
# One learning-rate schedule over the run, or a fresh one for each phase (the paper trains each for 200 epochs).
StageSchedule = Literal["one", "per_stage"]


# ----------------------------------------------------------------------------------------------
# Equations as plain functions (tested against hand-computed values)


def sample_uncertainty(earlier: Iterable[Tensor], last: Tensor) -> float:
    """Eq. 1: Σ_{i<K} mean[(F_i − F_K)²] / (K − 1), the snapshots' disagreement with the last one on one case.

    ``earlier`` yields the probabilities of snapshots 1 … K−1 (one at a time, so only two whole-case
    predictions are held at once), ``last`` those of snapshot K; the mean runs over classes and voxels.
    """
    total, count = 0.0, 0
    for probs in earlier:
        total += float((probs.float() - last.float()).pow(2).mean())
        count += 1
    if count == 0:
        raise ValueError("sample-level uncertainty needs at least two snapshots")
    return total / count


def rank_cases(uncertainty: dict[str, float], reliable_fraction: float) -> dict[str, Any]:
    """Sort cases by ascending uncertainty (ties by id); the first ⌈fraction·M⌉ are reliable (Sec. 3.1)."""
    order = sorted(uncertainty, key=lambda case: (uncertainty[case], case))
    n_reliable = min(len(order), max(1, math.ceil(reliable_fraction * len(order)))) if order else 0
    return {
        "order": order,
        "reliable": order[:n_reliable],
        "unreliable": order[n_reliable:],
        "uncertainty": {case: uncertainty[case] for case in order},
    }


# ----------------------------------------------------------------------------------------------
# The method


class DualUncertaintyConfig(PassesOption, StudentViewOption):
    # Table 3's rows: plain self-training, + sample sorting, + uncertainty rectification (the full method).
    variant: Variant = "st_ss_unrc"
    # First step of stage 3 (labelled + reliable) and of stage 4 (everything), as fractions of train.steps.
    # Paper: every phase runs 200 epochs, so pre-training, stage 3 and stage 4 get a third each.
    stage_starts: tuple[float, float] = (1 / 3, 2 / 3)
    # K snapshot points as fractions of the pre-training stage (the paper saves "K models at certain time
    # points" without giving K); the last is compared with the others in Eq. 1.
    snapshots: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0])
    # Share of the ranked unlabelled cases that is "reliable" (paper: the first 50 %).
    reliable_fraction: float = Field(0.5, gt=0, le=1)
    # Weight of L_unsup (Eq. 6: L_sup + L_unsup, i.e. 1).
    weight: float = Field(1.0, ge=0)
    # Supervise the interpolation decoder on labelled data too (st_ss_unrc only; see the module docstring).
    aux_supervised: bool = True
    # The student trains on an intensity view of the unlabelled batch, the frozen copy labels the clean one;
    # "clean" is the paper. Chosen on validation: heart_sites 0.466 → 0.510, the demo level (module docstring).
    student_view: StudentView = "intensity"
    # "snapshot": the frozen copy is the network at the stage boundary (the paper); "average": an EMA of the
    # network's weights with half-life ``labeller_half_life`` (steps, or a fraction of the run when < 1);
    # measured on heart_sites' validation, the average labelled no better (module docstring). "snapshots":
    # stage 3 is labelled by the mean probability of the K snapshots Eq. 1 already keeps; stage 4 as the paper.
    # "best": each boundary freezes the stage's best network on validation and stage 3's student starts from it
    # (Algorithm 1: "initialise S with T"; ST++ labels with its best model); without validation, the boundary's.
    # Chosen on validation on heart_sites and the demo over the paper's literal "snapshot" (module docstring).
    labeller: Labeller = "best"
    labeller_half_life: float = Field(0.05, gt=0)
    # "per_stage": the learning-rate schedule starts again at stages 3 and 4, so the network frozen as the labeller
    # has finished a schedule of its own, as a phase trained on its own would have; level on heart_sites.
    stage_schedule: StageSchedule = "one"

    @field_validator("stage_starts")
    @classmethod
    def _stages(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1] <= 1:
            raise ValueError("needs 0 < start of stage 3 < start of stage 4 ≤ 1")
        return value

    @field_validator("snapshots")
    @classmethod
    def _snapshots(cls, value: list[float]) -> list[float]:
        if len(value) < 2 or any(not 0 < f <= 1 for f in value) or sorted(set(value)) != value:
            raise ValueError("needs at least two increasing fractions of the pre-training stage in (0, 1]")
        return value

    @model_validator(mode="after")
    def _snapshot_labeller_needs_snapshots(self) -> DualUncertaintyConfig:
        if self.labeller == "snapshots" and self.variant == "st":
            raise ValueError("labeller=snapshots labels with the sample-sorting snapshots, which variant=st does "
                             "not keep: use variant st_ss or st_ss_unrc, or labeller=snapshot")
        return self


@register
class DualUncertainty(Method):
    # separate passes while the gate is closed, the paper's joint pass once it has opened (module docstring)
    default_unlabelled_pass = "separate_until_gate"
    name = "dual_uncertainty"
    summary = "Self-training with sample-level (snapshot) and pixel-level (two-decoder KL) uncertainty."
    Config = DualUncertaintyConfig
    uses_unlabelled = True
    cfg: DualUncertaintyConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.stage, self.snapshots_taken = 1, 0
        # labeller "best": the stage's best validation Dice so far and the weights that scored it. Method state,
        # not a network of its own, so checkpoints written before this labeller existed still load.
        self.best_dice: float | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.sorting = SampleSorting(self) if self.sorts else None

    @property
    def sorts(self) -> bool:
        return self.cfg.variant != "st"

    @property
    def rectifies(self) -> bool:
        return self.cfg.variant == "st_ss_unrc"

    @property
    def snapshot_names(self) -> list[str]:
        return [f"snapshot{j}" for j in range(len(self.cfg.snapshots))] if self.sorts else []

    def networks(self) -> dict[str, NetSpec]:
        arch = {"aux_decoders": ["interp"]} if self.rectifies else {}
        nets = {"model": NetSpec(overrides=arch), "teacher": NetSpec(overrides=arch, trainable=False)}
        if self.cfg.labeller == "average":
            nets["average"] = NetSpec(overrides=arch, trainable=False, ema_of=("model",),
                                      ema_half_life=self.cfg.labeller_half_life)
        return nets | {name: NetSpec(overrides=arch, trainable=False) for name in self.snapshot_names}

    # -- the curriculum ----------------------------------------------------------------------
    def stage_starts(self, total_steps: int) -> tuple[int, int]:
        return round(total_steps * self.cfg.stage_starts[0]), round(total_steps * self.cfg.stage_starts[1])

    def schedule_restarts(self, total_steps: int) -> list[int]:
        return list(self.stage_starts(total_steps)) if self.cfg.stage_schedule == "per_stage" else []

    def stage_at(self, progress: Progress) -> int:
        start3, start4 = self.stage_starts(progress.total_steps)
        return 1 if progress.step < start3 else 3 if progress.step < start4 else 4

    def snapshot_steps(self, total_steps: int) -> list[int]:
        """Snapshot j holds the network after this many optimiser updates."""
        start3 = self.stage_starts(total_steps)[0]
        return [round(f * start3) for f in self.cfg.snapshots]

    @torch.no_grad()
    def advance(self, nets: Nets, progress: Progress) -> None:
        """Take the snapshots that are due and, at a stage boundary, freeze the student as the labeller.

        Idempotent within a step, so the case pass and the training step may both call it."""
        steps = self.snapshot_steps(progress.total_steps)
        while self.snapshots_taken < len(self.snapshot_names) and progress.step >= steps[self.snapshots_taken]:
            nets[self.snapshot_names[self.snapshots_taken]].load_state_dict(nets["model"].state_dict())
            self.snapshots_taken += 1
        target = self.stage_at(progress)
        if target > self.stage:
            nets["teacher"].load_state_dict(self._labeller_weights(nets))
            if self.cfg.labeller == "best" and self.stage == 1:  # Algorithm 1, line 4: initialise S with T
                nets["model"].load_state_dict(nets["teacher"].state_dict())
            self.stage, self.best_dice, self.best_weights = target, None, None

    def _labeller_weights(self, nets: Nets) -> dict[str, Tensor]:
        """The weights the frozen labeller takes at a stage boundary."""
        if self.cfg.labeller == "best" and self.best_weights is not None:
            return self.best_weights
        return nets["average" if self.cfg.labeller == "average" else "model"].state_dict()

    @torch.no_grad()
    def on_validation(self, nets: Nets, step: int, dice: float) -> None:
        """With ``labeller: best``, keep the network of the stage's best validation Dice until its boundary."""
        if self.cfg.labeller != "best" or self.stage == 4 or not math.isfinite(dice):
            return
        if self.best_dice is None or dice > self.best_dice:
            self.best_weights = {k: v.detach().clone() for k, v in nets["model"].state_dict().items()}
            self.best_dice = dice

    def curriculum(self) -> Curriculum | None:
        return self.sorting

    # -- one step ----------------------------------------------------------------------------
    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        """Pre-training (Eq. 5), and any step without an unlabelled batch; snapshots and stages still advance."""
        self.advance(nets, progress)
        main, aux = self._decoders(nets["model"], labelled.image)
        return StepOut(self._supervised_terms(main, aux, labelled), {"stage": float(self.stage)})

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        self.advance(nets, progress)
        if self.stage == 1:
            return self.supervised_step(nets, labelled, progress)
        student_u = self.cfg.student_image(unlabelled.image)
        (main_l, aux_l), (main_u, aux_u) = joint_forward(partial(self._decoders, nets["model"]), labelled.image,
                                                         student_u, self.unlabelled_pass(progress))
        losses = self._supervised_terms(main_l, aux_l, labelled)
        logs = {"stage": float(self.stage)}
        target = self._pseudo_labels(self._labellers(nets), unlabelled.image)
        ce = cross_entropy_map(main_u, target, self.ctx.label_mode)  # Eq. 3, per pixel
        if aux_u is None:
            losses["unsup"] = self.cfg.weight * ce.mean()
            return StepOut(losses, logs, targets={"pseudo": target, "student": main_u.detach()},
                           unlabelled=frozenset({"unsup"}))
        mode = self.ctx.label_mode
        d = kl_divergence_logits(main_u, aux_u, mode)  # Eq. 2, from log-probabilities
        losses["unsup"] = self.cfg.weight * rectified_loss(ce, d)  # Eq. 4
        rectification = torch.exp(-d.detach())  # the weight exp(−D) each pixel's CE gets
        return StepOut(losses, logs | {"pixel_uncertainty": float(d.detach().mean())},
                       targets={"pseudo": target, "student": main_u.detach()}, masks={"pseudo": rectification},
                       unlabelled=frozenset({"unsup"}))

    def _supervised_terms(self, main: Tensor, aux: Tensor | None, labelled: Batch) -> dict[str, Tensor]:
        """Eq. 5 for the main decoder and, with ``aux_supervised``, for the interpolation decoder too."""
        losses = {"sup": self.ctx.supervised_loss(main, labelled.label)}
        if aux is not None and self.cfg.aux_supervised:
            losses["sup_aux"] = self.ctx.supervised_loss(aux, labelled.label)
        return losses

    def _decoders(self, model: UNet, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Main (transposed-conv) logits and, for the full method, the interpolation decoder's, one encoder pass."""
        if not self.rectifies:
            return model(x), None
        skips = model.encode(x)
        return model.head(model.decode(skips, 0)[0], 0), model.head(model.decode(skips, 1)[0], 1)

    def _labellers(self, nets: Nets) -> list[nn.Module]:
        """The frozen networks whose mean prediction labels this stage's unlabelled batches."""
        if self.cfg.labeller == "snapshots" and self.stage == 3:
            return [nets[name] for name in self.snapshot_names]
        return [nets["teacher"]]

    @torch.no_grad()
    def _pseudo_labels(self, labellers: Sequence[nn.Module], image: Tensor) -> Tensor:
        mode = self.ctx.label_mode
        total = 0.0
        for labeller in labellers:
            labeller.eval()  # frozen labeller: running BN statistics, never updated by these passes
            total = total + probabilities(labeller(image), mode)
        return hard_labels(total / len(labellers), mode)

    # -- state -------------------------------------------------------------------------------
    @property
    def ranking(self) -> dict[str, Any] | None:
        return None if self.sorting is None else self.sorting.ranking

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "snapshots_taken": self.snapshots_taken, "ranking": self.ranking,
                "best_dice": self.best_dice, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"stage", "snapshots_taken", "ranking"}  # older runs lack the best labeller's two keys
        if not expected <= set(state) <= expected | {"best_dice", "best_weights"}:
            raise ValueError(f"dual_uncertainty expects its state {sorted(expected)}, got {sorted(state)}")
        self.stage, self.snapshots_taken = int(state["stage"]), int(state["snapshots_taken"])
        self.best_dice, self.best_weights = state.get("best_dice"), state.get("best_weights")
        if self.sorting is not None:
            self.sorting.ranking = state["ranking"]


class SampleSorting(Curriculum):
    """Stage 2 of Algorithm 1: rank every unlabelled case once, when stage 3 begins; stage 3 then draws its
    unlabelled batches from the reliable cases only. The ranking is also the run's ``artifacts/ranking.json``."""

    def __init__(self, method: DualUncertainty) -> None:
        self.method = method
        self.ranking: dict[str, Any] | None = None

    def wants_cases(self, progress: Progress) -> bool:
        return self.ranking is None and self.method.stage_at(progress) == 3

    def on_cases(self, nets: Nets, cases: Iterable[WholeCase], progress: Progress) -> None:
        """Eq. 1 over the K snapshots for every case (eval mode, whole cases), then the ranking (Sec. 3.1)."""
        method = self.method
        method.advance(nets, progress)  # the last snapshot is due now
        *earlier, last = [nets[name] for name in method.snapshot_names]
        scores = {}
        for case in cases:
            last_probs = case.probabilities(last)
            scores[case.case_id] = sample_uncertainty((case.probabilities(net) for net in earlier), last_probs)
        self.ranking = {
            **rank_cases(scores, method.cfg.reliable_fraction),
            "step": progress.step,
            "snapshot_steps": method.snapshot_steps(progress.total_steps),
        }

    def subset(self, progress: Progress) -> Sequence[str] | None:
        if self.ranking is None or not self.ranking["reliable"] or self.method.stage_at(progress) != 3:
            return None
        return self.ranking["reliable"]

    def artifacts(self) -> dict[str, Any]:
        return {} if self.ranking is None else {"ranking": self.ranking}
