"""One network pass over labelled and unlabelled images together, split back into the two parts.

Most methods run labelled and unlabelled images as one batch: one forward and one backward instead of two,
and BatchNorm normalises both with the same statistics, as the papers' code does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

Output = TypeVar("Output")


def take_rows(value: Any, rows: slice) -> Any:
    """The batch rows ``rows`` of a network output: a tensor, a list or tuple of them, or a dataclass of them."""
    if isinstance(value, Tensor):
        return value[rows]
    if isinstance(value, (list, tuple)):
        return type(value)(take_rows(v, rows) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: take_rows(getattr(value, f.name), rows)
                                              for f in dataclasses.fields(value)})
    if value is None:
        return None
    raise TypeError(f"cannot split a {type(value).__name__} into batch rows")


def joint_forward(forward: Callable[[Tensor], Output], labelled: Tensor, unlabelled: Tensor) -> tuple[Output, Output]:
    """``forward`` once on [labelled; unlabelled] images; its output split into the labelled and the unlabelled rows."""
    out = forward(torch.cat([labelled, unlabelled]))
    n = labelled.shape[0]
    return take_rows(out, slice(None, n)), take_rows(out, slice(n, None))
