"""CPU time of a sampled batch with and without spatial augmentation, next to a training step that consumes it.

Run: ``python benchmarks/bench_augment.py [--repeats 10] [--threads 1]``.

Two settings: the 2D demo (8 slices of 88×104 from an 81×99×85 volume, U-Net widths 16…128) and a 3D one
(2 patches of 64³ from a 160×192×160 volume, U-Net widths 16…128). For each, the sampler's CPU seconds per
batch with spatial augmentation off (the default: flips and intensity only), nnU-Net's setting (rotation and zoom,
each p = 0.2), every spatial perturbation on every sample (p = 1, elastic included: the worst case) and the
``nnunet`` preset of the labelled batch (nnU-Net's spatial and intensity chain, ``train.augment.preset=nnunet``;
its ratio to "off", the current default, is printed after the table), the random intensity remap on every
sample (``train.augment.remap=1``, GIN-IPA: four small convolutions twice per sample), and the CPU seconds
of a forward + backward pass of the network over that batch. CPU time, not wall time, so a loaded machine does
not blur the ratios; augmentation must stay a small fraction of the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.config import AugmentConfig
from semiseg.data.loaders import Augmentation, PatchSampler, StoredCase
from semiseg.nets import build_network

SETTINGS = {"2D demo": (2, (81, 99, 85), [88, 104], 8), "3D 64³": (3, (160, 192, 160), [64, 64, 64], 2)}
RANGES = {k: v for k, v in AugmentConfig().model_dump().items() if k not in ("flip", "intensity")}
AUGMENTATIONS = {
    "off": Augmentation(),
    "nnU-Net (rotate, scale 0.2)": Augmentation(**{**RANGES, "rotate": 0.2, "scale": 0.2}),
    "all, p = 1": Augmentation(**{**RANGES, "rotate": 1.0, "scale": 1.0, "elastic": 1.0}),
    "nnunet preset": Augmentation(preset="nnunet"),
    "nnunet_intensity preset": Augmentation(preset="nnunet_intensity"),
    "remap, p = 1": Augmentation(remap=1.0),
}


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def synthetic_case(shape: tuple[int, ...]) -> StoredCase:
    """A smooth random image with a three-class label, shaped like the setting's volumes."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    label = (radius < 0.8).astype(np.int64) + (radius < 0.4)
    return StoredCase("synthetic", image, label, np.argwhere(label > 0)[:: max(1, (label > 0).sum() // 4096)])


def step_seconds(dim: int, patch: list[int], batch: int, repeats: int) -> float:
    net = build_network("unet", spatial_dims=dim, in_channels=1, out_channels=3, widths=[16, 32, 64, 128]).train()
    x = torch.randn(batch, 1, *patch)
    return cpu_seconds(lambda: net(x).float().square().mean().backward(), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| setting | forward + backward | " + " | ".join(f"sampling, {name}" for name in AUGMENTATIONS) + " |")
    print("|---" * (2 + len(AUGMENTATIONS)) + "|")
    ratios = []
    for name, (dim, shape, patch, batch) in SETTINGS.items():
        case = synthetic_case(shape)
        step = step_seconds(dim, patch, batch, max(1, args.repeats // 5))
        cells, spent = [], []
        for augment in AUGMENTATIONS.values():
            sampler = PatchSampler([case], dim=dim, patch_size=patch, batch_size=batch, augment=augment,
                                   foreground_fraction=0.5)
            steps = iter(range(10**9))
            seconds = cpu_seconds(lambda s=sampler, it=steps: s.batch_at(next(it)), args.repeats)
            cells.append(f"{seconds * 1000:.0f} ms ({seconds / step:.0%})")
            spent.append(seconds)
        print(f"| {name}, batch {batch} | {step * 1000:.0f} ms | " + " | ".join(cells) + " |")
        by_name = dict(zip(AUGMENTATIONS, spent, strict=True))
        ratios.append(f"{name}: " + ", ".join(f"{k} / off = {by_name[k] / by_name['off']:.1f}"
                                              for k in ("nnunet preset", "nnunet_intensity preset", "remap, p = 1")))
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
