"""Time semiseg's Dice/Jaccard/HD95/ASD against medpy's on one realistic 3D case.

Run: ``python benchmarks/bench_metrics.py [--repeats N]``. Both implementations get the same masks;
the best of N runs is reported, and the script fails if the values disagree beyond 1e-6.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

try:
    from semiseg.eval.metrics import METRIC_COLUMNS, binary_metrics
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from semiseg.eval.metrics import METRIC_COLUMNS, binary_metrics

SHAPE = (160, 192, 160)
SPACING = (0.8, 0.8, 2.5)


def organ_blob(centre: tuple[float, ...], radii: tuple[float, ...], seed: int) -> np.ndarray:
    """An ellipsoid whose boundary is warped by smooth noise, like an organ a network might segment.

    The warp is bounded (tanh) so the object stays one compact structure, without far-away specks.
    """
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32), 6)
    return np.sqrt(radius) + 0.2 * np.tanh(noise / noise.std()) < 1.0


def medpy_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from medpy.metric import binary as mb

    return {
        "dice": mb.dc(pred, gt),
        "jaccard": mb.jc(pred, gt),
        "hd95": mb.hd95(pred, gt, voxelspacing=SPACING, connectivity=1),
        "asd": mb.asd(pred, gt, voxelspacing=SPACING, connectivity=1),
    }


def best_time(fn: Callable[[], dict[str, float]], repeats: int) -> tuple[float, dict[str, float]]:
    """Best wall time of ``repeats`` calls: the least noisy estimate of the cost itself."""
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    gt = organ_blob((80, 96, 80), (45, 55, 35), seed=0)
    pred = organ_blob((84, 92, 78), (42, 58, 33), seed=1)
    print(f"shape {SHAPE}, spacing {SPACING} mm, |gt| = {gt.sum()} voxels, |pred| = {pred.sum()} voxels")

    t_medpy, ref = best_time(lambda: medpy_metrics(pred, gt), args.repeats)
    t_ours, ours = best_time(lambda: binary_metrics(pred, gt, SPACING), args.repeats)

    for name in METRIC_COLUMNS:
        print(f"  {name:8s} medpy {ref[name]:.6f}   semiseg {ours[name]:.6f}")
    agree = all(abs(ours[k] - ref[k]) <= 1e-6 for k in METRIC_COLUMNS)
    print(f"medpy   dc+jc+hd95+asd: {t_medpy:.3f} s (best of {args.repeats})")
    print(f"semiseg binary_metrics: {t_ours:.3f} s (best of {args.repeats})")
    print(f"speed-up: {t_medpy / t_ours:.1f}x; values agree to 1e-6: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
