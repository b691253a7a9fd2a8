"""Spatial augmentation of training samples: random rotation, scaling and elastic deformation, 2D and 3D.

One sampling grid per sample moves image and label alike: the image is resampled bilinearly, the label with
nearest neighbour (class indices and multilabel channels keep their values), so a deformed label is exactly the
nearest-neighbour deformation of the image of a label-valued image. The grid is laid over the source slice or
volume rather than over the cropped patch, so a rotated or zoomed-out patch shows real anatomy in its corners
instead of zero padding (only what lies outside the case is zero, as for an unaugmented patch).

Every random choice comes from the sample's own generator (``PatchSampler.draw``), so a batch stays a pure
function of (seed, step, index). With every probability at 0 nothing is drawn and the sample is the unaugmented
crop, bit for bit. The ranges follow nnU-Net v2 (±180° in-plane in 2D, ±30° about each axis in 3D; zoom
0.7–1.4; it applies rotation and zoom each with probability 0.2 and no elastic deformation). All three are off by
default: on the brain demo with one labelled subject they cost Dice (docs/data.md has the numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SpatialAugmentation:
    """Probabilities (per sample) and ranges of the spatial perturbations; all off by default here."""

    rotate: float = 0.0  # probability of a random rotation
    rotate_degrees: float | None = None  # largest angle about each axis; None: 180 in 2D, 30 in 3D
    scale: float = 0.0  # probability of a random zoom
    scale_range: tuple[float, float] = (0.7, 1.4)  # zoom factor: > 1 makes anatomy larger
    elastic: float = 0.0  # probability of an elastic deformation
    elastic_magnitude: tuple[float, float] = (0.0, 8.0)  # largest control-point displacement, voxels
    elastic_spacing: int = 24  # control-point spacing, voxels

    @property
    def spatial(self) -> bool:
        return max(self.rotate, self.scale, self.elastic) > 0


@dataclass(frozen=True)
class Warp:
    """Where each patch voxel is read from: ``source = centre + matrix @ (p - patch centre) + displacement``."""

    patch: tuple[int, ...]
    matrix: np.ndarray  # (d, d)
    displacement: np.ndarray | None  # (d, *patch) float32 voxels, or None

    def coordinates(self, starts: Sequence[int]) -> np.ndarray:
        """(d, *patch) source coordinates of the patch whose unwarped window starts at ``starts``."""
        axes = [np.arange(p, dtype=np.float32) - (p - 1) / 2 for p in self.patch]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij"))
        coords = np.tensordot(self.matrix.astype(np.float32), offsets, axes=1)
        if self.displacement is not None:
            coords += self.displacement
        centre = np.asarray(starts, dtype=np.float32) + (np.asarray(self.patch, dtype=np.float32) - 1) / 2
        coords += centre.reshape(-1, *([1] * len(self.patch)))
        return coords


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix: one in-plane angle (2D) or angles about the three axes, applied in turn (3D)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        matrix = turn @ matrix
    return matrix


def _elastic_field(aug: SpatialAugmentation, patch: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement: uniform offsets at control points, interpolated over the patch."""
    magnitude = rng.uniform(*aug.elastic_magnitude)
    points = [max(2, math.ceil(p / aug.elastic_spacing) + 1) for p in patch]
    offsets = rng.uniform(-magnitude, magnitude, size=(len(patch), *points))
    mode = "bicubic" if len(patch) == 2 else "trilinear"
    points_field = torch.from_numpy(offsets.astype(np.float32))[None]
    field = F.interpolate(points_field, size=tuple(patch), mode=mode, align_corners=True)
    return field[0].numpy()


def draw_warp(aug: SpatialAugmentation, patch: Sequence[int], rng: np.random.Generator) -> Warp | None:
    """This sample's random warp, or None when no perturbation fires (nothing is drawn when all are off)."""
    if not aug.spatial:
        return None
    dim = len(patch)
    matrix, displacement = np.eye(dim), None
    if rng.random() < aug.rotate:
        limit = aug.rotate_degrees if aug.rotate_degrees is not None else (180.0 if dim == 2 else 30.0)
        matrix = _rotation(np.radians(rng.uniform(-limit, limit, size=1 if dim == 2 else 3)))
    if rng.random() < aug.scale:
        matrix = matrix / rng.uniform(*aug.scale_range)
    if rng.random() < aug.elastic:
        displacement = _elastic_field(aug, patch, rng)
    if displacement is None and np.array_equal(matrix, np.eye(dim)):
        return None
    return Warp(tuple(int(p) for p in patch), matrix, displacement)


def source_box(coords: np.ndarray) -> tuple[list[int], list[int]]:
    """Start and size of the smallest window of the source that every coordinate (with its neighbours) reads."""
    flat = coords.reshape(len(coords), -1)
    low = np.floor(flat.min(axis=1)).astype(int)
    high = np.floor(flat.max(axis=1)).astype(int) + 2
    return low.tolist(), (high - low).tolist()


def bilinear_sample(window: np.ndarray, coords: np.ndarray, low: Sequence[int]) -> np.ndarray:
    """Interpolate the ``(C, *spatial)`` image ``window``, cut from the source at ``low``, at source ``coords``."""
    dim = len(coords)
    shape = (-1,) + (1,) * dim
    scale = 2 / np.maximum(np.asarray(window.shape[1:], dtype=np.float32) - 1, 1)
    normalised = (coords - np.reshape(low, shape).astype(np.float32)) * scale.reshape(shape) - 1
    grid = torch.from_numpy(normalised).flip(0).permute(*range(1, dim + 1), 0)[None]  # grid_sample: (x, y[, z])
    source = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None]
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0].numpy()


def nearest_sample(source: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The label ``source`` (``(*spatial)`` or ``(K, *spatial)``) at the voxels nearest ``coords``; 0 outside."""
    dim = len(coords)
    index = np.rint(coords).astype(np.intp)
    spatial = np.asarray(source.shape[-dim:]).reshape((-1,) + (1,) * dim)
    inside = ((index >= 0) & (index < spatial)).all(axis=0)
    out = np.zeros(source.shape[:-dim] + coords.shape[1:], dtype=source.dtype)
    out[..., inside] = source[(Ellipsis, *(axis[inside] for axis in index))]
    return out
