"""The optimiser (``train.optimizer``) and the learning-rate schedule (warm-up, then ``train.schedule``)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch import nn

from semiseg.config import Config, TrainConfig
from semiseg.errors import SemisegError


def make_optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    train = cfg.train
    if not params:
        raise SemisegError(f"method {train.method!r} declares no trainable parameters")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer,
                   restarts: Sequence[int] = ()) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``train.warmup_steps``, then cosine, poly (power 0.9) or constant.

    ``restarts`` (``Method.schedule_restarts``) cut the run into segments that each get the whole schedule."""
    train = cfg.train
    starts = [0, *restart_steps(restarts, train.steps)]
    ends = [*starts[1:], train.steps]

    def factor(step: int) -> float:
        segment = bisect.bisect_right(starts, step) - 1
        return schedule_factor(train, step - starts[segment], ends[segment] - starts[segment])

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restart_steps(restarts: Sequence[int], total_steps: int) -> list[int]:
    """The restarts that fall inside a run of ``total_steps`` (after step 0), sorted, each once."""
    return sorted({s for s in restarts if 0 < s < total_steps})


def schedule_factor(train: TrainConfig, step: int, steps: int) -> float:
    """The factor on ``train.lr`` at ``step`` of a schedule ``steps`` long."""
    warmup = train.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    if train.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if train.schedule == "poly":
        return (1 - min(t, 1.0)) ** 0.9
    return 1.0
