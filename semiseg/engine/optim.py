"""The optimiser (``train.optimizer``) and the learning-rate schedule (warm-up, then ``train.schedule``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from semiseg.config import Config
from semiseg.errors import SemisegError


def make_optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    train = cfg.train
    if not params:
        raise SemisegError(f"method {train.method!r} declares no trainable parameters")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``train.warmup_steps``, then cosine, poly (power 0.9) or constant."""
    train = cfg.train

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        t = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        if train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if train.schedule == "poly":
            return (1 - min(t, 1.0)) ** 0.9
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
