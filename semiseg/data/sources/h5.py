"""The h5 files of the SSL4MIS family (ACDC and the left atrium, LA).

ACDC: ``root/data/{case}.h5`` volumes stored (D, H, W) with keys ``image`` and ``label``, training
slices ``root/data/slices/{case}_slice_{i}.h5`` (H, W), and list files at ``root`` naming the split.
Volumes are transposed to (H, W, D) because the rest of the package slices 3D volumes along the LAST
axis for 2D training. LA: ``root/{case}/mri_norm2.h5`` already (X, Y, Z).

These files carry no voxel spacing. ACDC uses ``spacing`` when given, else 1 mm with
``meta["spacing_known"] = False``: distances (HD95, ASD) are then in voxels, not millimetres.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from semiseg.data.case import Case, CaseRef, DatasetSpec
from semiseg.data.check import CheckedLoader, compact_int_label, integer_label, list_values
from semiseg.errors import ConfigError, DataError

ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
LA_CLASSES = ["background", "left atrium"]
LA_FILE = "mri_norm2.h5"
_SLICE = re.compile(r"^(?P<case>.+)_slice_(?P<index>\d+)$")


# --------------------------------------------------------------------------------------------------
# reading


def read_h5(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read whole datasets by key, naming the file and the keys it does have when one is missing."""
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: file not found; restore it or remove the case from the list files")
    try:
        with h5py.File(path, "r") as handle:
            missing = [k for k in keys if k not in handle]
            if missing:
                raise DataError(
                    f"{path}: has no dataset {missing[0]!r} (found {sorted(handle.keys())}); the SSL4MIS "
                    f"layout needs the keys {list(keys)}"
                )
            return {k: np.asarray(handle[k][()]) for k in keys}
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError for corrupt/truncated files, others for odd content
        raise DataError(
            f"{path}: cannot be read as HDF5 ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated — re-download it"
        ) from exc


def _expect_ndim(path: Path, array: np.ndarray, key: str, ndim: int, layout: str) -> None:
    if array.ndim != ndim:
        raise DataError(f"{path}: '{key}' has shape {array.shape}; expected {ndim}D {layout}")


def _case_from_arrays(
    case_id: str, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...], meta: dict
) -> Case:
    where = meta.get("file") or case_id
    label = compact_int_label(integer_label(label, where))
    return Case(case_id, np.ascontiguousarray(image, dtype=np.float32)[None], label, spacing, None, meta)


# --------------------------------------------------------------------------------------------------
# ACDC


@dataclass(frozen=True)
class _AcdcCase:
    case_id: str
    volume: Path
    slices_dir: Path
    spacing: tuple[float, float, float]
    spacing_known: bool

    @property
    def origin(self) -> str:
        if self.volume.is_file():
            return str(self.volume)
        return f"{self.volume} (or {self.slices_dir / (self.case_id + '_slice_*.h5')})"

    @property
    def files(self) -> tuple[str, ...]:
        """The volume file, or else its slice files (the case cache's key)."""
        if self.volume.is_file():
            return (str(self.volume),)
        return tuple(sorted(str(p) for p in self.slices_dir.glob(f"{glob_escape(self.case_id)}_slice_*.h5")))


def _load_acdc(case: _AcdcCase) -> Case:
    meta = {"source": "acdc", "spacing_known": case.spacing_known}
    if case.volume.is_file():
        arrays = read_h5(case.volume, ("image", "label"))
        for key in ("image", "label"):
            _expect_ndim(case.volume, arrays[key], key, 3, "(slices, height, width)")
        image, label = (arrays[k].transpose(1, 2, 0) for k in ("image", "label"))  # slice axis last
        if image.shape != label.shape:
            raise DataError(f"{case.volume}: image shape {image.shape} differs from label shape {label.shape}")
        meta["file"] = str(case.volume)
    else:
        image, label = _stack_slices(case)
        meta["file"] = str(case.slices_dir / f"{case.case_id}_slice_*.h5")
    return _case_from_arrays(case.case_id, image, label, case.spacing, meta)


