"""The data model every source produces and every later layer consumes.

A *case* is one image (channels first, then 2 or 3 spatial axes) with an optional label, its voxel
spacing in millimetres (same axis order as the array) and, for NIfTI inputs, the affine that lets a
prediction be written back with the input's geometry.

Label conventions (the only two the rest of the package understands):

* ``multiclass``: an integer array with the spatial shape, values ``0 .. num_classes-1``; 0 is
  background and ``class_names[0]`` names it.
* ``multilabel``: a ``uint8`` array of shape ``(num_classes, *spatial)`` with 0/1 values; channels may
  overlap and there is no background channel.

Sources are lazy: they list ``CaseRef`` entries whose ``load()`` reads the files, so that a dataset of
hundreds of volumes can be listed, split and checked without holding it all in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

LabelMode = Literal["multiclass", "multilabel"]


@dataclass
class Case:
    """One loaded image with optional label and geometry."""

    case_id: str
    image: np.ndarray  # float32, (C, *spatial)
    label: np.ndarray | None  # see module docstring for the two layouts
    spacing: tuple[float, ...]  # mm per spatial axis, array axis order
    affine: np.ndarray | None = None  # 4x4 voxel-to-world (NIfTI); None for PNG/h5 sources
    meta: dict = field(default_factory=dict)  # free-form: source paths, PNG colour mode, ...

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.image.ndim - 1

    @property
    def has_label(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class CaseRef:
    """A case that has been found but not read yet."""

    case_id: str
    has_label: bool
    origin: str  # human-readable file path(s), used in error messages
    load: Callable[[], Case] = field(repr=False, compare=False)
    files: tuple[str, ...] = ()  # every file the loaded arrays depend on (the case cache's key); () for none


@dataclass
class DatasetSpec:
    """Everything a source knows about a dataset, before any split is made."""

    name: str
    dim: int  # spatial dims of the stored cases (2 or 3)
    channels: int
    label_mode: LabelMode
    class_names: list[str]  # multiclass: index 0 is background; multilabel: one name per channel
    cases: list[CaseRef]  # training pool: labelled and unlabelled cases
    test_cases: list[CaseRef] = field(default_factory=list)  # an explicit held-out test set, if the source has one
    fixed_split: dict[str, list[str]] | None = None  # split prescribed by the source (e.g. ACDC list files)
    root: str = ""
    warnings: list[str] = field(default_factory=list)  # legal but probably unintended; data check and train print them

    @property
    def num_classes(self) -> int:
        """Output channels of a network for this dataset."""
        return len(self.class_names)

    @property
    def labelled(self) -> list[CaseRef]:
        return [c for c in self.cases if c.has_label]

    @property
    def unlabelled(self) -> list[CaseRef]:
        return [c for c in self.cases if not c.has_label]

    def all_refs(self) -> list[CaseRef]:
        return [*self.cases, *self.test_cases]


def label_to_onehot(label: np.ndarray, label_mode: LabelMode, num_classes: int) -> np.ndarray:
    """Return a ``(num_classes, *spatial)`` 0/1 array for either label layout."""
    if label_mode == "multilabel":
        return label.astype(np.uint8, copy=False)
    return (label[None] == np.arange(num_classes).reshape((-1,) + (1,) * label.ndim)).astype(np.uint8)
