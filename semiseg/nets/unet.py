"""A dimension-agnostic U-Net that exposes what semi-supervised methods need.

Methods need more than logits: the penultimate features (reference-guided pseudo labels, feature
consistency), one prediction per decoder scale (URPC, MuST, deep supervision), a second decoder with a
different upsampling path (dual-uncertainty self-training, CCT's auxiliary decoders) and a hook to
perturb features on their way into the decoder (CCT, MuST). Rather than forking the network per method,
the building blocks are public (``encode``, ``decode``, ``decoder_level``, ``head``) and ``forward``
composes them; a method that needs an unusual forward composes the same blocks itself.

Scale convention: ``scales[0]`` is the full-resolution output (the main head), ``scales[k]`` the output
of decoder level ``k`` (``2**k`` times coarser), and the last entry the bottleneck's. Scale heads exist
only when ``scale_heads=True`` so a plain network carries no unused parameters. This is MuST's layer
numbering: layer ``k`` ∈ 0..K+1 (``num_layers = K + 2 = len(widths)``) is decoder level ``k`` for k ≤ K and
the bottleneck block for k = K+1; ``layer_logits(k, ·)`` is its classifier a_k.

Teacher-student schemes that perturb one layer's input (MuST) rebuild that layer from the blocks:
``decoder_level`` for k ≤ K, ``bottleneck(bottleneck_input(encoder_features))`` for the bottleneck, and
``frozen_norm_stats`` keeps those extra passes from shifting the BatchNorm statistics used at test time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["batch", "instance", "group", "none"]
Upsample = Literal["transpose", "interp"]
# perturb(level, tensor, role) -> tensor; role is "skip", "up" or "bottleneck".
PerturbHook = Callable[[int, Tensor, str], Tensor]


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(kind: Norm, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3×3(×3) convolutions, each followed by norm and LeakyReLU; dropout at the end."""

    def __init__(self, dims: int, cin: int, cout: int, norm: Norm, dropout: float) -> None:
        conv = _conv(dims)
        layers: list[nn.Module] = []
        for c_in in (cin, cout):
            layers += [conv(c_in, cout, 3, padding=1, bias=norm == "none"), _norm(norm, dims, cout)]
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Upsample the coarser path, concatenate the skip, convolve."""

    def __init__(self, dims: int, cin: int, cout: int, norm: Norm, dropout: float, mode: Upsample) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            tconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.up = tconv(cin, cout, 2, stride=2)
        else:
            self.up = _conv(dims)(cin, cout, 1)
        self.block = ConvBlock(dims, 2 * cout, cout, norm, dropout)

    def upsample(self, x: Tensor, size: Sequence[int]) -> Tensor:
        if self.mode == "transpose":
            return self.up(x)
        interp = "bilinear" if x.ndim == 4 else "trilinear"
        return self.up(F.interpolate(x, size=tuple(size), mode=interp, align_corners=False))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([skip, x], dim=1))


class Decoder(nn.Module):
    """The expanding path: one ``UpBlock`` per level, from coarse to fine."""

    def __init__(self, dims: int, widths: Sequence[int], norm: Norm, dropout: float, mode: Upsample) -> None:
        super().__init__()
        # levels[k] turns level k+1 features into level k features.
        self.levels = nn.ModuleList(
            UpBlock(dims, widths[k + 1], widths[k], norm, dropout if k > 0 else 0.0, mode)
            for k in range(len(widths) - 1)
        )


@dataclass
class NetOutput:
    """Everything a forward pass can return beyond logits."""

    logits: Tensor
    features: Tensor | None = None  # penultimate features (input of the 1×1 head), full resolution
    scales: list[Tensor] = field(default_factory=list)  # fine → coarse, see module docstring
    decoder_features: list[Tensor] = field(default_factory=list)  # decoder level outputs, fine → coarse
    encoder_features: list[Tensor] = field(default_factory=list)  # ``encode`` outputs; last = bottleneck


class UNet(nn.Module):
    """U-Net for 2D or 3D inputs; spatial sizes must be divisible by ``2 ** (len(widths) - 1)``."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        norm: Norm = "batch",
        dropout: float = 0.0,
        upsample: Upsample = "transpose",
        aux_decoders: Sequence[Upsample] = (),
        scale_heads: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.widths = tuple(widths)
        conv = _conv(spatial_dims)
        chans = (in_channels, *self.widths)
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, chans[k], chans[k + 1], norm, dropout if k > 0 else 0.0)
            for k in range(len(self.widths))
        )
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.decoders = nn.ModuleList(
            Decoder(spatial_dims, self.widths, norm, dropout, mode) for mode in (upsample, *aux_decoders)
        )
        self.heads = nn.ModuleList(conv(self.widths[0], out_channels, 1) for _ in self.decoders)
        self.scale_heads = (
            nn.ModuleList(conv(w, out_channels, 1) for w in self.widths[1:]) if scale_heads else None
        )

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    @property
    def num_decoders(self) -> int:
        return len(self.decoders)

    @property
    def num_layers(self) -> int:
        """Layers with a prediction (MuST's K + 2): decoder levels 0..K and the bottleneck K+1."""
        return len(self.widths)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features, fine → coarse; the last entry is the bottleneck."""
        skips = []
        for k, block in enumerate(self.encoder):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        return skips

    def bottleneck_input(self, encoder_features: Sequence[Tensor]) -> Tensor:
        """The bottleneck block's input: the pooled output of the last encoder level before it."""
        return self.pool(encoder_features[-2])

    def bottleneck(self, z: Tensor) -> Tensor:
        """The bottleneck block alone (the layer K+1 of MuST); ``encode`` ends with it."""
        return self.encoder[-1](z)

    def decoder_level(self, decoder: int, level: int, x: Tensor, skip: Tensor) -> Tensor:
        """Apply decoder ``decoder``'s level ``level`` (upsample ``x``, merge ``skip``)."""
        up_block = self.decoders[decoder].levels[level]
        return up_block(up_block.upsample(x, skip.shape[2:]), skip)

    def decode(
        self, skips: Sequence[Tensor], decoder: int = 0, perturb: PerturbHook | None = None
    ) -> list[Tensor]:
        """Run one decoder; returns the level outputs fine → coarse (level 0 first)."""
        x = skips[-1]
        if perturb is not None:
            x = perturb(len(skips) - 1, x, "bottleneck")
        outputs = []
        for level in reversed(range(len(skips) - 1)):
            up_block = self.decoders[decoder].levels[level]
            up, skip = up_block.upsample(x, skips[level].shape[2:]), skips[level]
            if perturb is not None:
                up, skip = perturb(level, up, "up"), perturb(level, skip, "skip")
            x = up_block(up, skip)
            outputs.append(x)
        return outputs[::-1]

    def head(self, features: Tensor, decoder: int = 0) -> Tensor:
        return self.heads[decoder](features)

    def layer_logits(self, layer: int, features: Tensor, decoder: int = 0) -> Tensor:
        """Classifier a_k of layer ``layer``: the main head for 0, a scale head otherwise (main decoder only)."""
        if layer == 0:
            return self.head(features, decoder)
        if self.scale_heads is None:
            raise RuntimeError("this UNet was built without scale_heads=True")
        if decoder != 0:
            raise ValueError("scale heads belong to the main decoder (decoder=0)")
        return self.scale_heads[layer - 1](features)

    def scale_logits(self, level_features: Sequence[Tensor], bottleneck: Tensor) -> list[Tensor]:
        """Per-scale logits (needs ``scale_heads=True``); entry 0 is left to the main head."""
        if self.scale_heads is None:
            raise RuntimeError("this UNet was built without scale_heads=True")
        coarse = [*level_features[1:], bottleneck]
        return [head(f) for head, f in zip(self.scale_heads, coarse, strict=True)]

    def forward(
        self,
        x: Tensor,
        *,
        decoder: int = 0,
        perturb: PerturbHook | None = None,
        return_features: bool = False,
        return_scales: bool = False,
    ) -> Tensor | NetOutput:
        """Logits of one decoder, or a ``NetOutput`` when features or scales are asked for."""
        skips = self.encode(x)
        levels = self.decode(skips, decoder, perturb)
        logits = self.head(levels[0], decoder)
        if not (return_features or return_scales):
            return logits
        scales = [logits, *self.scale_logits(levels, skips[-1])] if return_scales else []
        return NetOutput(
            logits=logits,
            features=levels[0] if return_features else None,
            scales=scales,
            decoder_features=levels,
            encoder_features=skips,
        )


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def evaluating(nets: Iterable[nn.Module]) -> Iterator[None]:
    """Eval mode inside the block, each net's own mode restored after it.

    Why: a look at the model in the middle of training (a gate's labelled Dice, the engine's yardstick) must
    leave training exactly as it was; eval mode draws no random numbers and leaves BatchNorm statistics alone.
    ``running_norm_stats`` applies it to a network's BatchNorm layers alone.
    """
    modes = [(net, net.training) for net in nets]
    for net, _ in modes:
        net.eval()
    try:
        yield
    finally:
        for net, was_training in modes:
            net.train(was_training)


@contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Inside, BatchNorm layers still normalise with batch statistics but leave their running statistics alone.

    Why: extra training passes on perturbed features (MuST's students) would otherwise pull the running
    mean/variance, which only the clean path uses at test time, towards the perturbed distribution.
    """
    norms = [m for m in module.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@contextmanager
def case_norm_stats(nets: Iterable[nn.Module], estimate: Callable[[], object]) -> Iterator[None]:
    """Inside, every BatchNorm layer normalises with the statistics of what ``estimate`` passed through it.

    Why: a network trained where one site's images set the statistics normalises another site's features wrongly;
    re-estimating them on the case being predicted (AdaBN, Li et al. 2016) needs no label. The running mean and
    variance are reset, re-estimated as a cumulative average over ``estimate``'s batches and used in eval mode;
    the trained statistics, momentum and modes are restored after the block.
    """
    norms = [m for net in nets for m in net.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum, m.training)
             for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        estimate()
        for m in norms:
            m.eval()
        yield
    finally:
        for m, (mean, var, count, momentum, training) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
            m.train(training)


@contextmanager
def running_norm_stats(module: nn.Module) -> Iterator[None]:
    """Inside, BatchNorm layers normalise with their running statistics (as at test time) and leave them alone.

    Why: a pass on perturbed features normalised with its own batch statistics can learn an invariance that
    only holds under batch normalisation; normalising it as the test-time path does keeps the two consistent.
    """
    with evaluating(m for m in module.modules() if isinstance(m, _BATCH_NORMS) and m.training):
        yield
