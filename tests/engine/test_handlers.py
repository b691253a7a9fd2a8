"""A user's handler joins a run without touching the engine: its events, its row, its state across --resume."""

from __future__ import annotations

import csv
from typing import Any

import pytest
import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.handlers import Handler


def _cfg(tmp_path, steps: int = 4):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", f"train.steps={steps}", "train.val_every=2", "train.log_every=1",
        "train.batch_size=2", "train.warmup_steps=1", "train.threads=1", "train.method=mean_teacher",
        "train.unlabelled_batch_size=2", f"output.root={tmp_path}", "output.name=run",
    ])


class Recorder(Handler):
    """Records each event with the loop's step; counts the steps it saw (its state survives a resume)."""

    state_key = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.seen = 0
        self.val_dice: dict[int, float] = {}

    def on_train_start(self, loop) -> None:
        self.events.append(("train_start", loop.step))

    def on_step_start(self, loop, step) -> None:
        self.events.append(("step_start", loop.step))

    def on_batches(self, loop, step) -> None:
        assert step.labelled is not None and step.out is None
        self.events.append(("batches", loop.step))

    def on_forward(self, loop, step) -> None:
        assert step.out is not None and "loss" in step.row and step.row["loss"] == 0.0  # nothing updated yet
        self.events.append(("forward", loop.step))

    def on_step_end(self, loop, step) -> None:
        self.seen += 1
        if "val_dice" in step.row:
            self.val_dice[loop.step] = step.row["val_dice"]
        assert step.logged is not None and step.logged["step"] == loop.step  # log.csv wrote the row first
        self.events.append(("step_end", loop.step))

    def on_train_end(self, loop, error) -> None:
        self.events.append(("train_end", loop.step))

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


def test_a_users_handler_sees_every_event_in_order_and_the_validation_row(tmp_path):
    recorder = Recorder()
    result = api.train(_cfg(tmp_path), progress=False, evaluate=False, handlers=[recorder])
    steps = [e for e in recorder.events if e[0] not in ("train_start", "train_end")]
    expected = []
    for s in range(4):
        expected += [("step_start", s), ("batches", s), ("forward", s), ("step_end", s + 1)]
    assert steps == expected
    assert recorder.events[0] == ("train_start", 0) and recorder.events[-1] == ("train_end", 4)
    with (result.run_dir / "log.csv").open() as fh:
        logged = {int(r["step"]): float(r["val_dice"]) for r in csv.DictReader(fh) if r["val_dice"]}
    assert recorder.val_dice == logged and set(logged) == {2, 4}


def test_a_handlers_state_travels_in_the_checkpoint_and_comes_back_on_resume(tmp_path):
    def stop_at_2(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path), progress=False, evaluate=False, handlers=[first], on_step=stop_at_2)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert saved["recorder"] == {"seen": 2} and saved["step"] == 2
    resumed = Recorder()
    api.resume(tmp_path / "run", progress=False, evaluate=False, handlers=[resumed])
    assert resumed.seen == 4 and resumed.events[0] == ("train_start", 2)


def test_the_method_hears_every_validation_dice_the_log_records(tmp_path, monkeypatch):
    from semiseg.methods.mean_teacher import MeanTeacher

    heard: dict[int, float] = {}
    monkeypatch.setattr(MeanTeacher, "on_validation", lambda self, nets, step, dice: heard.__setitem__(step, dice))
    run = api.train(_cfg(tmp_path), progress=False, evaluate=False).run_dir
    with (run / "log.csv").open() as handle:
        logged = {int(r["step"]): float(r["val_dice"]) for r in csv.DictReader(handle) if r["val_dice"]}
    assert heard == logged and sorted(heard) == [2, 4]
