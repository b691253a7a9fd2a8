"""Random intensity remapping of a labelled sample: another scanner's tissue contrast and shading.

Why: when the labelled subject(s) come from one scanner, a network learns that scanner's contrast (which tissue
is brighter than which, by how much) and fails where the contrast differs; gamma, brightness and contrast
move every tissue level along one increasing curve for the whole image, so the order of tissues never changes
and they do not teach it otherwise (nnU-Net's intensity chain left heart_sites' supervised baseline level,
docs/data.md). This is GIN-IPA (Ouyang et al., "Causality-
inspired single-source domain generalization for medical image segmentation", IEEE TMI 2022), written here on
a ``torch.Generator`` so the loader (seeded from the sample's own generator: a batch stays a pure function of
(seed, step, index)) and a method's strong view on the device share one implementation:

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
from torch import Tensor


@dataclass(frozen=True)
class RemapSettings:
    """The random network's shape and the blend mask's coarseness (GIN-IPA's defaults)."""

    layers: int = 4
    hidden: int = 2
    kernels: tuple[int, ...] = (1, 3)
    negative_slope: float = 0.01  # LeakyReLU between layers (torch's default, as the paper's code)
    mask_points: int = 4  # control values per axis of the blend mask


REMAP = RemapSettings()


def _draw(kind: str, shape: tuple[int, ...], generator: torch.Generator | None, template: Tensor) -> Tensor:
    """``torch.rand`` / ``torch.randn`` on the generator's device, moved to ``template``'s device and dtype."""
    device = template.device if generator is None else generator.device
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(shape, generator=generator, device=device).to(template.device, template.dtype)


def _device(generator: torch.Generator | None) -> torch.device:
    """Where a scalar draw is made: the generator's device, or the CPU's global generator."""
    return torch.device("cpu") if generator is None else generator.device


def like(image: Tensor, reference: Tensor) -> Tensor:
    """``image`` rescaled per channel to ``reference``'s mean and standard deviation (constant channels: copied)."""
    axes = tuple(range(1, image.ndim))
    mean, std = image.mean(dim=axes, keepdim=True), image.std(dim=axes, correction=0, keepdim=True)
    ref_mean = reference.mean(dim=axes, keepdim=True)
    ref_std = reference.std(dim=axes, correction=0, keepdim=True)
    scaled = (image - mean) / std.clamp_min(1e-8) * ref_std + ref_mean
    return torch.where(std > 1e-8, scaled, reference)


def random_network(image: Tensor, settings: RemapSettings, generator: torch.Generator | None = None) -> Tensor:
    """``image`` (C, *spatial) through a convolutional network whose weights and biases are drawn N(0, 1)."""
    conv = F.conv2d if image.ndim == 3 else F.conv3d
    x = image[None]
    channels = [image.shape[0]] + [settings.hidden] * (settings.layers - 1) + [image.shape[0]]
    for layer, (inputs, outputs) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        pick = int(torch.randint(len(settings.kernels), (), generator=generator, device=_device(generator)))
        k = settings.kernels[pick]
        weight = _draw("normal", (outputs, inputs) + (k,) * (image.ndim - 1), generator, image)
        x = conv(x, weight, _draw("normal", (outputs,), generator, image), padding=k // 2)
        if layer < settings.layers - 1:
            x = F.leaky_relu(x, settings.negative_slope)
    return x[0]


def gin(image: Tensor, settings: RemapSettings, generator: torch.Generator | None = None) -> Tensor:
    """One global non-linear remap mixed with the image by ``alpha ~ U(0, 1)``, at the image's mean and spread."""
    alpha = float(torch.rand((), generator=generator, device=_device(generator)))
    return like(alpha * like(random_network(image, settings, generator), image) + (1 - alpha) * image, image)


def blend_mask(spatial: tuple[int, ...], points: int, generator: torch.Generator | None,
               template: Tensor) -> Tensor:
    """A smooth field in [0, 1]: ``points`` U(0, 1) values per axis, interpolated (linear) to ``spatial``."""
    coarse = _draw("uniform", (1, 1) + (points,) * len(spatial), generator, template)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)[0, 0]


def random_remap(image: Tensor, generator: torch.Generator | None = None, settings: RemapSettings = REMAP) -> Tensor:
    """GIN-IPA of one ``(C, *spatial)`` sample (2D or 3D): two remaps blended by a smooth mask."""
    if image.ndim not in (3, 4):
        raise ValueError(f"random_remap expects a (C, *spatial) 2D or 3D sample, got shape {tuple(image.shape)}")
    first, second = gin(image, settings, generator), gin(image, settings, generator)
    mask = blend_mask(tuple(image.shape[1:]), settings.mask_points, generator, image)
    return like(mask * first + (1 - mask) * second, image)


def remap_sample(image: np.ndarray, rng: np.random.Generator, settings: RemapSettings = REMAP) -> np.ndarray:
    """``random_remap`` of a loader's ``numpy`` sample, its draws seeded from the sample's own generator."""
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    with torch.no_grad():
        return random_remap(tensor, generator, settings).numpy()
