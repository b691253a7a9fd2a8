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


@contextlib.contextmanager
def autocast(enabled: bool, device: torch.device) -> Iterator[None]:
    if not enabled:
        yield
        return
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
