"""nnU-Net v2 folders (a Decathlon v1 folder opened under this name is handed to ``decathlon.py``).

``dataset.json`` with ``channel_names``, ``labels`` and ``file_ending``; one file per channel in
``imagesTr/{case}_{XXXX}{ending}``, labels in ``labelsTr/{case}{ending}``. Any ending that
``semiseg.data.io`` reads works (NIfTI through nibabel, .mha/.nrrd/.png/... through SimpleITK).

Semi-supervised extension: images in ``imagesTr`` without a label, and every case in the
``unlabelled_dirs`` folders, are unlabelled training cases.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from semiseg.data.case import CaseRef, DatasetSpec, LabelMode
from semiseg.data.check import check_finite, geometry_mismatch, list_values
from semiseg.data.io import Volume, read_volume
from semiseg.data.labels import parse_labels
from semiseg.data.sources.dataset_json import (
    CaseFiles,
    Layout,
    case_ref,
    channel_names,
    dataset_dim,
    imagestr_warnings,
    read_folder_json,
    require_dir,
    visible_files,
)
from semiseg.data.sources.decathlon import open_decathlon_meta
from semiseg.errors import DataError


def open_nnunet(
    root: str | Path,
    *,
    unlabelled_dirs: tuple[str, ...] | list[str] = ("imagesUnlabelled",),
    label_mode: LabelMode | None = None,
) -> DatasetSpec:
    """List the cases of an nnU-Net v2 (or Decathlon v1) folder (lazy: no voxels are read).

    ``label_mode`` None picks multilabel when ``labels`` declares regions (lists of values), else
    multiclass; forcing "multilabel" on plain labels gives one channel per non-background class.
    """
    folder, meta, source = read_folder_json(root)
    if "channel_names" in meta:
        return _open_v2(folder, meta, source, tuple(unlabelled_dirs), label_mode)
    if "modality" in meta:
        return open_decathlon_meta(folder, meta, source, tuple(unlabelled_dirs), label_mode)
    raise DataError(
        f"{source}: has neither 'channel_names' (nnU-Net v2) nor 'modality' (Decathlon v1); "
        "add the channel names"
    )


def _open_v2(
    root: Path, meta: dict, source: str, unlabelled_dirs: tuple[str, ...], label_mode: LabelMode | None
) -> DatasetSpec:
    layout = Layout(
        source, channel_names(meta.get("channel_names"), source, "channel_names"),
        parse_labels(meta.get("labels"), source=source, label_mode=label_mode),
        name="nnunet", read_image=_read_channels,
    )
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"{source}: file_ending must be a string like \".nii.gz\", got {ending!r}")
    n = len(layout.channel_names)
    images_tr = require_dir(root / "imagesTr", "nnU-Net v2 keeps training images in imagesTr/")
    labels_tr = require_dir(root / "labelsTr", f"nnU-Net v2 keeps training labels as labelsTr/{{case}}{ending}")
    train = _scan_channels(images_tr, ending, n)
    if not train:
        raise _empty_error(images_tr, f"{{case}}_{{XXXX}}{ending}")
    label_files = _scan_labels(labels_tr, ending)
    orphans = sorted(set(label_files) - set(train))
    if orphans:
        raise DataError(
            f"{labels_tr / (orphans[0] + ending)}: label has no image {orphans[0]}_0000{ending} in "
            f"{images_tr} ({len(orphans)} such label(s): {list_values(orphans, 5)}); add the images or "
            "fix the names"
        )
    cases = [
        case_ref(CaseFiles(c, tuple(p), label_files.get(c)), layout, c in label_files) for c, p in train.items()
    ]
    cases += _unlabelled_v2(root, unlabelled_dirs, ending, layout, set(train))
    tests = _tests_v2(root, ending, layout)
    first = [ref_paths[0] for ref_paths in train.values()]
    return DatasetSpec(
        name=str(meta.get("name") or root.name), dim=dataset_dim(first), channels=n,
        label_mode=layout.labels.mode, class_names=list(layout.labels.class_names),
        cases=cases, test_cases=tests, root=str(root),
        warnings=imagestr_warnings(meta, source, sorted(train), set(label_files)),
    )


def _unlabelled_v2(
    root: Path, dirs: tuple[str, ...], ending: str, layout: Layout, taken: set[str]
) -> list[CaseRef]:
    refs = []
    for name in dirs:
        folder = root / name
        if not folder.is_dir():
            continue
        for case, paths in _scan_channels(folder, ending, len(layout.channel_names)).items():
            if case in taken:
                raise DataError(
                    f"{paths[0]}: case id '{case}' also exists in another folder; give unlabelled cases "
                    "their own names"
                )
            taken.add(case)
            refs.append(case_ref(CaseFiles(case, tuple(paths)), layout, labelled=False))
    return refs


def _tests_v2(root: Path, ending: str, layout: Layout) -> list[CaseRef]:
    folder = root / "imagesTs"
    if not folder.is_dir():
        return []
    labels = _scan_labels(root / "labelsTs", ending) if (root / "labelsTs").is_dir() else {}
    return [
        case_ref(CaseFiles(c, tuple(p), labels.get(c)), layout, c in labels)
        for c, p in _scan_channels(folder, ending, len(layout.channel_names)).items()
    ]


def _read_channels(files: CaseFiles, layout: Layout) -> tuple[np.ndarray, Volume]:
    """Read the per-channel files of an nnU-Net v2 case and stack them channels-first."""
    n = len(layout.channel_names)
    arrays: list[np.ndarray] = []
    volumes: list[tuple[Path, Volume]] = []
    for idx, path in enumerate(files.images):
        if not path.is_file():
            raise DataError(
                f"case '{files.case_id}': channel {idx} ({layout.channel_names[idx]}) is missing: expected "
                f"{path}; every case needs one file per channel_names entry of {layout.source}"
            )
        vol = read_volume(path)
        if len(vol.spatial_shape) > 3:
            raise DataError(
                f"{path}: has {vol.data.ndim} axes; nnU-Net v2 expects one 2D or 3D file per channel"
            )
        if vol.components > 1 and (idx != 0 or vol.components != n):
            raise DataError(
                f"{path}: has {vol.components} components per voxel but {layout.source} declares {n} "
                "channel(s); store one single-component file per channel"
            )
        check_finite(vol.data, str(path))  # here, so the message names the channel file
        arrays.append(np.moveaxis(vol.data, -1, 0) if vol.components > 1 else vol.data[None])
        volumes.append((path, vol))
        if vol.components == n:  # one colour file already holds every channel
            break
    _check_same_grid(files.case_id, volumes)
    return np.ascontiguousarray(np.concatenate(arrays, axis=0), dtype=np.float32), volumes[0][1]


def _check_same_grid(case_id: str, volumes: list[tuple[Path, Volume]]) -> None:
    shapes = {vol.spatial_shape for _, vol in volumes}
    if len(shapes) > 1:
        listing = ", ".join(f"{p.name} {vol.spatial_shape}" for p, vol in volumes)
        raise DataError(
            f"case '{case_id}': channel files have different shapes: {listing}; "
            "resample every channel onto one grid"
        )
    first_path, first = volumes[0]
    for path, vol in volumes[1:]:
        diff = geometry_mismatch(first.spacing, first.affine, vol.spacing, vol.affine)
        if diff:
            raise DataError(
                f"case '{case_id}': {path} and {first_path.name} differ in geometry ({diff}); "
                "register/resample the channels onto one grid"
            )


def _scan_channels(folder: Path, ending: str, n_channels: int) -> dict[str, list[Path]]:
    """Group ``{case}_{XXXX}{ending}`` files by case; returns the expected path for every channel."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    found: dict[str, set[int]] = {}
    for path in visible_files(folder):
        if not path.name.endswith(ending):
            continue
        match = pattern.match(path.name)
        if match is None:
            stem = path.name[: -len(ending)]
            raise DataError(
                f"{path}: name does not follow the nnU-Net pattern {{case}}_{{XXXX}}{ending}; "
                f"rename it (e.g. {stem}_0000{ending})"
            )
        ch = int(match["ch"])
        if ch >= n_channels:
            raise DataError(
                f"{path}: channel {ch:04d}, but dataset.json declares {n_channels} channel(s) in "
                "channel_names; add the channel there or remove the file"
            )
        found.setdefault(match["case"], set()).add(ch)
    return {
        case: [folder / f"{case}_{i:04d}{ending}" for i in range(n_channels)] for case in sorted(found)
    }


def _scan_labels(folder: Path, ending: str) -> dict[str, Path]:
    return {p.name[: -len(ending)]: p for p in visible_files(folder) if p.name.endswith(ending)}


def _empty_error(folder: Path, pattern: str) -> DataError:
    endings = sorted({"".join(p.suffixes) for p in visible_files(folder)}) if folder.is_dir() else []
    seen = f" (found files ending in {', '.join(endings)}; check 'file_ending')" if endings else ""
    return DataError(f"{folder}: no cases found matching {pattern}{seen}; add images or fix dataset.json")
