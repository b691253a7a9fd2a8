"""The demo brain's generator: the MNI template warped per subject and scanned at a simulated site.

Pipeline per subject (all geometry in world millimetres, one interpolation from the 1 mm template):

1. A random smooth deformation (small affine + coarse-grid displacement field) pulls the T1 and the
   GM/WM probability maps onto a fixed grid at ``spacing_mm``; labels are the argmax of the warped
   (background, GM, WM) probabilities, so they stay consistent with the warped image.
2. Acquisition effects of the subject's site (jittered per subject): a monotone contrast remap that
   keeps the tissue order, a gamma curve, a multiplicative bias field, blur, Rician noise, then a
   per-subject percentile normalisation.

Every draw comes from ``numpy`` generators seeded by (seed, stream, subject), so a subject's bytes do
not depend on how many subjects are generated or in which order.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from semiseg.data.io import read_volume
from semiseg.errors import ConfigError, DataError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CLASS_NAMES = ["background", "grey matter", "white matter"]  # label values 0, 1, 2 of the argmax
_INSTALL_HINT = 'the demo brain needs nilearn, which ships the MNI template: pip install "semiseg[demo]"'
_MARGIN_MM = 8.0  # room around the brain so that enlarged / shifted subjects stay inside the grid
_FOREGROUND = 0.05  # fraction of the T1 maximum that defines the brain bounding box
_PURE_TISSUE = 0.6  # probability above which a template voxel counts as pure GM / WM for levels
_BIAS_CONTROL_POINTS = 3  # per axis: a bias field varies over half the head, not voxel to voxel
_NORMALISE_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class DemoDifficulty:
    """Every knob of the generator; the cache key hashes all of them, so changing one regenerates.

    Site effects are given as ranges; each site sits at a fixed position inside every range (see
    ``SITE_ARCHETYPES``) and each subject jitters around its site's position.
    """

    n_sites: int = 4  # subject i belongs to site i % n_sites
    rotation_deg: float = 5.0  # max absolute rotation about each axis
    scaling: float = 0.08  # per-axis scale factor in [1 - scaling, 1 + scaling]
    translation_mm: float = 4.0  # max absolute shift along each axis
    warp_mm: float = 3.0  # std of the non-linear displacement at each control point
    warp_spacing_mm: float = 30.0  # control-point spacing of the displacement field (larger = smoother)
    max_gamma: float = 2.5  # site gamma lies in [1 / max_gamma, max_gamma]
    min_contrast: float = 0.3  # GM-WM intensity gap is scaled by a factor in [min_contrast, 1]
    max_bias: float = 0.5  # std of the log bias field (0.5 ~ x0.6 .. x1.6 across the head)
    max_blur_mm: float = 1.5  # gaussian sigma of the blurriest site
    min_noise: float = 0.01  # Rician noise std as a fraction of the white-matter intensity ...
    max_noise: float = 0.1  # ... from the cleanest to the noisiest site
    jitter: float = 0.1  # per-subject std around the site's position, as a fraction of each range

    def __post_init__(self) -> None:
        _check(self.n_sites >= 1, "n_sites must be at least 1")
        for name in ("rotation_deg", "scaling", "translation_mm", "warp_mm", "max_bias", "max_blur_mm",
                     "min_noise", "jitter"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0")
        _check(self.scaling < 0.5, "scaling must be < 0.5")
        _check(self.warp_spacing_mm > 0, "warp_spacing_mm must be > 0")
        _check(self.max_gamma >= 1, "max_gamma must be >= 1 (1 disables the gamma change)")
        _check(0 < self.min_contrast <= 1, "min_contrast must be in (0, 1]: 0 would erase GM/WM contrast")
        _check(self.max_noise >= self.min_noise, "max_noise must be >= min_noise")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"DemoDifficulty: {message}")


@dataclass(frozen=True)
class SiteLevels:
    """Where a site sits inside each knob's range: gamma in [-1, 1] (log scale), the others in [0, 1]."""

    name: str
    gamma: float
    contrast_loss: float
    bias: float
    blur: float
    noise: float


