"""Volumes: NIfTI through nibabel, every other medical format through SimpleITK (optional).

Arrays keep the file axis order (x, y[, z]) of nibabel; SimpleITK arrays are transposed to that same
order and get an affine rebuilt in RAS like nibabel's, so a case looks the same whatever its format.
Writing inverts that mapping, so a prediction lands on the input's grid in the input's format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.io.atomic import atomic_write
from semiseg.data.io.formats import is_nifti
from semiseg.errors import DataError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # ITK's world is LPS, NIfTI's RAS; the matrix is its own inverse


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


def _need_sitk(path: Path, action: str = "reading") -> Any:
    sitk = _import_sitk()
    if sitk is None:
        raise DataError(
            f"{path}: {action} '{''.join(path.suffixes) or path.name}' files needs SimpleITK "
            "(pip install SimpleITK); otherwise convert the files to .nii.gz"
        )
    return sitk


def _unreadable(path: Path, kind: str, exc: Exception) -> DataError:
    text = str(exc).replace(str(path), path.name).strip()
    detail = text.splitlines()[0][:200] if text else ""
    return DataError(
        f"{path}: cannot be read as {kind} ({type(exc).__name__}{': ' + detail if detail else ''}); "
        "the file is corrupt, truncated or in another format — re-export or re-download it"
    )


# --------------------------------------------------------------------------------------------------
# reading


def read_volume(path: Path, *, as_label: bool = False) -> Volume:
    """Read a NIfTI (nibabel) or any SimpleITK format; ``as_label`` keeps the stored dtype (else float32)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if is_nifti(path):
        return _read_nifti(path, as_label)
    return _read_sitk(path, as_label)


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


def sitk_geometry(affine: np.ndarray, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) of an ``ndim``-D ITK image whose ``sitk_affine`` is ``affine``."""
    linear = (_LPS_TO_RAS @ np.asarray(affine, float)[:3, :3])[:ndim, :ndim]
    origin = (_LPS_TO_RAS @ np.asarray(affine, float)[:3, 3])[:ndim]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / np.maximum(spacing, 1e-12)[None, :]
    return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction.ravel()))


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
# writing


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype: type) -> None:
    """Atomically save ``array`` as ``dtype`` NIfTI with ``affine`` and millimetre units."""
    import nibabel as nib

    image = nib.Nifti1Image(array.astype(dtype, copy=False), affine)
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(image, tmp))


def write_volume(path: Path, array: np.ndarray, affine: np.ndarray, dtype: type, *, components: bool = False) -> None:
    """Save an (x, y[, z][, component]) array in the format ``path`` names, on the grid of ``affine``.

    ``components``: the last axis holds per-voxel components (multilabel channels, class probabilities);
    NIfTI keeps them as a 4th axis, SimpleITK formats as vector pixels.
    """
    if is_nifti(path):
        write_nifti(path, array, affine, dtype)
        return
    sitk = _need_sitk(path, "writing")
    ndim = array.ndim - int(components)
    order = [*range(ndim)][::-1] + ([ndim] if components else [])  # (x, y, z[, c]) -> (z, y, x[, c])
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array.astype(dtype, copy=False), order)),
                                   isVector=components)
    spacing, origin, direction = sitk_geometry(affine, ndim)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))
