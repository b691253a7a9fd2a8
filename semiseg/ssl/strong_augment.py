"""RandAugment-style strong augmentation for segmentation, 2D and 3D, with the pseudo label carried along.

FixMatch (Sohn et al. 2020) trains on a strongly augmented image against the pseudo label of its weak view;
for segmentation (RPG paper, Eq. 11) the label must follow the image: intensity operations change the image
only, geometric ones move image, pseudo label and its validity mask alike, and CutOut's area becomes
background in the pseudo label (and counts, so the network learns that an erased patch holds nothing).

Each sample draws ``n_ops`` operations uniformly from ``ops`` with a magnitude uniform in the operation's
range (FixMatch's RandAugment variant), then CutOut. Intensity operations work on the image mapped to [0, 1]
by its own minimum and maximum and mapped back, so they suit z-scored as well as [0, 1] images. Affine
operations (rotate, shear, translate) are composed into one resampling per sample: bilinear for the image,
nearest for labels and masks; pixels that enter from outside the image are 0 in the image and the mask, so
the loss ignores them. Flips and 90° rotations are exact. Randomness comes from ``generator`` when given
(tests) and from torch's global RNG otherwise (training, where the engine checkpoints it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg.data.remap import random_remap
from semiseg.ssl.mixing import box_masks

INTENSITY_OPS = (
    "identity",
    "autocontrast",
    "brightness",
    "contrast",
    "gamma",
    "posterize",
    "solarize",
    "sharpness",
    "noise",
)
SampleOp = Callable[[Tensor], Tensor]  # a flip or 90° rotation of one sample (C, *spatial)
GEOMETRIC_OPS = ("flip", "rot90", "rotate", "shear", "translate")
AFFINE_OPS = ("rotate", "shear", "translate")


@dataclass(frozen=True)
class StrongAugment:
    """Settings of the strong view. Magnitude ranges: rotate ±30°, shear ±0.3, translate ±30 % of the side
    (FixMatch's RandAugment pool); CutOut takes a box of ``cutout_area`` of the image."""

    n_ops: int = 2
    ops: tuple[str, ...] = INTENSITY_OPS + GEOMETRIC_OPS
    cutout: bool = True
    cutout_area: tuple[float, float] = (0.01, 0.25)  # FixMatch: a square of up to half the side
    image_interpolation: str = "bilinear"
    # probability that a sample's view starts with a random intensity remap (GIN-IPA, ``semiseg.data.remap``):
    # another scanner's contrast, tissue by tissue and varying across the image, which RandAugment's whole-image
    # intensity curves do not give; 0 draws nothing
    remap: float = 0.0

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set(INTENSITY_OPS + GEOMETRIC_OPS)
        if unknown:
            raise ValueError(
                f"unknown strong-augmentation ops {sorted(unknown)}; choose from {INTENSITY_OPS + GEOMETRIC_OPS}"
            )
        if self.n_ops < 0:
            raise ValueError(f"n_ops must be >= 0, got {self.n_ops}")
        if not 0 <= self.remap <= 1:
            raise ValueError(f"remap is a probability in [0, 1], got {self.remap}")


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


# -- intensity operations, on one image (C, *spatial) in [0, 1] ----------------------------------


def _autocontrast(x: Tensor, g: torch.Generator | None) -> Tensor:
    """Stretch the 1st-99th percentile range to [0, 1]."""
    lo, hi = torch.quantile(x.flatten()[:: max(1, x.numel() // 100_000)], torch.tensor([0.01, 0.99], device=x.device))
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def _brightness(x: Tensor, g: torch.Generator | None) -> Tensor:
    return (x * _uniform(0.6, 1.4, g)).clamp(0, 1)


def _contrast(x: Tensor, g: torch.Generator | None) -> Tensor:
    mean = x.mean()
    return ((x - mean) * _uniform(0.6, 1.4, g) + mean).clamp(0, 1)


def _gamma(x: Tensor, g: torch.Generator | None) -> Tensor:
    return x.clamp_min(0) ** math.exp(_uniform(-0.5, 0.5, g))


def _posterize(x: Tensor, g: torch.Generator | None) -> Tensor:
    levels = 2 ** int(torch.randint(3, 7, (), generator=g)) - 1
    return torch.round(x * levels) / levels


def _solarize(x: Tensor, g: torch.Generator | None) -> Tensor:
    threshold = _uniform(0.6, 1.0, g)
    return torch.where(x >= threshold, 1.0 - x, x)


def _sharpness(x: Tensor, g: torch.Generator | None) -> Tensor:
    """Blend with a box-blurred copy: factor < 1 blurs, > 1 sharpens (PIL's ImageEnhance.Sharpness)."""
    dims = x.ndim - 1
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    blurred = pool(x[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return (blurred + _uniform(0.1, 1.9, g) * (x - blurred)).clamp(0, 1)


def _noise(x: Tensor, g: torch.Generator | None) -> Tensor:
    device = x.device if g is None else g.device
    return x + _uniform(0.0, 0.1, g) * torch.randn(x.shape, generator=g, device=device).to(x.device)


_INTENSITY: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "identity": lambda x, g: x,
    "autocontrast": _autocontrast,
    "brightness": _brightness,
    "contrast": _contrast,
    "gamma": _gamma,
    "posterize": _posterize,
    "solarize": _solarize,
    "sharpness": _sharpness,
    "noise": _noise,
}


def intensity_op(name: str, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Apply one intensity operation to one image (C, *spatial) in its own min-max range."""
    lo, hi = image.min(), image.max()
    unit = (image - lo) / (hi - lo).clamp_min(1e-6)
    return _INTENSITY[name](unit, generator) * (hi - lo) + lo


# -- geometric operations -----------------------------------------------------------------------


def random_affine(name: str, spatial: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """A (d, d + 1) affine on pixel offsets from the image centre, in tensor axis order.

    It maps output pixels to the input pixels they are read from; every range is symmetric, so the
    inverse is as likely as the map itself.
    """
    dims = len(spatial)
    matrix = torch.eye(dims, dims + 1)
    if name == "translate":
        shift = (torch.rand(dims, generator=generator) * 2 - 1) * 0.3
        matrix[:, dims] = shift * torch.tensor(spatial, dtype=torch.float32)
        return matrix
    i, j = torch.randperm(dims, generator=generator)[:2].tolist()
    if name == "rotate":
        angle = math.radians(_uniform(-30.0, 30.0, generator))
        matrix[i, i], matrix[i, j] = math.cos(angle), -math.sin(angle)
        matrix[j, i], matrix[j, j] = math.sin(angle), math.cos(angle)
    elif name == "shear":
        matrix[i, j] = _uniform(-0.3, 0.3, generator)
    else:
        raise ValueError(f"{name!r} is not an affine op; choose from {AFFINE_OPS}")
    return matrix


def compose(first: Tensor, second: Tensor) -> Tensor:
    """The affine ``first ∘ second`` of two (d, d + 1) maps: apply ``second``, then ``first``."""
    d = first.shape[0]
    full = [torch.cat([m, torch.eye(d + 1)[d:]]) for m in (first, second)]
    return (full[0] @ full[1])[:d]


def grid_theta(matrix: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """A pixel-offset affine (``random_affine``) → the normalised theta ``affine_grid`` takes.

    Normalised coordinates n relate to pixel offsets by p = S n with S = diag(side / 2), so the map becomes
    S⁻¹ A S n + S⁻¹ t, which keeps angles true on non-square images; ``affine_grid`` lists the last tensor
    axis first, hence the reversal.
    """
    d = len(spatial)
    half = torch.tensor(spatial, dtype=torch.float32) / 2
    linear = matrix[:, :d] * half[None, :] / half[:, None]
    shift = matrix[:, d] / half
    rev = list(reversed(range(d)))
    return torch.cat([linear[rev][:, rev], shift[rev, None]], dim=1)


def warp(x: Tensor, thetas: Tensor, mode: str) -> Tensor:
    """Resample (B, C, *spatial) ``x`` with per-sample normalised thetas (B, d, d + 1); outside is 0."""
    grid = F.affine_grid(thetas.to(x.device, torch.float32), list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def _flip_or_rot90(name: str, spatial: tuple[int, ...], generator: torch.Generator | None) -> SampleOp:
    """A random flip (one axis) or 90° rotation (a random square plane, else 180°) of one sample (C, *spatial)."""
    dims = len(spatial)
    axes = torch.randperm(dims, generator=generator)[:2].tolist()
    if name == "flip":
        return partial(torch.flip, dims=(1 + axes[0],))
    i, j = 1 + axes[0], 1 + axes[1]
    turns = int(torch.randint(1, 4, (), generator=generator)) if spatial[i - 1] == spatial[j - 1] else 2
    return partial(torch.rot90, k=turns, dims=(i, j))


# -- the whole strong view ---------------------------------------------------------------------------


def _as_channels(target: Tensor, mask: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
    """Target and mask with a channel axis, as float, for warping alongside the image."""
    t = target.unsqueeze(1) if target.ndim == image.ndim - 1 else target
    m = mask.unsqueeze(1) if mask.ndim == image.ndim - 1 else mask
    return t.float(), m.float()


@dataclass(frozen=True)
class StrongView:
    """A strongly augmented batch and the draws that made it, so labels computed later can follow the image.

    Why two steps: a method can then put the strong image through the network in the same pass as the weak
    view whose predictions become its pseudo labels (FixMatch's reference code runs labelled, weak and strong
    images as one batch), and carry those labels over afterwards with ``carry``.
    """

    image: Tensor  # (B, C, *spatial)
    flips: tuple[tuple[SampleOp, ...], ...]  # per sample, the flips and 90° rotations in order
    theta: Tensor | None  # (B, d, d + 1) normalised affine of each sample, None when every one is the identity
    box: Tensor | None  # (B, 1, *spatial) CutOut box, None without CutOut

    def carry(self, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``target`` and ``mask`` of the unaugmented batch moved as the image was (see ``strong_augment``)."""
        t, m = _as_channels(target, mask, self.image)
        t = torch.stack([_apply(ops, x) for ops, x in zip(self.flips, t, strict=True)])
        m = torch.stack([_apply(ops, x) for ops, x in zip(self.flips, m, strict=True)])
        if self.theta is not None:
            t, m = warp(t, self.theta, "nearest"), warp(m, self.theta, "nearest")
        if self.box is not None:
            t, m = torch.where(self.box, 0.0, t), torch.where(self.box, 1.0, m)
        t = t.squeeze(1).round().to(target.dtype) if target.ndim == self.image.ndim - 1 else t.to(target.dtype)
        m = m.squeeze(1).to(mask.dtype) if mask.ndim == self.image.ndim - 1 else m.to(mask.dtype)
        return t, m


def _apply(ops: tuple[SampleOp, ...], x: Tensor) -> Tensor:
    for op in ops:
        x = op(x)
    return x


def strong_view(
    image: Tensor,
    settings: StrongAugment = StrongAugment(),  # noqa: B008 (frozen dataclass)
    generator: torch.Generator | None = None,
) -> StrongView:
    """The strong view of a batch (B, C, *spatial); its ``carry`` moves labels computed later the same way."""
    dims = image.ndim - 2
    spatial = tuple(image.shape[2:])
    identity = torch.eye(dims, dims + 1)
    images, flips, matrices = [], [], []
    for b in range(image.shape[0]):
        x, ops, matrix = image[b], [], identity
        if settings.remap and float(torch.rand((), generator=generator)) < settings.remap:
            x = random_remap(x, generator)
        for pick in torch.randint(len(settings.ops), (settings.n_ops,), generator=generator).tolist():
            name = settings.ops[pick]
            if name in _INTENSITY:
                x = intensity_op(name, x, generator)
            elif name in AFFINE_OPS:
                matrix = compose(matrix, random_affine(name, spatial, generator))
            else:
                ops.append(_flip_or_rot90(name, spatial, generator))
                x = ops[-1](x)
        images.append(x)
        flips.append(tuple(ops))
        matrices.append(matrix)
    x = torch.stack(images)
    theta = None
    if any(not torch.equal(a, identity) for a in matrices):
        theta = torch.stack([grid_theta(a, spatial) for a in matrices])
        x = warp(x, theta, settings.image_interpolation)
    box = None
    if settings.cutout:
        box = box_masks(x.shape[0], x.shape[2:], area=settings.cutout_area, generator=generator,
                        device=x.device).unsqueeze(1)
        x = torch.where(box, x.mean(dim=tuple(range(2, x.ndim)), keepdim=True), x)
    return StrongView(x.to(image.dtype), tuple(flips), theta, box)


def strong_augment(
    image: Tensor,
    target: Tensor,
    mask: Tensor,
    settings: StrongAugment = StrongAugment(),  # noqa: B008 (frozen dataclass)
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Strongly augmented (image, pseudo label, mask) of a batch.

    ``image`` (B, C, *spatial); ``target`` multiclass (B, *spatial) class indices or multilabel
    (B, K, *spatial) 0/1 maps; ``mask`` (B, *spatial) or (B, K, *spatial) (per-channel validity). Outputs
    keep the input layouts and dtypes; CutOut fills its box with the image's mean and sets it to background
    in ``target`` (class 0, or every channel 0) and to 1 in ``mask``.
    """
    view = strong_view(image, settings, generator)
    return view.image, *view.carry(target, mask)


def checked_ops(ops: Sequence[str], allowed: tuple[str, ...], kind: str = "") -> tuple[str, ...]:
    """``ops`` as a tuple, or a ValueError naming what is not in ``allowed`` (an empty pool included); ``kind``
    qualifies the ops in the message ("intensity ")."""
    unknown = sorted(set(ops) - set(allowed))
    if unknown or not ops:
        raise ValueError(f"unknown or no {kind}ops {unknown}; choose from {', '.join(allowed)}")
    return tuple(ops)


def intensity_view(
    image: Tensor,
    n_ops: int = 2,
    generator: torch.Generator | None = None,
    ops: tuple[str, ...] = INTENSITY_OPS,
    remap: float = 0.0,
) -> Tensor:
    """``n_ops`` intensity operations per image drawn from ``ops``, no geometry, no CutOut: a view whose labels
    are the image's own. With probability ``remap`` an image's view starts with a random intensity remap
    (``semiseg.data.remap``), which keeps the labels too.

    Why: a pseudo label made on the clean image is the view's label unchanged, so any method can train its
    student on the view without carrying targets along; what changes (contrast, gamma, noise, sharpness) is
    what differs between scanners, so the student learns to answer alike across them.
    """
    settings = StrongAugment(n_ops=n_ops, ops=checked_ops(ops, INTENSITY_OPS, "intensity "), cutout=False, remap=remap)
    return strong_view(image, settings, generator).image