# Deliberately different sites, so that one or two labelled subjects cover one or two looks only.
SITE_ARCHETYPES = (
    SiteLevels("near-template", gamma=0.0, contrast_loss=0.0, bias=0.1, blur=0.0, noise=0.1),
    SiteLevels("low-contrast noisy", gamma=0.4, contrast_loss=1.0, bias=0.2, blur=0.2, noise=1.0),
    SiteLevels("bias-field blurry", gamma=0.2, contrast_loss=0.3, bias=1.0, blur=1.0, noise=0.3),
    SiteLevels("gamma-compressed", gamma=-1.0, contrast_loss=0.6, bias=0.3, blur=0.4, noise=0.5),
)


@dataclass(frozen=True)
class SubjectEffects:
    """The drawn parameters of one subject, recorded in ``meta.json``."""

    site: int
    site_name: str
    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    gamma: float
    contrast: float
    bias: float
    blur_mm: float
    noise: float


@dataclass(frozen=True)
class Template:
    """The template, pre-smoothed for one output spacing, and the output grid."""

    t1: np.ndarray  # float32 in [0, 1], 1 mm
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray  # template voxel -> world
    grid_affine: np.ndarray  # output voxel -> world
    grid_shape: tuple[int, int, int]
    spacing_mm: float
    gm_level: float  # median T1 of pure grey matter, in [0, 1]
    wm_level: float


def find_template_dir() -> Path:
    """Folder of the template files inside the installed nilearn package."""
    try:
        folder = importlib.resources.files("nilearn") / "datasets" / "data"
    except ModuleNotFoundError as err:
        raise DataError(f"nilearn is not installed; {_INSTALL_HINT}") from err
    for name in TEMPLATE_FILES.values():
        if not (folder / name).is_file():
            raise DataError(f"template file {folder / name} is missing from the installed nilearn; "
                            f"reinstall it: {_INSTALL_HINT}")
    return Path(str(folder))


# ----------------------------------------------------------------------------------- random draws


def site_levels(seed: int, site: int) -> SiteLevels:
    """The designed archetypes first; any further sites get seeded random positions."""
    if site < len(SITE_ARCHETYPES):
        return SITE_ARCHETYPES[site]
    rng = np.random.default_rng([seed, 1, site])
    gamma, *rest = rng.uniform([-1, 0, 0, 0, 0], 1)
    return SiteLevels(f"random site {site}", float(gamma), *map(float, rest))


def draw_effects(seed: int, i: int, d: DemoDifficulty) -> SubjectEffects:
    """Cheap parameter draw, separate from synthesis so meta.json never needs the images."""
    rng = np.random.default_rng([seed, 0, i])  # per subject: subject i is the same for any n_subjects
    site = i % d.n_sites
    levels = site_levels(seed, site)

    def jittered(position: float, low: float = 0.0) -> float:
        return float(np.clip(position + d.jitter * rng.standard_normal(), low, 1.0))

    return SubjectEffects(
        site=site,
        site_name=levels.name,
        rotation_deg=_triple(rng.uniform(-d.rotation_deg, d.rotation_deg, 3)),
        scale=_triple(1 + rng.uniform(-d.scaling, d.scaling, 3)),
        translation_mm=_triple(rng.uniform(-d.translation_mm, d.translation_mm, 3)),
        gamma=float(d.max_gamma ** jittered(levels.gamma, low=-1.0)),
        contrast=1 - jittered(levels.contrast_loss) * (1 - d.min_contrast),
        bias=jittered(levels.bias) * d.max_bias,
        blur_mm=jittered(levels.blur) * d.max_blur_mm,
        noise=d.min_noise + jittered(levels.noise) * (d.max_noise - d.min_noise),
    )


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


# ------------------------------------------------------------------------------------- template


