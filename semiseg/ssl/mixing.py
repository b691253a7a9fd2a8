"""Mixing samples: CutMix boxes and UMIX's uncertainty-guided region replacement (UCMT, Section 3.4).

Everything works on (B, C, *spatial) tensors with 2 or 3 spatial axes, so images, one-hot or multilabel
maps and probabilities are mixed by the same functions; ``umix`` also takes (B, *spatial) label maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# -- CutMix -----------------------------------------------------------------------------------------


def box_masks(
    batch: int,
    spatial: Sequence[int],
    *,
    area: tuple[float, float] = (0.25, 0.5),
    n_boxes: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(B, *spatial) bool masks, each the union of ``n_boxes`` axis-aligned boxes inside the image.

    A box covers a fraction of the image drawn uniformly from ``area``, with a random aspect ratio
    (each side's share is the d-th root of the area times a random factor, re-normalised so the product
    stays the area, then clipped to the image) and a uniform position.
    """
    lo, hi = area
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"box area fractions must satisfy 0 < low <= high <= 1, got {area}")
    dims = len(spatial)
    masks = torch.zeros(batch, *spatial, dtype=torch.bool)
    for b in range(batch):
        for _ in range(n_boxes):
            fraction = lo + (hi - lo) * float(torch.rand((), generator=generator))
            log_aspect = (torch.rand(dims, generator=generator) - 0.5) * 0.8  # sides within ~±50% of the cube
            log_aspect -= log_aspect.mean()
            shares = (fraction ** (1.0 / dims)) * torch.exp(log_aspect)
            box = []
            for size, share in zip(spatial, shares.tolist(), strict=True):
                length = max(1, min(size, round(share * size)))
                start = int(torch.randint(0, size - length + 1, (), generator=generator))
                box.append(slice(start, start + length))
            masks[(b, *box)] = True
    return masks.to(device)


def mix(first: Tensor, second: Tensor, mask: Tensor) -> Tensor:
    """Where ``mask`` (B, *spatial) is set take ``second``, elsewhere ``first`` (any channel layout)."""
    m = mask if mask.ndim == first.ndim else mask.unsqueeze(1)
    return torch.where(m, second, first)


# -- UMIX -------------------------------------------------------------------------------------------


def region_grid(spatial: Sequence[int], grid: Sequence[int]) -> tuple[list[int], list[slice]]:
    """Region side per axis and the centred crop the regions tile.

    Regions are ``size // grid`` voxels per axis; when a size is not a multiple of the grid the
    remainder is a border around the tiled area that UMIX never moves.
    """
    if len(grid) != len(spatial):
        raise ValueError(f"grid {list(grid)} has {len(grid)} axes; the image has {len(spatial)}")
    sides, crop = [], []
    for size, n in zip(spatial, grid, strict=True):
        if n < 1 or size // n < 1:
            raise ValueError(f"cannot split an axis of {size} voxels into {n} regions")
        side = size // n
        start = (size - side * n) // 2
        sides.append(side)
        crop.append(slice(start, start + side * n))
    return sides, crop


def to_regions(x: Tensor, grid: Sequence[int]) -> Tensor:
    """(B, C, *spatial) → (B, R, C, *region) with R = Π grid, regions in row-major order."""
    sides, crop = region_grid(x.shape[2:], grid)
    x = x[(slice(None), slice(None), *crop)]
    b, c, dims = x.shape[0], x.shape[1], len(grid)
    shape = [b, c] + [v for n, s in zip(grid, sides, strict=True) for v in (n, s)]
    x = x.reshape(shape)
    grid_axes = [2 + 2 * i for i in range(dims)]
    side_axes = [3 + 2 * i for i in range(dims)]
    return x.permute(0, *grid_axes, 1, *side_axes).reshape(b, -1, c, *sides)


