"""Plain folders of 2D images (PNG/JPEG/BMP/TIFF) with masks paired by file stem.

Layout: ``root/images/a.png`` + ``root/masks/a.png`` (the mask may use another extension); images
without a mask and everything in ``root/unlabelled/`` are unlabelled. Arrays are (C, H, W): rows then
columns, as the file stores them, so a prediction saved as a PNG has the source's size.

Colour: grey images give C=1, RGB(A) images C=3 (alpha dropped). When a folder mixes grey and colour
images, every image is loaded as RGB (grey replicated into three channels) so that all cases share one
channel count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from semiseg.data.case import Case, CaseRef, DatasetSpec
from semiseg.data.check import CheckedLoader, list_values, present_values
from semiseg.data.io import IMAGE_SUFFIXES, binary_mask_to_index, is_image2d, probe_colour, read_image, read_mask
from semiseg.data.labels import LabelSpec, convert_label, parse_labels
from semiseg.errors import ConfigError, DataError

_PATTERN = "*" + "|*".join(IMAGE_SUFFIXES)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_image2d(p)
    )


def _by_stem(files: list[Path]) -> dict[str, Path]:
    """Index by stem; two files with one stem make pairing ambiguous, which the user must resolve."""
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise DataError(f"{path} and {out[path.stem].name} share the name '{path.stem}'; keep one of them")
        out[path.stem] = path
    return out


# --------------------------------------------------------------------------------------------------
# classes


def _classes_from_json(path: Path) -> LabelSpec:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return parse_labels(labels, source=str(path))


def _classes_from_names(names: list[str] | tuple[str, ...]) -> LabelSpec:
    names = [str(n) for n in names]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"class_names must list at least two distinct names (background first), got {names}")
    return parse_labels({n: i for i, n in enumerate(names)}, source="class_names")


def _infer_classes(masks: list[Path], folder: Path) -> LabelSpec:
    """Union of the mask values, which must be 0..K-1 (or {0, 255} for binary masks)."""
    if not masks:
        raise DataError(
            f"{folder}: no masks found, so the classes cannot be inferred; add masks named like their "
            "images, or pass class_names"
        )
    values: set[int] = set()
    for path in masks:
        try:
            values |= {int(v) for v in present_values(read_mask(path))}
        except DataError:
            continue  # unreadable masks are reported when that case is loaded
    if values <= {0, 255} and 255 in values:
        values = {0, 1}
    if len(values) < 2 or values != set(range(max(values) + 1)):
        raise DataError(
            f"{folder}: mask values {list_values(sorted(values))} are not contiguous classes 0..K-1; pass "
            'class_names or add a dataset.json with "labels" to declare the classes'
        )
    names = ["background", *(f"class_{i}" for i in range(1, len(values)))]
    return parse_labels({n: i for i, n in enumerate(names)}, source=f"mask values in {folder}")


def _resolve_classes(root: Path, class_names: list[str] | None, masks: list[Path], folder: Path) -> LabelSpec:
    json_path = root / "dataset.json"
    if json_path.is_file():
        spec = _classes_from_json(json_path)
        if class_names is not None and list(class_names) != list(spec.class_names):
            raise ConfigError(
                f"class_names {list(class_names)} disagree with {json_path} ({list(spec.class_names)}); "
                "drop one of them"
            )
        return spec
    if class_names is not None:
        return _classes_from_names(class_names)
    return _infer_classes(masks, folder)


# --------------------------------------------------------------------------------------------------
# loading one case


@dataclass(frozen=True)
class _Pair:
    case_id: str
    image: Path
    mask: Path | None

    @property
    def origin(self) -> str:
        return f"{self.image}, {self.mask}" if self.mask else str(self.image)


def _load_case(pair: _Pair, channels: int, labels: LabelSpec) -> Case:
    image, mode = read_image(pair.image, channels)
    label = _load_mask(pair, image.shape[1:], labels) if pair.mask is not None else None
    meta = {
        "source": "folder2d",
        "image_path": str(pair.image),
        "mask_path": str(pair.mask) if pair.mask else None,
        "mode": mode,  # the file's PIL mode, to write predictions back in kind
        "size": (int(image.shape[2]), int(image.shape[1])),  # PIL (width, height)
    }
    return Case(pair.case_id, image, label, (1.0, 1.0), None, meta)


def _load_mask(pair: _Pair, shape: tuple[int, ...], labels: LabelSpec) -> np.ndarray:
    mask = read_mask(pair.mask)
    if mask.shape != shape:
        raise DataError(
            f"{pair.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {pair.image} "
            f"size {shape[1]}x{shape[0]} (width x height); resize the mask with nearest-neighbour"
        )
    if labels.mode == "multiclass" and len(labels.class_names) == 2:
        mask = binary_mask_to_index(mask)
    return convert_label(mask, labels, str(pair.mask))


# --------------------------------------------------------------------------------------------------
# public entry point


def open_folder2d(
    root: str | Path,
    *,
    images: str = "images",
    masks: str = "masks",
    unlabelled: str = "unlabelled",
    class_names: list[str] | None = None,
) -> DatasetSpec:
    """List paired 2D images and masks under ``root`` (reads image headers and, to infer classes, masks)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; pass the folder that contains {images}/ and {masks}/")
    image_dir, mask_dir = root / images, root / masks
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found; put the training images there (or pass images=...)")
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: folder not found; put the masks there, named like their images")
    image_files, mask_files = _by_stem(_image_files(image_dir)), _by_stem(_image_files(mask_dir))
    if not image_files:
        raise DataError(f"{image_dir}: no images found matching {_PATTERN}; add images or fix the folder")
    orphans = sorted(set(mask_files) - set(image_files))
    if orphans:
        raise DataError(
            f"{mask_files[orphans[0]]}: mask has no image of the same name in {image_dir} "
            f"({len(orphans)} such mask(s): {list_values(orphans, 5)}); fix the names"
        )
    pairs = [_Pair(stem, path, mask_files.get(stem)) for stem, path in image_files.items()]
    pairs += _unlabelled_pairs(root / unlabelled, image_files)
    labels = _resolve_classes(root, class_names, list(mask_files.values()), mask_dir)
    colour = [probe_colour(p.image) for p in pairs]
    channels = 3 if any(colour) else 1
    refs = [_ref(pair, channels, labels) for pair in pairs]
    return DatasetSpec(
        name=root.name, dim=2, channels=channels, label_mode=labels.mode,
        class_names=list(labels.class_names), cases=refs, root=str(root),
    )


def _unlabelled_pairs(folder: Path, taken: dict[str, Path]) -> list[_Pair]:
    pairs = []
    for stem, path in _by_stem(_image_files(folder)).items():
        if stem in taken:
            raise DataError(
                f"{path}: case id '{stem}' is also used by {taken[stem]}; give unlabelled images their own names"
            )
        pairs.append(_Pair(stem, path, None))
    return pairs


def _ref(pair: _Pair, channels: int, labels: LabelSpec) -> CaseRef:
    loader = CheckedLoader(
        partial(_load_case, pair, channels, labels), labels.mode, len(labels.class_names), pair.origin
    )
    files = (str(pair.image), *([str(pair.mask)] if pair.mask is not None else []))
    return CaseRef(pair.case_id, pair.mask is not None, pair.origin, loader, files=files)
