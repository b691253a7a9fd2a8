"""Golden fingerprint: every registered method, 2D and 3D, a few steps on a tiny phantom at one thread,
the reliability gate off so that every unlabelled term acts from the first step.

Prints one JSON object ``{method/dim: {"loss": last logged total loss, "weights": sha256 of the final
weights}}``; a refactor that claims "behaviour unchanged" must print the same object before and after.
usage: python benchmarks/golden_fingerprint.py [--out FILE] [--methods NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.methods import available_methods


def _weights_digest(run_dir: Path) -> str:
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    digest = hashlib.sha256()
    for net_name in sorted(state["nets"]):
        for key, value in sorted(state["nets"][net_name].items()):
            digest.update(f"{net_name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(method: str, dim: int, root: Path) -> dict[str, object]:
    """Train ``method`` for four steps in ``dim`` D and summarise its final state."""
    options = f"{{n_cases: 8, dim: {dim}, seed: 0}}"
    cfg = load_config(None, [
        "data.source=phantom", f"data.options={options}", "split.labelled=2", "split.val=1", "split.test=2",
        f"model.dim={dim}", "model.widths=[4, 8]", "train.steps=4", "train.val_every=4", "train.log_every=1",
        "train.batch_size=2", "train.warmup_steps=1", "train.threads=1", "train.unlabelled_gate=off",
        f"train.method={method}", f"output.root={root}", f"output.name={method}-{dim}d", "seed=0",
    ])
    result = api.train(cfg, progress=False, evaluate=False)
    with (result.run_dir / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {"loss": rows[-1].get("loss"), "weights": _weights_digest(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--methods", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.methods or sorted(available_methods())
    prints: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for dim in (2, 3):
                try:
                    prints[f"{name}/{dim}d"] = fingerprint(name, dim, Path(tmp))
                except Exception as exc:  # a method that cannot run in a dimension is part of the fingerprint
                    prints[f"{name}/{dim}d"] = {"error": type(exc).__name__}
                print(name, dim, prints[f"{name}/{dim}d"], file=sys.stderr, flush=True)
    text = json.dumps(prints, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
