"""TensorBoard event files of a training run, to watch it live; ``log.csv`` stays the source of truth.

``train.tensorboard``: ``auto`` writes them when the ``tensorboard`` package is installed, ``on`` requires it,
``off`` never writes them. Under ``<run>/tensorboard/`` go the same scalars as ``log.csv`` (every key of every
logged row, at its step) and, at each validation, overlays of a few validation cases: the slice with the most
labelled foreground, ground truth in green and prediction in red over the grey image.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop
from semiseg.engine.validation import ValidationHandler
from semiseg.errors import ConfigError

OVERLAY_CASES = 3
FOLDER = "tensorboard"


def tensorboard_wanted(mode: str) -> bool:
    """Whether ``train.tensorboard`` writes event files (``auto``: when the package is installed)."""
    return mode != "off" and tensorboard_installed()


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check_tensorboard(mode: str) -> None:
    """``train.tensorboard=on`` without the package is a mistake to report before the run folder exists."""
    if mode == "on" and not tensorboard_installed():
        raise ConfigError('train.tensorboard=on needs the tensorboard package: pip install "semiseg[tensorboard]" '
                          "(or set train.tensorboard=auto/off)")


class TensorBoardLog:
    """A ``SummaryWriter`` on ``<run>/tensorboard``; a resumed run purges the events after its checkpoint."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=start_step or None)

    @classmethod
    def open(cls, mode: str, run_dir: Path, start_step: int = 0) -> TensorBoardLog | None:
        """The event log ``train.tensorboard`` asks for, or None."""
        check_tensorboard(mode)
        if mode == "off" or not tensorboard_installed():
            return None
        return cls(run_dir, start_step)

    def scalars(self, row: dict[str, Any]) -> None:
        """Every numeric key of a ``log.csv`` row at its step (NaN, e.g. no validation set, is skipped)."""
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and np.isfinite(value):
                self.writer.add_scalar(key, float(value), step)

    def overlays(self, cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], step: int, label_mode: str) -> None:
        """``(case_id, image (C,X,Y,Z), label, prediction)`` of validation cases as RGB overlay images."""
        for case_id, image, label, pred in cases:
            self.writer.add_image(f"validation/{case_id}", overlay(image, label, pred, label_mode), step,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _foreground(label: np.ndarray, label_mode: str) -> np.ndarray:
    """``(X, Y, Z)`` boolean foreground of a multiclass map or a ``(K, X, Y, Z)`` multilabel stack."""
    return label > 0 if label_mode == "multiclass" else np.asarray(label).any(axis=0)


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, label_mode: str) -> np.ndarray:
    """``(X, Y, 3)`` uint8: the first channel's slice with most labelled foreground, GT green, prediction red."""
    truth, guess = _foreground(label, label_mode), _foreground(pred, label_mode)
    z = int(np.argmax(truth.sum(axis=(0, 1))))
    grey = image[0, :, :, z].astype(np.float64)
    grey = (grey - grey.min()) / max(float(np.ptp(grey)), 1e-8)
    rgb = np.repeat(grey[..., None], 3, axis=-1) * 0.7
    rgb[..., 1] += 0.3 * truth[:, :, z]
    rgb[..., 0] += 0.3 * guess[:, :, z]
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


class TensorBoardHandler(Handler):
    """Mirrors every ``log.csv`` row (``StepRecord.logged``) and, at validations, the validation overlays."""

    def __init__(self, mode: str, run_dir: Path, validation: ValidationHandler) -> None:
        self.mode, self.run_dir, self.validation = mode, run_dir, validation
        self.log: TensorBoardLog | None = None

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.log = TensorBoardLog.open(self.mode, self.run_dir, loop.step)

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        if self.log is None or step.logged is None:
            return
        self.log.scalars(step.logged)
        if "val_dice" in step.logged:
            self.log.overlays(self.validation.overlays, loop.step, loop.ctx.label_mode)

    def on_train_end(self, loop: TrainingLoop, error: BaseException | None) -> None:
        if self.log is not None:
            self.log.close()
