"""The demo brain's disk cache: one folder per generator input, files written atomically as NIfTI.

The folder name hashes every input of the generator (``FORMAT_VERSION``, counts, spacing, seed and each
``DemoDifficulty`` knob), so a changed knob never reuses stale files and unchanged inputs always find
the same folder; files only ever appear complete, so the ones present are trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from semiseg.data.case import Case, CaseRef
from semiseg.data.io import atomic_write, read_volume, write_nifti
from semiseg.data.sources.demo_brain.simulate import (
    CLASS_NAMES,
    DemoDifficulty,
    SubjectEffects,
    Template,
    load_template,
    site_levels,
    synthesise,
)
from semiseg.errors import DataError

FORMAT_VERSION = 1  # bump whenever the generator's output changes, so old caches are not trusted
DATASET_NAME = "demo_brain"


def cache_params(n_subjects: int, spacing_mm: float, seed: int, difficulty: DemoDifficulty) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "n_subjects": int(n_subjects), "spacing_mm": float(spacing_mm),
            "seed": int(seed), "difficulty": asdict(difficulty)}


def cache_key(params: dict[str, Any]) -> str:
    """Hash of every input of the generator, so a changed knob never reuses stale files."""
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SEMISEG_CACHE")
    if env:
        return Path(env).expanduser() / DATASET_NAME
    return Path.home() / ".cache" / "semiseg" / DATASET_NAME


def _paths(root: Path, i: int) -> tuple[Path, Path]:
    stem = f"subject_{i:03d}"
    return root / f"{stem}_image.nii.gz", root / f"{stem}_label.nii.gz"


def ensure_generated(root: Path, params: dict[str, Any], difficulty: DemoDifficulty,
                      effects: list[SubjectEffects], template_dir: Path, progress: bool) -> None:
    """Write whatever is missing; files only ever appear complete, so existing ones are trusted."""
    missing = [i for i in range(len(effects)) if not all(p.is_file() for p in _paths(root, i))]
    meta_path = root / "meta.json"
    if not missing and meta_path.is_file():
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the demo brain cache folder {root}: {err}; "
                        "pass cache_dir= or set SEMISEG_CACHE to a writable folder") from err
    template = load_template(template_dir, params["spacing_mm"])
    for i in tqdm(missing, desc="demo_brain: generating subjects", unit="subject", disable=not progress):
        image, label = synthesise(template, difficulty, params["seed"], i, effects[i])
        image_path, label_path = _paths(root, i)
        write_nifti(image_path, image, template.grid_affine, np.float32)
        write_nifti(label_path, label, template.grid_affine, np.uint8)
    _write_meta(meta_path, params, effects, template)


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
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))


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
