"""Prediction files: the images to predict, the predictions written back, the label folders to score.

Everything is read and written through ``semiseg.data.io``, so ``predict`` accepts every format training
reads: NIfTI, the SimpleITK formats (.mha, .mhd, .nrrd, ...) and 2D images (PNG/JPEG/BMP/TIFF).
A prediction keeps its input's format and grid: NIfTI inputs give ``.nii.gz`` with the input's affine;
SimpleITK inputs give the same format (detached headers become single files: .mhd → .mha, .nhdr → .nrrd)
with the input's spacing, origin and direction; 2D images give a PNG of the input's size. Multi-channel
volume inputs follow nnU-Net naming (``case_0000``, ``case_0001``) or hold the channels on a 4th axis
(NIfTI) or as vector pixels (SimpleITK). Every file is written atomically.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiseg.data.case import Case
from semiseg.data.check import integer_label
from semiseg.data.io import (
    Volume,
    atomic_write,
    binary_mask_to_index,
    describe_suffixes,
    output_suffix,
    probe_shape,
    read_image,
    read_mask,
    read_volume,
    split_suffix,
    write_png,
    write_volume,
)
from semiseg.errors import DataError

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _readable_files(root: Path) -> list[Path]:
    """The file itself, or the visible files of a folder (hidden ones include half-written temporaries)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def _channels(vol: Volume) -> list[np.ndarray]:
    """One array per channel: vector pixels (SimpleITK) and a 4th axis (NIfTI) both hold channels last."""
    if vol.components > 1 or vol.data.ndim == 4:
        return [vol.data[..., c] for c in range(vol.data.shape[-1])]
    return [vol.data]


def _volume_case(case_id: str, files: list[Path], channels: int) -> Case:
    volumes = [read_volume(f) for f in files]
    arrays = [array for vol in volumes for array in _channels(vol)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"case {case_id!r}: channel files {[f.name for f in files]} have different shapes {shapes}")
    if len(arrays) != channels:
        raise DataError(
            f"case {case_id!r} ({', '.join(f.name for f in files)}) has {len(arrays)} channel(s) but the model "
            f"expects {channels}; give files named {case_id}_0000 ... {case_id}_{channels - 1:04d}"
        )
    image = np.stack(arrays)
    if not np.isfinite(image).all():
        raise DataError(f"case {case_id!r} ({files[0]}): the image holds NaN or Inf values; fix or drop the file")
    _, suffix, kind = split_suffix(files[0])
    spacing = volumes[0].spacing[: image.ndim - 1]
    meta = {"files": [str(f) for f in files], "format": kind, "suffix": output_suffix(suffix)}
    return Case(case_id, image, None, spacing, volumes[0].affine, meta)


def _image2d_case(path: Path, stem: str, channels: int) -> Case:
    """Read a 2D image exactly as the folder source reads training images (same dtype range, channels)."""
    image, mode = read_image(path, channels)
    meta = {"files": [str(path)], "format": "png", "mode": mode}
    return Case(stem, image, None, (1.0, 1.0), None, meta)


def read_inputs(path: str | Path, channels: int) -> list[Case]:
    """Every case in a file or folder of volume (NIfTI, SimpleITK formats) or 2D image files."""
    root = Path(path)
    groups, images_2d = _group_inputs(root)
    cases = [_volume_case(cid, sorted(fs), channels) for cid, fs in sorted(groups.items())]
    cases += [_image2d_case(p, stem, channels) for p, stem in images_2d]
    return cases


def input_case_ids(path: str | Path) -> list[str]:
    """The case ids ``read_inputs`` would give, without reading any image (to check the output folder first)."""
    groups, images_2d = _group_inputs(Path(path))
    return sorted(groups) + [stem for _, stem in images_2d]


def input_slices(path: str | Path) -> list[tuple[Path, int]]:
    """Every input file with the number of slices along its third axis (1 for 2D images), from headers only."""
    groups, images_2d = _group_inputs(Path(path))
    found = [(file, 1) for file, _ in images_2d]
    for files in groups.values():
        for file in files:
            shape, _ = probe_shape(file)
            found.append((file, shape[2] if len(shape) > 2 else 1))
    return found


