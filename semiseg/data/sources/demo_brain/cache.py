"""The demo brain's disk cache: one folder per generator input, files written atomically as NIfTI.

The folder name hashes every input of the generator (``FORMAT_VERSION``, counts, spacing, seed and each
``DemoDifficulty`` knob), so a changed knob never reuses stale files and unchanged inputs always find
the same folder; files only ever appear complete, so the ones present are trusted. The folder and the writing
are the generated development datasets' (``synthetic.cache_folder``, ``synthetic.write_missing_cases``).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import Case, CaseRef
from semiseg.data.io import read_volume
from semiseg.data.sources.demo_brain.simulate import (
    CLASS_NAMES,
    DemoDifficulty,
    SubjectEffects,
    Template,
    load_template,
    site_levels,
    synthesise,
)
from semiseg.data.sources.synthetic import write_json, write_missing_cases
from semiseg.errors import DataError

FORMAT_VERSION = 1  # bump whenever the generator's output changes, so old caches are not trusted
DATASET_NAME = "demo_brain"


def cache_params(n_subjects: int, spacing_mm: float, seed: int, difficulty: DemoDifficulty) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "n_subjects": int(n_subjects), "spacing_mm": float(spacing_mm),
            "seed": int(seed), "difficulty": asdict(difficulty)}


def _paths(root: Path, i: int) -> tuple[Path, Path]:
    stem = f"subject_{i:03d}"
    return root / f"{stem}_image.nii.gz", root / f"{stem}_label.nii.gz"


def ensure_generated(root: Path, params: dict[str, Any], difficulty: DemoDifficulty,
                     effects: list[SubjectEffects], template_dir: Path, progress: bool) -> None:
    """Write whatever subject is missing (``synthetic.write_missing_cases``); the template is read only then."""
    template = cache(partial(load_template, template_dir, params["spacing_mm"]))
    write_missing_cases(root, [_paths(root, i) for i in range(len(effects))],
                        lambda i: synthesise(template(), difficulty, params["seed"], i, effects[i]),
                        lambda: template().grid_affine, lambda path: _write_meta(path, params, effects, template()),
                        what=DATASET_NAME, progress=progress)


def _write_meta(path: Path, params: dict[str, Any], effects: list[SubjectEffects],
                template: Template) -> None:
    n_sites = params["difficulty"]["n_sites"]
    meta = {
        **params,
        "name": DATASET_NAME,
        "template": "MNI ICBM152 2009a nonlinear symmetric (nilearn package data)",
        "class_names": CLASS_NAMES,
        "shape": list(template.grid_shape),
        "affine": template.grid_affine.tolist(),
        "sites": [asdict(site_levels(params["seed"], k)) | {"index": k} for k in range(n_sites)],
        "subjects": [{"case_id": f"subject_{i:03d}", **asdict(e)} for i, e in enumerate(effects)],
    }
    write_json(path, meta)


def subject_ref(root: Path, i: int, spacing_mm: float, site: int) -> CaseRef:
    image_path, label_path = _paths(root, i)
    load = partial(_load_subject, f"subject_{i:03d}", image_path, label_path, float(spacing_mm), site)
    return CaseRef(case_id=f"subject_{i:03d}", has_label=True, origin=f"{image_path} + {label_path.name}",
                   load=load, files=(str(image_path), str(label_path)))


def _load_subject(case_id: str, image_path: Path, label_path: Path, spacing_mm: float, site: int) -> Case:
    try:
        image = read_volume(image_path)
        label = read_volume(label_path, as_label=True).data.astype(np.uint8)
    except DataError as err:
        raise DataError(f"demo brain file for {case_id} in {image_path.parent}: {err}; "
                        "delete that folder to regenerate it") from err
    return Case(case_id=case_id, image=image.data[None], label=label, spacing=(spacing_mm,) * 3,
                affine=image.affine, meta={"site": site})
