"""Reference-guided pseudo labels (Seibold et al., "Reference-Guided Pseudo-Label Generation", AAAI 2022).

Unlabelled pixels take the label of the most similar labelled pixel in a small reference pool (Eqs. 1-4),
weighted by how unambiguous their neighbourhood in feature space is (Eqs. 5-7). Everything here is a plain
function on tensors, so any method can turn its penultimate features into pseudo labels:
``reference_pseudo_labels`` is the one-call entry point, the other functions are its steps.

**Classes in both label modes.** The matcher works on *class codes*: every reference carries a code and
the code indexes a table of label vectors. Multiclass: the code is the class index, the table the identity
(one-hot rows) and c = K, every class of the task, as in Eq. 6's sum over j' = 1..c. Multilabel: the paper
copies the nearest reference's label vector whole (Eq. 4), and Eq. 5's condition ``y = j`` compares label
vectors, so here each *distinct label vector* in the reference set is a class (background = the all-zero
vector, an overlap such as lung ∩ clavicle its own vector) and c is the number of distinct vectors in the
pool. Per-channel classes would leave pure-background pixels without any class, and their P and W would
measure nothing but the distances to foreground; the vector form keeps Eqs. 5-7 exactly as written and
extends to any number of channels (the paper's 72-label set has far fewer distinct vectors than 2^72).
With a single distinct vector there is nothing to be ambiguous about and W = 1 (0 where all distances are 1).

**Memory and speed.** The naive distance matrix holds p·s² × (unlabelled pixels) entries (1.7 GiB for four
88×104 slices at p = 3, s = 64) and Eq. 5's top-k another k values and indices per pixel. ``match`` never
materialises either. Eq. 5 only needs, per unlabelled pixel, each class's closest distance and whether that
class reaches the k nearest references. With similarities S = 1 − D and class maxima v_j, class j reaches
the k nearest iff fewer than k references are strictly closer, and only classes i with v_i > v_j can have
such references: rank_j = Σ_{i: v_i > v_j} #{r ∈ i : S_r > v_j}. One pass over the references gives the v_j,
visiting the largest class last so that its share of every rank is counted while its similarities are at
hand; bounds (class i adds between 1 and n_i references) then settle nearly every (pixel, class) pair, and a
second pass over the smaller classes counts the rest. Both passes walk over blocks of ``block_elements``
similarities (unlabelled-pixel chunk × reference chunk), so peak memory is set by the block size alone,
whatever p, s and k: this replaces a running top-k, whose buffer would grow with k, and makes k = 100 % of the
references (out of memory in the paper's Table 3) the cheapest setting. Ties at the k-th distance count as
reaching the k nearest; ``match_dense`` (the naive form, for tests) and ``match`` agree everywhere else, and
both give the nearest-label tie to the lowest class code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8  # ε of Eqs. 3 and 6


# -- Eq. 1: a pool that covers every class ------------------------------------------------------


def class_presence(labels: Tensor, label_mode: str, num_classes: int) -> Tensor:
    """(B, C) bool: which classes (multiclass) or channels (multilabel) occur in each labelled image."""
    if label_mode == "multiclass":
        flat = labels.reshape(labels.shape[0], -1).long()
        onehot = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
        return onehot.scatter_(1, flat, True)
    return labels.reshape(*labels.shape[:2], -1).gt(0.5).any(dim=2)


def sample_pool(presence: Tensor, pool_size: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of a random pool of ``pool_size`` images in which every present class occurs (Eq. 1).

    ``presence`` is (B, C) bool (``class_presence``). Images are visited in random order and greedily picked
    for the most classes not yet covered, then the pool is filled with random other images. A class absent
    from every image cannot be covered; if no ``pool_size`` images cover all present classes the pool grows
    to the greedy cover, because a class missing from the pool can never be assigned (the paper's reason
    for Eq. 1). With fewer than ``pool_size`` images, all are used.
    """
    presence = presence.detach().cpu().bool()
    order = torch.randperm(presence.shape[0], generator=generator)
    shuffled = presence[order]
    picked = torch.zeros(len(order), dtype=torch.bool)
    uncovered = presence.any(dim=0)
    while uncovered.any():
        gain = (shuffled & uncovered).sum(dim=1).masked_fill(picked, -1)
        best = int(gain.argmax())  # the first of the maxima in random order: a random tie-break
        picked[best] = True
        uncovered &= ~shuffled[best]
    fill = (~picked).nonzero().squeeze(1)[: max(0, pool_size - int(picked.sum()))]
    picked[fill] = True
    return order[picked]


