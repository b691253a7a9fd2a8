"""Do a run's BatchNorm running statistics cost it Dice? Its checkpoint scored as trained and with the running
statistics re-estimated from patches of its training cases, weights untouched.

Run: ``python benchmarks/labelled_norm_stats.py RUN [RUN ...] [--checkpoint last] [--batches 40] [--parts val]
[--sources labelled,labelled+unlabelled]``. For each source the running mean and variance of every BatchNorm layer
are reset and re-estimated as a cumulative average over ``--batches`` seeded batches of random patches (the run's
patch and batch size; a 2D network on volumes takes a random slice) of the named split parts, clean images, parts
joined by ``+`` alternating a batch each as separate training passes do; then each case of ``--parts`` is scored
per foreground class. Test cases are refused; the training cases only feed the statistics.

Why: evaluation normalises with the running statistics, and every training pass moves them. A method whose
unlabelled pass sees other images than evaluation does (SegPL's intensity views) sets them from a mix that
evaluation never sees. If the same weights score higher with statistics of clean patches, while supervised
training's do not move, the statistics are what the method lost (``running_stats: clean`` in
``semiseg.methods.segpl``).
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

from dice_by_site import LoadedRun  # noqa: E402  (the script folder is on sys.path)

from semiseg.eval.labels import probs_to_label  # noqa: E402
from semiseg.eval.metrics import foreground_dice  # noqa: E402
from semiseg.nets.unet import case_norm_stats  # noqa: E402


def split_patches(loaded: LoadedRun, part: str, batches: int, seed: int = 0) -> list[torch.Tensor]:
    """``batches`` batches of random patches of the cases of one split part, after the run's normalisation."""
    refs = {ref.case_id: ref for ref in loaded.spec.cases}
    images = [loaded.model.normalized(refs[case_id].load()) for case_id in loaded.split[part]]
    size, per_batch = list(loaded.model.patch_size), loaded.model.cfg.train.batch_size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        patches = []
        for _ in range(per_batch):
            image = images[rng.integers(len(images))]
            if image.ndim - 1 > len(size):  # a 2D network on volumes: a random slice of the last axis, as training
                image = image[..., int(rng.integers(image.shape[-1]))]
            patches.append(_patch(image, size, rng))
        out.append(torch.from_numpy(np.stack(patches)))
    return out


def _patch(image: np.ndarray, size: list[int], rng: np.random.Generator) -> np.ndarray:
    """A random window of ``size``, zero-padded (the normalised mean) where the image is smaller."""
    starts = [int(rng.integers(0, max(dim - p, 0) + 1)) for dim, p in zip(image.shape[1:], size, strict=True)]
    window = image[(slice(None), *(slice(s, s + p) for s, p in zip(starts, size, strict=True)))]
    padding = [(0, 0), *((0, p - dim) for dim, p in zip(window.shape[1:], size, strict=True))]
    return np.ascontiguousarray(np.pad(window, padding))


def class_dice(loaded: LoadedRun, parts: list[str]) -> np.ndarray:
    """``(cases, classes)`` foreground Dice of every case of ``parts``."""
    refs = {ref.case_id: ref for ref in loaded.spec.cases}
    rows = []
    for case_id in (case_id for part in parts for case_id in loaded.split[part]):
        case = refs[case_id].load()
        if case.label is None:
            raise SystemExit(f"{case_id} has no label on disk: nothing to score it against")
        predicted = probs_to_label(loaded.model.probabilities(case), loaded.spec.label_mode)
        rows.append(foreground_dice(predicted, case.label, loaded.spec.label_mode, loaded.spec.num_classes))
    return np.array(rows)


def reestimated_dice(loaded: LoadedRun, parts: list[str], batches: int, sources: list[str]) -> np.ndarray:
    """``class_dice`` with every BatchNorm layer's running statistics re-estimated on patches of ``sources``
    (split parts; several alternate a batch each, as separate training passes do)."""
    nets = list(loaded.model.nets.values())
    per_source = [split_patches(loaded, part, batches) for part in sources]
    patches = [batch for group in zip(*per_source, strict=True) for batch in group]
    device = loaded.model.device

    def estimate() -> None:
        with torch.no_grad():
            for batch in patches:
                for net in nets:
                    net(batch.to(device))

    with case_norm_stats(nets, estimate):
        return class_dice(loaded, parts)


def describe(dice: np.ndarray, names: list[str]) -> str:
    per_class = ", ".join(f"{name} {value:.3f}" for name, value in zip(names, dice.mean(axis=0), strict=True))
    return f"{dice.mean(axis=1).mean():.3f} ({per_class})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--checkpoint", default="last", choices=["best", "last"])
    parser.add_argument("--parts", default="val", help="split parts to score (test is refused)")
    parser.add_argument("--batches", type=int, default=40, help="batches of patches (per source) for the statistics")
    parser.add_argument("--sources", default="labelled,labelled+unlabelled",
                        help="comma-separated: the split parts whose patches set the statistics, '+' joining parts "
                             "that alternate (default: labelled alone, then labelled and clean unlabelled)")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if "test" in parts:
        parser.error("--parts: test cases are read once, for a published table; decide on val and unlabelled")
    torch.set_num_threads(1)
    for run in args.runs:
        loaded = LoadedRun.open(run, args.checkpoint)
        names = loaded.spec.class_names[1:] if loaded.spec.label_mode == "multiclass" else loaded.spec.class_names
        line = f"{run}: {args.checkpoint}, {'+'.join(parts)}: as trained {describe(class_dice(loaded, parts), names)}"
        for sources in args.sources.split(","):
            line += f"; {sources} {describe(reestimated_dice(loaded, parts, args.batches, sources.split('+')), names)}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
