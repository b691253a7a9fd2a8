"""Self-describing checkpoints, written atomically.

A checkpoint holds everything needed to predict (method, resolved config, dataset description, nets) and
everything needed to continue exactly (optimiser, scheduler, scaler, step, method state, RNG states).
It is written to a temporary file in the same folder and renamed, so a crash mid-write never leaves a
truncated ``last.pt`` that ``--resume`` would trust.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from semiseg.data.io import atomic_write
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop, validates
from semiseg.engine.interrupt import ForcedStop
from semiseg.errors import SemisegError

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise SemisegError(f"checkpoint {str(path)!r} does not exist; is this a finished or resumable run folder?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise SemisegError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise SemisegError(f"{str(path)!r} is not a semiseg checkpoint of format {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointHandler(Handler):
    """``best.pt`` and ``last.pt`` at every validation step, ``last.pt`` on Ctrl-C; the best-on-validation record.

    ``describe`` (version, method, config, dataset, patch, divisor) makes each checkpoint self-describing.
    Without a validation set (NaN) the last checkpoint is also the best one. Only rank 0 writes; every rank
    keeps the same record (``state_key`` ``best``), so ``--resume`` on any number of processes agrees.
    A curriculum's ``artifacts`` are written as JSON into ``artifacts/`` with every checkpoint.
    """

    state_key = "best"

    def __init__(self, run_dir: Path, describe: dict[str, Any], *, writes: bool = True) -> None:
        self.run_dir, self.describe, self.writes = run_dir, describe, writes
        self.best: dict[str, Any] = {"score": -math.inf, "step": -1}

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        if not validates(loop.cfg.train, loop.step):
            return
        score = step.row.get("val_dice", math.nan)
        if math.isnan(score) or score > self.best["score"]:
            self.best = {"score": score, "step": loop.step}
            self.save(loop, "best")
        self.save(loop, "last")

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        # a second Ctrl-C (ForcedStop) stops mid-step: the last consistent checkpoint stays
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, ForcedStop):
            self.save(loop, "last")

    def save(self, loop: TrainingLoop, which: str) -> None:
        if not self.writes:
            return
        save_checkpoint({**self.describe, **loop.state()}, self.run_dir / "checkpoints" / f"{which}.pt")
        curriculum = loop.method.curriculum()
        for name, record in (curriculum.artifacts() if curriculum is not None else {}).items():
            path = self.run_dir / "artifacts" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return dict(self.best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state)
