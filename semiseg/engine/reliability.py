"""The engine's side of the reliability gate (``train.unlabelled_gate``): when to look, and what it measures."""

from __future__ import annotations

import numpy as np
import torch

from semiseg.config import Config
from semiseg.methods.base import Batch, Method, Nets
from semiseg.nets import evaluating
from semiseg.ssl.gate import ReliabilityGate
from semiseg.ssl.pseudo_labels import hard_labels, probabilities

OBSERVE_EVERY = 5  # steps between labelled-batch Dice measurements while the gate is closed (one extra forward)


def make_gate(cfg: Config, method: Method) -> ReliabilityGate | None:
    """The run's gate, or None when it is off or the method has no unlabelled terms to gate.

    ``auto`` is the method's own choice (``Method.default_unlabelled_gate``)."""
    train = cfg.train
    setting = method.default_unlabelled_gate if train.unlabelled_gate == "auto" else train.unlabelled_gate
    if setting == "off" or not method.uses_unlabelled:
        return None
    return ReliabilityGate(threshold=train.unlabelled_gate_threshold,
                           ramp_steps=train.unlabelled_gate_ramp * train.steps)


def closed_gate_note(gate: ReliabilityGate) -> str:
    """What a user should know when a run ended with its gate still closed: it trained as supervised training."""
    reached = "was never measured" if gate.reliability is None else f"ended at {gate.reliability:.3f}"
    return (f"note: the unlabelled loss terms never switched on: the smoothed labelled-batch Dice {reached}, "
            f"below train.unlabelled_gate_threshold={gate.threshold:g}, so this run trained on the labelled images "
            "alone (the unlabelled ones reached only BatchNorm statistics). Train longer, lower the threshold, or "
            "set train.unlabelled_gate=off to apply the unlabelled terms from the start.")


@torch.no_grad()
def labelled_batch_dice(method: Method, nets: Nets, batch: Batch, label_mode: str, num_classes: int) -> float:
    """Mean foreground Dice of the method's predicting network on a labelled batch, in eval mode.

    The whole batch counts as one volume, so a slice without some class does not score that class 1 or 0.
    """
    from semiseg.engine.loop import mean_foreground_dice

    with evaluating(nets.values()):
        logits = method.predict(nets, batch.image)
    pred = hard_labels(probabilities(logits, label_mode), label_mode).cpu().numpy()
    label = batch.label.cpu().numpy()
    if label_mode == "multilabel":  # (B, K, ...) → (K, B, ...): mean_foreground_dice reads channels first
        pred, label = np.moveaxis(pred, 1, 0), np.moveaxis(label, 1, 0)
    return mean_foreground_dice(pred, label, label_mode, num_classes)
