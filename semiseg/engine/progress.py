"""What a person watching a run sees: a progress bar with ETA, and a callback per step (``on_step``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from tqdm import tqdm

from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop


class ProgressBar(Handler):
    """A tqdm bar of the steps with the last loss and the last validation Dice ("–" before the first)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: tqdm | None = None
        self.val_dice = math.nan

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.bar = tqdm(total=loop.cfg.train.steps, initial=loop.step, desc=f"train {loop.method.name}",
                        disable=not self.show, dynamic_ncols=True)

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        assert self.bar is not None  # opened by on_train_start
        self.val_dice = step.row.get("val_dice", self.val_dice)
        self.bar.update(1)
        shown = "–" if math.isnan(self.val_dice) else f"{self.val_dice:.3f}"
        self.bar.set_postfix(loss=f"{step.row['loss']:.3f}", val_dice=shown)

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        if self.bar is not None:
            self.bar.close()


class StepCallback(Handler):
    """Calls ``fn(step)`` after every step (``api.train(on_step=...)``: e.g. to stop a run from outside)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        self.fn(loop.step)
