"""Development dataset ``heart_sites``: cardiac short-axis MR stacks from four simulated scanner sites, trained 2D.

Why it exists: on the maintainers' unseen data (several scanners, one labelled subject) the demo's best methods
failed; their pseudo labels on other scanners were no better than the network's own answer. This source makes that
situation reproducible: the labelled subject(s) come from ONE site, unlabelled, validation and test subjects from
all sites, and the sites differ in tissue contrast, gamma, noise, bias field and in-plane resolution.

Anatomy (ACDC-like labels: 1 RV cavity, 2 LV myocardium, 3 LV cavity) is drawn per subject at 1 mm in-plane and
half the slice thickness, then averaged onto the stored 2 × 2 × 8 mm grid (96 × 96 × 8 voxels; partial volume at
every border): an LV whose radius shrinks from base to apex with a random elliptic, harmonic outline and wall
thickness, papillary muscles inside the cavity (labelled cavity, as ACDC does), an RV crescent of random size,
angle and extent, pericardial fat, and distractors around the heart (lungs, chest wall, subcutaneous fat, a
blood-bright descending aorta, the liver at apical slices), all under a smooth random in-plane deformation.

Default split (fixed, the same for every run seed; ``DatasetSpec.fixed_split``): 24 subjects, subject i scanned at
site i % 4; 8 test subjects (2 per site), 4 validation subjects (1 per site), 12 training subjects whose labelling
order starts with the labelled site's (site 0) three, then the other sites in turn: ``split.labelled=1`` labels
one site-0 subject and leaves 11 unlabelled from all sites; ``split.labelled=all`` labels all 12.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

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
    lower_resolution,
    percentile_normalise,
    rician,
    smooth_field,
    warp_labels,
    whole,
)
from semiseg.errors import ConfigError

NAME = "heart_sites"
FORMAT_VERSION = 1  # bump whenever the generator's output changes
CLASS_NAMES = ["background", "right ventricle", "myocardium", "left ventricle"]
SHAPE = (96, 96, 8)
SPACING = (2.0, 2.0, 8.0)
_FINE = 2  # anatomy is drawn at this many times the stored resolution, then averaged (partial volume)

# tissue codes of the fine anatomy map
AIR, FAT, MUSCLE, LUNG, BLOOD, MYO, RV_BLOOD, AORTA, LIVER, PAPILLARY, RV_WALL, SOFT = range(12)
_LABEL_OF_TISSUE = np.zeros(12, dtype=np.uint8)
_LABEL_OF_TISSUE[[RV_BLOOD]] = 1
_LABEL_OF_TISSUE[[MYO]] = 2
_LABEL_OF_TISSUE[[BLOOD, PAPILLARY]] = 3


@dataclass(frozen=True)
class Site:
    """One scanner's acquisition: tissue signal levels (0..1), then gamma, resolution loss, bias and noise."""

    name: str
    fat: float
    muscle: float
    lung: float
    blood: float
    myocardium: float
    liver: float
    soft: float
    gamma: float  # image ** gamma after the levels
    resolution: float  # in-plane voxels acquired this many times coarser, interpolated back
    bias: float  # std of the log bias field
    noise: float  # Rician noise std (levels are 0..1)


# Site 0 is the labelled site: a clean 1.5 T bSSFP look (bright blood, dark myocardium). The others move every
# acquisition property at once, as a different vendor and protocol would: 3 T with strong shading, a spoiled
# gradient echo with little blood-myocardium contrast, and a fast low-resolution noisy protocol.
SITES = (
    Site("1.5T bSSFP", fat=0.75, muscle=0.30, lung=0.05, blood=0.95, myocardium=0.28, liver=0.38, soft=0.45,
         gamma=1.0, resolution=1.0, bias=0.10, noise=0.025),
    Site("3T bSSFP, shaded", fat=0.85, muscle=0.36, lung=0.08, blood=0.80, myocardium=0.34, liver=0.46,
         soft=0.52, gamma=0.75, resolution=1.4, bias=0.45, noise=0.04),
    Site("spoiled GRE, low contrast", fat=0.90, muscle=0.42, lung=0.04, blood=0.62, myocardium=0.38, liver=0.52,
         soft=0.55, gamma=1.35, resolution=1.7, bias=0.25, noise=0.06),
    Site("fast low-res, noisy", fat=0.70, muscle=0.26, lung=0.10, blood=0.88, myocardium=0.24, liver=0.30,
         soft=0.40, gamma=1.6, resolution=2.2, bias=0.30, noise=0.10),
)


