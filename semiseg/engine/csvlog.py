"""``log.csv``: one row per logged step (every ``train.log_every`` steps and at each validation)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop, logs


class CsvLog:
    """A wide CSV, one row per logged step, with a column for every key any row reported.

    A key first reported late (a term that starts with a curriculum stage) adds a column: the file is
    rewritten with the union of the columns, earlier rows left empty there, so ``csv.DictReader`` reads it
    as usual. On resume the rows up to and including the checkpoint's step are kept (the log handler writes a
    step's row before the checkpoint handler saves that step's checkpoint, so the row is always there) and
    ``elapsed_before`` holds their last ``elapsed_s``, so training time keeps counting across interruptions.
    """

    def __init__(self, path: Path, keep_through_step: int | None = None) -> None:
        self.path, self.fields, self.elapsed_before = path, [], 0.0
        if keep_through_step is not None and path.exists():
            fields, rows = self._read()
            rows = [r for r in rows if int(r["step"]) <= keep_through_step]
            if not rows:  # nothing survives (a restart from step 0): the next append starts a fresh file
                path.unlink()
                return
            self.fields = fields
            self._write(rows, mode="w")
            self.elapsed_before = float(rows[-1].get("elapsed_s") or 0.0)

    def _read(self) -> tuple[list[str], list[dict[str, Any]]]:
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        with self.path.open(mode, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        if not self.fields:
            self.fields = list(row) + (["val_dice"] if "val_dice" not in row else [])
            self._write([row], mode="w")
            return
        new = [key for key in row if key not in self.fields]
        if not new:
            self._write([row], mode="a")
            return
        _, rows = self._read()
        self.fields += new
        self._write([*rows, row], mode="w")


class CsvLogHandler(Handler):
    """``on_step_end`` of a logged step: ``step``, ``lr``, the step's row and ``elapsed_s`` into ``log.csv``.

    The written row is left in ``StepRecord.logged`` for the handlers after it (TensorBoard mirrors it).
    ``elapsed_s`` counts training time across interruptions: a resumed run starts from the last kept row's.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: CsvLog | None = None
        self.started = time.perf_counter()

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.log = CsvLog(self.path, keep_through_step=loop.step)
        self.started = time.perf_counter() - self.log.elapsed_before

    def on_step_end(self, loop: TrainingLoop, step: StepRecord) -> None:
        if self.log is None or not logs(loop.cfg.train, loop.step):
            return
        step.logged = {"step": loop.step, "lr": loop.learning_rate(), **step.row,
                       "elapsed_s": round(self.elapsed(), 3)}
        self.log.append(step.logged)

    def elapsed(self) -> float:
        """Seconds of training so far, including those before an interruption."""
        return time.perf_counter() - self.started
