"""Classes a dataset declares and how a label file becomes the package's label layout.

Shared by every source that reads declared classes (nnU-Net v2, Decathlon, 2D folders): a mapping like
nnU-Net's ``{"background": 0, "GM": 1}`` or regions ``{"tumour": [1, 2]}`` becomes a ``LabelSpec``, and
``convert_label`` checks a label file's values against it before building the multiclass index map or the
multilabel channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from semiseg.data.case import LabelMode
from semiseg.data.check import compact_int_label, integer_label, list_values, present_values
from semiseg.errors import ConfigError, DataError


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