# -- Eq. 2: references ----------------------------------------------------------------------------


def subsample(features: Tensor, labels: Tensor, size: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour subsampling of features (P, d, *spatial) and labels to ``size`` per axis (Eq. 2).

    Labels are (P, *spatial) class indices or (P, K, *spatial) multilabel maps. An axis shorter than the
    target keeps its size (upsampling would only duplicate references).
    """
    spatial = features.shape[2:]
    sizes = [size] * len(spatial) if isinstance(size, int) else list(size)
    target = [min(s, n) for s, n in zip(sizes, spatial, strict=True)]
    if list(spatial) == target:
        return features, labels
    feats = F.interpolate(features, size=target, mode="nearest")
    squeezed = labels.ndim == features.ndim - 1
    lab = F.interpolate((labels.unsqueeze(1) if squeezed else labels).float(), size=target, mode="nearest")
    lab = lab.squeeze(1).to(labels.dtype) if squeezed else lab.to(labels.dtype)
    return feats, lab


def label_codes(labels: Tensor, label_mode: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-pixel class codes (N,) and the (C, K) table of label vectors they index (see module docstring).

    ``labels`` is (N,) class indices or (N, K) multilabel vectors.
    """
    if label_mode == "multiclass":
        return labels.long(), torch.eye(num_classes, device=labels.device)
    table, codes = torch.unique(labels.gt(0.5).float(), dim=0, return_inverse=True)
    return codes, table


def code_shares(codes: Tensor, num_codes: int) -> Tensor:
    """(C,) share of the pixels carrying each class code: the references' class balance, or the share cap's u_c."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).float()
    return counts / counts.sum()


def flatten_pixels(x: Tensor) -> Tensor:
    """(B, d, *spatial) → (B·Π spatial, d): one row per pixel."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


# -- Eqs. 3-5: matching -----------------------------------------------------------------------------


def clipped_cosine_distance(queries: Tensor, refs: Tensor) -> Tensor:
    """Eq. 3 as written, (N, R): 1 − max(r·u / (‖r‖ ‖u‖ + ε), 0)."""
    dots = queries @ refs.T
    norms = queries.norm(dim=1, keepdim=True) * refs.norm(dim=1)[None]
    return 1.0 - (dots / (norms + EPS)).clamp_min(0.0)


def match_dense(queries: Tensor, refs: Tensor, codes: Tensor, num_codes: int, k: int) -> tuple[Tensor, Tensor]:
    """Naive Eqs. 3-5 with the whole distance matrix and ``torch.topk``: (nearest code (N,), δ (N, C)).

    Memory ∝ N × R; kept as the definition ``match`` is tested against.
    """
    order = torch.argsort(codes, stable=True)  # ties of Eq. 4 go to the lowest code, as in ``match``
    refs, codes = refs[order], codes[order]
    dist = clipped_cosine_distance(queries.float(), refs.float())
    nearest = codes[dist.argmin(dim=1)]
    k = min(max(1, k), refs.shape[0])
    top_dist, top_idx = dist.topk(k, dim=1, largest=False)
    delta = torch.ones(queries.shape[0], num_codes, device=queries.device)
    delta.scatter_reduce_(1, codes[top_idx], top_dist, reduce="amin")
    return nearest, delta


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to unit length; a zero row stays zero (cosine 0, distance 1, as Eq. 3 gives it)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


class _Blocks:
    """Unit reference features, transposed and sorted by code, walked in blocks of at most ``width`` columns.

    Class j owns columns ``starts[j]:starts[j + 1]``. One preallocated buffer takes every (rows × width)
    similarity block, so the loops below allocate nothing of that size.
    """

    def __init__(self, refs: Tensor, codes: Tensor, num_codes: int, block_elements: int) -> None:
        order = torch.argsort(codes, stable=True)
        self.counts = torch.bincount(codes, minlength=num_codes).to(refs.device)
        self.largest = int(self.counts.argmax())
        self.starts = [0, *torch.cumsum(self.counts, 0).tolist()]
        self.refs_t = _unit(refs.float()[order]).T.contiguous()  # (d, R)
        self.width = max(1, min(4096, int(self.counts.max()), block_elements))
        self.rows = max(1, block_elements // self.width)
        self.buffer = torch.empty(self.rows * self.width, device=refs.device)
        self.scratch = torch.empty(self.rows * self.width, device=refs.device)

    def similarities(self, q: Tensor, code: int) -> Iterator[Tensor]:
        """Cosines of the rows of ``q`` (≤ ``rows``) to class ``code``'s references, one block at a time.

        Each block lives in the shared buffer, so use it before asking for the next.
        """
        lo, hi = self.starts[code], self.starts[code + 1]
        for a in range(lo, hi, self.width):
            cols = self.refs_t[:, a : min(a + self.width, hi)]
            yield torch.mm(q, cols, out=self.buffer[: q.shape[0] * cols.shape[1]].view(q.shape[0], cols.shape[1]))

    def count_above(self, sims: Tensor, thresholds: Tensor) -> Tensor:
        """(n,) number of entries of each row of ``sims`` strictly above its threshold (n, 1).

        Comparing into a float buffer and summing is several times faster than summing a bool tensor.
        """
        flags = self.scratch[: sims.numel()].view(sims.shape)
        return torch.gt(sims, thresholds, out=flags).sum(dim=1)


def _scan(q: Tensor, blocks: _Blocks, counting: bool) -> tuple[Tensor, Tensor]:
    """First pass: (n, C) class maxima v (clipped at 0) and (n, C) counts of the largest class above each v_j.

    The largest class goes last, so every other maximum is known while its similarities are at hand: its
    share of each rank (the bulk of the references) is counted in the same pass, and ``_reaches_k`` rarely
    needs a second one. ``counting`` False gives the maxima alone.
    """
    num_codes = len(blocks.counts)
    v = torch.zeros(q.shape[0], num_codes, device=q.device)
    above = torch.zeros_like(v)
    others = [j for j in range(num_codes) if j != blocks.largest]
    for j in [*others, blocks.largest]:
        thresholds = [i for i in others if bool((v[:, i] > 0).any())] if counting and j == blocks.largest else []
        for sims in blocks.similarities(q, j):
            torch.maximum(v[:, j], sims.amax(dim=1), out=v[:, j])
            for i in thresholds:
                above[:, i] += blocks.count_above(sims, v[:, i : i + 1])
    return v, above


def _reaches_k(q: Tensor, v: Tensor, above: Tensor, blocks: _Blocks, k: int) -> Tensor:
    """(n, C) bool: does class j's closest reference rank among the k nearest? (see module docstring).

    Class i adds to class j's rank only if v_i > v_j, then between 1 and n_i references; the largest class's
    share is exact (``above``). Bounds settle most pairs; the rest are counted over the other classes.
    """
    closer = v[:, :, None] > v[:, None, :]  # [·, i, j]: class i's best beats class j's best
    most = closer * blocks.counts[None, :, None].to(v.dtype)
    least = closer.to(v.dtype)
    most[:, blocks.largest], least[:, blocks.largest] = above, above
    inside = most.sum(dim=1) < k
    undecided = ~inside & (least.sum(dim=1) < k) & (v > 0)  # v_j = 0: δ_j = 1 whatever the answer
    rows = undecided.any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return inside
    thresholds = torch.where(undecided[rows], v[rows], torch.inf)  # +inf counts nothing
    rank = above[rows].clone()
    qs, vs = q[rows], v[rows]
    for i in range(v.shape[1]):
        pairs = (vs[:, i : i + 1] > thresholds).any(dim=0)  # classes j that class i can rank above
        if i == blocks.largest or not pairs.any():
            continue
        for sims in blocks.similarities(qs, i):
            for j in pairs.nonzero().squeeze(1).tolist():
                rank[:, j] += blocks.count_above(sims, thresholds[:, j : j + 1])
    inside[rows] = torch.where(undecided[rows], rank < k, inside[rows])
    return inside


def match(
    queries: Tensor,
    refs: Tensor,
    codes: Tensor,
    num_codes: int,
    k: int,
    *,
    block_elements: int = 1 << 20,
    distances: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Eqs. 3-5 in bounded memory: (nearest code (N,), δ (N, C) or None when ``distances`` is False).

    ``queries`` (N, d) unlabelled pixel features, ``refs`` (R, d) reference features with ``codes`` (R,) in
    [0, C). Nearest label (Eq. 4): the class with the largest similarity. δ (Eq. 5): the clipped cosine
    distance to each class's closest reference if that reference is among the k nearest, else 1. Cosines
    use unit-normalised rows; Eq. 3's ε in the denominator changes them by < 1e-7 for non-degenerate features.
    """
    with torch.autocast(queries.device.type, enabled=False):
        blocks = _Blocks(refs, codes, num_codes, block_elements)
        empty = blocks.counts == 0
        k = min(max(1, k), refs.shape[0])
        ranks = distances and k < refs.shape[0]  # with k = every reference, each class reaches the k nearest
        q_all = _unit(queries.float())
        nearest = torch.empty(q_all.shape[0], dtype=torch.long, device=q_all.device)
        delta = torch.ones(q_all.shape[0], num_codes, device=q_all.device) if distances else None
        for a in range(0, q_all.shape[0], blocks.rows):
            q = q_all[a : a + blocks.rows]
            v, above = _scan(q, blocks, counting=ranks)
            nearest[a : a + blocks.rows] = v.masked_fill(empty, -1.0).argmax(dim=1)
            if delta is not None:
                inside = _reaches_k(q, v, above, blocks, k) if ranks else torch.ones_like(v, dtype=torch.bool)
                delta[a : a + blocks.rows] = torch.where(inside, 1.0 - v, 1.0)
    return nearest, delta


def vote(
    queries: Tensor, refs: Tensor, codes: Tensor, num_codes: int, votes: int, *, block_elements: int = 1 << 20
) -> Tensor:
    """(N,) the class code most common among each query's ``votes`` most cosine-similar references.

    Not in the paper: a variant of Eq. 4 that asks a neighbourhood instead of a single reference (why:
    docs/methods/rpg.md). A tie goes to the class of the nearest reference, so ``votes = 1`` is Eq. 4. Queries
    are walked in chunks of rows × references ≤ ``block_elements``.
    """
    with torch.autocast(queries.device.type, enabled=False):
        refs_t = _unit(refs.float()).T.contiguous()
        q_all = _unit(queries.float())
        votes = min(max(1, votes), refs.shape[0])
        rows = max(1, block_elements // refs.shape[0])
        winners = torch.empty(q_all.shape[0], dtype=torch.long, device=q_all.device)
        for a in range(0, q_all.shape[0], rows):
            closest = codes[(q_all[a : a + rows] @ refs_t).topk(votes, dim=1).indices]  # most similar first
            counts = torch.zeros(closest.shape[0], num_codes, device=q_all.device)
            counts.scatter_add_(1, closest, torch.ones_like(closest, dtype=counts.dtype))
            counts.scatter_add_(1, closest[:, :1], torch.full_like(closest[:, :1], 0.5, dtype=counts.dtype))
            winners[a : a + rows] = counts.argmax(dim=1)
    return winners


# -- Eqs. 6-7: class probabilities and weight ----------------------------------------------------------


def class_probabilities(delta: Tensor) -> Tensor:
    """Eq. 6: P^j = (1 − δ^j + ε) / Σ_j' (1 − δ^j' + ε), over the last axis."""
    closeness = 1.0 - delta + EPS
    return closeness / closeness.sum(dim=-1, keepdim=True)


def entropy_weight(probs: Tensor, delta: Tensor | None = None) -> Tensor:
    """Eq. 7: W = 1 + Σ_j P^j log P^j / log c over the last axis (c = its length).

    W is 1 for one certain class and 0 at maximal ambiguity. Where ``delta`` says every class is at
    distance 1 (nothing similar anywhere) W is set to exactly 0, which Eq. 7 gives up to rounding and which
    also covers c = 1, where Eq. 7 is 0/0.
    """
    c = probs.shape[-1]
    neg_entropy = (probs * probs.clamp_min(1e-30).log()).sum(dim=-1)
    weight = 1.0 + neg_entropy / math.log(c) if c > 1 else torch.ones_like(neg_entropy)
    if delta is not None:
        weight = torch.where((delta >= 1.0).all(dim=-1), 0.0, weight)
    return weight.clamp(0.0, 1.0)


# -- the whole step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSettings:
    """Hyper-parameters of reference-guided pseudo labels (paper: p = 3, s = 64, k = 7000).

    ``size`` None: 64 per axis in 2D, 16 in 3D (the same 4096 references per image). ``k_fraction``, when
    set, gives k as a share of the references (Table 3). ``weighting`` False: W ≡ 1, the paper's "Nearest
    Neighbor" baseline (Eq. 4 alone). ``votes`` None: each pixel takes its nearest reference's label (Eq. 4);
    a number: the majority label of that many nearest references (``vote``), W unchanged.
    """

    pool_size: int = 3
    size: int | None = None
    k: int = 7000
    k_fraction: float | None = None
    weighting: bool = True
    block_elements: int = 1 << 20
    votes: int | None = None

    def size_for(self, spatial_dims: int) -> int:
        return self.size if self.size is not None else (64 if spatial_dims == 2 else 16)

    def k_for(self, num_refs: int) -> int:
        k = round(self.k_fraction * num_refs) if self.k_fraction is not None else self.k
        return min(max(1, k), num_refs)


@dataclass
class ReferenceLabels:
    """Pseudo labels of an unlabelled batch in the layout the losses take, with W and the pieces behind it."""

    target: Tensor  # (B, *spatial) long (multiclass) or (B, K, *spatial) float (multilabel), Eq. 4
    weight: Tensor  # (B, *spatial) W of Eq. 7 (ones without weighting)
    codes: Tensor  # (B, *spatial) class code of the nearest reference
    table: Tensor  # (C, K) label vector of each code
    delta: Tensor | None  # (B, *spatial, C) Eq. 5, None without weighting
    pool: Tensor  # indices of the labelled images used as references
    reference_share: Tensor  # (C,) share of the references holding each code (the pool's class balance)


def reference_pseudo_labels(
    features_l: Tensor,
    labels_l: Tensor,
    features_u: Tensor,
    *,
    label_mode: str,
    num_classes: int,
    settings: ReferenceSettings = ReferenceSettings(),  # noqa: B008 (frozen dataclass)
    generator: torch.Generator | None = None,
) -> ReferenceLabels:
    """Eqs. 1-7 for one batch: pool from the labelled batch, references, matching, P and W.

    ``features_l`` (B_l, d, *spatial) and ``labels_l`` belong to the labelled batch the pool is drawn from
    (classes missing from the batch cannot be covered); ``features_u`` (B_u, d, *spatial) are the unlabelled
    pixels to label. Features are detached; nothing here carries gradient.
    """
    features_l, features_u = features_l.detach(), features_u.detach()
    pool = sample_pool(class_presence(labels_l, label_mode, num_classes), settings.pool_size, generator)
    pool_dev = pool.to(features_l.device)
    feats, labels = subsample(features_l[pool_dev], labels_l[pool_dev], settings.size_for(features_l.ndim - 2))
    ref_labels = labels.reshape(-1) if label_mode == "multiclass" else flatten_pixels(labels)
    codes, table = label_codes(ref_labels, label_mode, num_classes)
    refs, queries, num_codes = flatten_pixels(feats), flatten_pixels(features_u), table.shape[0]
    nearest = delta = None
    if settings.weighting or settings.votes is None:
        nearest, delta = match(queries, refs, codes, num_codes, settings.k_for(refs.shape[0]),
                               block_elements=settings.block_elements, distances=settings.weighting)
    if settings.votes is not None:
        nearest = vote(queries, refs, codes, num_codes, settings.votes, block_elements=settings.block_elements)
    spatial = (features_u.shape[0], *features_u.shape[2:])
    if delta is None:
        weight = torch.ones(spatial, device=features_u.device)
    else:
        weight = entropy_weight(class_probabilities(delta), delta).reshape(spatial)
        delta = delta.reshape(*spatial, -1)
    nearest = nearest.reshape(spatial)
    target = nearest if label_mode == "multiclass" else table[nearest].movedim(-1, 1).contiguous()
    return ReferenceLabels(target, weight, nearest, table, delta, pool, code_shares(codes, num_codes))
