"""Label-budget curve on the demo: 2 subjects chosen by ``semiseg suggest`` vs 2 chosen at random.

Per seed: train supervised with 1 labelled subject (SHORT protocol: 2D widths [8, 16, 32, 64], 300 steps,
batch 4, one thread); rank the split's unlabelled training subjects with ``suggest`` (the demo has their labels);
then fine-tune (``model.init_from`` = the 1-subject run, 300 steps) with 3 labelled subjects given by a split
file: the 2 suggested ones, or 2 drawn at random. Every run is scored on the same 6 test subjects (best
checkpoint, mean foreground Dice). Resumable: finished runs (summary.json) and choices are kept; rerun to go on.

    nice python benchmarks/suggest_vs_random.py --seeds 0,1,2 --root runs/bench_suggest
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.run import Run
from semiseg.eval.run_evaluation import EvaluationOptions

SHORT = ["model.widths=[8, 16, 32, 64]", "train.steps=300", "train.batch_size=4", "train.threads=1",
         "split.labelled=1", "eval.report_cases=0", "eval.save_predictions=false"]
ARMS = ("suggest", "random")


def mean_dice(run_dir: Path) -> float:
    classes = json.loads((run_dir / "summary.json").read_text())["metrics"]["best"]["classes"]
    return mean(c["dice"]["mean"] for c in classes.values())


def train_once(run_dir: Path, overrides: list[str]) -> float:
    """Train and evaluate (best checkpoint) unless ``run_dir`` already holds a finished run."""
    if not (run_dir / "summary.json").is_file():
        cfg = load_config(None, [*SHORT, *overrides, f"output.root={run_dir.parent}", f"output.name={run_dir.name}"])
        api.train(cfg, overwrite=True, progress=False, evaluate=False)
        Run.open(run_dir, progress=False).evaluate(EvaluationOptions(checkpoints=("best",)))
    return mean_dice(run_dir)


def choices(base: Path, seed: int, add: int, score: str) -> dict[str, list[str]]:
    """The subjects each arm adds, cached in the base run folder."""
    path = base / "choices.json"
    if path.is_file():
        return json.loads(path.read_text())
    pool = json.loads((base / "split.json").read_text())["unlabelled"]
    ranked = api.suggest(base, score=score, top=add, overwrite=True, progress=False)
    picked = {"suggest": [c.case_id for c in ranked[:add]], "random": random.Random(1000 + seed).sample(pool, add)}
    path.write_text(json.dumps(picked, indent=2))
    return picked


def split_with(base: Path, added: list[str], path: Path) -> Path:
    split = json.loads((base / "split.json").read_text())
    split["labelled"] = [*split["labelled"], *added]
    split["unlabelled"] = [c for c in split["unlabelled"] if c not in added]
    path.write_text(json.dumps(split, indent=2))
    return path


def run_seed(root: Path, seed: int, add: int, score: str) -> dict[str, Any]:
    base = root / f"seed{seed}_base"
    row: dict[str, Any] = {"seed": seed, "base": train_once(base, [f"seed={seed}"])}
    picked = choices(base, seed, add, score)
    for arm in ARMS:
        split = split_with(base, picked[arm], root / f"seed{seed}_{arm}_split.json")
        row[arm] = train_once(root / f"seed{seed}_{arm}",
                              [f"seed={seed}", f"split.file={split}", f"model.init_from={base}"])
        row[f"{arm}_cases"] = picked[arm]
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]], score: str) -> str:
    def cell(key: str) -> str:
        values = [r[key] for r in rows]
        return f"{mean(values):.3f} ± {stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    lines = [f"| labelled subjects | suggest (`{score}`) | random |", "|---|---|---|",
             f"| 1 | {cell('base')} | {cell('base')} |", f"| 3 | {cell('suggest')} | {cell('random')} |", "",
             "| seed | 1 labelled | +2 suggested | +2 random | suggested | random |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['base']:.3f} | {r['suggest']:.3f} | {r['random']:.3f} | "
              f"{', '.join(r['suggest_cases'])} | {', '.join(r['random_cases'])} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/bench_suggest")
    parser.add_argument("--score", default="entropy")
    parser.add_argument("--add", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds.split(","):  # the tables are rewritten after every seed, so a stopped run keeps them
        rows.append(run_seed(root, int(seed), args.add, args.score))
        (root / "results.json").write_text(json.dumps(rows, indent=2))
        (root / "results.md").write_text(table(rows, args.score) + "\n")
    print(table(rows, args.score))


if __name__ == "__main__":
    main()
