"""Reading images to predict and writing predictions with the input's geometry.

NIfTI outputs reuse the input's affine (hence spacing and orientation); PNG outputs have the input's
pixel size. Multi-channel NIfTI inputs follow nnU-Net naming (``case_0000.nii.gz``, ``case_0001.nii.gz``)
or hold the channels on a 4th axis.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from semiseg.data.case import Case
from semiseg.data.sources.folder2d import binary_mask_to_index, read_image, read_mask
from semiseg.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _stem(path: Path) -> tuple[str, str] | None:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if name.endswith(suffix):
            return path.name[: -len(suffix)], suffix
    return None


def _read_nifti(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force the read so corruption surfaces here
    except Exception as exc:
        raise DataError(f"{path}: cannot read this NIfTI file ({type(exc).__name__}: {exc})") from None
    return img


def _nifti_case(case_id: str, files: list[Path], channels: int) -> Case:
    images = [_read_nifti(f) for f in files]
    arrays = []
    for img in images:
        data = np.asarray(img.dataobj, dtype=np.float32)
        arrays += [data[..., c] for c in range(data.shape[-1])] if data.ndim == 4 else [data]
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
    header = images[0].header
    spacing = tuple(float(z) for z in header.get_zooms()[: image.ndim - 1])
    return Case(case_id, image, None, spacing, images[0].affine, {"files": [str(f) for f in files], "format": "nifti"})


def _png_case(path: Path, channels: int) -> Case:
    """Read a 2D image exactly as the folder source reads training images (same dtype range, channels)."""
    image, mode = read_image(path, channels)
    meta = {"files": [str(path)], "format": "png", "mode": mode}
    return Case(path.name.rsplit(".", 1)[0], image, None, (1.0, 1.0), None, meta)


def read_inputs(path: str | Path, channels: int) -> list[Case]:
    """Every case in a file or folder of NIfTI or 2D image files."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"input {str(root)!r} does not exist; give a NIfTI/PNG file or a folder of them")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    groups: dict[str, list[Path]] = defaultdict(list)
    pngs = []
    for file in files:
        parsed = _stem(file)
        if parsed is None:
            continue
        stem, suffix = parsed
        if suffix in IMAGE_SUFFIXES:
            pngs.append(file)
            continue
        match = _CHANNEL.match(stem)
        groups[match["case"] if match else stem].append(file)  # nnU-Net channel files share a case id
    cases = [_nifti_case(cid, sorted(fs), channels) for cid, fs in sorted(groups.items())]
    cases += [_png_case(p, channels) for p in pngs]
    if not cases:
        raise DataError(f"no NIfTI (.nii, .nii.gz) or image (.png, .jpg) files found in {str(root)!r}")
    return cases


def write_label(case: Case, label: np.ndarray, out_dir: Path, suffix: str = "") -> Path:
    """Write a predicted label with the case's geometry; returns the written file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if case.meta.get("format") == "png" or (case.affine is None and case.ndim == 2):
        path = out_dir / f"{case.case_id}{suffix}.png"
        array = label if label.ndim == 2 else np.moveaxis(label, 0, -1)  # multilabel → channels last
        Image.fromarray(array.astype(np.uint8)).save(path)
        return path
    path = out_dir / f"{case.case_id}{suffix}.nii.gz"
    data = label if label.ndim == case.ndim else np.moveaxis(label, 0, -1)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), nifti_affine(case)), str(path))
    return path


def write_probabilities(case: Case, probs: np.ndarray, out_dir: Path) -> Path:
    """Class probabilities as float32 NIfTI (classes on the last axis) or .npy for 2D inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if case.affine is None and case.ndim == 2:
        path = out_dir / f"{case.case_id}_probs.npy"
        np.save(path, probs.astype(np.float32))
        return path
    path = out_dir / f"{case.case_id}_probs.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(probs, 0, -1).astype(np.float32), nifti_affine(case)), str(path))
    return path


def nifti_affine(case: Case) -> np.ndarray:
    if case.affine is not None:
        return case.affine
    affine = np.eye(4)
    affine[: len(case.spacing), : len(case.spacing)] = np.diag(case.spacing)
    return affine


def read_label_file(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A label map and its spacing (1 mm per pixel for PNG, whose 0/255 binary masks mean 0/1)."""
    parsed = _stem(path)
    if parsed and parsed[1] in IMAGE_SUFFIXES:
        return binary_mask_to_index(read_mask(path)).astype(np.int64), (1.0, 1.0)
    img = _read_nifti(path)
    data = np.asarray(img.dataobj)
    if data.ndim == 4:  # multilabel stored channels-last
        data = np.moveaxis(data, -1, 0)
    spatial = data.ndim if data.ndim <= 3 else 3
    return np.rint(data).astype(np.int64), tuple(float(z) for z in img.header.get_zooms()[:spatial])


def label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} does not exist")
    found = {}
    for file in sorted(folder.iterdir()):
        parsed = _stem(file)
        if parsed is not None and not parsed[0].endswith("_probs"):
            found[parsed[0]] = file
    return found
