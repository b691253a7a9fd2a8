"""The one registry of file suffixes: which reader a file goes to, and what a prediction for it is saved as.

Three families: NIfTI (nibabel), the other volume formats SimpleITK reads (MetaImage, NRRD, ...) and
plain 2D images (PIL). Matching is case-insensitive on the full suffix, so ``scan.nii.gz`` is NIfTI and
not ``.gz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

FileKind = Literal["nifti", "sitk", "image2d"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".gipl.gz", ".gipl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_KINDS: tuple[tuple[FileKind, tuple[str, ...]], ...] = (
    ("nifti", NIFTI_SUFFIXES),
    ("sitk", SITK_SUFFIXES),
    ("image2d", IMAGE_SUFFIXES),
)
# Detached-header formats keep voxels in a second file, which a rename-into-place cannot move along;
# their predictions are written in the single-file form of the same format.
_SINGLE_FILE = {".mhd": ".mha", ".nhdr": ".nrrd", ".nii": ".nii.gz"}


def split_suffix(path: Path) -> tuple[str, str, FileKind] | None:
    """(stem, suffix as written, kind) of a readable file name, or None for any other file."""
    lower = path.name.lower()
    for kind, suffixes in _KINDS:
        for suffix in suffixes:
            if lower.endswith(suffix) and len(lower) > len(suffix):
                return path.name[: -len(suffix)], path.name[-len(suffix) :], kind
    return None


def file_kind(path: Path) -> FileKind | None:
    parsed = split_suffix(path)
    return parsed[2] if parsed else None


def is_nifti(path: Path) -> bool:
    return file_kind(path) == "nifti"


def is_image2d(path: Path) -> bool:
    return file_kind(path) == "image2d"


def output_suffix(suffix: str) -> str:
    """The suffix a volume prediction takes for an input with ``suffix`` (same format, one file)."""
    lower = suffix.lower()
    return _SINGLE_FILE.get(lower, lower)


def describe_suffixes() -> str:
    """All readable suffixes, for messages that say what was expected."""
    return ", ".join(s for _, suffixes in _KINDS for s in suffixes)
