"""Speed settings of a training run: the mixed-precision dtype, the memory format and compiled networks.

None of them changes what a default CPU run computes: AMP is off on CPU unless ``train.amp=on``,
``channels_last`` is on by itself only for 2D networks on CUDA under AMP (where tensor-core convolutions want
NHWC), and ``train.compile`` is off unless asked for. ``Module.compile`` compiles a network in place, so its
``state_dict`` keys and parameters stay those of the plain network: checkpoints load into uncompiled networks
and EMA teachers read the students' real weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from semiseg.config import Config
from semiseg.methods.base import Nets

# Keyword arguments of ``Module.compile``; tests set a cheap backend here (``{"backend": "eager"}``).
_COMPILE_OPTIONS: dict[str, Any] = {}


def channels_last_enabled(mode: str, dim: int, device: torch.device, amp: bool) -> bool:
    """``train.channels_last``: ``auto`` only for 2D networks on CUDA under AMP, where NHWC convolutions pay."""
    if mode == "auto":
        return device.type == "cuda" and dim == 2 and amp
    return mode == "on"


def memory_format(dim: int) -> torch.memory_format:
    """The channels-last layout of a ``dim``-D network's tensors (NHWC in 2D, NDHWC in 3D)."""
    return torch.channels_last if dim == 2 else torch.channels_last_3d


def to_channels_last(image: Tensor, dim: int) -> Tensor:
    """A ``(B, C, *spatial)`` batch in the channels-last layout (values unchanged)."""
    return image.contiguous(memory_format=memory_format(dim))


def nets_to_channels_last(nets: Nets, dim: int) -> None:
    """Every network's weights in the channels-last layout, in place (the Parameter objects stay the same)."""
    for net in nets.values():
        net.to(memory_format=memory_format(dim))


def compile_nets(nets: Nets) -> None:
    """``torch.compile`` every network in place (``Module.compile``): same parameters, same ``state_dict`` keys."""
    for net in nets.values():
        net.compile(**_COMPILE_OPTIONS)


def prepare_nets(nets: Nets, cfg: Config, *, channels_last: bool) -> None:
    """The run's networks in the memory format and compiled state its settings ask for (before the optimiser)."""
    if channels_last:
        nets_to_channels_last(nets, cfg.model.dim)
    if cfg.train.compile:
        compile_nets(nets)
