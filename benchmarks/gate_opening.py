"""When each reliability-gate rule opens on runs already trained: the absolute threshold against the plateau rule.

Why: the gate's threshold (0.8) was set on the brain demo. Whether it carries to other data is a question about the
labelled-batch Dice each run logged while its gate was closed: replaying it through both rules shows where each
opens, or that one never does, without training anything. ``log.csv`` keeps every 10th step while the gate looks
every 5, so the replay reads the logged smoothed Dice (``labelled_dice_smoothed``, the gate's own estimate) and
feeds it to ``PlateauGate`` itself, its patience converted from looks to logged rows: openings are exact to the
logged step, within 5 steps of the gate's. A rule can be replayed only while the run's own gate was closed
(after it opened, the unlabelled terms changed the network), so an opening after the logged series ends reads
``later``.

    python benchmarks/gate_opening.py /work/runs/dev_heart_sites/*/log.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.engine.reliability import OBSERVE_EVERY, PlateauGate


def read_log(log: Path) -> tuple[list[tuple[int, float]], int | None, int]:
    """(step, smoothed labelled-batch Dice) rows logged while the gate was closed; the first logged step with the
    gate open (None: it never opened); the run's last step."""
    with log.open() as handle:
        rows = list(csv.DictReader(handle))
    series = [(int(r["step"]), float(r["labelled_dice_smoothed"])) for r in rows if r.get("labelled_dice_smoothed")]
    opened = next((int(r["step"]) for r in rows if float(r.get("unlabelled_gate") or 0) > 0), None)
    return series, opened, int(rows[-1]["step"]) if rows else 0


def plateau_opening(series: list[tuple[int, float]], patience: int) -> int | None:
    """Where ``PlateauGate`` (threshold 1) opens when fed the logged estimates as they are (no smoothing again).

    Its patience counts looks; the log holds one row per ``log_every`` steps, so ``patience`` looks of
    ``OBSERVE_EVERY`` steps become that many steps' worth of rows."""
    spacing = series[1][0] - series[0][0] if len(series) > 1 else OBSERVE_EVERY
    gate = PlateauGate(threshold=1.0, ramp_steps=0, smoothing=0.0,
                       patience=max(1, math.ceil(patience * OBSERVE_EVERY / spacing)))
    for step, dice in series:
        gate.observe(step, dice)
        if gate.is_open:
            return gate.opened_at
    return None


def describe(log: Path, patience: int) -> str:
    """One line: where the run's own gate opened (as logged) and where the plateau rule opens on its series."""
    series, opened, last = read_log(log)
    name = f"{log.parent.parent.name}/{log.parent.name}"
    if not series:
        return f"{name:44s} no labelled-batch Dice logged (gate off, or no unlabelled term)"
    plateau = plateau_opening(series, patience)
    peak = max(dice for _, dice in series)
    own = f"by step {opened}" if opened is not None else f"never ({last} steps)"
    replay = plateau if plateau is not None else ("later" if opened is not None else "never")
    return f"{name:44s} own gate opened {own:>18}   plateau rule {replay!s:>6}   peak smoothed Dice {peak:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="log.csv files of trained runs")
    parser.add_argument("--patience", type=int, default=4)
    args = parser.parse_args(argv)
    for log in args.logs:
        print(describe(log, args.patience))


if __name__ == "__main__":
    main()
