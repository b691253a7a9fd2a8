"""Synthetic phantoms: random ellipses (2D) or ellipsoids (3D) with class-specific intensities.

Why: every layer of the package needs a dataset that exists without files, builds in milliseconds,
and is learnable by a small U-Net in a few iterations. Class intensities are fixed per dataset (so the
task is consistent across cases) while shapes, a smooth bias field and noise vary per case.

Multiclass phantoms paint classes in order, later over earlier, so classes never overlap. Multilabel
phantoms overlap like BraTS regions: channel 0 is a large blob, channel 1 lies inside it, channel 2
inside channel 1, and any further channel is an elongated blob that crosses channel 0's border.
Each case is generated from ``(seed, index)`` when loaded, so the same arguments give the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from semiseg.data.case import Case, CaseRef, DatasetSpec, LabelMode
from semiseg.data.check import CheckedLoader
from semiseg.errors import ConfigError

_DEFAULT_SIZE = {2: 64, 3: 32}
_NESTED = 3  # multilabel channels that nest inside each other; later ones cross channel 0
_NOISE = 0.05
_BIAS = 0.15


@dataclass(frozen=True)
class _Params:
    seed: int
    dim: int
    size: tuple[int, ...]
    label_mode: LabelMode
    num_classes: int
    channels: int


def _grid(size: tuple[int, ...]) -> list[np.ndarray]:
    """Open (broadcastable) coordinate axes in [-1, 1]: cheap to combine into any shape."""
    axes = []
    for i, n in enumerate(size):
        shape = [1] * len(size)
        shape[i] = n
        axes.append(np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape(shape))
    return axes


def _blob(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """Boolean ellipse/ellipsoid; in 2D rotated by ``angle`` so shapes are not all axis-aligned."""
    d = [g - c for g, c in zip(grid, centre, strict=True)]
    if len(grid) == 2 and angle:
        cos, sin = np.cos(angle), np.sin(angle)
        d = [d[0] * cos + d[1] * sin, d[1] * cos - d[0] * sin]
    total = sum((di / r) ** 2 for di, r in zip(d, radii, strict=True))
    return total <= 1.0


def _random_blob(
    rng: np.random.Generator, grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    return _blob(grid, centre, radii, float(rng.uniform(0, np.pi)))


def _multiclass_label(rng: np.random.Generator, p: _Params, grid: list[np.ndarray]) -> np.ndarray:
    """Paint classes 1..K-1 in order, each smaller than the last so that none is usually hidden."""
    for _ in range(8):  # redraw the rare layout where a later class covers an earlier one entirely
        label = np.zeros(p.size, dtype=np.int16)
        for k in range(1, p.num_classes):
            scale = 0.5 * 0.8 ** (k - 1)
            for _ in range(int(rng.integers(1, 3))):
                centre = rng.uniform(-0.5, 0.5, p.dim)
                radii = rng.uniform(0.5, 1.0, p.dim) * scale
                label[_random_blob(rng, grid, centre, radii)] = k
        if len(np.unique(label)) == p.num_classes:
            break
    return label


def _multilabel_label(rng: np.random.Generator, p: _Params, grid: list[np.ndarray]) -> np.ndarray:
    """Nested channels (0 > 1 > 2), then elongated blobs centred on channel 0's border, so they cross it."""
    masks: list[np.ndarray] = []
    centre0, radii0 = rng.uniform(-0.25, 0.25, p.dim), rng.uniform(0.45, 0.7, p.dim)
    centre, radii = centre0, radii0
    for k in range(p.num_classes):
        if k == 0:
            masks.append(_blob(grid, centre0, radii0))
        elif k < _NESTED:
            centre = centre + rng.uniform(-0.25, 0.25, p.dim) * radii
            radii = radii * rng.uniform(0.5, 0.65, p.dim)
            masks.append(_random_blob(rng, grid, centre, radii) & masks[k - 1])
        else:
            direction = rng.normal(size=p.dim)
            direction /= np.linalg.norm(direction)
            edge = centre0 + direction / np.sqrt(np.sum((direction / radii0) ** 2))  # on the border
            size = np.full(p.dim, 0.12)
            size[int(rng.integers(p.dim))] = rng.uniform(0.3, 0.5)
            masks.append(_random_blob(rng, grid, edge, size))
    return np.stack(masks).astype(np.uint8)


def _levels(p: _Params) -> np.ndarray:
    """Per-dataset intensities: multiclass (K, C) class means, multilabel (K, C) additive weights.

    Drawn from the seed alone so every case shares them; that is what makes the task learnable.
    """
    rng = np.random.default_rng([p.seed, 7919])
    if p.label_mode == "multilabel":
        return rng.uniform(0.2, 0.45, (p.num_classes, p.channels))
    base = np.linspace(0.1, 1.0, p.num_classes)
    return np.stack([rng.permutation(base) if c else base for c in range(p.channels)], axis=1)


