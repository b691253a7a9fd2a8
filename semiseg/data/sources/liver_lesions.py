"""Development dataset ``liver_lesions``: 3D CT-like abdomen crops with a liver and small lesions, trained in 3D.

Why it exists: the brain demo is 2D-trained with large, balanced classes. Three of the five seed papers evaluate
in 3D and much of the field's use is small-structure segmentation, where a class covers well under 1 % of the
voxels and pseudo labels fail differently (a missed lesion is a confident background label). This source is that
task at a size a 3D U-Net step handles on a CPU: 48³ voxels of 2.5 mm by default.

Anatomy is drawn at twice the stored resolution and averaged down (partial volume): a liver from an ellipsoid
with a smooth random outline and one flat (diaphragm) face, intrahepatic vessels (labelled liver, as in LiTS),
1–4 lesions per case (radius 4–12 mm, log-uniform; one type per case: hypodense, hyperdense or rim-enhancing, of
a contrast drawn per case; cut by the liver's border), and around it soft tissue with fat, a spine, a kidney and a
fluid-filled gallbladder (a dark, round, lesion-like distractor outside the liver), all under a smooth random
deformation. Each case has its own contrast phase (from unenhanced, where the liver is near the soft tissue and
vessels are darker than the liver, to portal venous), reconstruction blur, slice-thickness blur and noise.
Labels: 0 background, 1 liver, 2 lesion.

Default split (fixed for every run seed; ``DatasetSpec.fixed_split``): 24 cases; a permutation drawn from the data
seed alone picks 8 test cases, 4 validation cases and the labelling order of the other 12, so ``split.labelled=1``
labels the same case in every run; ``split.labelled=all`` labels all 12.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
from scipy import ndimage

from semiseg.data.case import DatasetSpec
from semiseg.data.sources.synthetic import (
    Layout,
    block_majority,
    block_mean,
    cache_folder,
    case_refs,
    diagonal_affine,
    ensure_cases,
    fixed_split,
    smooth_field,
    warp_labels,
    whole,
)
from semiseg.errors import ConfigError

NAME = "liver_lesions"
FORMAT_VERSION = 2  # bump whenever the generator's output changes
CLASS_NAMES = ["background", "liver", "lesion"]
FIELD_OF_VIEW_MM = 120.0
_FINE = 2
_REDRAWS = 10  # a case whose lesions all vanish at the stored resolution is drawn again (rare)

AIR, FAT, SOFT, LIVER, VESSEL, BONE, KIDNEY, FLUID, LESION = range(9)
_LABEL_OF_TISSUE = np.array([0, 0, 0, 1, 1, 0, 0, 0, 2], dtype=np.uint8)


@dataclass(frozen=True)
class LiverParams:
    """Every generator input (the cache key hashes them all)."""

    seed: int = 0
    n_cases: int = 24
    n_test: int = 8
    n_val: int = 4
    size: int = 48  # voxels per axis; the field of view stays 120 mm, so the spacing is 120 / size


def layout(p: LiverParams) -> Layout:
    """Test, validation and labelling order from a permutation drawn from the data seed alone."""
    order = np.random.default_rng([p.seed, 2]).permutation(p.n_cases).tolist()
    test, val = order[: p.n_test], order[p.n_test : p.n_test + p.n_val]
    return Layout(tuple(sorted(test)), tuple(sorted(val)), tuple(order[p.n_test + p.n_val :]))


def _grid(n: int, step: float) -> list[np.ndarray]:
    axis = ((np.arange(n) - (n - 1) / 2) * step).astype(np.float32)
    return list(np.meshgrid(axis, axis, axis, indexing="ij", sparse=True))


def _blob(rng: np.random.Generator, grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray,
          roughness: float) -> np.ndarray:
    """An ellipsoid whose implicit surface is perturbed by a smooth random field (a non-parametric outline)."""
    n = grid[0].shape[0]
    level = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return level + smooth_field(rng, (n, n, n), (5, 5, 5), roughness) <= 1.0


def _tube(rng: np.random.Generator, grid: list[np.ndarray], start: np.ndarray, end: np.ndarray,
          radius: float) -> np.ndarray:
    """A vessel: points within ``radius`` of a gently curved segment from ``start`` to ``end``."""
    bend = rng.normal(0, 8, 3)
    inside = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=bool)
    for t in np.linspace(0, 1, 24):
        point = start + t * (end - start) + 4 * t * (1 - t) * bend
        inside |= sum((g - c) ** 2 for g, c in zip(grid, point, strict=True)) <= radius**2
    return inside


def _liver(rng: np.random.Generator, grid: list[np.ndarray]) -> np.ndarray:
    centre = np.array([rng.uniform(-20, 10), rng.uniform(-20, 10), rng.uniform(-15, 15)])
    radii = np.array([rng.uniform(36, 58), rng.uniform(28, 48), rng.uniform(32, 54)])
    liver = _blob(rng, grid, centre, radii, 0.4)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    face = sum(g * c for g, c in zip(grid, normal, strict=True)) < rng.uniform(20, 35)  # the flat diaphragm face
    return liver & face


def _surroundings(rng: np.random.Generator, grid: list[np.ndarray], n: int) -> np.ndarray:
    tissue = np.full((n, n, n), SOFT, dtype=np.uint8)
    tissue[smooth_field(rng, (n, n, n), (6, 6, 6), 1.0) > 0.8] = FAT
    x, y, _ = grid
    spine = (x - rng.uniform(-10, 10)) ** 2 + (y - rng.uniform(48, 58)) ** 2
    tissue[np.broadcast_to(spine <= rng.uniform(11, 15) ** 2, tissue.shape)] = BONE
    kidney = np.array([rng.uniform(20, 40), rng.uniform(30, 45), rng.uniform(-20, 20)])
    tissue[_blob(rng, grid, kidney, np.array([18.0, 12.0, 25.0]), 0.2)] = KIDNEY
    tissue[smooth_field(rng, (n, n, n), (5, 5, 5), 1.0) > 1.6] = AIR  # bowel gas
    return tissue


def _lesions(rng: np.random.Generator, grid: list[np.ndarray], liver: np.ndarray,
             step: float) -> list[np.ndarray]:
    """1–4 lesions centred inside the liver, each cut by the liver's border."""
    inside = np.argwhere(liver)
    lesions = []
    for _ in range(int(rng.integers(1, 5))):
        radius = float(np.exp(rng.uniform(np.log(4.0), np.log(12.0))))
        centre = (inside[int(rng.integers(len(inside)))] - (liver.shape[0] - 1) / 2) * step
        radii = radius * rng.uniform(0.8, 1.2, 3)
        lesions.append(_blob(rng, grid, centre, radii, 0.15) & liver)
    return lesions


