"""What a method teaches, measured against labels it never sees.

When the unlabelled training cases have labels on disk (the demo, phantoms, a user who hides labels to test),
the unlabelled store keeps them aside (``StoredCase.truth``) and the sampler emits the crop under ``"truth"``,
a key ``to_batch`` never reads: the method's ``Batch`` has no label, and only the engine holds the truth.

Per logged step the engine scores what the step reported in ``StepOut.targets`` (the pseudo labels or soft
targets the unlabelled loss trained towards, on the unlabelled batch as drawn) and ``StepOut.masks`` (the
per-pixel weights it kept them with): ``teach/<name>_acc`` (pixel accuracy), ``teach/<name>_dice`` (mean
foreground Dice, pooled over the batch; classes absent from both are left out), ``teach/<name>_kept`` (mean
weight of the mask) and ``teach/<name>_acc_kept`` (accuracy weighted by the mask of the same name: are the
pixels the method trusts right?). Next to them, ``teach/prediction_acc`` and ``teach/prediction_dice`` score the
predicting network's own answer on the same batch (eval mode, before the step): targets below it teach the model
less than it already knows. At each validation every segmentation network of the method (students,
teachers, EMA, snapshots) is scored on whole unlabelled cases: ``teach/unl_dice_<net>``. Set
``train.monitor_unlabelled=false`` to switch it all off; without truth nothing is logged.

Where a task has two or more foreground classes, ``teach_class/<name>_dice/<class>`` gives each class's Dice of
each target and of the prediction on the same batch: the mean over classes hides a small class whose targets
collapse (a lesion the model misses becomes confident background) behind a large one that is right.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from semiseg.data.loaders import StoredCase
from semiseg.engine.device import autocast
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop, logs, validates
from semiseg.errors import SemisegError
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import foreground_overlaps, mean_foreground_dice
from semiseg.eval.report import PREDICTION, TEACH_CLASS, UNLABELLED_DICE
from semiseg.eval.report import TEACH as PREFIX
from semiseg.methods.base import Batch
from semiseg.nets import evaluating
from semiseg.ssl.pseudo_labels import probabilities

# Whole unlabelled cases scored per network at each validation (the same ones every time, spread over the store:
# ``scored_cases``): enough for a trend at about the cost of one more validation per network.
UNLABELLED_CASES = 2


def scored_cases(cases: Sequence[StoredCase], n: int = UNLABELLED_CASES) -> list[StoredCase]:
    """``n`` of the cases with truth, evenly spaced from the first to the last.

    Why not the first ``n``: a store follows its split's order, which often groups cases by origin (a folder
    sorted by site, heart_sites' training subjects ordered site by site); its first cases then all come from one
    scanner, and on heart_sites that was the labelled subject's own site, where every method scored well.
    """
    with_truth = [c for c in cases if c.truth is not None]
    if len(with_truth) <= n or n == 1:
        return with_truth[:n]
    last = len(with_truth) - 1
    return [with_truth[round(k * last / (n - 1))] for k in range(n)]


def hard_target(target: Tensor, truth: Tensor, label_mode: str) -> Tensor:
    """A reported target in the layout of ``truth``: class indices (multiclass) or 0/1 maps (multilabel).

    Multiclass targets are class indices ``(B, *spatial)`` or probabilities ``(B, K, *spatial)`` (argmax);
    multilabel ones are ``(B, K, *spatial)`` probabilities or 0/1 maps (> 0.5).
    """
    target = target.detach()
    if label_mode == "multiclass":
        return target.float().argmax(dim=1) if target.ndim == truth.ndim + 1 else target.long()
    return (target.float() > 0.5).long()


def _pixel_weights(mask: Tensor, truth: Tensor, label_mode: str) -> Tensor:
    """A mask broadcast to the truth's layout ((B, 1, …) or (B, …) for multilabel per-pixel masks)."""
    mask = mask.detach().float()
    if label_mode == "multilabel" and mask.ndim == truth.ndim - 1:
        mask = mask.unsqueeze(1)
    if label_mode == "multiclass" and mask.ndim == truth.ndim + 1 and mask.shape[1] == 1:
        mask = mask.squeeze(1)
    return mask.expand_as(truth)


def pooled_overlaps(pred: Tensor, truth: Tensor, label_mode: str, num_classes: int) -> list[tuple[int, int]]:
    """(|P & G|, |P| + |G|) of every foreground class, pooled over the batch."""
    if label_mode == "multilabel":  # (B, K, …) → (K, B, …): channels first, pooled over the batch
        pred, truth = pred.movedim(1, 0), truth.movedim(1, 0)
    return foreground_overlaps(pred, truth, label_mode, num_classes)