def _slice_files(case: _AcdcCase) -> list[Path]:
    found: dict[int, Path] = {}
    if case.slices_dir.is_dir():
        for path in case.slices_dir.glob(f"{glob_escape(case.case_id)}_slice_*.h5"):
            match = _SLICE.match(path.stem)
            if match and match["case"] == case.case_id:
                found[int(match["index"])] = path
    if not found:
        raise DataError(
            f"{case.volume}: volume not found, and no slices {case.case_id}_slice_*.h5 in {case.slices_dir}; "
            "restore the files or remove the case from the list files"
        )
    gaps = sorted(set(range(max(found) + 1)) - set(found))
    if gaps:
        raise DataError(
            f"{case.slices_dir / (case.case_id + '_slice_*.h5')}: slices {list_values(gaps)} are missing, so "
            f"the volume cannot be rebuilt; restore them or provide {case.volume}"
        )
    return [found[i] for i in sorted(found)]


def glob_escape(text: str) -> str:
    """Escape glob metacharacters so a case id is matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _stack_slices(case: _AcdcCase) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a (H, W, D) volume from its 2D training slices (slice axis last)."""
    images, labels = [], []
    for path in _slice_files(case):
        arrays = read_h5(path, ("image", "label"))
        for key in ("image", "label"):
            _expect_ndim(path, arrays[key], key, 2, "(height, width) slice")
        if images and arrays["image"].shape != images[0].shape:
            raise DataError(
                f"{path}: slice shape {arrays['image'].shape} differs from the case's first slice "
                f"{images[0].shape}; the slices of one case must share a size"
            )
        if arrays["label"].shape != arrays["image"].shape:
            raise DataError(
                f"{path}: image shape {arrays['image'].shape} differs from label {arrays['label'].shape}"
            )
        images.append(arrays["image"])
        labels.append(arrays["label"])
    return np.stack(images, axis=-1), np.stack(labels, axis=-1)