def _bias(rng: np.random.Generator, grid: list[np.ndarray]) -> np.ndarray:
    """Smooth multiplicative field (linear + one cross term), like a coil's shading."""
    field = 1.0 + sum(_BIAS * float(rng.uniform(-1, 1)) * g for g in grid)
    return field + _BIAS * float(rng.uniform(-1, 1)) * grid[0] * grid[1]


def _image(rng: np.random.Generator, p: _Params, grid: list[np.ndarray], label: np.ndarray) -> np.ndarray:
    levels = _levels(p) + rng.uniform(-0.03, 0.03, (p.num_classes, p.channels))
    if p.label_mode == "multilabel":
        clean = 0.1 + np.tensordot(levels.T, label.astype(np.float32), axes=1)
    else:
        clean = levels.T[:, label]
    image = clean * _bias(rng, grid)[None] + rng.normal(0.0, _NOISE, clean.shape)
    return image.astype(np.float32)


def _make_case(p: _Params, index: int, labelled: bool) -> Case:
    rng = np.random.default_rng([p.seed, index])
    grid = _grid(p.size)
    make_label = _multilabel_label if p.label_mode == "multilabel" else _multiclass_label
    label = make_label(rng, p, grid)
    image = _image(rng, p, grid, label)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if p.dim == 3 else None
    meta = {"source": "phantom", "seed": p.seed, "index": index}
    return Case(_case_id(index, labelled), image, label if labelled else None, (1.0,) * p.dim, affine, meta)


def _case_id(index: int, labelled: bool) -> str:
    return f"phantom_{index:03d}" if labelled else f"phantom_u{index:03d}"


def _check_args(dim: int, size: tuple[int, ...], label_mode: str, num_classes: int, channels: int) -> None:
    if dim not in (2, 3):
        raise ConfigError(f"phantom dim must be 2 or 3, got {dim}")
    if len(size) != dim or any(s < 8 for s in size):
        raise ConfigError(f"phantom size must be {dim} numbers >= 8, got {size}")
    if label_mode not in ("multiclass", "multilabel"):
        raise ConfigError(f"label_mode must be 'multiclass' or 'multilabel', got {label_mode!r}")
    if num_classes < (2 if label_mode == "multiclass" else 1):
        raise ConfigError(f"num_classes={num_classes} is too small for {label_mode} labels")
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")


def make_phantoms(
    *,
    n_cases: int = 8,
    dim: int = 2,
    size: int | tuple[int, ...] | None = None,
    label_mode: LabelMode = "multiclass",
    num_classes: int = 3,
    channels: int = 1,
    n_unlabelled: int = 0,
    seed: int = 0,
) -> DatasetSpec:
    """A lazy synthetic dataset: ``n_cases`` labelled plus ``n_unlabelled`` unlabelled phantoms.

    ``num_classes`` counts background for multiclass labels and channels for multilabel ones. From a config
    these are ``data.options`` (``--set data.options="{n_cases: 20, dim: 3}"``), checked and documented by
    ``semiseg.data.sources.options.PhantomOptions``.
    """
    size = _DEFAULT_SIZE.get(dim, 0) if size is None else size
    shape = (int(size),) * dim if isinstance(size, int | np.integer) else tuple(int(s) for s in size)
    _check_args(dim, shape, label_mode, num_classes, channels)
    if n_cases < 0 or n_unlabelled < 0:
        raise ConfigError("n_cases and n_unlabelled must be >= 0")
    params = _Params(int(seed), dim, shape, label_mode, int(num_classes), int(channels))
    refs = [_ref(params, i, True) for i in range(n_cases)]
    refs += [_ref(params, n_cases + i, False) for i in range(n_unlabelled)]
    names = (
        ["background", *(f"class_{k}" for k in range(1, num_classes))]
        if label_mode == "multiclass"
        else [f"region_{k}" for k in range(num_classes)]
    )
    return DatasetSpec(
        name=f"phantom{dim}d", dim=dim, channels=channels, label_mode=label_mode,
        class_names=names, cases=refs, root="",
    )


def _ref(p: _Params, index: int, labelled: bool) -> CaseRef:
    case_id = _case_id(index, labelled)
    origin = f"phantom:{case_id} (seed {p.seed})"
    loader = CheckedLoader(partial(_make_case, p, index, labelled), p.label_mode, p.num_classes, origin)
    return CaseRef(case_id, labelled, origin, loader)
