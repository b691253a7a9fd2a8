"""Deep ensemble (Lakshminarayanan et al. 2017): M supervised members, the gold standard for uncertainty.

The members share the loop (same batches, one optimiser over disjoint parameters, hence independent
updates) and differ by their random initialisation (``init_seed_offset``), which the original paper found
to be the main source of diversity. Prediction averages the members' probabilities; ``predict`` returns
logits whose softmax (multiclass) or sigmoid (multilabel) is that average, so every consumer of logits
(validation, evaluation, ``predict``) sees the ensemble. ``predict_samples`` returns the members themselves
for mean and variance maps, like SegPL-VI's threshold samples.

Defaults: M = 5 members.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from semiseg.methods.base import Batch, Method, MethodConfig, Nets, NetSpec, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.ssl.pseudo_labels import probabilities

_EPS = 1e-6


class EnsembleConfig(MethodConfig):
    # M, the number of members (5 in Lakshminarayanan et al. and in the SegPL-VI comparison).
    members: int = Field(5, ge=2)


def probs_to_logits(probs: Tensor, label_mode: str) -> Tensor:
    """Logits whose softmax / sigmoid gives ``probs`` back (up to a clamp at 1e-6)."""
    if label_mode == "multiclass":
        return torch.log(probs.clamp_min(_EPS))
    return torch.logit(probs, eps=_EPS)


def member_probabilities(nets: Nets, names: list[str], x: Tensor, label_mode: str) -> Tensor:
    """Each named network's probabilities, stacked ``(M, B, K, *spatial)``."""
    return torch.stack([probabilities(nets[name](x), label_mode) for name in names])


def mean_prediction(nets: Nets, names: list[str], x: Tensor, label_mode: str) -> Tensor:
    """Logits of the named networks' mean probability: one prediction from several networks."""
    return probs_to_logits(member_probabilities(nets, names, x, label_mode).mean(0), label_mode)


@register
class Ensemble(Method):
    name = "ensemble"
    summary = "Deep ensemble of M supervised networks; averaged probabilities, members as uncertainty samples."
    Config = EnsembleConfig
    cfg: EnsembleConfig

    @property
    def member_names(self) -> list[str]:
        return [f"member{i}" for i in range(self.cfg.members)]

    def networks(self) -> dict[str, NetSpec]:
        return {name: NetSpec(init_seed_offset=i) for i, name in enumerate(self.member_names)}

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        loss = self.ctx.supervised_loss
        return StepOut(losses={name: loss(nets[name](labelled.image), labelled.label) for name in self.member_names})

    def predict_samples(self, nets: Nets, x: Tensor, n: int) -> Tensor:
        """The M members' probabilities, ``(M, B, K, *spatial)``; ``n`` is ignored (an ensemble has M)."""
        return member_probabilities(nets, self.member_names, x, self.ctx.label_mode)

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return mean_prediction(nets, self.member_names, x, self.ctx.label_mode)
