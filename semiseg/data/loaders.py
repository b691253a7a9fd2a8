"""From cases to training batches: normalisation, in-memory stores, 2D slice and 3D patch sampling.

Training samples are drawn with replacement; sample ``i`` of the batch for step ``t`` has its own ``numpy``
generator keyed by ``(seed, t, i)``. A batch is therefore a pure function of the step: ``--resume`` continues
with exactly the batches an uninterrupted run would have seen, and a batch split over DDP ranks or loader
workers is the same batch whatever the number of processes.
2D training on 3D volumes samples slices along the last axis; a 2D case is treated as a volume of one
slice, so both take the same path. Augmentation is deliberately light by default and geometric changes are
applied to image and label alike; rotation, zoom and elastic deformation (``semiseg.data.augment``) are off by
default. ``preset="nnunet"`` gives the labelled sampler nnU-Net v2's augmentation instead (rotation, zoom,
mirroring, noise, blur, brightness, contrast, low resolution, gamma), the same for every method; the unlabelled
sampler keeps the basic one (``Augmentation.for_unlabelled``). Methods that need a strongly augmented view
build it on the device from the batch (``semiseg.ssl.strong_augment``), so it stays pixel-aligned with the
pseudo labels they make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from semiseg.data.augment import (
    NNUNET_INTENSITY,
    NNUNET_SPATIAL_PROBABILITY,
    SpatialAugmentation,
    bilinear_sample,
    draw_warp,
    intensity_chain,
    nearest_sample,
    source_box,
)
from semiseg.data.cache import CaseCache, PreparedCase
from semiseg.data.case import Case, CaseRef
from semiseg.data.remap import remap_sample

_FG_POINTS = 4096  # foreground voxels remembered per case for foreground-centred sampling


# basic: flips and a scale-and-shift; nnunet: nnU-Net v2's pipeline; nnunet_intensity: its intensity chain and
# mirroring without the rotation and zoom it adds (what differs between scanners, not between poses)
PRESETS = ("basic", "nnunet", "nnunet_intensity")


@dataclass(frozen=True)
class Augmentation(SpatialAugmentation):
    """What ``PatchSampler`` perturbs; the data layer's own type, so it needs no application config."""

    flip: bool = True  # random flips along the spatial axes of a slice / patch
    intensity: bool = True  # random intensity scale and shift
    # one of PRESETS, for the labelled batch (``resolved``)
    preset: str = "basic"
    # probability of a random intensity remap (``semiseg.data.remap``: another scanner's contrast), labelled only
    remap: float = 0.0

    def resolved(self) -> Augmentation:
        """What a sampler applies: under ``nnunet``, rotation and zoom that are off fire with nnU-Net's 0.2.

        nnU-Net's intensity chain then replaces the basic scale-and-shift (``PatchSampler.draw``); mirroring is
        ``flip`` under both (each axis with probability 0.5, as nnU-Net mirrors); elastic deformation stays as
        configured (nnU-Net v2 has it off).
        """
        if self.preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.preset != "nnunet":  # basic, and nnunet_intensity: no spatial transform unless configured
            return self
        return replace(self, rotate=self.rotate or NNUNET_SPATIAL_PROBABILITY,
                       scale=self.scale or NNUNET_SPATIAL_PROBABILITY)

    @property
    def nnunet_intensity(self) -> bool:
        """Whether nnU-Net's intensity chain replaces the basic scale-and-shift (every preset but basic)."""
        return self.preset != "basic"

    def for_unlabelled(self) -> Augmentation:
        """The unlabelled batch's: preset and remap are the labelled batch's; methods perturb their unlabelled views."""
        return replace(self, preset="basic", remap=0.0)