def _group_inputs(root: Path) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Volume files grouped by case id (nnU-Net channel files share one) and the 2D image files."""
    if not root.exists():
        raise DataError(f"input {str(root)!r} does not exist; give an image file or a folder of them")
    groups: dict[str, list[Path]] = defaultdict(list)
    images_2d: list[tuple[Path, str]] = []
    for file in _readable_files(root):
        parsed = split_suffix(file)
        if parsed is None:
            continue
        stem, _, kind = parsed
        if kind == "image2d":
            images_2d.append((file, stem))
            continue
        match = _CHANNEL.match(stem)
        groups[match["case"] if match else stem].append(file)  # nnU-Net channel files share a case id
    if not groups and not images_2d:
        raise DataError(f"no image files found in {str(root)!r}; readable endings: {describe_suffixes()}")
    return groups, images_2d


def _is_image2d(case: Case) -> bool:
    return case.meta.get("format") == "png" or (case.affine is None and case.ndim == 2)


def _volume_suffix(case: Case) -> str:
    """The input's own format for files read by ``read_inputs``; NIfTI for cases from a dataset source."""
    return case.meta.get("suffix", ".nii.gz")


def write_label(case: Case, label: np.ndarray, out_dir: Path, suffix: str = "") -> Path:
    """Write a predicted label with the case's geometry; returns the written file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_image2d(case):
        path = out_dir / f"{case.case_id}{suffix}.png"
        write_png(path, label if label.ndim == 2 else np.moveaxis(label, 0, -1))  # multilabel → channels last
        return path
    path = out_dir / f"{case.case_id}{suffix}{_volume_suffix(case)}"
    multilabel = label.ndim != case.ndim
    data = np.moveaxis(label, 0, -1) if multilabel else label
    write_volume(path, data, nifti_affine(case), np.uint8, components=multilabel)
    return path


def write_image(case: Case, path: Path) -> Path:
    """The case's image as a float32 volume with its geometry (channels on a 4th axis when there are several)."""
    image = case.image[0] if case.image.shape[0] == 1 else np.moveaxis(case.image, 0, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(path, image, nifti_affine(case), np.float32)
    return path


def write_probabilities(case: Case, probs: np.ndarray, out_dir: Path) -> Path:
    """Class probabilities as float32 volumes (classes on the last axis) or .npy for 2D image inputs."""
    return _write_float_map(case, probs, out_dir, "probs", components=True)


def write_uncertainty_map(case: Case, values: np.ndarray, out_dir: Path) -> Path:
    """A ``(*spatial)`` uncertainty map next to the prediction: a float32 volume, or .npy for 2D image inputs."""
    return _write_float_map(case, values, out_dir, "uncertainty", components=False)


def _write_float_map(case: Case, data: np.ndarray, out_dir: Path, name: str, components: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if case.affine is None and case.ndim == 2:
        path = out_dir / f"{case.case_id}_{name}.npy"
        atomic_write(path, lambda tmp: np.save(tmp, data.astype(np.float32)))
        return path
    path = out_dir / f"{case.case_id}_{name}{_volume_suffix(case)}"
    write_volume(path, np.moveaxis(data, 0, -1) if components else data, nifti_affine(case), np.float32,
                 components=components)
    return path


def nifti_affine(case: Case) -> np.ndarray:
    """The case's voxel-to-world matrix; a diagonal of its spacing where the source has none (h5, phantoms)."""
    if case.affine is not None:
        return case.affine
    affine = np.eye(4)
    affine[: len(case.spacing), : len(case.spacing)] = np.diag(case.spacing)
    return affine


@dataclass(frozen=True)
class LabelFile:
    """A label map read for scoring, with the grid it lives on (no affine for 2D images)."""

    path: Path
    data: np.ndarray  # int64; multilabel channels first
    spacing: tuple[float, ...]
    affine: np.ndarray | None


def read_label(path: Path) -> LabelFile:
    """A label file as integer class indices; NaN or non-integer values are an error naming the file.

    Labels are never rounded: a float label holding 0.4 was resampled with interpolation, and rounding
    it would score a different segmentation than the one in the file. 2D images count 1 mm per pixel
    (0/255 binary masks mean 0/1); multilabel volumes (a 4th axis or vector pixels) come back channels first.
    """
    parsed = split_suffix(path)
    try:
        if parsed and parsed[2] == "image2d":
            return LabelFile(path, binary_mask_to_index(read_mask(path)).astype(np.int64), (1.0, 1.0), None)
        vol = read_volume(path, as_label=True)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    data = np.moveaxis(vol.data, -1, 0) if vol.components > 1 or vol.data.ndim == 4 else vol.data
    return LabelFile(path, integer_label(data, str(path)).astype(np.int64), vol.spacing, vol.affine)


def read_label_file(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label map and its spacing (see ``read_label``)."""
    label = read_label(path)
    return label.data, label.spacing


def label_files(folder: Path) -> dict[str, Path]:
    """Readable label files of a folder by case id (probability maps, ``*_probs``, left out)."""
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} does not exist")
    found = {}
    for file in _readable_files(folder):
        parsed = split_suffix(file)
        if parsed is not None and not parsed[0].endswith("_probs"):
            found[parsed[0]] = file
    return found