def target_dice(overlaps: list[tuple[int, int]]) -> float | None:
    """Mean foreground Dice of ``pooled_overlaps``; classes absent from both are left out (None: all absent)."""
    scores = [2.0 * inter / size for inter, size in overlaps if size]
    return float(np.mean(scores)) if scores else None


def column_names(class_names: Sequence[str]) -> list[str]:
    """Class names as log columns (lower case, ``_`` for anything else); a clash gets the class index appended."""
    names = [re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class" for name in class_names]
    return [f"{name}_{k}" if names.count(name) > 1 else name for k, name in enumerate(names)]


def foreground_columns(class_names: Sequence[str], label_mode: str) -> list[str]:
    """The foreground classes' column names (multiclass: index 0 is background), or none for fewer than two: with
    one, the mean over classes is that class already. The per-class diagnostics and validation columns use them."""
    foreground = column_names(class_names[1:] if label_mode == "multiclass" else class_names)
    return foreground if len(foreground) >= 2 else []


def class_columns(name: str, overlaps: list[tuple[int, int]], label_mode: str,
                  class_names: Sequence[str]) -> dict[str, float]:
    """``teach_class/<name>_dice/<class>``: each foreground class's Dice of one target, from ``pooled_overlaps``.

    Only for two or more foreground classes (with one it is ``teach/<name>_dice``); a class absent from both the
    target and the truth is left out of the row, so a mean over logged steps reads the batches that held it.
    """
    foreground = foreground_columns(class_names, label_mode)
    if not foreground:
        return {}
    return {f"{TEACH_CLASS}{name}_dice/{cls}": 2.0 * inter / size
            for cls, (inter, size) in zip(foreground, overlaps, strict=True) if size}


def _check_shape(method: str, kind: str, name: str, value: Tensor, truth: Tensor, label_mode: str) -> None:
    spatial = tuple(truth.shape[1:] if label_mode == "multiclass" else truth.shape[2:])
    if value.shape[0] != truth.shape[0] or tuple(value.shape[-len(spatial):]) != spatial:
        raise SemisegError(
            f"method {method!r} reports {kind} {name!r} of shape {tuple(value.shape)}, but its unlabelled batch "
            f"is {tuple(truth.shape)}: report {kind} on the unlabelled batch as drawn (before mixing or geometric "
            "augmentation)"
        )


def score_step(
    targets: dict[str, Tensor], masks: dict[str, Tensor], truth: Tensor, *, label_mode: str, num_classes: int,
    method: str = "", class_names: Sequence[str] = (),
) -> dict[str, float]:
    """``teach/*`` values of one step's targets and masks against the truth crop of its unlabelled batch, and
    ``teach_class/*`` where ``class_names`` (the dataset's) hold two or more foreground classes."""
    row: dict[str, float] = {}
    for name, target in targets.items():
        _check_shape(method, "target", name, target, truth, label_mode)
        pred = hard_target(target, truth, label_mode)
        correct = (pred == truth).float()
        row[f"{PREFIX}{name}_acc"] = float(correct.mean())
        overlaps = pooled_overlaps(pred, truth, label_mode, num_classes)
        dice = target_dice(overlaps)
        if dice is not None:
            row[f"{PREFIX}{name}_dice"] = dice
        row.update(class_columns(name, overlaps, label_mode, class_names))
        if name in masks:
            weights = _pixel_weights(masks[name], truth, label_mode)
            if float(weights.sum()) > 0:
                row[f"{PREFIX}{name}_acc_kept"] = float((correct * weights).sum() / weights.sum())
    for name, mask in masks.items():
        _check_shape(method, "mask", name, mask, truth, label_mode)
        row[f"{PREFIX}{name}_kept"] = float(mask.detach().float().mean())
    return row


def score_prediction(logits: Tensor, truth: Tensor, *, label_mode: str, num_classes: int,
                     class_names: Sequence[str] = ()) -> dict[str, float]:
    """``teach/prediction_acc`` and ``teach/prediction_dice``: the predicting network's hard prediction on the
    unlabelled batch against its truth, the yardstick a method's targets must beat to teach the model anything."""
    return score_step({PREDICTION: probabilities(logits.detach(), label_mode)}, {}, truth, label_mode=label_mode,
                      num_classes=num_classes, class_names=class_names)


def truth_tensor(raw: dict[str, Any], device: torch.device, label_mode: str) -> Tensor | None:
    """The sampler's out-of-band truth crop on the device (None when the cases have no labels)."""
    truth = raw.get("truth")
    if truth is None:
        return None
    tensor = torch.from_numpy(truth).to(device)
    return tensor.long() if label_mode == "multiclass" else tensor.float()


def _fingerprint(net: torch.nn.Module) -> float:
    """A cheap summary of a net's weights and normalisation statistics: it changes when they do."""
    return float(sum(v.detach().double().sum() for v in net.state_dict().values() if v.is_floating_point()))


class UnlabelledDice:
    """``teach/unl_dice_<net>``: each net's mean foreground Dice on whole unlabelled cases (``scored_cases``).

    Whole-case inference costs about one validation per net (measured on the demo: 2 validation cases 6.4 s,
    4 unlabelled cases 11.5 s per net), so only ``UNLABELLED_CASES`` are scored, and a net whose weights have
    not changed since its last score (a frozen labeller, a snapshot) keeps that score without a new pass.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, float]] = {}  # net → (weight fingerprint, Dice)

    def __call__(
        self, nets: dict[str, torch.nn.Module], cases: Sequence[StoredCase], probabilities: Callable[..., np.ndarray],
        *, label_mode: str, num_classes: int, dice: Callable[..., float] = mean_foreground_dice,
    ) -> dict[str, float]:
        scored = scored_cases(cases)
        if not scored:
            return {}
        row = {}
        for name, net in nets.items():
            fingerprint = _fingerprint(net)
            cached = self._cache.get(name)
            if cached is None or cached[0] != fingerprint:
                scores = [dice(probs_to_label(probabilities(net, c.image), label_mode), c.truth, label_mode,
                               num_classes) for c in scored]
                self._cache[name] = (fingerprint, float(np.mean(scores)))
            row[f"{PREFIX}{UNLABELLED_DICE}_{name}"] = self._cache[name][1]
        return row


class TeachHandler(Handler):
    """The ``teach/*`` columns: the step's targets and the network's own answer against the held-out truth
    (on logged steps), and ``teach/unl_dice_<net>`` on whole unlabelled cases (at validations)."""

    def __init__(self, class_names: Sequence[str] = ()) -> None:
        self.truth: Tensor | None = None
        self.unlabelled_dice = UnlabelledDice()
        self.class_names = list(class_names)  # the dataset's, for the per-class columns

    def on_batches(self, loop: TrainingLoop, step: StepRecord) -> None:
        self.truth = None
        if step.raw_unlabelled is None or not logs(loop.cfg.train, loop.step + 1):
            return
        self.truth = truth_tensor(step.raw_unlabelled, loop.inferer.device, loop.ctx.label_mode)
        if self.truth is not None:  # before the forward: BatchNorm's running statistics as the step found them
            assert step.unlabelled is not None
            step.row.update(self._prediction_scores(loop, step.unlabelled, self.truth))

    def on_forward(self, loop: TrainingLoop, step: StepRecord) -> None:
        # the truth describes the batch as drawn, which only the first update of a chained step trains on
        if self.truth is not None and step.out is not None:
            step.row.update(score_step(step.out.targets, step.out.masks, self.truth, label_mode=loop.ctx.label_mode,
                                       num_classes=loop.ctx.num_classes, method=loop.method.name,
                                       class_names=self.class_names))

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        self.truth = None
        if validates(loop.cfg.train, loop.step):
            step.row.update(loop.dist.on_main(lambda: self._whole_cases(loop)))

    @torch.no_grad()
    def _prediction_scores(self, loop: TrainingLoop, unlabelled: Batch, truth: Tensor) -> dict[str, float]:
        """``teach/prediction_*``: the predicting network's own answer on the unlabelled batch, in eval mode.

        Why: a method's targets help only where they beat what the model would predict anyway; this puts that
        yardstick on the same pixels and the same step, and leaves training as it was (``evaluating``).
        """
        with evaluating(loop.nets.values()), autocast(loop.amp, loop.inferer.device, loop.amp_dtype):
            logits = loop.method.predict(loop.nets, unlabelled.image)
        return score_prediction(logits, truth, label_mode=loop.ctx.label_mode, num_classes=loop.ctx.num_classes,
                                class_names=self.class_names)

    @torch.no_grad()
    def _whole_cases(self, loop: TrainingLoop) -> dict[str, float]:
        """``teach/unl_dice_<net>`` of every segmentation net on whole unlabelled cases with truth."""
        if loop.data.unlabelled is None or not loop.cfg.train.monitor_unlabelled:
            return {}
        nets = {name: net for name, net in loop.nets.items() if loop.specs[name].builder is None}
        for net in nets.values():
            net.eval()
        return self.unlabelled_dice(nets, loop.data.unlabelled.store, loop.inferer.probabilities,
                                    label_mode=loop.ctx.label_mode, num_classes=loop.ctx.num_classes)
