"""Device and mixed-precision choices, made once, so no other module names a device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from semiseg.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA (this process's local rank under torchrun) when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=auto or cpu")
    return device


def amp_enabled(mode: str, device: torch.device) -> bool:
    """Mixed precision only where it pays: on CUDA (``auto``), or when forced ``on``."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device: torch.device) -> bool:
    """CPU autocast always has bf16; a CUDA device has it from Ampere on; other devices are not assumed to."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def resolve_amp_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``train.amp_dtype``: ``auto`` is bf16 where the device supports it (no loss scaling needed), else fp16."""
    if choice == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return AMP_DTYPES[choice]


@contextlib.contextmanager
def autocast(enabled: bool, device: torch.device, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Autocast in ``dtype`` (None: bf16 where the device supports it, else fp16), or nothing when disabled."""
    if not enabled:
        yield
        return
    if dtype is None:
        dtype = resolve_amp_dtype("auto", device)
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
