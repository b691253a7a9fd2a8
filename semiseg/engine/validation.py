"""Validation during training: mean foreground Dice on whole validation volumes at every checkpoint step.

Where a task has two or more foreground classes, each class's Dice goes beside it (``val_class/<class>``): a
mean over classes can hide a small class that a method loses while the large one holds, and these columns show
which class a decision turns on without reading test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from semiseg.data.loaders import StoredCase
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop, validates
from semiseg.engine.teach import foreground_columns
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import foreground_dice
from semiseg.eval.report import VAL_CLASS

Overlay = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # case id, image, label, prediction


class ValidationHandler(Handler):
    """``on_step_end`` of every ``train.val_every``-th and the last step: ``val_dice`` (and ``val_class/*``) into
    the step's row.

    Rank 0 validates and every rank gets its scores, so all choose the same best checkpoint. The first
    ``keep_overlays`` cases' images, labels and predictions are kept for TensorBoard (``overlays``).
    ``class_names``: the dataset's (multiclass: index 0 is background), for the per-class columns.
    """

    def __init__(self, keep_overlays: int = 0, class_names: Sequence[str] = ()) -> None:
        self.keep_overlays = keep_overlays
        self.class_names = list(class_names)
        self.overlays: list[Overlay] = []

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        if validates(loop.cfg.train, loop.step):
            scores = loop.dist.on_main(lambda: self.validate(loop))
            step.row.update(scores)
            loop.method.on_validation(loop.nets, loop.step, scores["val_dice"])

    @torch.no_grad()
    def validate(self, loop: TrainingLoop) -> dict[str, float]:
        """``val_dice``: the mean over validation volumes of each one's mean foreground Dice (NaN when there is no
        validation set); ``val_class/<class>``: each class's mean over the volumes, for two or more classes."""
        if not loop.data.val:
            return {"val_dice": float("nan")}
        for net in loop.nets.values():
            net.eval()
        self.overlays = []
        per_case = np.array([self._case_dice(loop, case) for case in loop.data.val])
        scores = {"val_dice": float(np.mean([float(np.mean(case)) for case in per_case]))}
        return scores | self._class_columns(loop.ctx.label_mode, per_case.mean(axis=0))

    def _class_columns(self, label_mode: str, class_means: np.ndarray) -> dict[str, float]:
        foreground = foreground_columns(self.class_names, label_mode)
        if len(foreground) != len(class_means):
            return {}
        return {f"{VAL_CLASS}{name}": float(v) for name, v in zip(foreground, class_means, strict=True)}

    def _case_dice(self, loop: TrainingLoop, case: StoredCase) -> list[float]:
        def predict(x: torch.Tensor) -> torch.Tensor:
            return loop.method.predict(loop.nets, x)

        pred = probs_to_label(loop.inferer.probabilities(predict, case.image), loop.ctx.label_mode)
        if len(self.overlays) < self.keep_overlays:
            self.overlays.append((case.case_id, case.image, case.label, pred))
        return foreground_dice(pred, case.label, loop.ctx.label_mode, loop.ctx.num_classes)
