"""What each intensity op of the student's view erases: a run's Dice per class on views of its validation cases.

Run: ``python benchmarks/view_damage.py RUN [RUN ...] [--checkpoint last] [--draws 3] [--parts val]``.
For every op of ``INTENSITY_OPS`` (``semiseg.ssl.strong_augment``, the pool of ``student_view: intensity``) it
applies the op, at the strengths the training view draws, to each whole case after the run's normalisation,
predicts the view and counts each foreground class's overlap with the label, pooled over cases and ``--draws``
draws (so a small class is not one case's luck); ``identity`` is the clean image. Runs that share a label (the
folder name without ``-s<seed>``) are pooled too. Test cases are refused.

Why: an intensity view teaches the student to answer alike across scanners only if what it must segment is still
visible in the view; an op that erases a structure (a few grey levels over a lesion a few per cent brighter than
its organ) trains the student to find what is not there. Scored on a run that trained on the view (SegPL's
default), what is still lost is what the op erased, not an invariance the network never learnt. The ops see a
whole case here and a patch in training, so their min-max range differs slightly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # dice_by_site, run from anywhere

from dice_by_site import LoadedRun, label_of  # noqa: E402  (the script folder is on sys.path)

from semiseg.eval.labels import probs_to_label  # noqa: E402
from semiseg.eval.metrics import foreground_overlaps  # noqa: E402
from semiseg.ssl.strong_augment import INTENSITY_OPS, intensity_op  # noqa: E402

Overlaps = dict[str, np.ndarray]  # op → (classes, 2) summed (|P & G|, |P| + |G|)


def op_overlaps(loaded: LoadedRun, parts: list[str], ops: tuple[str, ...], draws: int) -> Overlaps:
    """Each op's per-class overlaps, summed over the cases of ``parts`` and ``draws`` seeded draws of the op."""
    spec, model = loaded.spec, loaded.model
    refs = {ref.case_id: ref for ref in spec.cases}
    totals: Overlaps = {}
    for case_index, case_id in enumerate(case_id for part in parts for case_id in loaded.split[part]):
        case = refs[case_id].load()
        if case.label is None:
            raise SystemExit(f"{case_id} has no label on disk: nothing to score it against")
        image = torch.from_numpy(np.ascontiguousarray(model.normalized(case)))
        for op in ops:
            for draw in range(1 if op == "identity" else draws):
                generator = torch.Generator().manual_seed(1000 * case_index + draw)
                view = intensity_op(op, image, generator).numpy()
                predicted = probs_to_label(model.predict_normalized(view), spec.label_mode)
                counts = np.array(foreground_overlaps(predicted, case.label, spec.label_mode, spec.num_classes))
                totals[op] = totals.get(op, 0) + counts
    return totals


def dice_rows(overlaps: Overlaps, class_names: list[str]) -> list[str]:
    """Markdown rows: per op, each class's pooled Dice and the change of their mean against the clean image."""
    def dice(counts: np.ndarray) -> np.ndarray:
        return np.where(counts[:, 1] == 0, 1.0, 2.0 * counts[:, 0] / np.maximum(counts[:, 1], 1))

    clean = dice(overlaps["identity"]).mean()
    rows = [f"| op | {' | '.join(class_names)} | mean | − clean |", "|---" * (len(class_names) + 3) + "|"]
    for op, counts in overlaps.items():
        per_class = dice(counts)
        cells = " | ".join(f"{d:.3f}" for d in per_class)
        rows.append(f"| {op} | {cells} | {per_class.mean():.3f} | {per_class.mean() - clean:+.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--checkpoint", default="last", choices=["best", "last"])
    parser.add_argument("--parts", default="val", help="split parts to score (test is refused)")
    parser.add_argument("--draws", type=int, default=3, help="random draws of each op per case")
    parser.add_argument("--ops", default=",".join(INTENSITY_OPS), help="comma-separated ops (identity is added)")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if "test" in parts:
        parser.error("--parts: test cases are read once, for a published table; decide on val and unlabelled")
    ops = ("identity", *[op for op in args.ops.split(",") if op != "identity"])
    unknown = set(ops) - set(INTENSITY_OPS)
    if unknown:
        parser.error(f"--ops: unknown {sorted(unknown)}; choose from {', '.join(INTENSITY_OPS)}")
    pooled: dict[str, Overlaps] = {}
    class_names: list[str] = []
    for run in args.runs:
        loaded = LoadedRun.open(run, args.checkpoint)
        class_names = list(loaded.spec.class_names[1:] if loaded.spec.label_mode == "multiclass"
                           else loaded.spec.class_names)
        totals = pooled.setdefault(label_of(run), {})
        for op, counts in op_overlaps(loaded, parts, ops, args.draws).items():
            totals[op] = totals.get(op, 0) + counts
    for label, overlaps in pooled.items():
        print(f"\n{label} ({args.checkpoint} checkpoint, {', '.join(parts)} cases, {args.draws} draws)\n")
        print("\n".join(dice_rows(overlaps, class_names)), flush=True)


if __name__ == "__main__":
    main()
