"""A small labelled case and the batch a sampler draws from it, shared by the augmentation tests."""

from __future__ import annotations

import numpy as np

from semiseg.data.loaders import Augmentation, PatchSampler, StoredCase


def store(dim: int) -> list[StoredCase]:
    """One case whose label has two nested boxes (classes 1 and 2) and a noisy image that shows them."""
    shape = (30, 34, 5) if dim == 2 else (24, 28, 20)
    label = np.zeros(shape, dtype=np.int64)
    label[tuple(slice(s // 5, 3 * s // 5) for s in shape)] = 1
    label[tuple(slice(s // 4, s // 2) for s in shape)] = 2
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32) + label
    return [StoredCase("a", image, label, np.argwhere(label > 0))]


def batch(dim: int, augment: Augmentation, step: int = 3) -> dict:
    """The batch of ``step`` (8 samples, half centred on foreground, sampler seed 11)."""
    patch = [24, 24] if dim == 2 else [16, 16, 12]
    sampler = PatchSampler(store(dim), dim=dim, patch_size=patch, batch_size=8, augment=augment,
                           foreground_fraction=0.5, seed=11)
    return sampler.batch_at(step)
