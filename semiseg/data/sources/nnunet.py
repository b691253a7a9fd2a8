"""nnU-Net v2 and Medical Segmentation Decathlon (v1) folders.

nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` and ``file_ending``; one file per channel in
``imagesTr/{case}_{XXXX}{ending}``, labels in ``labelsTr/{case}{ending}``. Decathlon v1: ``dataset.json``
with ``modality``, ``labels`` as ``{"0": "background", ...}`` and explicit ``training``/``test`` lists;
all channels in one 4D NIfTI whose last axis holds the channels.

Semi-supervised extension of both: images in ``imagesTr`` without a label, and every case in the
``unlabelled_dirs`` folders, are unlabelled training cases.

Arrays keep the file axis order (x, y, z) of nibabel; other formats are read with SimpleITK and
transposed to that same order, with an affine rebuilt in RAS like nibabel's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import Case, CaseRef, DatasetSpec, LabelMode
from semiseg.data.check import (
    CheckedLoader,
    check_finite,
    compact_int_label,
    geometry_mismatch,
    integer_label,
    list_values,
    present_values,
)
from semiseg.errors import ConfigError, DataError

NIFTI_ENDINGS = (".nii.gz", ".nii")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# --------------------------------------------------------------------------------------------------
# reading one image file


@dataclass
class Volume:
    """Array of one file in (x, y[, z][, component]) order, with its geometry."""

    data: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, ...]  # one entry per spatial axis
    components: int = 1  # >1: vector pixels (e.g. RGB), stored on the last axis

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:-1] if self.components > 1 else self.data.shape)


def _import_sitk() -> Any:
    """SimpleITK is optional: return the module, or None when it is not installed."""
    try:
        import SimpleITK
    except ImportError:
        return None
    return SimpleITK


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def read_volume(path: Path, *, as_label: bool = False) -> Volume:
    """Read a NIfTI (nibabel) or any SimpleITK format; labels keep their stored dtype."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if is_nifti(path):
        return _read_nifti(path, as_label)
    return _read_sitk(path, as_label)


def _unreadable(path: Path, kind: str, exc: Exception) -> DataError:
    text = str(exc).replace(str(path), path.name).strip()
    detail = text.splitlines()[0][:200] if text else ""
    return DataError(
        f"{path}: cannot be read as {kind} ({type(exc).__name__}{': ' + detail if detail else ''}); "
        "the file is corrupt, truncated or in another format — re-export or re-download it"
    )


def _read_nifti(path: Path, as_label: bool) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if as_label else img.get_fdata(dtype=np.float32)
        zooms = img.header.get_zooms()
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise _unreadable(path, "NIfTI", exc) from exc
    data = np.asarray(data)
    spacing = tuple(float(z) for z in zooms[: min(data.ndim, 3)])
    return Volume(data, affine, spacing)


def sitk_affine(
    spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]
) -> np.ndarray:
    """Voxel (x, y, z) to RAS world matrix, so SimpleITK inputs match what nibabel would report."""
    n = len(spacing)
    linear = np.eye(3)
    linear[:n, :n] = np.asarray(direction, float).reshape(n, n) * np.asarray(spacing, float)[None, :]
    offset = np.zeros(3)
    offset[:n] = origin
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ linear
    affine[:3, 3] = _LPS_TO_RAS @ offset
    return affine


def _need_sitk(path: Path) -> Any:
    sitk = _import_sitk()
    if sitk is None:
        raise DataError(
            f"{path}: reading '{''.join(path.suffixes) or path.name}' files needs SimpleITK "
            "(pip install SimpleITK); otherwise convert the dataset to .nii.gz"
        )
    return sitk


