"""Built-in demo dataset: virtual subjects warped from the MNI ICBM152 2009a template shipped with nilearn.

Why it exists: the project needs a real-anatomy 3D task that runs on a laptop without any download,
whose labels (grey / white matter) are exact by construction, and where a few labelled subjects are
not enough because the subjects come from scanner "sites" that look different. Everything is seeded
and cached on disk as NIfTI, so the same arguments always give the same files. ``simulate.py`` holds
the generator, ``cache.py`` the folder it is stored in.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from semiseg.data.case import DatasetSpec
from semiseg.data.sources.demo_brain.cache import (
    DATASET_NAME,
    FORMAT_VERSION,
    cache_params,
    ensure_generated,
    subject_ref,
)
from semiseg.data.sources.demo_brain.simulate import (
    CLASS_NAMES,
    SITE_ARCHETYPES,
    TEMPLATE_FILES,
    DemoDifficulty,
    SubjectEffects,
    draw_effects,
    find_template_dir,
)
from semiseg.data.sources.synthetic import cache_folder
from semiseg.errors import ConfigError

__all__ = [
    "CLASS_NAMES", "DATASET_NAME", "FORMAT_VERSION", "TEMPLATE_FILES", "DemoDifficulty", "SubjectEffects",
    "demo_brain_info", "open_demo_brain",
]


def _as_difficulty(value: DemoDifficulty | dict | None) -> DemoDifficulty:
    """Accept the knobs as a mapping too, so a YAML config can set them (data.options.difficulty)."""
    if value is None or isinstance(value, DemoDifficulty):
        return value or DemoDifficulty()
    known = {f.name for f in dataclasses.fields(DemoDifficulty)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"data.options.difficulty: unknown keys {unknown}; valid: {sorted(known)}")
    return DemoDifficulty(**value)


def open_demo_brain(
    *,
    n_subjects: int = 20,
    spacing_mm: float = 2.0,
    seed: int = 0,
    cache_dir: str | None = None,
    difficulty: DemoDifficulty | dict | None = None,
    progress: bool = True,
) -> DatasetSpec:
    """Build (or reuse from the cache) ``n_subjects`` labelled virtual brains and list them."""
    difficulty = _as_difficulty(difficulty)
    _check_args(n_subjects, spacing_mm)
    template_folder = find_template_dir()
    params = cache_params(n_subjects, spacing_mm, seed, difficulty)
    root = cache_folder(DATASET_NAME, params, cache_dir)
    effects = [draw_effects(seed, i, difficulty) for i in range(n_subjects)]
    ensure_generated(root, params, difficulty, effects, template_folder, progress)
    refs = [subject_ref(root, i, spacing_mm, effects[i].site) for i in range(n_subjects)]
    return DatasetSpec(name=DATASET_NAME, dim=3, channels=1, label_mode="multiclass",
                       class_names=list(CLASS_NAMES), cases=refs, root=str(root))


def demo_brain_info() -> str:
    """A one-paragraph description of the demo dataset for the README and the CLI."""
    sites = ", ".join(s.name for s in SITE_ARCHETYPES)
    return (
        "demo_brain: virtual T1-weighted brains built from the MNI ICBM152 2009a symmetric template "
        "(1 mm, skull-stripped) and its grey/white-matter probability maps, which ship inside the nilearn "
        "package, so nothing is downloaded. Each subject is the template under a random smooth "
        "deformation (a small affine - a few degrees, about 8 % scaling, a few mm shift - plus a "
        "coarse-grid displacement field of a few mm), resampled to the requested spacing (2 mm by "
        "default, about 81x99x86 voxels). Labels are background (incl. CSF), grey matter and white "
        "matter, taken from the argmax of the warped probability maps. Subject i is scanned at site "
        f"i % n_sites; the default four sites ({sites}) differ in a monotone contrast remap that keeps "
        "tissue order, gamma, bias-field strength, blur and noise, and subjects jitter around their "
        "site; intensities are then normalised to the 1st-99th percentile. Every knob is in "
        "DemoDifficulty; results are seeded and cached as NIfTI under $SEMISEG_CACHE/demo_brain or "
        "~/.cache/semiseg/demo_brain."
    )


def _check_args(n_subjects: int, spacing_mm: float) -> None:
    if not isinstance(n_subjects, int | np.integer) or n_subjects < 1:
        raise ConfigError(f"demo brain: n_subjects must be a positive integer, got {n_subjects!r}")
    if not 1.0 <= spacing_mm <= 8.0:
        raise ConfigError(
            f"demo brain: spacing_mm must be between 1 and 8 (the template is 1 mm; coarser loses the "
            f"cortex), got {spacing_mm!r}"
        )
