"""The one Inferer: whole-case predictions for validation, test evaluation, prediction, robustness,
uncertainty and curricula.

Evaluation is always per volume in the source's geometry: a 2D model predicts every slice along the last
axis (zero-padded to the network's divisor, cropped back), the slices are stacked back and metrics are
computed on the stacked volume; a 3D model goes through MONAI's Gaussian-weighted ``SlidingWindowInferer``.
The geometry (dimension, device, divisor, ROI, window batch, overlap) and mixed precision live here only, so
every caller hands over just "what the network predicts" and gets probabilities back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from torch import Tensor

from semiseg.engine.device import autocast
from semiseg.eval.labels import logits_to_probs
from semiseg.losses import ce_loss

Predictor = Callable[[Tensor], Tensor]  # logits from a batch of images
Sampler = Callable[[Tensor], Tensor | None]  # images → (S, B, K, *spatial) probabilities, or None
_EPS = 1e-6


def pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes up to a multiple of ``divisor``; return the crop that undoes it."""
    spatial = x.shape[2:]
    before = [(-s % divisor) // 2 for s in spatial]
    after = [-s % divisor - b for s, b in zip(spatial, before, strict=True)]
    pads = [p for b, a in zip(reversed(before), reversed(after), strict=True) for p in (b, a)]
    crop = (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, spatial, strict=True)))
    return F.pad(x, pads), crop


def volume_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A ``(C, *spatial)`` case array as a ``(C, X, Y, Z)`` tensor: 2D cases get a slice axis of one."""
    return torch.from_numpy(np.ascontiguousarray(array[..., None] if array.ndim == 3 else array)).to(device)


def _case_array(volume_out: Tensor, image: np.ndarray) -> np.ndarray:
    """Back from the ``(…, X, Y, Z)`` volume layout to the case's own (a 2D case drops its slice axis)."""
    out = volume_out.cpu().numpy()
    return out[..., 0] if image.ndim == 3 else out


class _NoSamples(Exception):
    """Raised inside inference when the method has no ``predict_samples``."""


