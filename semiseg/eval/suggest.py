"""What to annotate next: per-voxel uncertainty scores, one number per case, a diverse ranking, and the report.

Plain functions over numpy arrays, so every score can be checked by hand; ``semiseg.engine.suggest`` runs the
model and hands these the probabilities.

Scores (maps in nats or squared probabilities, one value per voxel):

* ``entropy``: predictive entropy of the (mean) prediction;
* ``mutual_info``: H(mean of the samples) − mean of the samples' entropies (BALD), the part of the entropy the
  Monte-Carlo samples disagree on;
* ``threshold_variance``: variance of the Monte-Carlo samples summed over classes (SegPL-VI's threshold samples);
* ``disagreement``: mean over members of the class-averaged squared difference from a reference prediction.
  With dual-uncertainty's earlier snapshots as members and its last snapshot as reference, the volume mean of
  this map is the paper's sample-level uncertainty (Eq. 1); co-training nets use the predicting net, ensembles
  the members' mean.

A case's score is the mean of its map over the whole volume (``region="volume"``, the default: it does not
depend on a possibly empty predicted mask and equals Eq. 1) or over the voxels predicted foreground
(``region="foreground"``: the structure's own uncertainty, not diluted by background; a case with no predicted
foreground falls back to its volume mean).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semiseg.eval.report import _label_rgb, _subplots, _take
from semiseg.ssl.uncertainty import entropy, mutual_information

SCORES = ("entropy", "mutual_info", "disagreement", "threshold_variance")
REGIONS = ("volume", "foreground")


# ----------------------------------------------------------------------------------------------
# per-voxel maps


def entropy_map(probs: np.ndarray, label_mode: str) -> np.ndarray:
    """``(K, *spatial)`` probabilities → ``(*spatial)`` entropy (nats)."""
    return entropy(torch.from_numpy(np.asarray(probs, dtype=np.float32))[None], label_mode)[0].numpy()


def mutual_information_map(samples: np.ndarray, label_mode: str) -> np.ndarray:
    """``(S, K, *spatial)`` samples → H(mean) − mean_s H(sample s) (``ssl.uncertainty.mutual_information``)."""
    stacked = torch.from_numpy(np.asarray(samples, dtype=np.float32))[:, None]
    return mutual_information(stacked, label_mode)[0].numpy()


def variance_map(samples: np.ndarray) -> np.ndarray:
    """``(S, K, *spatial)`` samples → variance over samples, summed over classes."""
    return np.asarray(samples, dtype=np.float64).var(axis=0).sum(axis=0)


def disagreement_map(members: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``(M, K, *spatial)`` members → mean_m mean_k (p_m − ref)²; ``reference`` None: the members' mean."""
    members = np.asarray(members, dtype=np.float64)
    ref = members.mean(axis=0) if reference is None else np.asarray(reference, dtype=np.float64)
    return ((members - ref[None]) ** 2).mean(axis=(0, 1))


# ----------------------------------------------------------------------------------------------
# one case


def foreground_mask(probs: np.ndarray, label_mode: str) -> np.ndarray:
    """Voxels predicted as any foreground class (argmax > 0, or any channel > 0.5)."""
    return probs.argmax(axis=0) > 0 if label_mode == "multiclass" else (probs > 0.5).any(axis=0)


def aggregate(score_map: np.ndarray, probs: np.ndarray, label_mode: str, region: str = "volume") -> float:
    """One number per case: the map's mean over the volume or over the predicted foreground (see module)."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if region == "foreground":
        mask = foreground_mask(probs, label_mode)
        if mask.any():
            return float(score_map[mask].mean())
    return float(score_map.mean())


def class_volumes(probs: np.ndarray, label_mode: str, class_names: list[str],
                  spacing: tuple[float, ...]) -> dict[str, float]:
    """Predicted volume of each foreground class in mm³ (mm² for 2D images), from the voxel spacing."""
    voxel = float(np.prod(spacing[: probs.ndim - 1]))
    if label_mode == "multiclass":
        label = probs.argmax(axis=0)
        return {name: float((label == k).sum()) * voxel for k, name in enumerate(class_names) if k > 0}
    return {name: float((probs[k] > 0.5).sum()) * voxel for k, name in enumerate(class_names)}


def most_uncertain_slice(score_map: np.ndarray) -> int:
    """Index along the last axis whose slice has the highest mean score; -1 for a 2D map (no slice axis)."""
    if score_map.ndim == 2:
        return -1
    return int(np.argmax(score_map.reshape(-1, score_map.shape[-1]).mean(axis=0)))


def descriptor(image: np.ndarray, size: int = 16) -> np.ndarray:
    """A cheap picture of a case for diversity: the image pooled to ``size`` per axis, centred, unit length."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
    pooled = (F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d)(x, size).flatten().numpy()
    pooled = pooled.astype(np.float64) - pooled.mean()
    norm = np.linalg.norm(pooled)
    return pooled / norm if norm > 0 else pooled


