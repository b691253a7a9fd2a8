"""When each reliability-gate rule opens on runs already trained: the absolute threshold against the plateau rule.

Why: the gate's threshold (0.8) was set on the brain demo. Whether it carries to other data is a question about the
labelled-batch Dice each run logged while its gate was closed: replaying it through both rules shows where each
opens, or that one never does, without training anything. ``log.csv`` keeps every 10th step while the gate looks
every 5, so the replay reads the logged smoothed Dice (``labelled_dice_smoothed``, the gate's own estimate) and
counts the plateau's patience in steps (``patience`` × 5 since the last improvement): openings are exact to the
logged step, within 5 steps of the gate's. A rule can be replayed only while the run's own gate was closed
(after it opened, the unlabelled terms changed the network), so an opening after the logged series ends reads
``later``.

    python benchmarks/gate_opening.py /work/runs/dev_heart_sites/*/log.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.engine.reliability import OBSERVE_EVERY, PLATEAU_MIN_GAIN


def read_log(log: Path) -> tuple[list[tuple[int, float]], int | None, int]:
    """(step, smoothed labelled-batch Dice) rows logged while the gate was closed; the first logged step with the
    gate open (None: it never opened); the run's last step."""
    with log.open() as handle:
        rows = list(csv.DictReader(handle))
    series = [(int(r["step"]), float(r["labelled_dice_smoothed"])) for r in rows if r.get("labelled_dice_smoothed")]
    opened = next((int(r["step"]) for r in rows if float(r.get("unlabelled_gate") or 0) > 0), None)
    return series, opened, int(rows[-1]["step"]) if rows else 0


def plateau_opening(series: list[tuple[int, float]], patience: int) -> int | None:
    """``PlateauGate``'s rule (threshold 1): the estimate rose above its first value, then stalled for
    ``patience`` looks."""
    first = best = series[0][1]
    best_step = series[0][0]
    for step, dice in series[1:]:
        if dice > best + PLATEAU_MIN_GAIN:
            best, best_step = dice, step
        elif best > first + PLATEAU_MIN_GAIN and step - best_step >= patience * OBSERVE_EVERY:
            return step
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