def _read_list(path: Path) -> list[str]:
    """Case names, one per line; '.h5' suffixes and blank lines are tolerated."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    names = [line.strip().removesuffix(".h5") for line in lines]
    return list(dict.fromkeys(n for n in names if n))


def _slice_list_cases(path: Path) -> list[str]:
    cases = []
    for name in _read_list(path):
        match = _SLICE.match(name)
        if match is None:
            raise DataError(f"{path}: line {name!r} is not of the form {{case}}_slice_{{index}}")
        cases.append(match["case"])
    return list(dict.fromkeys(cases))


def _check_spacing(spacing: tuple[float, ...] | list[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"spacing must be {ndim} positive numbers (array axis order), got {spacing!r}")
    return values


def _acdc_lists(root: Path, data: Path) -> tuple[list[str], list[str], list[str], bool]:
    """(train, val, test, from_lists) from the list files, or every volume when there are none."""
    train_list, slices_list = root / "train.list", root / "train_slices.list"
    val_list, test_list = root / "val.list", root / "test.list"
    if not any(p.is_file() for p in (train_list, slices_list, val_list, test_list)):
        found = {p.stem for p in data.glob("*.h5")}
        found |= {m["case"] for p in (data / "slices").glob("*.h5") if (m := _SLICE.match(p.stem))}
        return sorted(found), [], [], False
    train = _read_list(train_list) if train_list.is_file() else []
    if slices_list.is_file():
        train += [c for c in _slice_list_cases(slices_list) if c not in train]
    val = _read_list(val_list) if val_list.is_file() else []
    test = _read_list(test_list) if test_list.is_file() else []
    return train, val, test, True


def _check_disjoint(root: Path, parts: dict[str, list[str]]) -> None:
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = sorted(set(parts[a]) & set(parts[b]))
            if both:
                raise DataError(
                    f"{root}: cases {list_values(both, 5)} are in both the {a} and {b} list files; "
                    "a case may belong to one split only"
                )


def open_acdc(root: str | Path, *, spacing: tuple[float, float, float] | None = None) -> DatasetSpec:
    """List the ACDC volumes of an SSL4MIS folder with the split its list files prescribe.

    ``spacing`` is in array axis order (H, W, D) after the transposition; train and val cases form
    ``cases``, test cases ``test_cases``.
    """
    root = Path(root).expanduser()
    data = root / "data"
    if not data.is_dir():
        raise DataError(
            f"{data}: folder not found; the SSL4MIS ACDC layout keeps volumes in data/ and slices in data/slices/"
        )
    voxel = _check_spacing(spacing, 3)
    train, val, test, from_lists = _acdc_lists(root, data)
    if not train and not val:
        raise DataError(
            f"{root}: no ACDC cases found (searched train_slices.list, train.list, val.list, "
            f"data/*.h5 and data/slices/*_slice_*.h5); check the folder"
        )
    _check_disjoint(root, {"train": train, "val": val, "test": test})

    def ref(name: str) -> CaseRef:
        item = _AcdcCase(
            name, data / f"{name}.h5", data / "slices", voxel or (1.0, 1.0, 1.0), voxel is not None
        )
        loader = CheckedLoader(partial(_load_acdc, item), "multiclass", len(ACDC_CLASSES), item.origin)
        return CaseRef(name, True, item.origin, loader, files=item.files)

    return DatasetSpec(
        name="ACDC", dim=3, channels=1, label_mode="multiclass", class_names=list(ACDC_CLASSES),
        cases=[ref(n) for n in [*train, *val]], test_cases=[ref(n) for n in test],
        fixed_split={"train": train, "val": val, "test": test} if from_lists else None, root=str(root),
    )


# --------------------------------------------------------------------------------------------------
# LA


def _load_la(case_id: str, path: Path, spacing: tuple[float, ...], spacing_known: bool) -> Case:
    arrays = read_h5(path, ("image", "label"))
    for key in ("image", "label"):
        _expect_ndim(path, arrays[key], key, 3, "(x, y, z)")
    if arrays["image"].shape != arrays["label"].shape:
        raise DataError(
            f"{path}: image shape {arrays['image'].shape} differs from label shape {arrays['label'].shape}"
        )
    meta = {"source": "la", "file": str(path), "spacing_known": spacing_known}
    return _case_from_arrays(case_id, arrays["image"], arrays["label"], spacing, meta)


def open_la(
    root: str | Path, *, spacing: tuple[float, float, float] | None = (0.625, 0.625, 0.625)
) -> DatasetSpec:
    """List the left-atrium cases ``root/{case}/mri_norm2.h5``; ``train.list``/``test.list`` fix the split.

    The default spacing is the 0.625 mm isotropic grid of the 2018 LA challenge; None means unknown
    (1 voxel, ``meta["spacing_known"] = False``). Without list files every case is in the training pool
    and no split is prescribed; with them, folders the lists do not name are ignored. The lists give no
    validation set, so ``fixed_split`` has only "train" and "test".
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; pass the folder that holds {{case}}/{LA_FILE}")
    voxel = _check_spacing(spacing, 3)
    found = sorted(p.parent.name for p in root.glob(f"*/{LA_FILE}"))
    train_list, test_list = root / "train.list", root / "test.list"
    has_lists = train_list.is_file() or test_list.is_file()
    test = _read_list(test_list) if test_list.is_file() else []
    train = _read_list(train_list) if train_list.is_file() else [n for n in found if n not in test]
    if not train:
        raise DataError(f"{root}: no cases found matching */{LA_FILE} (or listed in train.list); check the folder")
    _check_disjoint(root, {"train": train, "test": test})

    def ref(name: str) -> CaseRef:
        path = root / name / LA_FILE
        read = partial(_load_la, name, path, voxel or (1.0, 1.0, 1.0), voxel is not None)
        loader = CheckedLoader(read, "multiclass", len(LA_CLASSES), str(path))
        return CaseRef(name, True, str(path), loader, files=(str(path),))

    return DatasetSpec(
        name="LA", dim=3, channels=1, label_mode="multiclass", class_names=list(LA_CLASSES),
        cases=[ref(n) for n in train], test_cases=[ref(n) for n in test],
        fixed_split={"train": train, "test": test} if has_lists else None, root=str(root),
    )
