"""The engine's side of the reliability gate (``train.unlabelled_gate``): when to look, and what it measures.

The loop weighs the unlabelled loss terms by the gate's value; ``GateHandler`` feeds the gate its observations
after each step, carries its state across ``--resume`` and says so when a run ended with the gate closed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from semiseg.config import Config
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop
from semiseg.eval.metrics import mean_foreground_dice
from semiseg.methods.base import Batch, Method, Nets
from semiseg.nets import evaluating
from semiseg.ssl.gate import ReliabilityGate
from semiseg.ssl.pseudo_labels import hard_labels, probabilities

OBSERVE_EVERY = 5  # steps between labelled-batch Dice measurements while the gate is closed (one extra forward)
PLATEAU_MIN_GAIN = 0.005  # a smoothed Dice this much above its best is progress; less is noise of the batch


@dataclass
class PlateauGate(ReliabilityGate):
    """Opens when the smoothed labelled-batch Dice reaches ``threshold`` or, sooner, when it stops improving.

    Why: an absolute threshold is a number tuned on one dataset (0.8 on the demo); on data where supervised
    training levels off below it, the gate would never open. This rule is relative to what the run measures:
    once the Dice has risen above its first measurement (the network is learning), ``patience`` measurements
    in a row without beating its best by ``PLATEAU_MIN_GAIN`` mean the supervised part has stopped getting
    better, and the unlabelled terms switch on. A Dice stuck at its start (all background) never opens it.
    """

    patience: int = 4
    first: float | None = None
    best: float | None = None
    stalled: int = 0

    def observe(self, step: int, dice: float) -> None:
        super().observe(step, dice)
        if self.is_open or self.reliability is None:
            return
        if self.first is None:
            self.first = self.best = self.reliability
            return
        assert self.best is not None
        if self.reliability > self.best + PLATEAU_MIN_GAIN:
            self.best, self.stalled = self.reliability, 0
        elif self.best > self.first + PLATEAU_MIN_GAIN:  # it learned, and has stopped learning
            self.stalled += 1
            if self.stalled >= self.patience:
                self.opened_at = step

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "first": self.first, "best": self.best, "stalled": self.stalled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.first, self.best, self.stalled = state.get("first"), state.get("best"), state.get("stalled", 0)


def make_gate(cfg: Config, method: Method) -> ReliabilityGate | None:
    """The run's gate, or None when it is off or the method has no unlabelled terms to gate.

    ``auto`` is the method's own choice (``Method.default_unlabelled_gate``); ``labelled_dice_plateau`` adds
    the relative rule of ``PlateauGate`` to the threshold."""
    train = cfg.train
    setting = method.default_unlabelled_gate if train.unlabelled_gate == "auto" else train.unlabelled_gate
    if setting == "off" or not method.uses_unlabelled:
        return None
    shared = {"threshold": train.unlabelled_gate_threshold, "ramp_steps": train.unlabelled_gate_ramp * train.steps,
              "smoothing": train.unlabelled_gate_smoothing}
    if setting == "labelled_dice_plateau":
        return PlateauGate(**shared, patience=train.unlabelled_gate_patience)
    return ReliabilityGate(**shared)


def closed_gate_note(gate: ReliabilityGate, steps: int) -> str:
    """What a user should know when a run ended with its gate still closed: it trained as supervised training.

    A run shorter than ``OBSERVE_EVERY`` steps ended before the gate's first look, so no threshold was missed:
    the note says that rather than comparing a Dice nobody measured with the threshold."""
    alone = ("so this run trained on the labelled images alone (the unlabelled ones reached only BatchNorm "
             "statistics).")
    if gate.reliability is None:
        return (f"note: the unlabelled loss terms never switched on: the run ended after {steps} step(s), before "
                f"the gate's first labelled-batch Dice (measured every {OBSERVE_EVERY} steps), {alone} Train for "
                f"more than {OBSERVE_EVERY} steps, or set train.unlabelled_gate=off to apply the unlabelled terms "
                "from the start.")
    return (f"note: the unlabelled loss terms never switched on: the smoothed labelled-batch Dice ended at "
            f"{gate.reliability:.3f}, below train.unlabelled_gate_threshold={gate.threshold:g}, {alone} Train "
            "longer, lower the threshold, or set train.unlabelled_gate=off to apply the unlabelled terms from the "
            "start.")


@torch.no_grad()
def labelled_batch_dice(method: Method, nets: Nets, batch: Batch, label_mode: str, num_classes: int) -> float:
    """Mean foreground Dice of the method's predicting network on a labelled batch, in eval mode.

    The whole batch counts as one volume, so a slice without some class does not score that class 1 or 0.
    """
    with evaluating(nets.values()):
        logits = method.predict(nets, batch.image)
    pred = hard_labels(probabilities(logits, label_mode), label_mode).cpu().numpy()
    label = batch.label.cpu().numpy()
    if label_mode == "multilabel":  # (B, K, ...) → (K, B, ...): mean_foreground_dice reads channels first
        pred, label = np.moveaxis(pred, 1, 0), np.moveaxis(label, 1, 0)
    return mean_foreground_dice(pred, label, label_mode, num_classes)


class GateHandler(Handler):
    """``on_step_end``: while the gate is closed, every ``OBSERVE_EVERY`` steps a labelled-batch Dice feeds it.

    Logs ``unlabelled_gate`` every step (and ``labelled_dice``, ``labelled_dice_smoothed`` when it looked); the
    Dice is averaged over processes, so every rank opens the gate at the same step.
    """

    state_key = "gate"

    def __init__(self, gate: ReliabilityGate, *, notes: bool = True) -> None:
        self.gate, self.notes = gate, notes

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        value = self.gate.value(loop.step - 1)  # the factor this step's unlabelled terms were weighted by
        step.row["unlabelled_gate"] = value
        if self.gate.is_open or loop.step % OBSERVE_EVERY or step.labelled is None:
            return
        ctx = loop.ctx
        dice = loop.dist.mean(labelled_batch_dice(loop.method, loop.nets, step.labelled, ctx.label_mode,
                                                  ctx.num_classes))
        self.gate.observe(loop.step, dice)
        step.row.update({"labelled_dice": dice, "labelled_dice_smoothed": self.gate.reliability})

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        if error is None and self.notes and not self.gate.is_open:
            print(closed_gate_note(self.gate, loop.step), file=sys.stderr)

    def state_dict(self) -> dict[str, Any]:
        return self.gate.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gate.load_state_dict(state)
