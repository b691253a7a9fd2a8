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

``IntensityChain`` is nnU-Net v2's intensity augmentation (noise, blur, brightness, contrast, low resolution,
gamma), the labelled batch's under ``train.augment.preset=nnunet``. It is written on the sample's own generator
with scipy and torch ops rather than MONAI's ``Rand*`` transforms, which draw from a random state they own: a
batch must stay a pure function of (seed, step, index) whatever the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


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


# ----------------------------------------------------------------------------------------------
# nnU-Net's intensity chain (train.augment.preset=nnunet, labelled batch only)


@dataclass(frozen=True)
class IntensityChain:
    """Probabilities (per sample) and ranges of nnU-Net v2's intensity augmentations, in nnU-Net's order.

    Every number is nnU-Net v2's default trainer (``nnUNetTrainer.get_training_transforms``, batchgeneratorsv2):
    Gaussian noise p 0.1, variance U(0, 0.1), one draw for all channels; Gaussian blur p 0.2, sigma U(0.5, 1)
    voxels drawn per channel and axis, each channel blurred with p 0.5; multiplicative brightness p 0.15 and
    contrast p 0.15, factors from (0.75, 1.25) drawn per channel (``BGContrast``: below or above 1 with equal
    chance), contrast about the channel mean and clipped to the channel's range; low-resolution simulation p 0.25,
    one zoom U(0.5, 1) for all axes, each channel with p 0.5, nearest-neighbour down, (bi/tri)linear up; gamma
    p 0.1 on the inverted image and p 0.3 on the image, gamma from (0.7, 1.5) per channel, mean and std kept.
    Labels are never touched: these change what a voxel looks like, not what it is.
    """

    noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_per_channel: float = 0.5
    brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    lowres: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    lowres_per_channel: float = 0.5
    gamma_inverted: float = 0.1
    gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)


NNUNET_INTENSITY = IntensityChain()
NNUNET_SPATIAL_PROBABILITY = 0.2  # nnU-Net v2's p_rotation and p_scaling; its p_elastic_deform is 0


def around_one(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's ``BGContrast`` draw: below 1 or above 1 with equal chance, so shrinking is as likely as growing."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def gaussian_noise(image: np.ndarray, variance: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    std = math.sqrt(rng.uniform(*variance))
    return image + rng.normal(0.0, std, image.shape).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: tuple[float, float], per_channel: float,
                  rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    for c in range(len(image)):
        if rng.random() < per_channel:
            out[c] = ndimage.gaussian_filter(image[c], rng.uniform(*sigma, size=image.ndim - 1), mode="nearest")
    return out


def brightness(image: np.ndarray, factors: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    scale = np.array([around_one(rng, *factors) for _ in range(len(image))], dtype=np.float32)
    return image * scale.reshape((-1,) + (1,) * (image.ndim - 1))


def contrast(image: np.ndarray, factors: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Stretch each channel about its mean, then clip to the range it had (nnU-Net's ``preserve_range``)."""
    out = np.empty_like(image)
    for c, channel in enumerate(image):
        mean = channel.mean()
        out[c] = np.clip((channel - mean) * around_one(rng, *factors) + mean, channel.min(), channel.max())
    return out


def low_resolution(image: np.ndarray, zoom: tuple[float, float], per_channel: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Resample each chosen channel to ``zoom`` times its size (nearest) and back (linear): detail is lost."""
    factor = rng.uniform(*zoom)
    spatial = image.shape[1:]
    small = [max(1, round(s * factor)) for s in spatial]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    out = image.copy()
    for c in range(len(image)):
        if rng.random() < per_channel:
            channel = torch.from_numpy(np.ascontiguousarray(image[c]))[None, None]
            down = F.interpolate(channel, size=small, mode="nearest-exact")
            out[c] = F.interpolate(down, size=spatial, mode=mode, align_corners=False)[0, 0].numpy()
    return out


def gamma(image: np.ndarray, gammas: tuple[float, float], invert: bool, rng: np.random.Generator) -> np.ndarray:
    """``((x - min) / range) ** gamma`` per channel, mapped back to its range and its mean and std restored;
    ``invert`` applies it to ``-image`` (nnU-Net's p_invert_image), which bends the bright end instead."""
    out = np.empty_like(image)
    sign = -1.0 if invert else 1.0
    for c, channel in enumerate(image):
        x = sign * channel
        mean, std = x.mean(), x.std()
        low, span = x.min(), x.max() - x.min()
        x = ((x - low) / (span + 1e-7)) ** around_one(rng, *gammas) * span + low
        x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
        out[c] = sign * x
    return out


def intensity_chain(image: np.ndarray, chain: IntensityChain, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net's intensity augmentations of one ``(C, *spatial)`` sample, each firing with its probability.

    One random number decides each transform, so the draws that follow do not depend on image content.
    """
    image = np.asarray(image, dtype=np.float32)
    if rng.random() < chain.noise:
        image = gaussian_noise(image, chain.noise_variance, rng)
    if rng.random() < chain.blur:
        image = gaussian_blur(image, chain.blur_sigma, chain.blur_per_channel, rng)
    if rng.random() < chain.brightness:
        image = brightness(image, chain.brightness_range, rng)
    if rng.random() < chain.contrast:
        image = contrast(image, chain.contrast_range, rng)
    if rng.random() < chain.lowres:
        image = low_resolution(image, chain.lowres_zoom, chain.lowres_per_channel, rng)
    if rng.random() < chain.gamma_inverted:
        image = gamma(image, chain.gamma_range, True, rng)
    if rng.random() < chain.gamma:
        image = gamma(image, chain.gamma_range, False, rng)
    return image
