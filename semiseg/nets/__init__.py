"""Networks. ``build_network`` is the one place that turns a config into a module."""

from __future__ import annotations

from typing import Any

from torch import nn

from semiseg.nets.unet import NetOutput, UNet, evaluating

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet}


def build_network(arch: str, *, spatial_dims: int, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Instantiate a registered architecture with the dataset's channel counts."""
    from semiseg.errors import ConfigError

    if arch not in NETWORKS:
        raise ConfigError(f"model.arch: unknown network {arch!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[arch](spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **options)


__all__ = ["NETWORKS", "NetOutput", "UNet", "build_network", "evaluating"]
