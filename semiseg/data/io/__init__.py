"""Every file the package reads or writes, in one place: NIfTI, SimpleITK formats, 2D images.

Sources (training), prediction input/output and the demo cache all go through these functions, so a
format that training reads can also be predicted on, and every file is written atomically.
"""

from semiseg.data.io.atomic import atomic_write
from semiseg.data.io.formats import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    FileKind,
    describe_suffixes,
    file_kind,
    is_image2d,
    is_nifti,
    output_suffix,
    split_suffix,
)
from semiseg.data.io.image2d import binary_mask_to_index, probe_colour, read_image, read_mask, write_png
from semiseg.data.io.volume import Volume, probe_shape, read_volume, sitk_affine, write_nifti, write_volume

__all__ = [
    "IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "SITK_SUFFIXES", "FileKind", "Volume", "atomic_write",
    "binary_mask_to_index", "describe_suffixes", "file_kind", "is_image2d", "is_nifti", "output_suffix",
    "probe_colour", "probe_shape", "read_image", "read_mask", "read_volume", "sitk_affine", "split_suffix",
    "write_nifti", "write_png", "write_volume",
]
