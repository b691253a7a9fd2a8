"""Networks. ``build_network`` is the one place that turns a config into a module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from semiseg.nets.unet import NetOutput, UNet

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet}


def build_network(arch: str, *, spatial_dims: int, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Instantiate a registered architecture with the dataset's channel counts."""
    from semiseg.errors import ConfigError

    if arch not in NETWORKS:
        raise ConfigError(f"model.arch: unknown network {arch!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[arch](spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **options)


@contextmanager
def evaluating(nets: Iterable[nn.Module]) -> Iterator[None]:
    """Eval mode inside the block, each net's own mode restored after it.

    Why: a look at the model in the middle of training (a gate's labelled Dice, the engine's yardstick) must
    leave training exactly as it was; eval mode draws no random numbers and leaves BatchNorm statistics alone.
    """
    modes = [(net, net.training) for net in nets]
    for net, _ in modes:
        net.eval()
    try:
        yield
    finally:
        for net, was_training in modes:
            net.train(was_training)


__all__ = ["NETWORKS", "NetOutput", "UNet", "build_network", "evaluating"]
