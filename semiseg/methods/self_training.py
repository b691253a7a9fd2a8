"""Classic self-training: train on labelled data, label the unlabelled set, retrain on both; repeat.

The offline rounds are stages of the one training loop. Round 0 (the first ``supervised_fraction`` of
training) is supervised only. At each round boundary the student is copied into a frozen teacher (a
``NetSpec`` with ``trainable=False``, predicting in eval mode); during the round the teacher's hard
predictions on each unlabelled batch are the pseudo labels. As the teacher does not change within a round,
this equals labelling the whole unlabelled set offline at the boundary, without storing the labels.

The student is fine-tuned across rounds, not re-initialised: the loop's single optimiser and learning-rate
schedule span the whole run, so a fresh student in a late round would start at an already-decayed learning
rate. The current round lives in ``state_dict`` (and the teacher's weights in the checkpoint), so resuming
mid-round neither re-snapshots nor loses the teacher.

Defaults: 2 rounds after 40 % of the run supervised; the student, not the frozen teacher, predicts at test
time.

Measurements behind the defaults: ``docs/evidence/self_training.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from semiseg.methods._options import PassesOption
from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import confidence_mask, hard_labels, probabilities


class SelfTrainingConfig(PassesOption):
    # Pseudo-labelling rounds after the supervised stage (each relabels the unlabelled set once).
    rounds: int = Field(2, ge=1)
    # Share of training spent on labelled data only, before the first round; the rounds split the rest evenly.
    supervised_fraction: float = Field(0.4, ge=0, lt=1)
    # Weight of the pseudo-label loss ("retrain on both" counts a pseudo-labelled image like a labelled one).
    weight: float = Field(1.0, ge=0)
    # Optional teacher-confidence filter (None: every pixel); see ssl.pseudo_labels.confidence_mask.
    confidence: float | None = Field(None, gt=0, lt=1)


@register
class SelfTraining(Method):
    name = "self_training"
    summary = "Offline self-training baseline: supervised stage, then rounds of pseudo labels from a frozen snapshot."
    Config = SelfTrainingConfig
    uses_unlabelled = True
    cfg: SelfTrainingConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.round = 0

    def networks(self) -> dict[str, NetSpec]:
        return {"model": NetSpec(), "teacher": NetSpec(trainable=False)}

    def round_starts(self, total_steps: int) -> list[int]:
        """First step of rounds 1 … ``rounds``: after ``supervised_fraction``, then evenly spaced."""
        f0, rounds = self.cfg.supervised_fraction, self.cfg.rounds
        return [round(total_steps * (f0 + (1.0 - f0) * k / rounds)) for k in range(rounds)]

    def round_at(self, progress: Progress) -> int:
        """The round a step belongs to: 0 (supervised) before the first start, then 1 … ``rounds``."""
        return sum(progress.step >= start for start in self.round_starts(progress.total_steps))

    @torch.no_grad()
    def _advance(self, nets: Nets, progress: Progress) -> None:
        """At a round boundary, freeze the current student as the round's labeller."""
        target = self.round_at(progress)
        if target > self.round:
            nets["teacher"].load_state_dict(nets["model"].state_dict())
            self.round = target

    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        """Round 0, and any step without an unlabelled batch: the labelled term; rounds still advance."""
        self._advance(nets, progress)
        out = super().supervised_step(nets, labelled, progress)
        return StepOut(out.losses, logs={"round": float(self.round)})

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        self._advance(nets, progress)
        if self.round == 0:
            return self.supervised_step(nets, labelled, progress)
        logits_l, logits_u = joint_forward(nets["model"], labelled.image, unlabelled.image,
                                           self.unlabelled_pass(progress))
        target, mask = self._pseudo_labels(nets["teacher"], unlabelled.image)
        losses = {
            "sup": self.ctx.supervised_loss(logits_l, labelled.label),
            "unsup": self.cfg.weight * self.ctx.supervised_loss(logits_u, target, mask=mask),
        }
        masks = {} if mask is None else {"pseudo": mask}
        taught = {"pseudo": target, "student": logits_u.detach()}  # the student's own labels, for comparison
        return StepOut(losses=losses, logs={"round": float(self.round)}, targets=taught, masks=masks,
                       unlabelled=frozenset({"unsup"}))

    @torch.no_grad()
    def _pseudo_labels(self, teacher: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        teacher.eval()  # frozen labeller: running BN statistics, never updated by these passes
        probs = probabilities(teacher(image), self.ctx.label_mode)
        mask = None if self.cfg.confidence is None else confidence_mask(probs, self.ctx.label_mode, self.cfg.confidence)
        return hard_labels(probs, self.ctx.label_mode), mask

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"round"}:
            raise ValueError(f"self_training expects its state {{'round'}}, the checkpoint holds {sorted(state)}")
        self.round = int(state["round"])
