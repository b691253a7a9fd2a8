"""Validation during training: mean foreground Dice on whole validation volumes at every checkpoint step."""

from __future__ import annotations

import numpy as np
import torch

from semiseg.data.loaders import StoredCase
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop, validates
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import mean_foreground_dice

Overlay = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # case id, image, label, prediction


class ValidationHandler(Handler):
    """``on_step_end`` of every ``train.val_every``-th and the last step: ``val_dice`` into the step's row.

    Rank 0 validates and every rank gets its score, so all choose the same best checkpoint. The first
    ``keep_overlays`` cases' images, labels and predictions are kept for TensorBoard (``overlays``).
    """

    def __init__(self, keep_overlays: int = 0) -> None:
        self.keep_overlays = keep_overlays
        self.overlays: list[Overlay] = []

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        if validates(loop.cfg.train, loop.step):
            step.row["val_dice"] = dice = loop.dist.on_main(lambda: self.validate(loop))
            loop.method.on_validation(loop.nets, loop.step, dice)

    @torch.no_grad()
    def validate(self, loop: TrainingLoop) -> float:
        """Mean foreground Dice over validation volumes (NaN when there is no validation set)."""
        if not loop.data.val:
            return float("nan")
        for net in loop.nets.values():
            net.eval()
        self.overlays = []
        return float(np.mean([self._case_dice(loop, case) for case in loop.data.val]))

    def _case_dice(self, loop: TrainingLoop, case: StoredCase) -> float:
        def predict(x: torch.Tensor) -> torch.Tensor:
            return loop.method.predict(loop.nets, x)

        pred = probs_to_label(loop.inferer.probabilities(predict, case.image), loop.ctx.label_mode)
        if len(self.overlays) < self.keep_overlays:
            self.overlays.append((case.case_id, case.image, case.label, pred))
        return mean_foreground_dice(pred, case.label, loop.ctx.label_mode, loop.ctx.num_classes)
