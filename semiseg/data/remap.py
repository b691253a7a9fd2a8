"""Random intensity remapping of a labelled sample: another scanner's tissue contrast and shading.

Why: when the labelled subject(s) come from one scanner, a network learns that scanner's contrast (which tissue
is brighter than which, by how much) and fails where the contrast differs; gamma, brightness and contrast
changes keep the order and the ratios of tissue levels, so they do not teach it otherwise (nnU-Net's intensity
chain left heart_sites' supervised baseline level, docs/data.md). This is GIN-IPA (Ouyang et al., "Causality-
inspired single-source domain generalization for medical image segmentation", IEEE TMI 2022), written here on
the sample's own ``numpy`` generator so a batch stays a pure function of (seed, step, index):

- GIN: a shallow convolutional network with freshly drawn weights (4 layers, 2 hidden channels, kernels of size
  1 or 3, LeakyReLU between layers) maps the image; its output is mixed with the image by a random share
  ``alpha ~ U(0, 1)``. Tissue levels move non-linearly and may swap order; shapes stay where they were.
- IPA: two such remaps are blended by a smooth random mask (a coarse grid of U(0, 1) values interpolated to the
  sample), so the contrast changes across the image as under a coil's shading.

Each remap is rescaled to the sample's per-channel mean and standard deviation (the paper keeps the Frobenius
norm; this project's images are z-scored per case, so the mean and spread are what a test image has). Labels are
never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RemapSettings:
    """The random network's shape and the blend mask's coarseness (GIN-IPA's defaults)."""

    layers: int = 4
    hidden: int = 2
    kernels: tuple[int, ...] = (1, 3)
    negative_slope: float = 0.01  # LeakyReLU between layers (torch's default, as the paper's code)
    mask_points: int = 4  # control values per axis of the blend mask


REMAP = RemapSettings()


def like(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` rescaled per channel to ``reference``'s mean and standard deviation (constant channels: copied)."""
    axes = tuple(range(1, image.ndim))
    mean, std = image.mean(axis=axes, keepdims=True), image.std(axis=axes, keepdims=True)
    ref_mean, ref_std = reference.mean(axis=axes, keepdims=True), reference.std(axis=axes, keepdims=True)
    scaled = (image - mean) / np.maximum(std, 1e-8) * ref_std + ref_mean
    return np.where(std > 1e-8, scaled, reference).astype(np.float32)


def random_network(image: np.ndarray, settings: RemapSettings, rng: np.random.Generator) -> np.ndarray:
    """``image`` (C, *spatial) through a convolutional network whose weights and biases are drawn N(0, 1)."""
    conv = F.conv2d if image.ndim == 3 else F.conv3d
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    channels = [image.shape[0]] + [settings.hidden] * (settings.layers - 1) + [image.shape[0]]
    for layer, (inputs, outputs) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        k = int(rng.choice(settings.kernels))
        weight = torch.from_numpy(rng.standard_normal((outputs, inputs) + (k,) * (image.ndim - 1)).astype(np.float32))
        bias = torch.from_numpy(rng.standard_normal(outputs).astype(np.float32))
        x = conv(x, weight, bias, padding=k // 2)
        if layer < settings.layers - 1:
            x = F.leaky_relu(x, settings.negative_slope)
    return x[0].numpy()


def gin(image: np.ndarray, settings: RemapSettings, rng: np.random.Generator) -> np.ndarray:
    """One global non-linear remap mixed with the image by ``alpha ~ U(0, 1)``, at the image's mean and spread."""
    alpha = rng.uniform()
    return like(alpha * like(random_network(image, settings, rng), image) + (1 - alpha) * image, image)


def blend_mask(spatial: tuple[int, ...], points: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth field in [0, 1]: ``points`` U(0, 1) values per axis, interpolated (linear) to ``spatial``."""
    coarse = torch.from_numpy(rng.uniform(size=(1, 1) + (points,) * len(spatial)).astype(np.float32))
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)[0, 0].numpy()


def random_remap(image: np.ndarray, rng: np.random.Generator, settings: RemapSettings = REMAP) -> np.ndarray:
    """GIN-IPA of one ``(C, *spatial)`` sample (2D or 3D): two remaps blended by a smooth mask, float32."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (3, 4):
        raise ValueError(f"random_remap expects a (C, *spatial) 2D or 3D sample, got shape {image.shape}")
    first, second = gin(image, settings, rng), gin(image, settings, rng)
    mask = blend_mask(image.shape[1:], settings.mask_points, rng)
    return like(mask * first + (1 - mask) * second, image)
