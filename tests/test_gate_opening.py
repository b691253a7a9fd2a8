"""benchmarks/gate_opening.py: the plateau replay opens where the gate's rule says, and reads a log as written."""

import importlib
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gate_opening.py"


@pytest.fixture
def gate_opening(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("gate_opening")


def test_plateau_opens_after_patience_looks_without_progress(gate_opening):
    rising_then_flat = [(10, 0.2), (20, 0.5), (30, 0.7), (40, 0.702), (50, 0.703), (60, 0.701)]
    assert gate_opening.plateau_opening(rising_then_flat, patience=4) == 50  # 20 steps after the best at 30
    assert gate_opening.plateau_opening(rising_then_flat, patience=7) is None  # 35 steps: not within the series
    stuck_at_start = [(10, 0.1), (20, 0.1), (30, 0.1), (40, 0.1)]
    assert gate_opening.plateau_opening(stuck_at_start, patience=1) is None  # never learned: never opens


def test_describe_reads_the_runs_own_opening_and_the_replay(gate_opening, tmp_path):
    run = tmp_path / "grid" / "m-s0"
    run.mkdir(parents=True)
    rows = ["step,unlabelled_gate,labelled_dice_smoothed", "10,0.0,0.2", "20,0.0,0.6", "30,0.0,0.61",
            "40,0.0,0.605", "50,0.0,0.612", "60,0.5,", "70,1.0,"]
    (run / "log.csv").write_text("\n".join(rows) + "\n")
    line = gate_opening.describe(run / "log.csv", patience=4)
    assert "grid/m-s0" in line and "by step 60" in line and "plateau rule     50" in line