def load_template(template_dir: Path, spacing_mm: float) -> Template:
    """Template at float precision, smoothed so that downsampling to ``spacing_mm`` does not alias."""
    stored, affine = _read_template(template_dir)
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = np.sqrt(np.maximum((spacing_mm / voxel_mm) ** 2 - 1, 0)) / 2.355  # FWHM of one new voxel
    crop, affine = _support_crop(stored, affine, pad=int(4 * sigma.max()) + 2)
    t1 = stored["t1"][crop].astype(np.float32) / max(float(stored["t1"].max()), 1e-6)
    maps = {k: _as_probability(stored[k][crop]) for k in ("gm", "wm")}
    grid_affine, grid_shape = _output_grid(affine, voxel_mm, t1, spacing_mm)
    smooth = {k: ndimage.gaussian_filter(v, sigma) for k, v in (("t1", t1), *maps.items())}
    return Template(
        t1=smooth["t1"], gm=smooth["gm"], wm=smooth["wm"], affine=affine, grid_affine=grid_affine,
        grid_shape=grid_shape, spacing_mm=spacing_mm,
        gm_level=float(np.median(t1[maps["gm"] > _PURE_TISSUE])),
        wm_level=float(np.median(t1[maps["wm"] > _PURE_TISSUE])),
    )


def _support_crop(stored: dict[str, np.ndarray], affine: np.ndarray,
                  pad: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """Slices around the non-zero voxels (plus the smoothing reach) and the matching affine.

    Outside them every map is exactly zero, so the result is unchanged; it only halves the work.
    """
    support = (stored["t1"] > 0) | (stored["gm"] > 0) | (stored["wm"] > 0)
    low, high = _bounds(support)
    low, high = np.maximum(low - pad, 0), np.minimum(high + pad + 1, support.shape)
    shifted = affine.copy()
    shifted[:3, 3] = (affine @ np.array([*low, 1.0]))[:3]
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True)), shifted


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last True index along each axis (inclusive); much faster than argwhere on 9 M voxels."""
    low, high = [], []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        low.append(hits[0])
        high.append(hits[-1])
    return np.array(low), np.array(high)


@lru_cache(maxsize=1)
def _read_template(template_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The files as stored (uint8, ~26 MB in all), kept so repeated calls skip the gunzip."""
    volumes = {}
    for key, name in TEMPLATE_FILES.items():
        try:
            volume = read_volume(template_dir / name, as_label=True)  # the stored dtype, not float
        except DataError as err:
            raise DataError(f"{err}; reinstall nilearn") from err
        volumes[key] = volume.data
        volumes[key].setflags(write=False)
    return volumes, volume.affine


def _as_probability(data: np.ndarray) -> np.ndarray:
    """Probability maps ship as 0..255 integers; accept 0..1 floats too."""
    scale = 255.0 if data.max() > 1.5 else 1.0
    return data.astype(np.float32) / np.float32(scale)


def _output_grid(affine: np.ndarray, voxel_mm: np.ndarray, t1: np.ndarray,
                 spacing_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Brain bounding box plus margin at the new spacing; the same for every subject so shapes agree."""
    low, high = _bounds(t1 > _FOREGROUND * t1.max())
    step = spacing_mm / voxel_mm  # output voxel size in template voxels
    extent = high - low + 2 * _MARGIN_MM / voxel_mm
    shape = np.ceil(extent / step).astype(int) + 1
    origin = (low + high) / 2 - step * (shape - 1) / 2
    scale = np.diag([*step, 1.0])
    scale[:3, 3] = origin
    return affine @ scale, (int(shape[0]), int(shape[1]), int(shape[2]))


# ------------------------------------------------------------------------------------ synthesis


def synthesise(template: Template, d: DemoDifficulty, seed: int, i: int,
                effects: SubjectEffects) -> tuple[np.ndarray, np.ndarray]:
    """Warp the template for subject i and apply its site's acquisition; returns (image, label)."""
    rng = np.random.default_rng([seed, 2, i])  # fields and noise: a stream apart from draw_effects
    displacement = _displacement(rng, template, d)
    coords = _sampling_coords(template, effects, displacement)
    del displacement
    t1, gm, wm = (ndimage.map_coordinates(v, coords, order=1, mode="constant", cval=0.0, output=np.float32)
                  for v in (template.t1, template.gm, template.wm))
    label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
    return _acquire(rng, t1, template, effects), label


def _displacement(rng: np.random.Generator, template: Template, d: DemoDifficulty) -> np.ndarray:
    """Smooth non-linear displacement (mm, world axes): random vectors on a coarse grid, spline-upsampled."""
    extent_mm = (np.array(template.grid_shape) - 1) * template.spacing_mm
    n_ctrl = tuple(max(2, round(e / d.warp_spacing_mm) + 1) for e in extent_mm)
    return d.warp_mm * _smooth_field(rng, template.grid_shape, n_ctrl, channels=3)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: tuple[int, ...],
                  channels: int) -> np.ndarray:
    """Unit-variance control values, cubic-spline interpolated so the field has no sharp edges.

    The 3D spline is a tensor product of 1D ones, so three small weight matrices replace a 3D zoom
    (same result, about 50 times faster).
    """
    coarse = rng.standard_normal((channels, *n_ctrl)).astype(np.float32)
    wx, wy, wz = (_spline_weights(n, c) for n, c in zip(shape, n_ctrl, strict=True))
    return np.einsum("xa,yb,zc,nabc->nxyz", wx, wy, wz, coarse, optimize=True).astype(np.float32)