def _read_sitk(path: Path, as_label: bool) -> Volume:
    sitk = _need_sitk(path)
    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
    except Exception as exc:  # SimpleITK raises RuntimeError with ITK's text
        raise _unreadable(path, "an image (SimpleITK)", exc) from exc
    n = img.GetDimension()
    if n > 3:
        raise DataError(f"{path}: {n}D images are not supported; store one 2D or 3D image per channel")
    comps = img.GetNumberOfComponentsPerPixel()
    order = [*range(n)][::-1] + ([n] if comps > 1 else [])  # (z, y, x[, c]) -> (x, y, z[, c])
    data = np.transpose(arr, order)
    if not as_label:
        data = data.astype(np.float32)
    affine = sitk_affine(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return Volume(data, affine, tuple(float(s) for s in img.GetSpacing()), comps)


def probe_shape(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape in x, y, z order, components per voxel) from the header alone, without reading voxels."""
    if is_nifti(path):
        import nibabel as nib

        try:
            return tuple(nib.load(str(path)).shape), 1
        except Exception as exc:
            raise _unreadable(path, "NIfTI", exc) from exc
    sitk = _need_sitk(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSize()), int(reader.GetNumberOfComponents())
    except Exception as exc:
        raise _unreadable(path, "an image (SimpleITK)", exc) from exc


# --------------------------------------------------------------------------------------------------
# labels declared in dataset.json


@dataclass(frozen=True)
class LabelSpec:
    """Classes declared by a dataset.json ``labels`` entry and how to turn a label file into our layout."""

    mode: LabelMode
    class_names: tuple[str, ...]
    declared: tuple[tuple[str, tuple[int, ...]], ...]  # (name, values) as written in the file
    regions: tuple[tuple[int, ...], ...] = ()  # multilabel: label values forming each channel
    source: str = "dataset.json"

    @property
    def values(self) -> frozenset[int]:
        """Every value a label file may contain."""
        return frozenset(v for _, vals in self.declared for v in vals) | {0}

    def describe(self) -> str:
        return ", ".join(f"{n}={vals[0] if len(vals) == 1 else list(vals)}" for n, vals in self.declared)


def _label_entry(name: str, value: Any, source: str) -> tuple[tuple[int, ...], bool]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,), False
    if isinstance(value, list | tuple) and value and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value), True
    raise DataError(
        f"{source}: labels['{name}'] is {value!r}; use an integer label value, or a list of integers "
        "for a region"
    )


def parse_labels(labels: Any, *, source: str, label_mode: LabelMode | None = None) -> LabelSpec:
    """Read an nnU-Net style ``{"background": 0, "GM": 1}`` or region ``{"tumour": [1, 2]}`` mapping."""
    if label_mode not in (None, "multiclass", "multilabel"):
        raise ConfigError(f"label_mode must be 'multiclass' or 'multilabel', got {label_mode!r}")
    if not isinstance(labels, dict) or not labels:
        raise DataError(
            f"{source}: 'labels' must be a non-empty mapping of class name to label value, "
            'e.g. {"background": 0, "tumour": 1}'
        )
    declared, has_regions = [], False
    for name, value in labels.items():
        vals, is_region = _label_entry(str(name), value, source)
        declared.append((str(name), vals))
        has_regions |= is_region
    mode = label_mode or ("multilabel" if has_regions else "multiclass")
    if mode == "multiclass":
        if has_regions:
            raise DataError(
                f"{source}: labels define regions (lists of values), which overlap; "
                "use label_mode='multilabel' or declare one integer per class"
            )
        return _multiclass_spec(declared, source)
    return _multilabel_spec(declared if has_regions else sorted(declared, key=lambda d: d[1]), source)


def _multiclass_spec(declared: list[tuple[str, tuple[int, ...]]], source: str) -> LabelSpec:
    by_value = sorted(declared, key=lambda item: item[1][0])
    values = [vals[0] for _, vals in by_value]
    if values != list(range(len(values))):
        raise DataError(
            f"{source}: label values {values} must be 0..K-1 without gaps or repeats (0 = background); "
            "renumber the labels"
        )
    return LabelSpec("multiclass", tuple(n for n, _ in by_value), tuple(by_value), source=source)


def _multilabel_spec(declared: list[tuple[str, tuple[int, ...]]], source: str) -> LabelSpec:
    channels = [(n, vals) for n, vals in declared if vals != (0,)]
    if not channels:
        raise DataError(f"{source}: labels declare only background; add at least one class or region")
    return LabelSpec(
        "multilabel",
        tuple(n for n, _ in channels),
        tuple(declared),
        regions=tuple(vals for _, vals in channels),
        source=source,
    )


def convert_label(raw: np.ndarray, labels: LabelSpec, where: str) -> np.ndarray:
    """Check a label file's values against the declared ones and build the multiclass/multilabel array.

    Checking before region conversion matters: ``isin`` would silently drop an undeclared value.
    """
    label = integer_label(raw, where)
    bad = [int(v) for v in present_values(label) if int(v) not in labels.values]
    if bad:
        raise DataError(
            f"{where}: label values {list_values(bad)} are not among the declared classes "
            f"({labels.describe()}); fix the label file or declare the classes in {labels.source}"
        )
    if labels.mode == "multilabel":
        return np.stack([np.isin(label, region) for region in labels.regions]).astype(np.uint8)
    return compact_int_label(label)


# --------------------------------------------------------------------------------------------------
# loading one case


@dataclass(frozen=True)
class _Layout:
    source: str  # dataset.json path, for messages
    channel_names: tuple[str, ...]
    labels: LabelSpec
    msd: bool  # Decathlon v1: one 4D file holds every channel


@dataclass(frozen=True)
class _CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # v2: one per channel; MSD: a single 4D file
    label: Path | None = None

    @property
    def origin(self) -> str:
        return ", ".join(str(p) for p in (*self.images, *([self.label] if self.label else [])))


def _load_case(files: _CaseFiles, layout: _Layout) -> Case:
    image, ref = _read_msd_image(files, layout) if layout.msd else _read_channels(files, layout)
    label = None
    if files.label is not None:
        label = _read_label(files, ref, image.shape[1:], layout)
    meta = {
        "source": "msd" if layout.msd else "nnunet",
        "image_files": [str(p) for p in files.images],
        "label_file": str(files.label) if files.label else None,
        "channel_names": list(layout.channel_names),
    }
    spacing = ref.spacing[: image.ndim - 1]
    return Case(files.case_id, image, label, spacing, ref.affine, meta)


def _read_channels(files: _CaseFiles, layout: _Layout) -> tuple[np.ndarray, Volume]:
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


def _read_msd_image(files: _CaseFiles, layout: _Layout) -> tuple[np.ndarray, Volume]:
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


def _read_label(files: _CaseFiles, ref: Volume, spatial: tuple[int, ...], layout: _Layout) -> np.ndarray:
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


def _ref(files: _CaseFiles, layout: _Layout, labelled: bool) -> CaseRef:
    files = files if labelled else _CaseFiles(files.case_id, files.images, None)
    loader = CheckedLoader(
        partial(_load_case, files, layout), layout.labels.mode, len(layout.labels.class_names), files.origin
    )
    return CaseRef(files.case_id, labelled, files.origin, loader)


# --------------------------------------------------------------------------------------------------
# dataset.json and folder scanning


def _read_json(path: Path) -> dict:
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


def _channel_names(mapping: Any, source: str, key: str) -> tuple[str, ...]:
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


def _require_dir(folder: Path, hint: str) -> Path:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; {hint}")
    return folder


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _scan_channels(folder: Path, ending: str, n_channels: int) -> dict[str, list[Path]]:
    """Group ``{case}_{XXXX}{ending}`` files by case; returns the expected path for every channel."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    found: dict[str, set[int]] = {}
    for path in _visible_files(folder):
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
    return {p.name[: -len(ending)]: p for p in _visible_files(folder) if p.name.endswith(ending)}


def _empty_error(folder: Path, pattern: str) -> DataError:
    endings = sorted({"".join(p.suffixes) for p in _visible_files(folder)}) if folder.is_dir() else []
    seen = f" (found files ending in {', '.join(endings)}; check 'file_ending')" if endings else ""
    return DataError(f"{folder}: no cases found matching {pattern}{seen}; add images or fix dataset.json")


def _dataset_dim(paths: list[Path], msd_channels: int | None = None) -> int:
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


# --------------------------------------------------------------------------------------------------
# public entry point


def open_nnunet(
    root: str | Path,
    *,
    unlabelled_dirs: tuple[str, ...] | list[str] = ("imagesUnlabelled",),
    label_mode: LabelMode | None = None,
) -> DatasetSpec:
    """List the cases of an nnU-Net v2 or Decathlon v1 folder (lazy: no voxels are read).

    ``label_mode`` None picks multilabel when ``labels`` declares regions (lists of values), else
    multiclass; forcing "multilabel" on plain labels gives one channel per non-background class.
    """
    root = Path(root).expanduser()
    _require_dir(root, "pass the folder that contains dataset.json and imagesTr/")
    json_path = root / "dataset.json"
    meta = _read_json(json_path)
    if "channel_names" in meta:
        return _open_v2(root, meta, str(json_path), tuple(unlabelled_dirs), label_mode)
    if "modality" in meta:
        return _open_msd(root, meta, str(json_path), tuple(unlabelled_dirs), label_mode)
    raise DataError(
        f"{json_path}: has neither 'channel_names' (nnU-Net v2) nor 'modality' (Decathlon v1); "
        "add the channel names"
    )


def _open_v2(
    root: Path, meta: dict, source: str, unlabelled_dirs: tuple[str, ...], label_mode: LabelMode | None
) -> DatasetSpec:
    layout = _Layout(
        source, _channel_names(meta.get("channel_names"), source, "channel_names"),
        parse_labels(meta.get("labels"), source=source, label_mode=label_mode), msd=False,
    )
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"{source}: file_ending must be a string like \".nii.gz\", got {ending!r}")
    n = len(layout.channel_names)
    images_tr = _require_dir(root / "imagesTr", "nnU-Net v2 keeps training images in imagesTr/")
    labels_tr = _require_dir(root / "labelsTr", f"nnU-Net v2 keeps training labels as labelsTr/{{case}}{ending}")
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
        _ref(_CaseFiles(c, tuple(p), label_files.get(c)), layout, c in label_files) for c, p in train.items()
    ]
    cases += _unlabelled_v2(root, unlabelled_dirs, ending, layout, set(train))
    tests = _tests_v2(root, ending, layout)
    first = [ref_paths[0] for ref_paths in train.values()]
    return DatasetSpec(
        name=str(meta.get("name") or root.name), dim=_dataset_dim(first), channels=n,
        label_mode=layout.labels.mode, class_names=list(layout.labels.class_names),
        cases=cases, test_cases=tests, root=str(root),
    )


