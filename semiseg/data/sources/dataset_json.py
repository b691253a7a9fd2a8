"""What the two ``dataset.json`` layouts share: the json itself, a case's files, and loading one case.

nnU-Net v2 (``nnunet.py``) and the Medical Segmentation Decathlon v1 (``decathlon.py``) differ in how
they list cases and store channels; each gives ``Layout`` its own image reader, and everything else
(label reading and checks, geometry checks, the lazy ``CaseRef``) is done here once.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import Case, CaseRef
from semiseg.data.check import CheckedLoader, geometry_mismatch
from semiseg.data.io import Volume, probe_shape, read_volume
from semiseg.data.labels import LabelSpec, convert_label
from semiseg.errors import DataError


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # v2: one per channel; Decathlon: a single (4D) file
    label: Path | None = None

    @property
    def origin(self) -> str:
        return ", ".join(str(p) for p in (*self.images, *([self.label] if self.label else [])))


ImageReader = Callable[[CaseFiles, "Layout"], tuple[np.ndarray, Volume]]


@dataclass(frozen=True)
class Layout:
    source: str  # dataset.json path, for messages
    channel_names: tuple[str, ...]
    labels: LabelSpec
    name: str  # "nnunet" or "msd", recorded in each case's meta
    read_image: ImageReader  # (C, *spatial) float32 and the reference volume whose geometry the case takes


def load_case(files: CaseFiles, layout: Layout) -> Case:
    image, ref = layout.read_image(files, layout)
    label = None
    if files.label is not None:
        label = _read_label(files, ref, image.shape[1:], layout)
    meta = {
        "source": layout.name,
        "image_files": [str(p) for p in files.images],
        "label_file": str(files.label) if files.label else None,
        "channel_names": list(layout.channel_names),
    }
    spacing = ref.spacing[: image.ndim - 1]
    return Case(files.case_id, image, label, spacing, ref.affine, meta)


def _read_label(files: CaseFiles, ref: Volume, spatial: tuple[int, ...], layout: Layout) -> np.ndarray:
    path = files.label
    if not path.is_file():
        raise DataError(
            f"{path}: label file is missing (case '{files.case_id}'); add it, or remove the entry "
            f"from {layout.source}"
        )
    vol = read_volume(path, as_label=True)
    data = vol.data
    if vol.components > 1:
        raise DataError(f"{path}: label has {vol.components} components; save a single-channel label image")
    while data.ndim > len(spatial) and data.shape[-1] == 1:  # (x, y, z, 1) labels are common
        data = data[..., 0]
    image_name = files.images[0].name
    if data.shape != spatial:
        raise DataError(
            f"{path}: label shape {data.shape} differs from image {image_name} shape {spatial}; "
            "image and label must be on the same voxel grid"
        )
    diff = geometry_mismatch(ref.spacing, ref.affine, vol.spacing[: len(spatial)], vol.affine)
    if diff:
        raise DataError(
            f"{path}: label geometry differs from image {image_name} ({diff}); resample the label onto "
            "the image grid (nearest neighbour) or fix its header"
        )
    return convert_label(data, layout.labels, str(path))


def case_ref(files: CaseFiles, layout: Layout, labelled: bool) -> CaseRef:
    files = files if labelled else CaseFiles(files.case_id, files.images, None)
    loader = CheckedLoader(
        partial(load_case, files, layout), layout.labels.mode, len(layout.labels.class_names), files.origin
    )
    return CaseRef(files.case_id, labelled, files.origin, loader, files=_dependencies(files, layout))


def _dependencies(files: CaseFiles, layout: Layout) -> tuple[str, ...]:
    """The case's files and dataset.json, whose label mapping shapes the label array."""
    extra = (layout.source,) if Path(layout.source).is_file() else ()
    return tuple(str(p) for p in (*files.images, *([files.label] if files.label else []), *extra))


# --------------------------------------------------------------------------------------------------
# dataset.json and folders


def read_folder_json(root: str | Path) -> tuple[Path, dict, str]:
    """(folder, parsed dataset.json, its path for messages) of a dataset.json layout."""
    folder = require_dir(Path(root).expanduser(), "pass the folder that contains dataset.json and imagesTr/")
    json_path = folder / "dataset.json"
    return folder, read_json(json_path), str(json_path)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(
            f"{path}: dataset.json not found; an nnU-Net/Decathlon folder needs it "
            "(with channel_names, labels and file_ending)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object with channel_names/labels")
    return meta


def channel_names(mapping: Any, source: str, key: str) -> tuple[str, ...]:
    """Order ``{"0": "T1", "1": "T2"}`` by index, insisting on 0..C-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{source}: '{key}' must be a non-empty mapping like {{\"0\": \"CT\"}}")
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as exc:
        raise DataError(f"{source}: '{key}' keys must be channel indices \"0\", \"1\", ...") from exc
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{source}: '{key}' indices {[i for i, _ in items]} must be 0..C-1 without gaps")
    return tuple(name for _, name in items)


def require_dir(folder: Path, hint: str) -> Path:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; {hint}")
    return folder


def visible_files(folder: Path) -> list[Path]:
    """The folder's visible files; a symlink that resolves to nothing is an error, not a missing file."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in entries:
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path}: {_dead_link(path)}; fix or remove the link")
    return [p for p in entries if p.is_file()]


def _dead_link(path: Path) -> str:
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (the link points back to itself)"
    return f"is a broken symlink (its target {os.readlink(path)!r} does not exist)"


def dataset_dim(paths: list[Path], msd_channels: int | None = None) -> int:
    """Spatial dims from the first readable header; unreadable files are left for load() to report."""
    first_error: DataError | None = None
    for path in paths[:20]:
        if not path.is_file():
            continue
        try:
            shape, _ = probe_shape(path)
        except DataError as exc:
            first_error = first_error or exc
            continue
        ndim = len(shape)
        if msd_channels is not None and (ndim == 4 or msd_channels > 1):
            ndim -= 1  # Decathlon: the last axis holds the channels
        return min(max(ndim, 2), 3)
    if first_error is not None:
        raise first_error
    return 3


def imagestr_warnings(meta: dict, source: str, images: list[str], labelled: set[str]) -> list[str]:
    """Unlabelled cases in imagesTr are legal (semi-supervised) but often a forgotten label: say so by name."""
    warnings = []
    unlabelled = [case for case in images if case not in labelled]
    if unlabelled:
        warnings.append(
            f"{len(unlabelled)} image(s) in imagesTr have no label and are used as unlabelled: "
            f"{', '.join(unlabelled)}; move them to imagesUnlabelled/ to silence this"
        )
    declared = meta.get("numTraining")
    n_labelled = len(images) - len(unlabelled)
    if declared is not None and declared not in (n_labelled, len(images)):
        warnings.append(
            f"{source}: numTraining is {declared!r} but imagesTr holds {len(images)} case(s), {n_labelled} of "
            "them with a label in labelsTr; add the missing files or correct numTraining"
        )
    return warnings
