"""The engine's side of the reliability gate (``train.unlabelled_gate``): when to look, and what it measures."""

from __future__ import annotations

import numpy as np
import torch

from semiseg.config import Config
from semiseg.methods.base import Batch, Method, Nets
from semiseg.ssl.gate import ReliabilityGate
from semiseg.ssl.pseudo_labels import hard_labels, probabilities

OBSERVE_EVERY = 5  # steps between labelled-batch Dice measurements while the gate is closed (one extra forward)


def make_gate(cfg: Config, method: Method) -> ReliabilityGate | None:
    """The run's gate, or None when it is off or the method has no unlabelled terms to gate."""
    train = cfg.train
    if train.unlabelled_gate == "off" or not method.uses_unlabelled:
        return None
    return ReliabilityGate(threshold=train.unlabelled_gate_threshold,
                           ramp_steps=train.unlabelled_gate_ramp * train.steps)


@torch.no_grad()
def labelled_batch_dice(method: Method, nets: Nets, batch: Batch, label_mode: str, num_classes: int) -> float:
    """Mean foreground Dice of the method's predicting network on a labelled batch, in eval mode.

    The whole batch counts as one volume, so a slice without some class does not score that class 1 or 0.
    """
    from semiseg.engine.loop import mean_foreground_dice

    for net in nets.values():
        net.eval()
    pred = hard_labels(probabilities(method.predict(nets, batch.image), label_mode), label_mode).cpu().numpy()
    label = batch.label.cpu().numpy()
    if label_mode == "multilabel":  # (B, K, ...) → (K, B, ...): mean_foreground_dice reads channels first
        pred, label = np.moveaxis(pred, 1, 0), np.moveaxis(label, 1, 0)
    return mean_foreground_dice(pred, label, label_mode, num_classes)
