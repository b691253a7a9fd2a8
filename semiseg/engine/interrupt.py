"""Ctrl-C during training: finish the step, its log row and its checkpoint, then stop (``--resume`` continues)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C: stop mid-step; nothing is saved, the last consistent checkpoint stays."""


class DeferredInterrupt(Handler):
    """Hold a Ctrl-C (SIGINT) until the current step's update, log row and checkpoint are all done.

    A step interrupted half-way would save a ``last.pt`` whose weights, step count and log disagree,
    and a resumed run would differ from an uninterrupted one; so a Ctrl-C acts between steps
    (``on_step_start``, and once more after the last step). A second Ctrl-C stops at once (``ForcedStop``).
    Outside the main thread nothing is deferred. Put it first: its ``on_train_end`` then runs last.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def on_train_start(self, loop: TrainingLoop) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise ForcedStop
        self.requested = True

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def on_step_start(self, loop: TrainingLoop, step: StepRecord) -> None:
        self.raise_if_requested()

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        """Put back the handler it found; a Ctrl-C during the last step still ends the run as interrupted."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if error is None:
            self.raise_if_requested()