@dataclass(frozen=True)
class HeartParams:
    """Every generator input (the cache key hashes them all)."""

    seed: int = 0
    n_subjects: int = 24
    n_sites: int = 4
    labelled_site: int = 0
    test_per_site: int = 2
    val_per_site: int = 1
    shift: float = 1.0  # how far the other sites move from the labelled site's look (0: all alike)


def site_of(i: int, n_sites: int) -> int:
    return i % n_sites


def _site(p: HeartParams, k: int) -> Site:
    """Site ``k``'s acquisition, moved ``shift`` of the way from the labelled site's towards its archetype."""
    base, target = asdict(SITES[p.labelled_site % len(SITES)]), asdict(SITES[k % len(SITES)])
    values = {key: base[key] + p.shift * (target[key] - base[key]) for key in base if key != "name"}
    return Site(name=target["name"], **values)


def layout(p: HeartParams) -> Layout:
    """Test and validation subjects from every site; the labelled site's training subjects are labelled first."""
    per_site = [[i for i in range(p.n_subjects) if site_of(i, p.n_sites) == k] for k in range(p.n_sites)]
    first = p.test_per_site + p.val_per_site
    test = [i for ids in per_site for i in ids[: p.test_per_site]]
    val = [i for ids in per_site for i in ids[p.test_per_site : first]]
    train = [ids[first:] for ids in per_site]
    others = [k for k in range(p.n_sites) if k != p.labelled_site]
    rounds = max(len(ids) for ids in train)
    order = train[p.labelled_site] + [train[k][r] for r in range(rounds) for k in others if r < len(train[k])]
    return Layout(tuple(sorted(test)), tuple(sorted(val)), tuple(order))


# ----------------------------------------------------------------------------------------------
# anatomy


def _ellipse(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radii: tuple[float, float],
             angle: float = 0.0) -> np.ndarray:
    dx, dy = x - centre[0], y - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, dy * c - dx * s
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


@dataclass(frozen=True)
class _Heart:
    """One subject's anatomy parameters (millimetres, relative to the image centre)."""

    centre: tuple[float, float]
    apex_drift: tuple[float, float]
    radius: float
    wall: float
    ellipticity: float
    orientation: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for orders 2, 3, 4
    wall_phase: float
    rv_angle: float
    rv_size: float
    rv_extent: float
    papillary: tuple[tuple[float, float], ...]  # (angle, radius)
    fat_arc: tuple[float, float]  # pericardial fat: centre angle, half width
    body: tuple[float, float, float]  # radii x, y and posterior offset
    fat_thickness: float
    lungs: tuple[float, float, float, float]  # x offset, y offset, radius x, radius y
    aorta: tuple[float, float, float]
    liver_from: float
    warp_mm: float


def _draw_heart(rng: np.random.Generator) -> _Heart:
    u = rng.uniform
    return _Heart(
        centre=(u(-10, 10), u(-10, 10)), apex_drift=(u(-8, 8), u(-8, 8)), radius=u(18, 27), wall=u(6.5, 11),
        ellipticity=u(0.8, 1.2), orientation=u(0, np.pi),
        harmonics=tuple((float(rng.normal(0, 0.05)), u(0, 2 * np.pi)) for _ in range(3)),
        wall_phase=u(0, 2 * np.pi), rv_angle=np.pi + u(-0.45, 0.45), rv_size=u(0.85, 1.4), rv_extent=u(0.6, 0.95),
        papillary=tuple((u(0, 2 * np.pi), u(2.5, 5)) for _ in range(2)), fat_arc=(u(0, 2 * np.pi), u(0.4, 1.2)),
        body=(u(100, 125), u(78, 95), u(5, 15)), fat_thickness=u(5, 14),
        lungs=(u(52, 64), u(-12, 4), u(26, 38), u(45, 60)), aorta=(u(18, 35), u(40, 55), u(8.5, 12)),
        liver_from=u(0.4, 0.75), warp_mm=u(2.5, 4.5),
    )


