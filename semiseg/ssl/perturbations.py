"""Feature-space perturbations (CCT, MuST) and MuST's stochastic perturbation module.

Perturbing hidden features rather than images keeps small lesions intact (an image-space crop or blur
can erase a one-voxel lesion) and, per CCT, the cluster assumption holds better in feature space.

Every function takes features ``(B, C, *spatial)`` with 2 or 3 spatial axes and returns a tensor of the
same shape and dtype. Randomness comes from ``generator`` when given (for reproducible tests) and from
torch's global RNG otherwise, so training runs are governed by the engine's seeded, checkpointed RNG.

* ``uniform_noise``: CCT's F-Noise, ``z + z ⊙ N`` with ``N ~ U(−r, r)`` element-wise (r = 0.3).
* ``gaussian_noise``: additive ``z + σ s ε``, ``ε ~ N(0, 1)``, with ``s`` the per-sample standard deviation
  of ``z`` so the strength does not depend on the feature scale (σ = 0.3). Unlike the multiplicative
  F-Noise it also moves zero activations.
* ``feature_dropout``: CCT's F-Drop: zero the most active regions, i.e. the positions whose channel-mean
  activation exceeds ``γ · max`` with ``γ ~ U(0.7, 0.9)`` drawn per sample.
* ``spatial_dropout``: drop whole channels with probability p = 0.5 and rescale the kept ones by 1/(1 − p)
  (``Dropout2d``/``Dropout3d``, CCT's DropOut decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

PerturbationName = Literal["uniform_noise", "gaussian_noise", "feature_dropout", "spatial_dropout"]
Perturbation = Callable[..., Tensor]  # fn(x, *, generator=None) -> Tensor
Hook = Callable[[int, Tensor, str], Tensor]  # the U-Net's perturb(level, tensor, role) hook


def _rand(shape: Sequence[int], like: Tensor, generator: torch.Generator | None, normal: bool = False) -> Tensor:
    """Fresh U(0, 1) (or N(0, 1)) samples in ``like``'s dtype on its device, drawn from ``generator`` where given."""
    device = like.device if generator is None else generator.device
    draw = torch.randn if normal else torch.rand
    return draw(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    """(B,) → (B, 1, 1, ...) broadcastable against ``x``."""
    return values.view(-1, *([1] * (x.ndim - 1)))


def uniform_noise(x: Tensor, *, magnitude: float = 0.3, generator: torch.Generator | None = None) -> Tensor:
    """CCT's F-Noise: ``z + z ⊙ N = z ⊙ (1 + N)``, ``N ~ U(−magnitude, magnitude)``."""
    factor = _rand(x.shape, x, generator).mul_(2.0 * magnitude).add_(1.0 - magnitude)  # in place: one buffer
    return x * factor


def gaussian_noise(x: Tensor, *, std: float = 0.3, generator: torch.Generator | None = None) -> Tensor:
    """``z + std · s · ε`` with ``s`` the per-sample feature standard deviation (scale-free strength)."""
    scale = x.detach().flatten(1).float().std(dim=1, unbiased=False).to(x.dtype)
    return x + _rand(x.shape, x, generator, normal=True).mul_(std * _per_sample(scale, x))


def feature_dropout(
    x: Tensor, *, low: float = 0.7, high: float = 0.9, generator: torch.Generator | None = None
) -> Tensor:
    """CCT's F-Drop: zero positions whose channel-mean activation is ≥ γ·max, γ ~ U(low, high) per sample."""
    attention = x.detach().mean(dim=1, keepdim=True)
    peak = attention.flatten(1).max(dim=1).values
    gamma = low + (high - low) * _rand((x.shape[0],), x, generator)
    keep = attention < _per_sample(peak * gamma, attention)
    return x * keep.to(x.dtype)


def spatial_dropout(x: Tensor, *, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Channel dropout (Dropout2d/3d): whole feature maps zeroed with probability ``p``, the rest scaled."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"spatial dropout probability must be in [0, 1), got {p}")
    keep = (_rand(x.shape[:2], x, generator) >= p).to(x.dtype) / (1.0 - p)
    return x * keep.view(*x.shape[:2], *([1] * (x.ndim - 2)))


PERTURBATIONS: dict[str, Perturbation] = {
    "uniform_noise": uniform_noise,
    "gaussian_noise": gaussian_noise,
    "feature_dropout": feature_dropout,
    "spatial_dropout": spatial_dropout,
}


def perturbation(name: str) -> Perturbation:
    """Look a perturbation up by its config name."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown feature perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


class StochasticPerturbation:
    """MuST's stochastic perturbation module (SPM, Sec. 2.2), usable as the U-Net's perturb hook.

    Every call draws one function uniformly from ``names`` and applies it, so calling it once for the skip
    features and once for the upsampled path of a layer gives the paper's two independent draws π1, π2.
    """

    def __init__(self, names: Sequence[str] = get_args(PerturbationName), generator: torch.Generator | None = None):
        if not names:
            raise ValueError("the stochastic perturbation module needs at least one perturbation")
        self.functions = [perturbation(n) for n in names]
        self.names = list(names)
        self.generator = generator

    def draw(self) -> int:
        """Index (into ``names``) of a uniformly drawn perturbation."""
        device = "cpu" if self.generator is None else self.generator.device
        return int(torch.randint(len(self.functions), (1,), generator=self.generator, device=device))

    def __call__(self, level: int, x: Tensor, role: str) -> Tensor:
        return self.functions[self.draw()](x, generator=self.generator)


def fixed_hook(name: str, roles: Sequence[str] = ("skip", "bottleneck")) -> Hook:
    """A perturb hook applying one named perturbation to the given roles (CCT: the encoder's outputs)."""
    fn, wanted = perturbation(name), frozenset(roles)

    def hook(level: int, x: Tensor, role: str) -> Tensor:
        return fn(x) if role in wanted else x

    return hook