def from_regions(regions: Tensor, like: Tensor, grid: Sequence[int]) -> Tensor:
    """Inverse of ``to_regions``: write the regions back into a copy of ``like`` (border unchanged)."""
    sides, crop = region_grid(like.shape[2:], grid)
    b, c, dims = like.shape[0], like.shape[1], len(grid)
    x = regions.reshape(b, *grid, c, *sides)
    order = [0, 1 + dims] + [v for i in range(dims) for v in (1 + i, 2 + dims + i)]
    x = x.permute(*order).reshape(b, c, *(n * s for n, s in zip(grid, sides, strict=True)))
    out = like.clone()
    out[(slice(None), slice(None), *crop)] = x
    return out


def region_scores(uncertainty: Tensor, grid: Sequence[int]) -> Tensor:
    """(B, *spatial) uncertainty → (B, R) mean uncertainty of each region."""
    regions = to_regions(uncertainty.unsqueeze(1).float(), grid)
    return regions.flatten(2).mean(dim=2)


UMIX_MODES = ("replace", "code")


def umix_source_map(scores1: Tensor, scores2: Tensor, k: int, mode: str = "replace") -> Tensor:
    """(B, R) index map: output region j is filled with input region ``map[:, j]``.

    The top-k most uncertain regions by U¹ receive the top-k most certain regions by U², and the top-k
    most uncertain by U² the top-k most certain by U¹.

    * ``"replace"`` (the paper, Section 3.4, default): each uncertain region is replaced by a certain one,
      which also stays where it was; the i-th most uncertain takes the i-th most certain. Every region is read
      from the image as it was before the mix. A region among the most uncertain of both maps takes U²'s pair
      (written last, as in the authors' code).
    * ``"code"`` (the authors' code): the same replacement, with their pairing — one descending sort per map,
      the uncertain regions its first k entries and the certain ones its last k, so the i-th most uncertain
      takes the (k − i + 1)-th most certain.
    """
    if mode not in UMIX_MODES:
        raise ValueError(f"UMIX mode must be one of {', '.join(UMIX_MODES)}; got {mode!r}")
    b, r = scores1.shape
    if not 1 <= k <= r // 2:
        raise ValueError(f"UMIX top-k must be between 1 and half the number of regions ({r // 2}), got {k}")
    (uncertain1, certain1), (uncertain2, certain2) = (_extremes(s, k, mode) for s in (scores1, scores2))
    source = torch.arange(r, device=scores1.device).repeat(b, 1)
    pairs = ((uncertain1, certain2), (uncertain2, certain1))
    for uncertain, certain in pairs:  # values are input indices: every read sees the unmixed image
        source.scatter_(1, uncertain, certain)
    return source


def _extremes(scores: Tensor, k: int, mode: str) -> tuple[Tensor, Tensor]:
    """(B, k) most uncertain regions (most uncertain first) and (B, k) most certain ones, in the mode's order."""
    descending = scores.argsort(dim=1, descending=True)
    if mode == "code":  # the authors' code: idx[:k] and idx[-k:] of one descending sort
        return descending[:, :k], descending[:, -k:]
    return descending[:, :k], scores.argsort(dim=1)[:, :k]


def apply_region_map(x: Tensor, source: Tensor, grid: Sequence[int]) -> Tensor:
    """Rearrange the regions of (B, C, *spatial) ``x`` by a (B, R) source map."""
    regions = to_regions(x, grid)
    index = source.view(*source.shape, *([1] * (regions.ndim - 2))).expand_as(regions)
    return from_regions(regions.gather(1, index), x, grid)


def umix(
    tensors: Sequence[Tensor], uncertainty1: Tensor, uncertainty2: Tensor, *, k: int, grid: Sequence[int],
    mode: str = "replace",
) -> list[Tensor]:
    """UMIX(X, U¹, U²; k, grid) applied with one region map to every tensor (image, label, …).

    Tensors are (B, C, *spatial); a multiclass label map (B, *spatial) is accepted and returned in its
    own layout.
    """
    source = umix_source_map(region_scores(uncertainty1, grid), region_scores(uncertainty2, grid), k, mode)
    out = []
    for t in tensors:
        squeezed = t.ndim == uncertainty1.ndim
        mixed = apply_region_map(t.unsqueeze(1) if squeezed else t, source, grid)
        out.append(mixed.squeeze(1) if squeezed else mixed)
    return out
