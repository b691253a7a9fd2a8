"""What the generated development datasets share: a hashed NIfTI cache, a fixed split, and image physics.

Why: ``heart_sites`` and ``liver_lesions`` are decided on, never reported, so they must be rebuilt bit for bit
from their arguments anywhere, without downloads, and cost a training run nothing after the first: each case is
generated once from ``(seed, case index)`` into a folder named by a hash of every generator input (the brain
demo's cache is the same code), written atomically, and read back as NIfTI so the case cache and ``semiseg data
check`` see ordinary files. The split is prescribed by the source (``DatasetSpec.fixed_split``): the same
validation and test cases and the same labelling order for every run seed, so ``split.labelled=1`` always labels
the same case.

The physics helpers build anatomy at twice the stored resolution and average it down, so boundaries carry partial
volume, and apply acquisition effects (smooth bias field, blur, lower resolution, Rician noise).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from semiseg.data.case import Case, CaseRef
from semiseg.data.io import atomic_write, read_volume, write_nifti
from semiseg.errors import ConfigError, DataError

Generate = Callable[[int], tuple[np.ndarray, np.ndarray]]  # case index -> (image (*spatial), label (*spatial))


@dataclass(frozen=True)
class Layout:
    """A generated dataset's fixed split: which case indices test, validate, and in which order they get labels."""

    test: tuple[int, ...]
    val: tuple[int, ...]
    labelling_order: tuple[int, ...]  # training cases; the budget k labels the first k


def whole(source: str, name: str, value: Any) -> int:
    """An integer option, or one ``ConfigError`` naming it (``data.options`` values come from YAML)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float) or int(value) != value:
        raise ConfigError(f"{source}: data.options.{name} must be a whole number, got {value!r}")
    return int(value)


def cache_folder(name: str, params: dict[str, Any], cache_dir: str | None) -> Path:
    """``<cache>/<name>/<hash of params>``; ``$SEMISEG_CACHE`` or ``~/.cache/semiseg`` unless ``cache_dir``."""
    if cache_dir:
        base = Path(cache_dir).expanduser()
    else:
        env = os.environ.get("SEMISEG_CACHE")
        base = (Path(env).expanduser() if env else Path.home() / ".cache" / "semiseg") / name
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return base / key


def case_id(prefix: str, index: int) -> str:
    return f"{prefix}_{index:03d}"


def _paths(root: Path, cid: str) -> tuple[Path, Path]:
    return root / f"{cid}_image.nii.gz", root / f"{cid}_label.nii.gz"


def write_missing_cases(root: Path, paths: Sequence[tuple[Path, Path]], generate: Generate,
                        affine: Callable[[], np.ndarray], write_meta: Callable[[Path], None], *, what: str,
                        progress: bool = False) -> None:
    """Generate whatever case is missing, then ``meta.json``; every generated source (the brain demo included)
    fills its cache this way. Files only ever appear complete, so the ones present are trusted.

    ``paths[i]`` is case ``i``'s (image, label) files; ``affine`` is asked only when a case is written (the demo's
    comes from a template that costs a read).
    """
    missing = [i for i, pair in enumerate(paths) if not all(p.is_file() for p in pair)]
    if not missing and (root / "meta.json").is_file():
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the {what} cache folder {root}: {err}; pass data.options.cache_dir "
                        "or set SEMISEG_CACHE to a writable folder") from err
    for i in tqdm(missing, desc=f"{what}: generating cases", unit="case", disable=not progress):
        image, label = generate(i)
        write_nifti(paths[i][0], image, affine(), np.float32)
        write_nifti(paths[i][1], label, affine(), np.uint8)
    write_meta(root / "meta.json")


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def ensure_cases(root: Path, prefix: str, n_cases: int, generate: Generate, affine: np.ndarray,
                 meta: dict[str, Any]) -> None:
    """``write_missing_cases`` for the development datasets: cases ``<prefix>_000`` …, a fixed affine."""
    write_missing_cases(root, [_paths(root, case_id(prefix, i)) for i in range(n_cases)], generate,
                        lambda: affine, partial(write_json, data=meta), what=prefix)


def case_refs(root: Path, prefix: str, n_cases: int, spacing: Sequence[float],
              metas: Sequence[dict[str, Any]]) -> list[CaseRef]:
    refs = []
    for i in range(n_cases):
        cid = case_id(prefix, i)
        image_path, label_path = _paths(root, cid)
        load = partial(_load_case, cid, image_path, label_path, tuple(float(s) for s in spacing), metas[i])
        refs.append(CaseRef(cid, True, f"{image_path} + {label_path.name}", load,
                            (str(image_path), str(label_path))))
    return refs


def _load_case(cid: str, image_path: Path, label_path: Path, spacing: tuple[float, ...],
               meta: dict[str, Any]) -> Case:
    try:
        image = read_volume(image_path)
        label = read_volume(label_path, as_label=True).data.astype(np.uint8)
    except DataError as err:
        raise DataError(f"generated file for {cid} in {image_path.parent}: {err}; delete that folder to "
                        "regenerate it") from err
    return Case(cid, image.data[None], label, spacing, image.affine, dict(meta))


def fixed_split(prefix: str, layout: Layout) -> dict[str, list[str]]:
    """``DatasetSpec.fixed_split`` of a layout (``labelling_order`` keeps the budget's cases fixed across seeds)."""
    ids = partial(case_id, prefix)
    return {"train": [ids(i) for i in sorted(layout.labelling_order)], "val": [ids(i) for i in layout.val],
            "test": [ids(i) for i in layout.test], "labelling_order": [ids(i) for i in layout.labelling_order]}


def diagonal_affine(spacing: Sequence[float]) -> np.ndarray:
    return np.diag([*(float(s) for s in spacing), 1.0])


# ----------------------------------------------------------------------------------------------
# physics


def smooth_field(rng: np.random.Generator, shape: Sequence[int], points: Sequence[int], std: float) -> np.ndarray:
    """A smooth random field: N(0, std) values on a coarse grid of ``points``, interpolated over ``shape``
    (bicubic in 2D, trilinear in 3D; torch's interpolation is ~50x faster than scipy's spline zoom here)."""
    coarse = torch.from_numpy(rng.normal(0.0, std, size=tuple(points)).astype(np.float32))[None, None]
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)[0, 0].numpy()