def _fine_tissue(rng: np.random.Generator, n: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """The fine tissue map and the lesion intensity offsets (added to the liver level)."""
    grid = _grid(n, step)
    tissue = _surroundings(rng, grid, n)
    liver = _liver(rng, grid)
    gallbladder = np.array([rng.uniform(-45, -30), rng.uniform(-40, -25), rng.uniform(-15, 15)])
    tissue[liver] = LIVER
    tissue[_blob(rng, grid, gallbladder, np.array([12.0, 10.0, 18.0]), 0.2)] = FLUID
    for _ in range(int(rng.integers(3, 6))):
        ends = [(np.argwhere(liver)[int(rng.integers(liver.sum()))] - (n - 1) / 2) * step for _ in range(2)]
        tissue[_tube(rng, grid, *ends, rng.uniform(1.5, 3.5)) & liver] = VESSEL
    offsets = np.zeros((n, n, n), dtype=np.float32)
    # One disease per patient: a single labelled case shows one lesion type and one contrast, others differ.
    kind = str(rng.choice(["hypodense", "hyperdense", "rim"], p=[0.6, 0.2, 0.2]))
    contrast = rng.uniform(0.06, 0.2) if kind == "hyperdense" else -rng.uniform(0.06, 0.3)
    for mask in _lesions(rng, grid, liver, step):
        tissue[mask] = LESION
        offsets[mask] = contrast * rng.uniform(0.8, 1.2)
        if kind == "rim":
            rim = mask & ~ndimage.binary_erosion(mask, iterations=2)
            offsets[rim] = rng.uniform(0.08, 0.18)
    displacement = np.stack([smooth_field(rng, (n, n, n), (5, 5, 5), 6.0 / step) for _ in range(3)])
    return warp_labels(tissue, displacement), warp_labels(offsets, displacement)


def _levels(rng: np.random.Generator) -> np.ndarray:
    """Window-normalised CT levels (-160..240 HU to 0..1) with this case's contrast phase: from unenhanced (liver
    near the soft tissue's 0.46, vessels darker than the liver, a lesion-like pattern) to portal venous."""
    liver = rng.uniform(0.50, 0.78)
    levels = np.zeros(9, dtype=np.float32)
    levels[[FAT, SOFT, BONE, FLUID]] = 0.15, 0.46, 1.0, 0.38
    levels[[LIVER, LESION]] = liver
    levels[VESSEL] = liver + rng.uniform(-0.15, 0.25)
    levels[KIDNEY] = liver + rng.uniform(0.02, 0.2)
    return levels


def generate(p: LiverParams, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Case ``i``'s image (float32) and label (uint8), from ``(seed, i)`` alone."""
    rng = np.random.default_rng([p.seed, 3, i])
    n, step = p.size * _FINE, FIELD_OF_VIEW_MM / (p.size * _FINE)
    for _ in range(_REDRAWS):
        tissue, offsets = _fine_tissue(rng, n, step)
        label = block_majority(_LABEL_OF_TISSUE[tissue], _FINE, len(CLASS_NAMES))
        if (label == 2).any():
            break
    fine = _levels(rng)[tissue] + offsets
    fine += np.where(tissue == LIVER, smooth_field(rng, (n, n, n), (8, 8, 8), 0.02), 0.0)  # parenchyma texture
    image = block_mean(fine, _FINE)
    sigma = (rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8), rng.uniform(0.3, 1.2))  # kernel; slice thickness
    image = ndimage.gaussian_filter(image, sigma)
    image = image + rng.normal(0.0, rng.uniform(0.02, 0.09), image.shape)
    return image.astype(np.float32), label


def _check(p: LiverParams) -> None:
    if p.n_test < 1 or p.n_val < 0 or p.n_cases < p.n_test + p.n_val + 1:
        raise ConfigError(f"liver_lesions: n_cases={p.n_cases} must exceed n_test={p.n_test} + n_val={p.n_val} "
                          "(and n_test >= 1, n_val >= 0)")
    if not 24 <= p.size <= 128:
        raise ConfigError(f"liver_lesions: size must be 24..128 voxels per axis, got {p.size}")


def open_liver_lesions(*, n_cases: int = 24, n_test: int = 8, n_val: int = 4, size: int = 48, seed: int = 0,
                       cache_dir: str | None = None) -> DatasetSpec:
    """Build (or reuse from the cache) the 3D liver-lesion dataset and list it with its fixed split."""
    counts = {"seed": seed, "n_cases": n_cases, "n_test": n_test, "n_val": n_val, "size": size}
    p = LiverParams(**{k: whole(NAME, k, v) for k, v in counts.items()})
    _check(p)
    params = {"format_version": FORMAT_VERSION, **asdict(p)}
    root = cache_folder(NAME, params, cache_dir)
    spacing = (FIELD_OF_VIEW_MM / p.size,) * 3
    meta = {**params, "name": NAME, "class_names": CLASS_NAMES, "spacing": list(spacing),
            "layout": asdict(layout(p))}
    ensure_cases(root, "liver", p.n_cases, partial(generate, p), diagonal_affine(spacing), meta)
    return DatasetSpec(name=NAME, dim=3, channels=1, label_mode="multiclass", class_names=list(CLASS_NAMES),
                       cases=case_refs(root, "liver", p.n_cases, spacing, [{}] * p.n_cases),
                       fixed_split=fixed_split("liver", layout(p)), root=str(root))
