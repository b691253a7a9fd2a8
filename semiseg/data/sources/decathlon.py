"""Medical Segmentation Decathlon (v1) folders.

``dataset.json`` with ``modality``, ``labels`` as ``{"0": "background", ...}`` and explicit
``training``/``test`` lists; all channels in one (4D) NIfTI whose last axis holds the channels.
Semi-supervised extension: images in ``imagesTr`` that ``training`` does not list, and every image in
the ``unlabelled_dirs`` folders, are unlabelled training cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import CaseRef, DatasetSpec, LabelMode
from semiseg.data.check import check_finite
from semiseg.data.io import Volume, is_nifti, read_volume, split_suffix
from semiseg.data.labels import parse_labels
from semiseg.data.sources.dataset_json import (
    CaseFiles,
    Layout,
    case_ref,
    channel_names,
    dataset_dim,
    imagestr_warnings,
    read_folder_json,
    visible_files,
)
from semiseg.errors import DataError


def open_decathlon(
    root: str | Path,
    *,
    unlabelled_dirs: tuple[str, ...] | list[str] = ("imagesUnlabelled",),
    label_mode: LabelMode | None = None,
) -> DatasetSpec:
    """List the cases of a Decathlon v1 folder (lazy: no voxels are read); options as ``open_nnunet``."""
    folder, meta, source = read_folder_json(root)
    if "modality" not in meta:
        hint = "it is an nnU-Net v2 folder: use source nnunet" if "channel_names" in meta else "add it"
        raise DataError(f"{source}: has no 'modality' (Decathlon v1); {hint}")
    return open_decathlon_meta(folder, meta, source, tuple(unlabelled_dirs), label_mode)


def open_decathlon_meta(
    root: Path, meta: dict, source: str, unlabelled_dirs: tuple[str, ...], label_mode: LabelMode | None
) -> DatasetSpec:
    """The cases of a Decathlon folder whose ``dataset.json`` (at ``source``) is already read."""
    layout = Layout(
        source, channel_names(meta.get("modality"), source, "modality"),
        parse_labels(_msd_labels(meta.get("labels"), source), source=source, label_mode=label_mode),
        name="msd", read_image=_read_msd_image,
    )
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(f"{source}: 'training' lists no cases; add {{\"image\": ..., \"label\": ...}} entries")
    cases, seen, images = [], set(), []
    for i, entry in enumerate(training):
        image = _msd_path(root, entry, "image", source, i)
        has_label = isinstance(entry, dict) and bool(entry.get("label"))
        label = _msd_path(root, entry, "label", source, i) if has_label else None
        seen.add(image)
        images.append(image)
        cases.append(case_ref(CaseFiles(_strip_ending(image), (image,), label), layout, label is not None))
    ids = {ref.case_id for ref in cases}
    unlisted = _unlabelled(root, ("imagesTr",), layout, seen, ids)  # in imagesTr, not in 'training'
    cases += unlisted + _unlabelled(root, tuple(unlabelled_dirs), layout, seen, ids)
    tests = _tests(root, meta, layout, source)
    in_images_tr = [ref.case_id for ref in cases[: len(training)]] + [ref.case_id for ref in unlisted]
    labelled = {ref.case_id for ref in cases[: len(training)] if ref.has_label}
    return DatasetSpec(
        name=str(meta.get("name") or root.name), dim=dataset_dim(images, len(layout.channel_names)),
        channels=len(layout.channel_names), label_mode=layout.labels.mode,
        class_names=list(layout.labels.class_names), cases=cases, test_cases=tests, root=str(root),
        warnings=imagestr_warnings(meta, source, in_images_tr, labelled),
    )


def _read_msd_image(files: CaseFiles, layout: Layout) -> tuple[np.ndarray, Volume]:
    """Read a Decathlon image: 3D for one modality, 4D (x, y, z, C) for several."""
    path = files.images[0]
    if not path.is_file():
        raise DataError(f"{path}: image listed in {layout.source} is missing; fix the path or add the file")
    vol = read_volume(path)
    check_finite(vol.data, str(path))
    n = len(layout.channel_names)
    data = vol.data
    if data.ndim == 4 or n > 1:
        if data.ndim != 4 or data.shape[-1] != n:
            raise DataError(
                f"{path}: shape {data.shape}, but {layout.source} declares {n} modalities; "
                f"expected a 4D file (x, y, z, {n}) with the channels on the last axis"
            )
        image = np.moveaxis(data, -1, 0)
    else:
        image = data[None]
    vol.spacing = vol.spacing[: image.ndim - 1]
    return np.ascontiguousarray(image, dtype=np.float32), vol


def _msd_labels(labels: Any, source: str) -> dict[str, int]:
    """Turn Decathlon ``{"0": "background", "1": "tumour"}`` into nnU-Net's name-to-value form."""
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{source}: 'labels' must map label values to names, e.g. {{\"0\": \"background\"}}")
    out: dict[str, int] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except ValueError as exc:
            raise DataError(f"{source}: labels key {key!r} is not an integer label value") from exc
        if str(name) in out:
            raise DataError(f"{source}: class name {name!r} is used twice in 'labels'; make names unique")
        out[str(name)] = value
    return out


def _msd_path(root: Path, entry: Any, key: str, source: str, index: int) -> Path:
    value = entry.get(key) if isinstance(entry, dict) else entry
    if not isinstance(value, str) or not value:
        raise DataError(f"{source}: entry {index} has no '{key}' path; expected {{\"{key}\": \"./...\"}}")
    return (root / value).resolve() if not Path(value).is_absolute() else Path(value)


def _strip_ending(path: Path) -> str:
    """Case id of an image file: its name without the NIfTI ending (or its last suffix)."""
    parsed = split_suffix(path)
    return parsed[0] if parsed and parsed[2] == "nifti" else path.stem


def _nifti_files(folder: Path) -> list[Path]:
    return [p for p in visible_files(folder) if is_nifti(p)] if folder.is_dir() else []


def _unlabelled(root: Path, dirs: tuple[str, ...], layout: Layout, seen: set[Path], ids: set[str]) -> list[CaseRef]:
    """Images in imagesTr that 'training' does not list, plus the unlabelled folders."""
    refs = []
    for name in dirs:
        for path in _nifti_files(root / name):
            if path.resolve() in seen:
                continue
            case = _strip_ending(path)
            if case in ids:
                raise DataError(
                    f"{path}: case id '{case}' is used twice; give unlabelled cases their own names"
                )
            ids.add(case)
            seen.add(path.resolve())
            refs.append(case_ref(CaseFiles(case, (path,)), layout, labelled=False))
    return refs


def _tests(root: Path, meta: dict, layout: Layout, source: str) -> list[CaseRef]:
    entries = meta.get("test")
    if entries is None:
        images = _nifti_files(root / "imagesTs")
    elif isinstance(entries, list):
        images = [_msd_path(root, e, "image", source, i) for i, e in enumerate(entries)]
    else:
        raise DataError(f"{source}: 'test' must be a list of image paths")
    labels_ts = root / "labelsTs"
    refs = []
    for image in images:
        label = labels_ts / image.name
        has_label = label.is_file()
        files = CaseFiles(_strip_ending(image), (image,), label if has_label else None)
        refs.append(case_ref(files, layout, has_label))
    return refs