def warp_labels(tissue: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``tissue`` read at ``index + displacement`` (voxels, one field per axis), nearest neighbour, edges repeated."""
    grid = np.indices(tissue.shape, dtype=np.float32)
    return ndimage.map_coordinates(tissue, grid + displacement, order=0, mode="nearest")


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor``-sized blocks along every axis: what a coarser voxel integrates (partial volume)."""
    shape = [s // factor for s in array.shape]
    trimmed = array[tuple(slice(0, s * factor) for s in shape)]
    split = [x for s in shape for x in (s, factor)]
    return trimmed.reshape(split).mean(axis=tuple(range(1, 2 * len(shape), 2)))


def block_majority(label: np.ndarray, factor: int, num_classes: int) -> np.ndarray:
    """Per block, the class covering most of it (ties go to the higher class, so small structures survive)."""
    fractions = np.stack([block_mean((label == k).astype(np.float32), factor) for k in range(num_classes)])
    fractions += np.arange(num_classes, dtype=np.float32).reshape((-1,) + (1,) * label.ndim) * 1e-4
    return fractions.argmax(axis=0).astype(np.uint8)


def lower_resolution(image: np.ndarray, factor: Sequence[float]) -> np.ndarray:
    """Acquire at ``factor`` times coarser voxels (block average) and interpolate back (linear): lost detail."""
    if all(f <= 1.0 for f in factor):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    small = [max(2, round(s / max(f, 1.0))) for s, f in zip(image.shape, factor, strict=True)]
    down = F.adaptive_avg_pool2d(tensor, small) if image.ndim == 2 else F.adaptive_avg_pool3d(tensor, small)
    mode = "bilinear" if image.ndim == 2 else "trilinear"
    return F.interpolate(down, size=image.shape, mode=mode, align_corners=False)[0, 0].numpy()


def rician(rng: np.random.Generator, image: np.ndarray, std: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels: MR's noise floor in dark regions."""
    real = image + rng.normal(0.0, std, image.shape)
    imaginary = rng.normal(0.0, std, image.shape)
    return np.sqrt(real**2 + imaginary**2)


def percentile_normalise(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    lo, hi = np.percentile(image, [low, high])
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)