def select_diverse(scores: list[float], descriptors: np.ndarray, weight: float) -> list[int]:
    """Order of the cases: greedily the highest ``score / max score − weight · max cosine similarity`` to those
    already chosen, so near-copies of a chosen case drop down. ``weight`` 0 gives plain descending score."""
    values = np.asarray(scores, dtype=np.float64)
    if weight == 0 or len(values) < 2:
        return sorted(range(len(values)), key=lambda i: (-values[i], i))
    scaled = values / (np.abs(values).max() or 1.0)
    similarity = descriptors @ descriptors.T
    chosen: list[int] = []
    left = list(range(len(values)))
    while left:
        penalty = [similarity[i, chosen].max() if chosen else 0.0 for i in left]
        gains = [scaled[i] - weight * p for i, p in zip(left, penalty, strict=True)]
        best = left[int(np.argmax(gains))]
        chosen.append(best)
        left.remove(best)
    return chosen


# ----------------------------------------------------------------------------------------------
# the report


@dataclass
class CaseSuggestion:
    """One scored case; ``image``/``label``/``score_map`` are 2D slices at ``slice_index``, for its picture."""

    case_id: str
    score: float
    slice_index: int
    volumes: dict[str, float]
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    score_map: np.ndarray = field(repr=False)


def suggestion_columns(class_names: list[str], label_mode: str) -> list[str]:
    names = class_names[1:] if label_mode == "multiclass" else class_names
    return ["rank", "case_id", "score", "slice", *[f"volume_mm3_{name}" for name in names]]


def score_digits(scores: list[float], least: int = 4) -> int:
    """Significant digits that tell every two neighbouring scores of the ranking apart (where they differ)."""
    for digits in range(least, 13):
        texts = [f"{score:.{digits}g}" for score in scores]
        if all(a != b or x == y for a, b, x, y in zip(texts, texts[1:], scores, scores[1:], strict=False)):
            return digits
    return 12


def write_suggestions(ranked: list[CaseSuggestion], out_dir: Path, *, score: str, region: str, top: int,
                      label_mode: str, class_names: list[str], facts: dict[str, Any]) -> list[Path]:
    """``suggest.csv`` (every case, ranked), ``suggest.md`` and one picture per top case in ``figures/``."""
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    columns = suggestion_columns(class_names, label_mode)
    with (out_dir / "suggest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for rank, case in enumerate(ranked, start=1):
            writer.writerow([rank, case.case_id, f"{case.score:.6g}", case.slice_index,
                             *[f"{case.volumes[c[len('volume_mm3_'):]]:.1f}" for c in columns[4:]]])
    digits = score_digits([case.score for case in ranked[:top]])
    pictures = [_case_figure(case, score, label_mode, figures / f"{case.case_id}.png", rank, digits)
                for rank, case in enumerate(ranked[:top], start=1)]
    lines = ["# What to annotate next", "", *[f"- {k}: {v}" for k, v in facts.items()],
             f"- score: `{score}`, mean over the {region}", "",
             "| rank | case | score | slice |", "|---|---|---|---|",
             *[f"| {r} | {c.case_id} | {c.score:.{digits}g} | {c.slice_index} |"
               for r, c in enumerate(ranked[:top], 1)], ""]
    for rank, (case, picture) in enumerate(zip(ranked[:top], pictures, strict=True), start=1):
        lines += [f"## {rank}. {case.case_id}", "", f"![{case.case_id}](figures/{picture.name})", ""]
    lines.append("Every case, ranked, with predicted volumes: `suggest.csv`.")
    (out_dir / "suggest.md").write_text("\n".join(lines) + "\n")
    return [out_dir / "suggest.csv", out_dir / "suggest.md", *pictures]


def _case_figure(case: CaseSuggestion, score: str, label_mode: str, path: Path, rank: int, digits: int) -> Path:
    """Image with the predicted labels, and the score map, on the case's most uncertain slice."""
    fig, (left, right) = _subplots(1, 2, figsize=(6, 3))
    left.imshow(case.image.T, cmap="gray", origin="lower")
    left.imshow(np.transpose(_label_rgb(case.label, label_mode), (1, 0, 2)), origin="lower")
    left.set_title(f"{case.case_id}: prediction (slice {case.slice_index})", fontsize=8)
    shown = right.imshow(case.score_map.T, cmap="magma", origin="lower")
    fig.colorbar(shown, ax=right, fraction=0.046)
    right.set_title(f"{score} (rank {rank}, case score {case.score:.{digits}g})", fontsize=8)
    for ax in (left, right):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def case_slices(image: np.ndarray, label: np.ndarray, score_map: np.ndarray, index: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first image channel, the label and the map at slice ``index`` (all 2D)."""
    return _take(image[0], index), _take(label, index), _take(score_map, index)
