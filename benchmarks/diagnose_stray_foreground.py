"""Where does a run's predicted foreground fall far from any true foreground?

Run: ``python benchmarks/diagnose_stray_foreground.py RUN [RUN ...] [--checkpoint last] [--margin 3]`` on
multiclass run folders. For every test case of each run the checkpoint predicts the whole volume; the script prints
the number of connected foreground components per case and, per class, the share of the predicted voxels that lie
more than ``--margin`` voxels from any voxel the truth labels foreground. HD95 cannot tell many specks from a few
large far blobs; these two numbers can, which says whether a fix belongs to the method (blobs it learnt) or to
post-processing (specks). ``--per-case`` adds, per test case, the far voxels and the mean intensity of the image
away from the foreground (its background), which shows whether they gather in one case and what sets it apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.api import load_model
from semiseg.engine.assemble import open_configured_dataset


def near_foreground(truth: np.ndarray, margin: int) -> np.ndarray:
    """Voxels within ``margin`` voxels of any true foreground voxel."""
    return ndimage.binary_dilation(truth > 0, iterations=margin) if margin else truth > 0


def stray_scores(prediction: np.ndarray, near: np.ndarray, classes: int) -> tuple[int, list[float]]:
    """(foreground components, per foreground class the share of its predicted voxels outside ``near``)."""
    components = ndimage.label(prediction > 0)[1]
    shares = []
    for c in range(1, classes):
        predicted = prediction == c
        shares.append(float((predicted & ~near).sum() / predicted.sum()) if predicted.any() else float("nan"))
    return components, shares


def case_line(case_id: str, image: np.ndarray, prediction: np.ndarray, near: np.ndarray) -> str:
    """One case: predicted foreground voxels outside ``near``, and the image's mean intensity there."""
    far = (prediction > 0) & ~near
    return f"  {case_id}: {int(far.sum())} far voxels, background mean intensity {float(image[..., ~near].mean()):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--checkpoint", default="last", choices=["best", "last"])
    parser.add_argument("--margin", type=int, default=3, help="voxels around the true foreground that count as near")
    parser.add_argument("--per-case", action="store_true", help="also print each test case's far voxels")
    args = parser.parse_args()
    for run in args.runs:
        model = load_model(run, args.checkpoint, device="cpu")
        cases = {ref.case_id: ref for ref in open_configured_dataset(model.cfg).cases}
        rows, lines = [], []
        for case_id in json.loads((Path(run) / "split.json").read_text())["test"]:
            case = cases[case_id].load()
            probabilities = model.probabilities(case)
            prediction = probabilities.argmax(0)
            near = near_foreground(case.label, args.margin)
            components, shares = stray_scores(prediction, near, probabilities.shape[0])
            rows.append([components, *shares])
            lines.append(case_line(case_id, np.asarray(case.image), prediction, near))
        means = np.nanmean(rows, axis=0)
        shares = ", ".join(f"class {c} {share:.4f}" for c, share in enumerate(means[1:], start=1))
        print(f"{run} ({args.checkpoint}): {means[0]:.1f} foreground components per case; predicted voxels farther "
              f"than {args.margin} from true foreground: {shares}")
        if args.per_case:
            print("\n".join(lines))


if __name__ == "__main__":
    main()
