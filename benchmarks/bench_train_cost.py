"""Whole-run training time of methods ÷ supervised training at the same step count, measured in one process.

Run: ``python benchmarks/bench_train_cost.py [--methods a,b] [--variant label=method:k=v] [--steps 150]
[--threads 1] [--set key=value ...]``.

Step-time ratios (``bench_step_time.py``) miss what happens between steps: staged schedules switch their
passes part-way (dual-uncertainty self-training pre-trains cheaply, then trains two decoders) and some run a pass
over every unlabelled case (its sample ranking). This trains each method for ``--steps`` on the brain demo
(the comparison protocol's split, network and batch; validation and evaluation off), back to back with a
supervised run in the same process, and prints the wall-clock ratio. Runs alternate so a slow phase of a
shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg import api
from semiseg.config import load_config
from semiseg.experiment.spec import parse_entry, split_entries

PROTOCOL = ["split.labelled=1", "model.widths=[8,16,32,64]", "train.batch_size=4", "train.unlabelled_batch_size=4"]


def train_seconds(overrides: list[str], root: Path, name: str) -> float:
    """Wall-clock seconds of ``api.train`` without validation or evaluation."""
    cfg = load_config(None, [*overrides, f"output.root={root}", f"output.name={name}"])
    start = time.perf_counter()
    api.train(cfg, overwrite=True, progress=False, evaluate=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="dual_uncertainty,self_training")
    parser.add_argument("--variant", action="append", default=[], help="label=method:key=value (repeatable)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override")
    args = parser.parse_args()
    common = [*PROTOCOL, f"train.steps={args.steps}", f"train.val_every={args.steps + 1}",
              f"train.threads={args.threads}", *args.overrides]
    entries = [parse_entry(text) for text in [*split_entries(args.methods), *args.variant]]
    print(f"{args.steps} steps each, threads={args.threads}, demo protocol (1 labelled subject, widths 8…64, 4 + 4)")
    print(f"{'method':<24}{'train s':>10}{'supervised s':>14}{'÷ supervised':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            sup = train_seconds([*common, "train.method=supervised"], Path(tmp), "supervised")
            own = train_seconds([*common, *entry.config_overrides()], Path(tmp), entry.label)
            print(f"{entry.label:<24}{own:>10.1f}{sup:>14.1f}{own / sup:>14.2f}")


if __name__ == "__main__":
    main()
