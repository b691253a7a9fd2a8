"""The networks a method declares (``Method.networks()``), built, seeded and followed by their EMA teachers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from semiseg.config import Config
from semiseg.errors import SemisegError
from semiseg.methods.base import Method, MethodContext, Nets, NetSpec
from semiseg.nets import build_network
from semiseg.ssl.ema import ema_update


def network_options(cfg: Config) -> dict[str, Any]:
    return {"widths": cfg.model.widths, "norm": cfg.model.norm, "dropout": cfg.model.dropout}


def build_nets(method: Method, cfg: Config, ctx: MethodContext, device: torch.device) -> Nets:
    """Instantiate every ``NetSpec``; each net's init is seeded on its own so order does not matter."""
    nets: Nets = {}
    specs = method.networks()
    for name, spec in specs.items():
        torch.manual_seed(cfg.seed + 1000 * spec.init_seed_offset)
        if spec.builder is not None:
            net = spec.builder(ctx)
        else:
            net = build_network(
                cfg.model.arch, spatial_dims=cfg.model.dim, in_channels=ctx.in_channels,
                out_channels=ctx.num_classes, **{**network_options(cfg), **spec.overrides},
            )
        if spec.head_seed_offset is not None:
            reinit_heads(net, cfg.seed + 1000 * spec.head_seed_offset + 1)
        nets[name] = net.to(device)
    for name, spec in specs.items():
        if spec.ema_of:
            unknown = [s for s in spec.ema_of if s not in nets]
            if unknown:
                raise SemisegError(f"method {method.name!r}: net {name!r} follows unknown net(s) {unknown}")
            update_ema_net(nets, name, spec, step=0, total_steps=cfg.train.steps)
        if not spec.trainable:
            nets[name].requires_grad_(False)
    return nets


def reinit_heads(net: nn.Module, seed: int) -> None:
    """Fresh initial weights for the output heads only (``NetSpec.head_seed_offset``)."""
    heads = getattr(net, "heads", None)
    if heads is None:
        raise SemisegError(f"{type(net).__name__} has no output heads to re-initialise")
    torch.manual_seed(seed)
    for module in heads.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def update_ema_net(nets: Nets, name: str, spec: NetSpec, step: int, total_steps: int = 0) -> None:
    """EMA of ``spec.ema_of`` into ``nets[name]`` with the warmed-up decay min(1 − 1/(t + 1), decay)."""
    decay = min(1.0 - 1.0 / (step + 1), spec.decay(total_steps))
    ema_update(nets[name], [nets[s] for s in spec.ema_of], decay, spec.ema_weights or None, spec.ema_buffers)


def trainable_parameters(nets: Nets, specs: dict[str, NetSpec]) -> list[nn.Parameter]:
    return [p for n, net in nets.items() if specs[n].trainable for p in net.parameters() if p.requires_grad]