def _slice_tissue(h: _Heart, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    """The tissue map of the fine slice at relative depth ``s`` (0 base .. 1 apex)."""
    t = np.full(x.shape, AIR, dtype=np.uint8)
    bx, by, boff = h.body
    t[_ellipse(x, y, (0, boff), (bx, by))] = FAT
    t[_ellipse(x, y, (0, boff), (bx - h.fat_thickness, by - h.fat_thickness))] = MUSCLE
    inner = _ellipse(x, y, (0, boff), (bx - h.fat_thickness - 10, by - h.fat_thickness - 10))
    t[inner] = SOFT
    lx, ly, lrx, lry = h.lungs
    for side in (-1, 1):
        t[inner & _ellipse(x, y, (side * lx, ly), (lrx, lry))] = LUNG
    if s > h.liver_from:
        grow = (s - h.liver_from) / (1 - h.liver_from)
        t[inner & _ellipse(x, y, (-45, -45), (30 + 30 * grow, 22 + 20 * grow), 0.5)] = LIVER
    t[_ellipse(x, y, (h.aorta[0], h.aorta[1]), (h.aorta[2], h.aorta[2]))] = AORTA
    cx, cy = h.centre[0] + s * h.apex_drift[0], h.centre[1] + s * h.apex_drift[1]
    dx, dy = x - cx, y - cy
    co, so = np.cos(h.orientation), np.sin(h.orientation)
    u, v = dx * co + dy * so, (dy * co - dx * so) * h.ellipticity
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    shape = 1 + sum(a * np.cos((k + 2) * theta + ph) for k, (a, ph) in enumerate(h.harmonics))
    endo = h.radius * (1 - 0.62 * s**1.6) * shape
    epi = endo + h.wall * (1 + 0.15 * np.cos(theta + h.wall_phase))
    fat_angle = np.angle(np.exp(1j * (np.arctan2(dy, dx) - h.fat_arc[0])))
    t[(rho < epi + 4) & (np.abs(fat_angle) < h.fat_arc[1])] = FAT
    mean_epi = h.radius * (1 - 0.62 * s**1.6) + h.wall
    if s < h.rv_extent:
        shrink = 1 - 0.5 * s / h.rv_extent
        d = (np.cos(h.rv_angle), np.sin(h.rv_angle))
        rv_centre = (cx + 0.8 * mean_epi * d[0], cy + 0.8 * mean_epi * d[1])
        radii = (0.75 * mean_epi * h.rv_size * shrink, 1.3 * mean_epi * h.rv_size * shrink)
        outer = _ellipse(x, y, rv_centre, (radii[0] + 3, radii[1] + 3), h.rv_angle)
        t[outer & (rho >= epi)] = RV_WALL
        t[_ellipse(x, y, rv_centre, radii, h.rv_angle) & (rho >= epi + 3)] = RV_BLOOD
    t[rho < epi] = MYO
    t[rho < endo] = BLOOD
    for angle, radius in h.papillary:
        at = 0.72 * h.radius * (1 - 0.62 * s**1.6)
        px, py = cx + at * np.cos(angle), cy + at * np.sin(angle)
        if s < 0.8:
            t[_ellipse(x, y, (px, py), (radius, radius)) & (rho < endo)] = PAPILLARY
    return t


def _fine_tissue(h: _Heart, rng: np.random.Generator) -> np.ndarray:
    fine = (SHAPE[0] * _FINE, SHAPE[1] * _FINE, SHAPE[2] * _FINE)
    step = SPACING[0] / _FINE
    axis = (np.arange(fine[0]) - (fine[0] - 1) / 2) * step
    x, y = np.meshgrid(axis, axis, indexing="ij")
    tissue = np.stack([_slice_tissue(h, x, y, (z + 0.5) / fine[2]) for z in range(fine[2])], axis=-1)
    displacement = np.stack([smooth_field(rng, fine, (6, 6, 3), h.warp_mm / step) for _ in range(2)])
    return warp_labels(tissue, np.concatenate([displacement, np.zeros((1, *fine), np.float32)]))


# ----------------------------------------------------------------------------------------------
# acquisition


def _levels(site: Site, rng: np.random.Generator) -> np.ndarray:
    """Signal of each tissue code at this site, jittered per subject (coil, patient, timing)."""
    levels = np.zeros(12, dtype=np.float32)
    levels[[FAT, MUSCLE, LUNG, LIVER, SOFT]] = site.fat, site.muscle, site.lung, site.liver, site.soft
    levels[[BLOOD, RV_BLOOD, AORTA]] = site.blood
    levels[[MYO, PAPILLARY, RV_WALL]] = site.myocardium
    jitter = rng.normal(0.0, 0.03, 12).astype(np.float32)
    jitter[AIR] = 0.0
    return np.clip(levels + jitter, 0.0, 1.0)


def _acquire(fine_image: np.ndarray, site: Site, rng: np.random.Generator) -> np.ndarray:
    image = block_mean(fine_image, _FINE) ** (site.gamma * float(np.exp(rng.normal(0, 0.08))))
    factor = site.resolution * float(np.exp(rng.normal(0, 0.05)))
    image = lower_resolution(image, (factor, factor, 1.0))
    bias = np.exp(smooth_field(rng, image.shape, (3, 3, 2), site.bias * float(rng.uniform(0.8, 1.2))))
    image = rician(rng, image * bias, site.noise * float(rng.uniform(0.85, 1.15)))
    return percentile_normalise(image)


def generate(p: HeartParams, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Subject ``i``'s image (float32, ~0..1) and label (uint8), from ``(seed, i)`` alone."""
    rng = np.random.default_rng([p.seed, 1, i])
    heart = _draw_heart(rng)
    tissue = _fine_tissue(heart, rng)
    site = _site(p, site_of(i, p.n_sites))
    image = _acquire(_levels(site, rng)[tissue], site, rng)
    label = block_majority(_LABEL_OF_TISSUE[tissue], _FINE, len(CLASS_NAMES))
    return image, label


def _check(p: HeartParams) -> None:
    if not 1 <= p.n_sites <= len(SITES):
        raise ConfigError(f"heart_sites: n_sites must be 1..{len(SITES)}, got {p.n_sites}")
    if not 0 <= p.labelled_site < p.n_sites:
        raise ConfigError(f"heart_sites: labelled_site must be 0..{p.n_sites - 1}, got {p.labelled_site}")
    if p.test_per_site < 1 or p.val_per_site < 0:
        raise ConfigError("heart_sites: test_per_site must be >= 1 and val_per_site >= 0")
    needed = p.n_sites * (p.test_per_site + p.val_per_site + 1)
    if p.n_subjects < needed:
        raise ConfigError(f"heart_sites: n_subjects={p.n_subjects} is too few; {p.n_sites} sites with "
                          f"{p.test_per_site} test, {p.val_per_site} validation and one training subject each "
                          f"need at least {needed}")
    if p.shift < 0:
        raise ConfigError(f"heart_sites: shift must be >= 0, got {p.shift}")


def open_heart_sites(*, n_subjects: int = 24, n_sites: int = 4, labelled_site: int = 0, test_per_site: int = 2,
                     val_per_site: int = 1, shift: float = 1.0, seed: int = 0,
                     cache_dir: str | None = None) -> DatasetSpec:
    """Build (or reuse from the cache) the multi-site cardiac dataset and list it with its fixed split."""
    counts = {"seed": seed, "n_subjects": n_subjects, "n_sites": n_sites, "labelled_site": labelled_site,
              "test_per_site": test_per_site, "val_per_site": val_per_site}
    if isinstance(shift, bool) or not isinstance(shift, int | float):
        raise ConfigError(f"heart_sites: data.options.shift must be a number, got {shift!r}")
    p = HeartParams(**{k: whole(NAME, k, v) for k, v in counts.items()}, shift=float(shift))
    _check(p)
    params = {"format_version": FORMAT_VERSION, **asdict(p)}
    root = cache_folder(NAME, params, cache_dir)
    sites = [site_of(i, p.n_sites) for i in range(p.n_subjects)]
    meta = {**params, "name": NAME, "class_names": CLASS_NAMES, "shape": list(SHAPE), "spacing": list(SPACING),
            "sites": [asdict(_site(p, k)) for k in range(p.n_sites)], "subject_sites": sites,
            "layout": asdict(layout(p))}
    ensure_cases(root, "heart", p.n_subjects, partial(generate, p), diagonal_affine(SPACING), meta)
    metas = [{"site": k, "site_name": SITES[k].name} for k in sites]
    return DatasetSpec(name=NAME, dim=3, channels=1, label_mode="multiclass", class_names=list(CLASS_NAMES),
                       cases=case_refs(root, "heart", p.n_subjects, SPACING, metas),
                       fixed_split=fixed_split("heart", layout(p)), root=str(root))
