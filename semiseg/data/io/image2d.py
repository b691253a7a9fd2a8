"""Plain 2D images (PNG/JPEG/BMP/TIFF) through PIL.

Arrays are (C, H, W): rows then columns, as the file stores them, so a prediction saved as a PNG has the
source's size. Grey images give C=1 and colour ones C=3 (alpha dropped); a grey file read into a colour
dataset is replicated into three channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from semiseg.data.check import integer_label, present_values
from semiseg.data.io.atomic import atomic_write
from semiseg.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def open_pil(path: Path, *, pixels: bool = True) -> Image:
    """Open with PIL, turning its many exception types into one DataError naming the file."""
    from PIL import Image as PILImage

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = PILImage.open(path)
        if pixels:
            img.load()
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(
            f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); the file is corrupt or not "
            "an image — re-export it"
        ) from exc
    if getattr(img, "n_frames", 1) > 1:
        raise DataError(f"{path}: has {img.n_frames} frames/pages; save one 2D image per file")
    return img


def _is_colour(img: Image) -> bool:
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [], dtype=np.int32)[: 3 * 256].reshape(-1, 3)
        return bool(np.any(palette[:, 0] != palette[:, 1]) or np.any(palette[:, 1] != palette[:, 2]))
    return img.mode not in _GREY_MODES


def probe_colour(path: Path) -> bool | None:
    """True for a colour image, False for grey, None when unreadable (left for load() to report)."""
    try:
        with open_pil(path, pixels=False) as img:
            return _is_colour(img)
    except DataError:
        return None


def read_image(path: Path, channels: int) -> tuple[np.ndarray, str]:
    """(C, H, W) float32 and the file's PIL mode; grey files are replicated when ``channels`` is 3."""
    img = open_pil(path)
    mode = img.mode
    if _is_colour(img):
        if channels == 1:
            raise DataError(f"{path}: colour image in a grey dataset; convert it to greyscale")
        array = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    else:
        grey = img.convert("L") if img.mode in ("1", "LA", "La", "P", "PA") else img
        array = np.asarray(grey)
        array = array[None] if channels == 1 else np.repeat(array[None], 3, axis=0)
    return np.ascontiguousarray(array, dtype=np.float32), mode


def read_mask(path: Path) -> np.ndarray:
    """Single-channel class-index array; an RGB mask is accepted when its three channels are equal."""
    img = open_pil(path)
    if img.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(img)
    elif img.mode in ("LA", "La", "PA"):
        array = np.asarray(img)[..., 0]
    else:
        rgb = np.asarray(img.convert("RGB") if img.mode not in ("RGB", "RGBA") else img)[..., :3]
        if np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]):
            raise DataError(
                f"{path}: colour mask (its R, G, B channels differ); save masks as single-channel images "
                "whose pixel values are class indices"
            )
        array = rgb[..., 0]
    return integer_label(array, str(path))


def binary_mask_to_index(mask: np.ndarray) -> np.ndarray:
    """Map a 0/255 mask (how most tools save binary masks) to 0/1; other masks are returned unchanged."""
    if mask.size and mask.max() == 255 and set(present_values(mask).tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    return mask


def write_png(path: Path, array: np.ndarray) -> None:
    """Atomically save an (H, W) or (H, W, C) uint8 array as a PNG."""
    from PIL import Image as PILImage

    image = PILImage.fromarray(array.astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
