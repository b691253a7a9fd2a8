"""The supervised gap of a dataset: supervised training on the lowest labelled budget vs on every training case.

Why: a development dataset's difficulty is calibrated by this gap alone (same network, steps and seed), never by how
well a semi-supervised method does on it. Runs ``semiseg train`` twice through the CLI and prints, per run, the
best validation Dice and the test Dice (mean over foreground classes) of the best and last checkpoints, then the
ratio low / all (the target is a clear gap, e.g. <= 0.85, without the low budget being hopeless).

    python benchmarks/supervised_gap.py --source heart_sites --steps 300 --set model.widths=[8,16,32,64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def mean_dice(summary: dict, checkpoint: str) -> float:
    classes = summary["metrics"][checkpoint]["classes"]
    return sum(c["dice"]["mean"] for c in classes.values()) / len(classes)


def train(source: str, labelled: str, steps: int, extra: list[str], out: Path) -> dict:
    name = f"{source}_labelled_{labelled}"
    overrides = [f"data.source={source}", f"split.labelled={labelled}", f"train.steps={steps}",
                 f"train.val_every={max(steps // 3, 1)}", "train.threads=1", "eval.save_predictions=false",
                 f"output.root={out}", f"output.name={name}", *extra]
    command = [sys.executable, "-m", "semiseg", "train", "--overwrite"]
    for item in overrides:
        command += ["--set", item]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / name / "summary.json").read_text())
    return {"labelled": labelled, "seconds": round(time.time() - started), "val": summary["best_val_dice"],
            "best": mean_dice(summary, "best"), "last": mean_dice(summary, "last")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--low", default="1", help="the lowest labelled budget")
    parser.add_argument("--out", default="runs/supervised_gap")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more config overrides")
    args = parser.parse_args()
    rows = [train(args.source, budget, args.steps, args.extra, Path(args.out)) for budget in (args.low, "all")]
    for row in rows:
        print(f"{args.source} labelled={row['labelled']}: val {row['val']:.3f}  test best {row['best']:.3f}  "
              f"last {row['last']:.3f}  ({row['seconds']} s)")
    low, full = rows
    print(f"ratio low/all: val {low['val'] / full['val']:.3f}  test best {low['best'] / full['best']:.3f}  "
          f"last {low['last'] / full['last']:.3f}")


if __name__ == "__main__":
    main()