def _spline_weights(n_out: int, n_ctrl: int) -> np.ndarray:
    """(n_out, n_ctrl) cubic-spline interpolation weights, corner control points on the corner voxels."""
    return ndimage.zoom(np.eye(n_ctrl, dtype=np.float32), (n_out / n_ctrl, 1), order=3, mode="nearest")


def _sampling_coords(template: Template, effects: SubjectEffects,
                     displacement: np.ndarray) -> np.ndarray:
    """Template voxel coordinates to read for each output voxel (pull-back through the deformation)."""
    shape = template.grid_shape
    centre = (template.grid_affine @ np.array([*((np.array(shape) - 1) / 2), 1.0]))[:3]
    linear = _rotation(effects.rotation_deg) @ np.diag(effects.scale)
    deform = np.eye(4)
    deform[:3, :3] = linear
    deform[:3, 3] = centre - linear @ centre + np.array(effects.translation_mm)
    to_template = np.linalg.inv(template.affine)
    total = to_template @ deform @ template.grid_affine
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    coords = np.empty((3, *shape), dtype=np.float32)
    for c in range(3):
        coords[c] = sum(total[c, a] * axes[a] for a in range(3)) + total[c, 3]
        coords[c] += np.tensordot(to_template[c, :3], displacement, axes=1)
    return coords


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _acquire(rng: np.random.Generator, t1: np.ndarray, template: Template,
             effects: SubjectEffects) -> np.ndarray:
    """Site look: contrast remap, gamma, bias field, blur, Rician noise, robust normalisation."""
    x = _contrast_remap(np.clip(t1, 0.0, 1.0), template, effects.contrast) ** effects.gamma
    field = _smooth_field(rng, template.grid_shape, (_BIAS_CONTROL_POINTS,) * 3, channels=1)[0]
    x *= np.exp(effects.bias * field / max(float(field.std()), 1e-6))
    if effects.blur_mm > 0:
        x = ndimage.gaussian_filter(x, effects.blur_mm / template.spacing_mm)
    sigma = effects.noise * _remapped_wm_level(template, effects)
    real = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.hypot(real, sigma * rng.standard_normal(x.shape, dtype=np.float32))
    low, high = np.percentile(x, _NORMALISE_PERCENTILES)
    return ((x - low) / max(float(high - low), 1e-6)).astype(np.float32)


def _contrast_knots(template: Template, contrast: float) -> tuple[list[float], list[float]]:
    """Piecewise-linear, strictly increasing remap that scales the GM-WM gap about its midpoint."""
    mid = (template.gm_level + template.wm_level) / 2
    half_gap = (template.wm_level - template.gm_level) / 2 * contrast
    return [0.0, template.gm_level, template.wm_level, 1.0], [0.0, mid - half_gap, mid + half_gap, 1.0]


def _contrast_remap(x: np.ndarray, template: Template, contrast: float) -> np.ndarray:
    xp, fp = _contrast_knots(template, contrast)
    return np.interp(x, xp, fp).astype(np.float32)


def _remapped_wm_level(template: Template, effects: SubjectEffects) -> float:
    """White-matter intensity after remap and gamma: the reference the noise level is relative to."""
    return _contrast_knots(template, effects.contrast)[1][2] ** effects.gamma
