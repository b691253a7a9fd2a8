"""Whole-case inference: 2D slice by slice (reassembled per volume) or 3D sliding window (MONAI).

Evaluation is always per volume in the source's geometry: a 2D model predicts every slice along the
last axis, the slices are stacked back, and metrics are computed on the stacked volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor

Predictor = Callable[[Tensor], Tensor]  # logits from a batch of images


def logits_to_probs(logits: Tensor, label_mode: str) -> Tensor:
    """Softmax over classes (multiclass) or a sigmoid per channel (multilabel)."""
    return torch.softmax(logits, dim=1) if label_mode == "multiclass" else torch.sigmoid(logits)


def probs_to_label(probs: np.ndarray, label_mode: str) -> np.ndarray:
    """Hard labels in the package's label layout from ``(K, *spatial)`` probabilities."""
    if label_mode == "multiclass":
        return probs.argmax(axis=0).astype(np.uint8)
    return (probs > 0.5).astype(np.uint8)


def _pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes up to a multiple of ``divisor``; return the crop that undoes it."""
    spatial = x.shape[2:]
    before = [(-s % divisor) // 2 for s in spatial]
    after = [-s % divisor - b for s, b in zip(spatial, before, strict=True)]
    pads = [p for b, a in zip(reversed(before), reversed(after), strict=True) for p in (b, a)]
    crop = (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, spatial, strict=True)))
    return F.pad(x, pads), crop


@torch.no_grad()
def predict_slices(
    predictor: Predictor, volume: Tensor, *, label_mode: str, divisor: int, batch_size: int
) -> Tensor:
    """Probabilities ``(K, X, Y, Z)`` of a ``(C, X, Y, Z)`` volume predicted slice by slice."""
    slices = volume.permute(3, 0, 1, 2)  # (Z, C, X, Y)
    outputs = []
    for start in range(0, slices.shape[0], batch_size):
        chunk, crop = _pad_to_multiple(slices[start : start + batch_size], divisor)
        logits = predictor(chunk)[crop]
        outputs.append(logits_to_probs(logits.float(), label_mode))
    return torch.cat(outputs).permute(1, 2, 3, 0)


@torch.no_grad()
def predict_volume(
    predictor: Predictor,
    volume: Tensor,
    *,
    label_mode: str,
    roi_size: Sequence[int],
    batch_size: int,
    overlap: float,
) -> Tensor:
    """Probabilities ``(K, X, Y, Z)`` of a ``(C, X, Y, Z)`` volume by Gaussian-weighted sliding window."""
    logits = sliding_window_inference(
        volume[None], roi_size=tuple(roi_size), sw_batch_size=batch_size, predictor=predictor,
        overlap=overlap, mode="gaussian",
    )
    return logits_to_probs(logits.float(), label_mode)[0]


def volume_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A ``(C, *spatial)`` case array as a ``(C, X, Y, Z)`` tensor: 2D cases get a slice axis of one."""
    return torch.from_numpy(np.ascontiguousarray(array[..., None] if array.ndim == 3 else array)).to(device)


def predict_case_probs(
    predictor: Predictor,
    image: np.ndarray,
    *,
    model_dim: int,
    label_mode: str,
    device: torch.device,
    divisor: int,
    roi_size: Sequence[int],
    batch_size: int,
    overlap: float,
) -> np.ndarray:
    """Probabilities ``(K, *spatial)`` for a normalised ``(C, *spatial)`` image (2D or 3D case)."""
    is_2d_case = image.ndim == 3
    volume = volume_tensor(image, device)
    if model_dim == 2:
        probs = predict_slices(predictor, volume, label_mode=label_mode, divisor=divisor, batch_size=batch_size)
    else:
        probs = predict_volume(
            predictor, volume, label_mode=label_mode, roi_size=roi_size, batch_size=batch_size, overlap=overlap
        )
    out = probs.cpu().numpy()
    return out[..., 0] if is_2d_case else out