def _unlabelled_v2(
    root: Path, dirs: tuple[str, ...], ending: str, layout: _Layout, taken: set[str]
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
            refs.append(_ref(_CaseFiles(case, tuple(paths)), layout, labelled=False))
    return refs


def _tests_v2(root: Path, ending: str, layout: _Layout) -> list[CaseRef]:
    folder = root / "imagesTs"
    if not folder.is_dir():
        return []
    labels = _scan_labels(root / "labelsTs", ending) if (root / "labelsTs").is_dir() else {}
    return [
        _ref(_CaseFiles(c, tuple(p), labels.get(c)), layout, c in labels)
        for c, p in _scan_channels(folder, ending, len(layout.channel_names)).items()
    ]


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
    name = path.name
    for ending in NIFTI_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _open_msd(
    root: Path, meta: dict, source: str, unlabelled_dirs: tuple[str, ...], label_mode: LabelMode | None
) -> DatasetSpec:
    layout = _Layout(
        source, _channel_names(meta.get("modality"), source, "modality"),
        parse_labels(_msd_labels(meta.get("labels"), source), source=source, label_mode=label_mode),
        msd=True,
    )
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(f"{source}: 'training' lists no cases; add {{\"image\": ..., \"label\": ...}} entries")
    cases, seen, images = [], set(), []
    for i, entry in enumerate(training):
        image = _msd_path(root, entry, "image", source, i)
        has_label = isinstance(entry, dict) and bool(entry.get("label"))
        label = _msd_path(root, entry, "label", source, i) if has_label else None
        files = _CaseFiles(_strip_ending(image), (image,), label)
        seen.add(image)
        images.append(image)
        cases.append(_ref(files, layout, label is not None))
    ids = {ref.case_id for ref in cases}
    cases += _unlabelled_msd(root, ("imagesTr", *unlabelled_dirs), layout, seen, ids)
    tests = _tests_msd(root, meta, layout, source)
    return DatasetSpec(
        name=str(meta.get("name") or root.name), dim=_dataset_dim(images, len(layout.channel_names)),
        channels=len(layout.channel_names), label_mode=layout.labels.mode,
        class_names=list(layout.labels.class_names), cases=cases, test_cases=tests, root=str(root),
    )


def _nifti_files(folder: Path) -> list[Path]:
    return [p for p in _visible_files(folder) if is_nifti(p)] if folder.is_dir() else []


def _unlabelled_msd(
    root: Path, dirs: tuple[str, ...], layout: _Layout, seen: set[Path], ids: set[str]
) -> list[CaseRef]:
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
            refs.append(_ref(_CaseFiles(case, (path,)), layout, labelled=False))
    return refs


def _tests_msd(root: Path, meta: dict, layout: _Layout, source: str) -> list[CaseRef]:
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
        files = _CaseFiles(_strip_ending(image), (image,), label if has_label else None)
        refs.append(_ref(files, layout, has_label))
    return refs
