"""train.unlabelled_gate=labelled_dice_plateau: the gate opens when the labelled-batch Dice stops improving on its
own best (issue 29: a rule relative to what the run measures, not 0.8 tuned on the demo)."""

from __future__ import annotations

import csv

from semiseg import api
from semiseg.config import load_config
from semiseg.engine import reliability
from semiseg.engine.reliability import PlateauGate
from semiseg.ssl.gate import ReliabilityGate


def _feed(gate: ReliabilityGate, values: list[float]) -> int | None:
    for i, dice in enumerate(values):
        gate.observe(5 * (i + 1), dice)
    return gate.opened_at


def test_a_dice_that_levels_off_below_the_threshold_opens_the_plateau_gate_only():
    levelled = [0.1, 0.4] + [0.6] * 14  # smoothed ½ old + ½ new, it creeps towards 0.6, then stops gaining
    assert _feed(ReliabilityGate(threshold=0.8, ramp_steps=0), levelled) is None  # the absolute gate never opens
    opened = _feed(PlateauGate(threshold=0.8, ramp_steps=0, patience=3), levelled)
    assert opened is not None and opened <= 5 * len(levelled)


def test_a_dice_still_rising_or_stuck_at_its_start_keeps_it_closed():
    rising = [0.1 + 0.06 * i for i in range(10)]  # 0.1 … 0.64, always a new best
    assert _feed(PlateauGate(threshold=1.0, ramp_steps=0, patience=2), rising) is None
    assert _feed(PlateauGate(threshold=1.0, ramp_steps=0, patience=2), [0.0] * 10) is None  # all background


def test_the_threshold_still_opens_it_first_on_easy_data():
    assert _feed(PlateauGate(threshold=0.5, ramp_steps=0, patience=10), [0.2, 0.9, 0.9]) == 10


def test_its_state_survives_a_resume():
    gate = PlateauGate(threshold=1.0, ramp_steps=0, patience=3)
    _feed(gate, [0.1, 0.5, 0.5])
    restored = PlateauGate(threshold=1.0, ramp_steps=0, patience=3)
    restored.load_state_dict(gate.state_dict())
    assert (restored.first, restored.best, restored.stalled) == (gate.first, gate.best, gate.stalled)


def test_a_run_with_the_plateau_gate_opens_it_where_the_absolute_one_stays_shut(tmp_path, monkeypatch):
    """The engine's path (config → gate → handler → loss weight), on a labelled-batch Dice that rises to 0.5 and
    falls back: the plateau gate opens at its third measurement, the absolute one (threshold 1) never."""
    measured = iter([0.2, 0.8, 0.4, 0.4] * 4)  # smoothed: 0.2, 0.5 (best), 0.45 (no gain: opens)
    monkeypatch.setattr(reliability, "labelled_batch_dice", lambda *args: next(measured))

    def rows(name: str, gate: str) -> list[dict[str, str]]:
        cfg = load_config(None, [
            "data.source=phantom", "data.options={n_cases: 6, n_unlabelled: 2}", "model.widths=[4, 8]",
            "train.method=mean_teacher", "train.steps=20", "train.val_every=20", "train.log_every=1",
            "train.batch_size=2", "train.unlabelled_batch_size=2", "split.labelled=2", "split.val=1",
            "split.test=1", "method.rampup=none", f"output.root={tmp_path}", f"output.name={name}",
            "train.threads=1", f"train.unlabelled_gate={gate}", "train.unlabelled_gate_threshold=1.0",
            "train.unlabelled_gate_patience=1", "train.unlabelled_gate_ramp=0", "train.warmup_steps=2",
        ])
        api.train(cfg, progress=False, evaluate=False)
        with open(tmp_path / name / "log.csv") as fh:
            return list(csv.DictReader(fh))

    plateau = rows("plateau", "labelled_dice_plateau")
    assert [float(r["unlabelled_gate"]) for r in plateau] == [0.0] * 15 + [1.0] * 5  # opened after step 15
    assert float(plateau[-1]["consistency"]) > 0
    absolute = rows("absolute", "labelled_dice")
    assert all(float(r["unlabelled_gate"]) == 0.0 for r in absolute)
