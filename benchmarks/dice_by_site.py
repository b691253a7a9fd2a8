"""Which scanner sites a run segments: Dice per site on its validation and unlabelled cases, never its test cases.

Run: ``python benchmarks/dice_by_site.py RUN [RUN ...] [--checkpoint last] [--parts val,unlabelled] [--nets]``.
Runs that share a label (the folder name without ``-s<seed>``) are averaged. ``--nets`` scores every network of
the checkpoint on its own (``label[net]``) instead of the method's prediction: whether a teacher, a student or a
frozen labeller is the one that segments (``docs/evidence/ucmt.md``); ``--mean-of student1,student2`` scores the
mean of those networks' probabilities (``label[student1+student2]``), and ``--all`` adds the mean over all sites.
``--adapt-bn`` also predicts each case with BatchNorm's statistics re-estimated on that case alone (AdaBN, Li et al.
2016; ``label{adapted}``, what ``semiseg evaluate --adapt-bn`` does): whether what a network lacks on a far site
is its normalisation or its features.
A case's site is ``meta["site"]`` from its source (``heart_sites`` sets it; a source without it gives one group,
``all``). The unlabelled cases are scored against the labels the split withheld, so it needs a dataset that has
them (the built-in ones do).

Why: a mean validation Dice cannot say whether a semi-supervised method carried what one labelled site taught to
the others or only refined that site; per site it can (``docs/evidence/segpl.md``, the student's view).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.api import load_model
from semiseg.data.case import DatasetSpec
from semiseg.engine.assemble import open_configured_dataset
from semiseg.engine.model import LoadedModel
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import mean_foreground_dice

Scores = dict[str, dict[str, list[float]]]  # part → site → per-case Dice


@dataclass(frozen=True)
class LoadedRun:
    """A run's checkpoint, dataset and split, loaded once for every variant scored on it."""

    model: LoadedModel
    spec: DatasetSpec
    split: dict[str, list[str]]

    @classmethod
    def open(cls, run: Path, checkpoint: str) -> LoadedRun:
        model = load_model(run, checkpoint, "cpu", 1)
        return cls(model, open_configured_dataset(model.cfg), json.loads((run / "split.json").read_text()))


def run_scores(loaded: LoadedRun, parts: list[str], net: str | None = None, adapt_bn: bool = False) -> Scores:
    """Mean foreground Dice of each case of ``parts`` (split names), grouped by part and site.

    ``net`` scores that network of the checkpoint alone instead of the method's prediction, ``"a+b"`` the mean of
    those networks' probabilities; ``adapt_bn`` re-estimates BatchNorm's statistics on each case."""
    model, spec = loaded.model.with_case_norm(adapt_bn), loaded.spec
    predictors = [model] if net is None else [model.only(name) for name in net.split("+")]
    refs = {ref.case_id: ref for ref in spec.cases}
    scores: Scores = defaultdict(lambda: defaultdict(list))
    for part in parts:
        for case_id in loaded.split[part]:
            case = refs[case_id].load()
            if case.label is None:
                raise SystemExit(f"{case_id} ({part}) has no label on disk: nothing to score it against")
            probs = sum(p.probabilities(case) for p in predictors) / len(predictors)
            predicted = probs_to_label(probs, spec.label_mode)
            dice = mean_foreground_dice(predicted, case.label, spec.label_mode, spec.num_classes)
            scores[part][str(case.meta.get("site", "all"))].append(dice)
    return scores


def label_of(run: Path) -> str:
    return run.name.rsplit("-s", 1)[0] if "-s" in run.name else run.name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--checkpoint", default="last", choices=["best", "last"])
    parser.add_argument("--parts", default="val,unlabelled", help="split parts to score (test is refused)")
    parser.add_argument("--nets", action="store_true", help="score each network of the checkpoint on its own")
    parser.add_argument("--mean-of", default=None, help="comma-separated networks: also score their mean")
    parser.add_argument("--all", action="store_true", help="also print the mean over every case of a part")
    parser.add_argument("--adapt-bn", action="store_true",
                        help="also score with BatchNorm statistics re-estimated on each case (AdaBN)")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if "test" in parts:
        parser.error("--parts: test cases are read once, for a published table; decide on val and unlabelled")
    merged: dict[str, Scores] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in args.runs:
        loaded = LoadedRun.open(run, args.checkpoint)
        nets: list[str | None] = list(loaded.model.nets) if args.nets else [None]
        if args.mean_of:
            nets.append("+".join(args.mean_of.split(",")))
        for net in nets:
            for adapt_bn in [False, True] if args.adapt_bn else [False]:
                label = label_of(run) + (f"[{net}]" if net else "") + ("{adapted}" if adapt_bn else "")
                for part, sites in run_scores(loaded, parts, net, adapt_bn).items():
                    for site, values in sites.items():
                        merged[label][part][site].extend(values)
    for label, by_part in merged.items():
        cells = [f"{part}: " + " ".join(f"site {site} {statistics.mean(v):.3f}" for site, v in sorted(sites.items()))
                 + (f" all {statistics.mean([d for v in sites.values() for d in v]):.3f}" if args.all else "")
                 for part, sites in by_part.items()]
        print(f"{label:28s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