@dataclass(frozen=True)
class Inferer:
    """Whole-case inference of one trained network (or ensemble) under the run's geometry and AMP setting.

    ``divisor`` comes from the network (``UNet.divisor``); ``roi_size`` is the training patch (3D windows).
    """

    dim: int
    label_mode: str
    device: torch.device
    divisor: int
    roi_size: tuple[int, ...]
    batch_size: int
    overlap: float
    amp: bool = False
    tta: bool = False  # average over flips of the spatial axes (off in training: validation stays as it was)
    amp_dtype: torch.dtype | None = None  # None: bf16 where the device supports it, else fp16

    @cached_property
    def _window(self) -> SlidingWindowInferer:
        return SlidingWindowInferer(roi_size=tuple(self.roi_size), sw_batch_size=self.batch_size,
                                    overlap=self.overlap, mode="gaussian")

    def under_amp(self, predictor: Callable[[Tensor], Tensor | None]) -> Callable[[Tensor], Tensor | None]:
        """``predictor`` run under the run's autocast (the network only; probabilities stay float32)."""

        def run(x: Tensor) -> Tensor | None:
            with autocast(self.amp, self.device, self.amp_dtype):
                return predictor(x)

        return run

    # -- probabilities ---------------------------------------------------------------------------
    @torch.no_grad()
    def volume_probabilities(self, predictor: Predictor, volume: Tensor, label_mode: str | None = None) -> Tensor:
        """``(K, X, Y, Z)`` probabilities of a ``(C, X, Y, Z)`` volume: 2D slice by slice, 3D sliding window.

        With ``tta`` the probabilities are the mean over every flip of the network's spatial axes (X, Y for
        a 2D model, X, Y, Z for a 3D one), each flip undone before averaging.
        """
        if not self.tta:
            return self._plain_probabilities(predictor, volume, label_mode)
        total = None
        for axes in flip_axes(self.dim):
            probs = self._plain_probabilities(predictor, volume.flip(axes) if axes else volume, label_mode)
            probs = probs.flip(axes) if axes else probs
            total = probs if total is None else total + probs
        return total / len(flip_axes(self.dim))

    def _plain_probabilities(self, predictor: Predictor, volume: Tensor, label_mode: str | None) -> Tensor:
        mode, run = label_mode or self.label_mode, self.under_amp(predictor)
        if self.dim == 2:
            chunks = [logits_to_probs(run(chunk)[crop].float(), mode) for _, chunk, crop in self._slice_chunks(volume)]
            return torch.cat(chunks).permute(1, 2, 3, 0)
        return logits_to_probs(self._window(volume[None], run).float(), mode)[0]

    def probabilities(self, predictor: Predictor, image: np.ndarray) -> np.ndarray:
        """``(K, *spatial)`` probabilities of a normalised ``(C, *spatial)`` image (2D or 3D case)."""
        return _case_array(self.volume_probabilities(predictor, volume_tensor(image, self.device)), image)

    def samples(self, sampler: Sampler, image: np.ndarray, num_classes: int) -> np.ndarray | None:
        """``(S, K, *spatial)`` Monte-Carlo probabilities of a normalised image, or None without samples.

        The S samples are folded into channels as logits of their probabilities, so whole-case inference
        (slices or windows, a sigmoid at the end) turns them back into probabilities in the case's geometry.
        """
        run = self.under_amp(sampler)

        def folded(x: Tensor) -> Tensor:
            samples = run(x)
            if samples is None:
                raise _NoSamples
            probs = samples.float().clamp(_EPS, 1.0 - _EPS)
            return torch.logit(probs).movedim(0, 1).flatten(1, 2)  # (B, S·K, *spatial)

        volume = volume_tensor(image, self.device)
        try:
            flat = _case_array(self.volume_probabilities(folded, volume, label_mode="multilabel"), image)
        except _NoSamples:
            return None
        return flat.reshape(-1, num_classes, *flat.shape[1:])

    # -- gradients (FGSM) --------------------------------------------------------------------------
    def input_gradient(self, predictor: Predictor, image: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """``∇_x`` of the cross-entropy of a whole case against its ``(K, *spatial)`` one-hot ground truth.

        2D models take the loss per slice batch (as they predict), 3D models over the stitched volume.
        """
        volume = volume_tensor(image, self.device).float()
        target = volume_tensor(onehot, self.device).float()
        run = self.under_amp(predictor)
        with torch.enable_grad():
            grad = self._slice_gradient(run, volume, target) if self.dim == 2 else self._window_gradient(
                run, volume, target)
        return _case_array(grad, image)

    def _slice_gradient(self, run: Predictor, volume: Tensor, target: Tensor) -> Tensor:
        targets = target.permute(3, 0, 1, 2)
        grads = []
        for start, chunk, crop in self._slice_chunks(volume):
            chunk.requires_grad_(True)
            loss = ce_loss(run(chunk)[crop].float(), targets[start : start + self.batch_size],
                           label_mode=self.label_mode)
            grads.append(torch.autograd.grad(loss, chunk)[0][crop])
        return torch.cat(grads).permute(1, 2, 3, 0)

    def _window_gradient(self, run: Predictor, volume: Tensor, target: Tensor) -> Tensor:
        x = volume[None].clone().requires_grad_(True)
        loss = ce_loss(self._window(x, run).float(), target[None], label_mode=self.label_mode)
        return torch.autograd.grad(loss, x)[0][0]

    def _slice_chunks(self, volume: Tensor) -> Iterator[tuple[int, Tensor, tuple[slice, ...]]]:
        """``(start, padded chunk, crop)`` over the slices of a ``(C, X, Y, Z)`` volume, ``batch_size`` at a time."""
        slices = volume.permute(3, 0, 1, 2)  # (Z, C, X, Y)
        for start in range(0, slices.shape[0], self.batch_size):
            chunk, crop = pad_to_multiple(slices[start : start + self.batch_size], self.divisor)
            yield start, chunk, crop


def flip_axes(dim: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a ``(C, X, Y, Z)`` volume a ``dim``-D network sees (identity first)."""
    spatial = (1, 2, 3)[:dim]
    return [tuple(a for i, a in enumerate(spatial) if mask >> i & 1) for mask in range(2**dim)]


def network_divisor(nets: Iterable[torch.nn.Module]) -> int:
    """The multiple every spatial size must have for all ``nets`` (1 for nets without a ``divisor``)."""
    return int(np.lcm.reduce([int(getattr(net, "divisor", 1)) for net in nets] or [1]))
