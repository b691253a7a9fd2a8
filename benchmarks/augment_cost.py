"""Cost of nnU-Net's augmentation of the labelled batch against the basic one, per batch, 2D and 3D, on the CPU.

Why: ``train.augment.preset=nnunet`` moves work into the loader (per-sample rotation and zoom by resampling, blur,
low-resolution simulation); this prints the seconds per batch of each preset and their ratio, measured in one run,
and the share of a training step it would add, so a default can be weighed against its cost.

    OMP_NUM_THREADS=1 python benchmarks/augment_cost.py --batches 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from semiseg.data.loaders import Augmentation, PatchSampler, StoredCase
from semiseg.nets import build_network

CASES = {2: ((96, 96, 8), [96, 96], 8, [8, 16, 32, 64]), 3: ((48, 48, 48), [48, 48, 48], 2, [8, 16, 32])}


def _store(shape: tuple[int, ...]) -> list[StoredCase]:
    rng = np.random.default_rng(0)
    stores = []
    for i in range(4):
        label = (rng.random(shape) > 0.7).astype(np.int64)
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        stores.append(StoredCase(f"c{i}", image, label, np.argwhere(label > 0)[:4096]))
    return stores


def seconds_per_batch(dim: int, augment: Augmentation, batches: int) -> float:
    shape, patch, batch_size, _ = CASES[dim]
    sampler = PatchSampler(_store(shape), dim=dim, patch_size=patch, batch_size=batch_size, augment=augment,
                           foreground_fraction=0.5, seed=0)
    sampler.batch_at(0)
    start = time.perf_counter()
    for step in range(1, batches + 1):
        sampler.batch_at(step)
    return (time.perf_counter() - start) / batches


def seconds_per_step(dim: int, steps: int) -> float:
    """A supervised forward-backward step of the U-Net the calibration runs use, for scale."""
    _, patch, batch_size, widths = CASES[dim]
    net = build_network("unet", spatial_dims=dim, in_channels=1, out_channels=3, widths=widths)
    optimiser = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch_size, 1, *patch)
    start = time.perf_counter()
    for _ in range(steps):
        optimiser.zero_grad()
        net(x).square().mean().backward()
        optimiser.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for dim in (2, 3):
        basic = seconds_per_batch(dim, Augmentation(), args.batches)
        nnunet = seconds_per_batch(dim, Augmentation(preset="nnunet"), args.batches)
        step = seconds_per_step(dim, args.steps)
        print(f"{dim}D batch of {CASES[dim][2]} x {CASES[dim][1]}: basic {basic * 1e3:.1f} ms, nnunet "
              f"{nnunet * 1e3:.1f} ms (ratio {nnunet / basic:.2f}); a training step {step * 1e3:.0f} ms, "
              f"so nnunet adds {(nnunet - basic) / step:.1%} per step")


if __name__ == "__main__":
    main()
