"""What runs around the training loop: handlers the loop calls at a few named events.

The loop (``engine/loop.py``) is the step and the update; everything else a run does while it trains —
the CSV log, TensorBoard, validation, best/last checkpoints, diagnostics against held-out truth, the
reliability gate's observations, a curriculum's whole-case passes, Ctrl-C — is a ``Handler``. The anchors are
MONAI's event handlers, Lightning's callbacks and USB's hooks; ours are typed and few. Per step the events come
in this order, each handler in list order::

    on_train_start(loop)                       once, before the first step (after a resume: at its step)
    on_step_start(loop, step)                  before the nets are set to train and the batches drawn
    on_batches(loop, step)                     batches drawn, before the method's forward
    on_forward(loop, step)                     after the method's first forward, before the update(s)
    on_step_end(loop, step)                    after the update(s); ``loop.step`` counts this step
    on_train_end(loop, error)                  once, in reverse list order (like nested ``with``), also on error

``step`` is the ``StepRecord`` of the step (its ``Progress``, batches, first ``StepOut`` and log ``row``);
``on_step_end`` handlers see the row in list order, so validation (which adds ``val_dice``) comes before the
CSV log, which comes before the checkpoint. A handler that must survive ``--resume`` names a ``state_key``: its
``state_dict()`` is saved under that key of every checkpoint and handed back to ``load_state_dict``.

To add one (your own logger, say), subclass ``Handler``, override the events you need and pass it to
``semiseg.api.train(cfg, handlers=[...])``; it runs after the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch

    from semiseg.config import Config, TrainConfig
    from semiseg.engine.distributed import Distributed
    from semiseg.engine.inferer import Inferer
    from semiseg.methods.base import Batch, Method, MethodContext, Nets, NetSpec, Progress, StepOut


class TrainingLoop(Protocol):
    """What a handler may read of the loop (``engine.loop.Trainer``); handlers change nothing of it."""

    cfg: Config
    method: Method
    ctx: MethodContext
    nets: Nets
    specs: dict[str, NetSpec]
    data: Any  # engine.loop.TrainingData
    inferer: Inferer
    dist: Distributed
    step: int
    amp: bool
    amp_dtype: torch.dtype
    run_dir: Path

    def state(self) -> dict[str, Any]: ...

    def learning_rate(self) -> float: ...


@dataclass
class StepRecord:
    """One training step as the handlers see it, filled in as the step goes."""

    progress: Progress
    labelled: Batch | None = None
    unlabelled: Batch | None = None
    raw_unlabelled: dict[str, Any] | None = None  # as drawn: holds the held-out ``truth`` crop, if any
    out: StepOut | None = None  # the method's first ``StepOut`` of the step
    row: dict[str, Any] = field(default_factory=lambda: {"loss": 0.0})
    logged: dict[str, Any] | None = None  # the row as ``log.csv`` wrote it (with step, lr, elapsed_s), if it did


class Handler:
    """A no-op at every event; override the ones you need (see the module docstring for their order)."""

    state_key: ClassVar[str | None] = None  # the checkpoint key of ``state_dict()``; None: nothing to resume

    def on_train_start(self, loop: TrainingLoop) -> None:
        """Once, before the first step of this process (a resumed run: at the step it resumes from)."""

    def on_step_start(self, loop: TrainingLoop, step: StepRecord) -> None:
        """Before the nets are set to train and this step's batches are drawn."""

    def on_batches(self, loop: TrainingLoop, step: StepRecord) -> None:
        """The step's batches are drawn (``step.labelled``, ``step.unlabelled``); the method has not run."""

    def on_forward(self, loop: TrainingLoop, step: StepRecord) -> None:
        """The method's first forward of the step is done (``step.out``); nothing is updated yet."""

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        """The step's updates are done and counted (``loop.step``); ``step.row`` is its log row so far."""

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        """Once, after the last step or on ``error`` (KeyboardInterrupt: Ctrl-C); called in reverse order."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what ``state_dict`` returned (only called for a handler with a ``state_key``)."""


def validates(train: TrainConfig, step: int) -> bool:
    """Whether the step that ends at ``step`` updates validates and saves the checkpoints."""
    return step % train.val_every == 0 or step == train.steps


def logs(train: TrainConfig, step: int) -> bool:
    """Whether the row of the step that ends at ``step`` updates is written to ``log.csv``."""
    return step % train.log_every == 0 or validates(train, step)
