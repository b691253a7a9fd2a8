"""Dataset sources: each turns a folder layout (or a generator) into a lazy ``DatasetSpec``.

``open_dataset`` is the single entry point used by the CLI and configs. Source modules are imported on
demand, so listing the sources or opening one layout never pays for the others' dependencies.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semiseg.data.case import DatasetSpec
from semiseg.data.sources.options import check_options
from semiseg.errors import ConfigError, DataError

SOURCES: dict[str, str] = {
    "auto": "detect the layout of `path` among the folder layouts below",
    "nnunet": "nnU-Net v2 folder (dataset.json, imagesTr/, labelsTr/) or Medical Segmentation Decathlon v1",
    "decathlon": "Medical Segmentation Decathlon v1 folder (dataset.json with modality and training lists)",
    "folder2d": "2D PNG/JPEG/BMP/TIFF images in images/ with masks of the same name in masks/",
    "acdc": "SSL4MIS ACDC h5 files: data/{case}.h5, data/slices/, train_slices.list/val.list/test.list",
    "la": "SSL4MIS left atrium h5 files: {case}/mri_norm2.h5 with train.list/test.list",
    "phantom": "synthetic ellipses/ellipsoids generated in memory (no path needed)",
    "demo_brain": "virtual brains warped from the MNI template shipped with nilearn (no path needed)",
    "heart_sites": "development data: cardiac MR stacks from 4 simulated scanner sites, labels from one (no path)",
    "liver_lesions": "development data: 3D CT-like livers with small lesions, for model.dim=3 (no path)",
}

# name -> (module, function, needs a path)
_DISPATCH: dict[str, tuple[str, str, bool]] = {
    "nnunet": ("semiseg.data.sources.nnunet", "open_nnunet", True),
    "decathlon": ("semiseg.data.sources.decathlon", "open_decathlon", True),
    "folder2d": ("semiseg.data.sources.folder2d", "open_folder2d", True),
    "acdc": ("semiseg.data.sources.h5", "open_acdc", True),
    "la": ("semiseg.data.sources.h5", "open_la", True),
    "phantom": ("semiseg.data.sources.phantom", "make_phantoms", False),
    "demo_brain": ("semiseg.data.sources.demo_brain", "open_demo_brain", False),
    "heart_sites": ("semiseg.data.sources.heart_sites", "open_heart_sites", False),
    "liver_lesions": ("semiseg.data.sources.liver_lesions", "open_liver_lesions", False),
}

_CACHED_GENERATORS = ("demo_brain", "heart_sites", "liver_lesions")  # ``path`` is their cache folder

_LAYOUTS = (
    "nnunet: dataset.json + imagesTr/",
    "acdc: data/slices/ or data/*.h5, plus *.list files",
    "la: */mri_norm2.h5",
    "folder2d: images/ (and masks/)",
)


def detect_source(path: str | Path) -> str:
    """Name the layout of an existing folder, or raise a DataError listing the known layouts."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: path does not exist; pass an existing dataset folder")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; pass the dataset folder that contains it")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    data = root / "data"
    if ((data / "slices").is_dir() or any(data.glob("*.h5"))) and any(root.glob("*.list")):
        return "acdc"
    if any(root.glob("*/mri_norm2.h5")):
        return "la"
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return "folder2d"
    raise DataError(
        f"{root}: cannot tell the dataset layout; known layouts are: " + "; ".join(_LAYOUTS)
        + ". Pass source=... explicitly or arrange the folder like one of them"
    )


def _function(source: str) -> tuple[Callable[..., DatasetSpec], bool]:
    module_name, attr, needs_path = _DISPATCH[source]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"source '{source}' is not available in this installation ({exc})") from exc
    return getattr(module, attr), needs_path


def _check_options(source: str, fn: Callable[..., Any], options: dict[str, Any], needs_path: bool) -> None:
    """Reject unknown options with the accepted names instead of a bare TypeError."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = [p.name for p in params[int(needs_path):] if p.kind in keyword]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"source '{source}' has no option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}"
        )


def open_dataset(source: str = "auto", path: str | Path | None = None, **options: Any) -> DatasetSpec:
    """Open a dataset by source name (see ``SOURCES``); "auto" detects the layout of ``path``.

    Generated sources (phantom, demo_brain, heart_sites, liver_lesions) ignore ``path``, except that the cached
    ones use it as their cache folder when no ``cache_dir`` was given.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown dataset source {source!r}; choose one of: {', '.join(SOURCES)}")
    if source == "auto":
        if path is None:
            raise DataError("source 'auto' needs a dataset path; pass path=... (or choose phantom/demo_brain)")
        source = detect_source(path)
    fn, needs_path = _function(source)
    if needs_path:
        if path is None:
            raise DataError(f"source '{source}' needs a dataset path; pass path=...")
        root = Path(path).expanduser()
        if not root.exists():
            raise DataError(f"{root}: path does not exist; pass an existing dataset folder")
        _check_options(source, fn, options, needs_path)
        return fn(root, **check_options(source, options))
    takes_cache = "cache_dir" in inspect.signature(fn).parameters
    if path is not None and source in _CACHED_GENERATORS and takes_cache and "cache_dir" not in options:
        options = {**options, "cache_dir": str(path)}
    _check_options(source, fn, options, needs_path)
    return fn(**check_options(source, options))


__all__ = ["SOURCES", "detect_source", "open_dataset"]