def normalize_image(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-channel intensity normalisation of a ``(C, *spatial)`` image (float32 out)."""
    image = image.astype(np.float32, copy=True)
    if mode == "none":
        return image
    axes = tuple(range(1, image.ndim))
    if mode == "zscore":
        mean = image.mean(axis=axes, keepdims=True)
        std = image.std(axis=axes, keepdims=True)
        return (image - mean) / np.maximum(std, 1e-6)
    lo, hi = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
    return (image - lo) / np.maximum(hi - lo, 1e-6)


def as_volume(array: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """Give 2D arrays a trailing slice axis so 2D and 3D cases share one code path."""
    return array[..., None] if spatial_ndim == 2 else array


@dataclass
class StoredCase:
    case_id: str
    image: np.ndarray  # (C, X, Y, Z) normalised; Z = 1 for 2D cases
    label: np.ndarray | None  # (X, Y, Z) int or (K, X, Y, Z) uint8
    fg_points: np.ndarray  # (n, 3) coordinates of labelled foreground voxels, maybe empty
    # Held-out label of an unlabelled case (the engine's diagnostics only): sampled under "truth", never "label".
    truth: np.ndarray | None = None
    # 2D sampling draws only these slice indices (``split.labelled_slices``); None: every slice.
    slices: np.ndarray | None = None


def _foreground_indices(label: np.ndarray | None, label_mode: str) -> np.ndarray:
    """Flat (C-order) indices of the labelled foreground voxels: ``np.argwhere``'s order, one int per voxel."""
    if label is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(label > 0 if label_mode == "multiclass" else label.any(axis=0))


def _foreground_points(foreground: np.ndarray, spatial: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``(n, 3)`` coordinates of at most ``_FG_POINTS`` foreground voxels (the rest are never read from disk).

    Kept as ``uint16`` where the axes allow: a quarter of the memory per case of ``int64``, the same values.
    """
    if len(foreground) > _FG_POINTS:
        foreground = foreground[rng.choice(len(foreground), _FG_POINTS, replace=False)]
    points = np.stack(np.unravel_index(np.asarray(foreground, dtype=np.int64), spatial), axis=1)
    return points.astype(np.uint16) if max(spatial) <= np.iinfo(np.uint16).max else points


def prepare_case(ref: CaseRef, *, normalize: str, label_mode: str) -> PreparedCase:
    """Read, normalise and lay out one case as the samplers use it (what the on-disk cache stores)."""
    case: Case = ref.load()
    image = as_volume(normalize_image(case.image, normalize), case.ndim)
    label = None if case.label is None else as_volume(case.label, case.ndim)
    return PreparedCase(image, label, _foreground_indices(label, label_mode))


def load_store(
    refs: Sequence[CaseRef], *, normalize: str, label_mode: str, with_labels: bool, desc: str, progress: bool,
    cache: CaseCache | None = None, keep_truth: bool = False,
) -> list[StoredCase]:
    """Normalised cases (labels dropped when ``with_labels`` is False), memory-mapped from ``cache`` if given.

    ``keep_truth`` keeps a dropped label aside as ``StoredCase.truth``: the sampler emits it under its own key,
    which no ``Batch`` carries, so the engine can score what a method teaches without the method seeing it.
    """
    rng = np.random.default_rng(0)
    stored = []
    for ref in tqdm(refs, desc=desc, disable=not progress or len(refs) < 2, leave=False):
        prepare = partial(prepare_case, ref, normalize=normalize, label_mode=label_mode)
        case = prepare() if cache is None else cache.prepared(ref, prepare)
        label = case.label if with_labels else None
        points = np.zeros((0, 3), dtype=np.int64)
        if label is not None:
            points = _foreground_points(case.foreground, case.image.shape[1:], rng)
        truth = case.label if keep_truth and label is None else None
        stored.append(StoredCase(ref.case_id, case.image, label, points, truth))
    return stored


def evenly_spaced(length: int, count: int) -> np.ndarray:
    """``min(count, length)`` indices into a sequence of ``length``, evenly spaced from its first to its last."""
    return np.linspace(0, length - 1, min(count, length)).round().astype(int)


def keep_labelled_slices(store: Sequence[StoredCase], count: int) -> list[StoredCase]:
    """Each case restricted to ``count`` slices evenly spaced over its foreground slices (all slices if it has
    none; every one if it has fewer), so a 2D run trains on a few labelled images, as the RPG paper's budgets do.

    The rest of the case is never drawn: its labels would be information the budget does not grant.
    """
    kept = []
    for case in store:
        depth = case.image.shape[-1]
        with_foreground = np.arange(depth)
        if case.label is not None and (case.label > 0).any():
            with_foreground = np.flatnonzero((case.label.reshape(-1, depth) > 0).any(axis=0))
        chosen = with_foreground[evenly_spaced(len(with_foreground), count)]
        points = case.fg_points[np.isin(case.fg_points[:, 2], chosen)]
        kept.append(replace(case, fg_points=points, slices=chosen.astype(np.int64)))
    return kept


def default_patch_size(stores: Sequence[Sequence[StoredCase]], dim: int, divisor: int) -> list[int]:
    """2D: the whole largest slice, rounded up to the network divisor (≤ 256); 3D: 64³ or smaller."""
    shapes = np.array([c.image.shape[1:] for store in stores for c in store])
    if dim == 2:
        largest = shapes[:, :2].max(axis=0)
        return [int(min(256, -(-s // divisor) * divisor)) for s in largest]
    largest = shapes.max(axis=0)
    return [int(min(64, -(-s // divisor) * divisor)) for s in largest]


def _crop_start(size: int, patch: int, centre: int | None, rng: np.random.Generator) -> int:
    """Start index of a window of ``patch`` along an axis of ``size`` (negative means padding)."""
    if centre is None:
        return int(rng.integers(0, size - patch + 1)) if size >= patch else -int(rng.integers(0, patch - size + 1))
    jitter = int(rng.integers(-patch // 4, patch // 4 + 1))
    start = centre - patch // 2 + jitter
    return int(np.clip(start, min(0, size - patch), max(0, size - patch)))


def _window(array: np.ndarray, starts: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """Crop the trailing ``len(patch)`` axes at ``starts``, zero-padding outside the array."""
    lead = array.shape[: array.ndim - len(patch)]
    out = np.zeros(lead + tuple(patch), dtype=array.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for size, start, p in zip(array.shape[len(lead) :], starts, patch, strict=True):
        lo, hi = max(start, 0), min(start + p, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Draws batches of 2D slices or 3D patches from a store."""

    def __init__(
        self,
        store: Sequence[StoredCase],
        *,
        dim: int,
        patch_size: Sequence[int],
        batch_size: int,
        augment: Augmentation,
        foreground_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not store:
            raise ValueError("PatchSampler needs at least one case")
        self.store, self.dim, self.patch = list(store), dim, list(patch_size)
        self.batch_size, self.augment = batch_size, augment.resolved()
        self.foreground_fraction = foreground_fraction
        self.seed, self._next_step = seed, 0
        self.pool, self._pool_ids = self.store, None

    def restrict(self, case_ids: Sequence[str] | None) -> None:
        """Draw from these cases only (None: all), in store order; a curriculum's subset (see ``Method``)."""
        key = None if case_ids is None else tuple(case_ids)
        if key == self._pool_ids:
            return
        wanted = set(key or ())
        pool = self.store if key is None else [c for c in self.store if c.case_id in wanted]
        if not pool:
            raise ValueError(f"none of the cases {list(key or ())} is in this sampler's store")
        self.pool, self._pool_ids = pool, key

    @property
    def pool_ids(self) -> tuple[str, ...] | None:
        """The case ids batches are drawn from (None: the whole store); loader workers check theirs against it."""
        return self._pool_ids

    def _sample_one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, str]:
        case = self.pool[int(rng.integers(len(self.pool)))]
        spatial = case.image.shape[1:]
        centre: Sequence[int | None] = [None, None, None]
        if len(case.fg_points) and rng.random() < self.foreground_fraction:
            centre = case.fg_points[int(rng.integers(len(case.fg_points)))].tolist()
        # An unlabelled case's held-out truth is cropped, warped and flipped like a label (see ``batch_at``).
        image, label = case.image, case.label if case.label is not None else case.truth
        if self.dim == 2:
            z = centre[2] if centre[2] is not None else self._any_slice(case, rng)
            image, label = image[..., z], None if label is None else label[..., z]
        starts = [_crop_start(spatial[a], self.patch[a], centre[a], rng) for a in range(self.dim)]
        warp = draw_warp(self.augment, self.patch, rng)
        coords = None if warp is None else warp.coordinates(starts)
        image = self._crop(image, starts, coords, nearest=False)
        label = None if label is None else self._crop(label, starts, coords, nearest=True)
        return image, label, case.case_id

    @staticmethod
    def _any_slice(case: StoredCase, rng: np.random.Generator) -> int:
        """A random slice index of ``case``, among its kept slices when it has them."""
        if case.slices is None:
            return int(rng.integers(case.image.shape[-1]))
        return int(case.slices[int(rng.integers(len(case.slices)))])

    def _crop(
        self, source: np.ndarray, starts: Sequence[int], coords: np.ndarray | None, *, nearest: bool
    ) -> np.ndarray:
        """The patch at ``starts``, or read at a warp's source ``coords`` (rotation, zoom, deformation)."""
        if coords is None:
            return _window(source, starts, self.patch)
        if nearest:
            return nearest_sample(source, coords)
        low, size = source_box(coords)
        return bilinear_sample(_window(source, low, size), coords, low)

    def _flip(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        for axis in range(self.dim):
            if rng.random() < 0.5:
                image = np.flip(image, axis=image.ndim - self.dim + axis)
                if label is not None:
                    label = np.flip(label, axis=label.ndim - self.dim + axis)
        return image, label

    @staticmethod
    def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale, shift = rng.normal(1.0, 0.1), rng.normal(0.0, 0.1)
        return image * scale + shift

    def sample_generator(self, step: int, index: int) -> np.random.Generator:
        """The generator of sample ``index`` of step ``step``'s batch (independent of every other sample)."""
        return np.random.default_rng((self.seed % 2**63, step, index))

    def draw(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Sample ``index`` of the batch for ``step``: an augmented image, its label (or None) and case id."""
        rng = self.sample_generator(step, index)
        image, label, case_id = self._sample_one(rng)
        if self.augment.flip:
            image, label = self._flip(image, label, rng)
        if self.augment.remap and rng.random() < self.augment.remap:  # no draw when off: batches as before
            image = remap_sample(image, rng)
        if self.augment.nnunet_intensity:
            image = intensity_chain(image, NNUNET_INTENSITY, rng)
        elif self.augment.intensity:
            image = self._intensity(image, rng)
        label = None if label is None else np.ascontiguousarray(label)
        return np.ascontiguousarray(image, dtype=np.float32), label, case_id

    def batch_at(self, step: int, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """Samples ``indices`` (default: all ``batch_size``) of the batch for ``step``, stacked.

        A DDP rank or a loader worker asks for its share of the indices and gets exactly those samples of
        the global batch.
        """
        drawn = [self.draw(step, i) for i in (range(self.batch_size) if indices is None else indices)]
        if not drawn:
            raise ValueError(f"batch_at(step={step}) was asked for no samples")
        images, labels, ids = zip(*drawn, strict=True)
        label = None if any(x is None for x in labels) else np.stack(labels)
        if self.store[0].label is None:  # an unlabelled store: what was cropped is the held-out truth
            return {"image": np.stack(images), "label": None, "truth": label, "case_ids": list(ids)}
        return {"image": np.stack(images), "label": label, "case_ids": list(ids)}

    def next_batch(self) -> dict[str, Any]:
        """The batch after the last one this sampler gave (for callers without their own step count)."""
        batch = self.batch_at(self._next_step)
        self._next_step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self._next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``next_batch``'s position (checkpoints from before keyed generators hold only ``rng``)."""
        self._next_step = int(state.get("next_step", 0))
