"""Robustness of a trained model (Xu et al. 2022, Section 4.3): out-of-distribution mix-up and FGSM.

* OOD: ``x̂ = γ·x′ + (1 − γ)·x`` where ``x′`` is the test image under an unseen random contrast (a gamma
  curve far wider than training's augmentation) plus Gaussian noise; Dice is reported against γ.
* Adversarial: FGSM (Goodfellow et al.; Kurakin et al.), ``x̂ = x + ε·sign(∇_x L(f(x), y))`` with the
  cross-entropy against the ground truth; Dice is reported against ε.

Both act on the network's input, i.e. the image after the run's intensity normalisation, so ε and the
noise are in normalised units. ``x′`` is drawn from a generator seeded by the case id alone: every method
evaluated on a case meets the same shifted image, and the γ curve moves one image along one direction.
"""

from __future__ import annotations

import csv
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import label_to_onehot
from semiseg.errors import ConfigError
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import dice

DEFAULT_GAMMAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_EPSILONS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
ROBUSTNESS_COLUMNS = ("checkpoint", "attack", "level", "case_id", "dice")


@dataclass(frozen=True)
class OODShift:
    """The unseen shift: gamma ``exp(U(−log_gamma, log_gamma))`` on the image's range (training: ±0.3), then
    Gaussian noise with ``noise`` × the image's standard deviation."""

    log_gamma: float = 1.0
    noise: float = 0.5


def check_grid(values: Sequence[float], name: str, upper: float | None = None) -> tuple[float, ...]:
    """A sorted grid of levels in [0, upper]; a bad one is a ``ConfigError`` naming the option."""
    grid = tuple(sorted(float(v) for v in values))
    if not grid:
        raise ConfigError(f"{name}: give at least one level")
    if grid[0] < 0 or (upper is not None and grid[-1] > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ConfigError(f"{name}: levels must lie in {bound}, got {list(grid)}")
    return grid


def case_rng(case_id: str, seed: int = 0) -> np.random.Generator:
    """A generator that depends on the case id (and ``seed``) only, never on the method or the run."""
    return np.random.default_rng([zlib.crc32(case_id.encode()), seed])


def ood_view(image: np.ndarray, rng: np.random.Generator, shift: OODShift = OODShift()) -> np.ndarray:
    """``x′``: a random contrast (gamma curve on the min–max range) plus Gaussian noise, channel by channel."""
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        lo, hi = float(channel.min()), float(channel.max())
        unit = (channel - lo) / max(hi - lo, 1e-6)
        gamma = np.exp(rng.uniform(-shift.log_gamma, shift.log_gamma))
        noise = rng.normal(0.0, shift.noise * float(channel.std()) + 1e-6, size=channel.shape)
        out[c] = unit**gamma * (hi - lo) + lo + noise
    return out


def mix(image: np.ndarray, shifted: np.ndarray, gamma: float) -> np.ndarray:
    """``x̂ = γ·x′ + (1 − γ)·x`` (mix-up between the test image and its shifted version)."""
    return (gamma * shifted + (1.0 - gamma) * image).astype(np.float32)


def fgsm(image: np.ndarray, gradient: np.ndarray, epsilon: float) -> np.ndarray:
    """``x + ε·sign(∇_x L)``: one step of size ε against the model, per voxel."""
    return (image + epsilon * np.sign(gradient)).astype(np.float32)


def foreground_dice(probs: np.ndarray, gt: np.ndarray, label_mode: str, num_classes: int) -> float:
    """Mean Dice over foreground classes (every channel in multilabel); both masks empty count as 1."""
    pred = label_to_onehot(probs_to_label(probs, label_mode), label_mode, num_classes).astype(bool)
    truth = label_to_onehot(gt, label_mode, num_classes).astype(bool)
    first = 1 if label_mode == "multiclass" else 0
    return float(np.mean([dice(pred[k], truth[k]) for k in range(first, num_classes)]))


def robustness_rows(
    case_id: str,
    image: np.ndarray,
    gt: np.ndarray,
    *,
    predict: Callable[[np.ndarray], np.ndarray],
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray],
    label_mode: str,
    num_classes: int,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    shift: OODShift = OODShift(),
    checkpoint: str = "best",
) -> list[dict[str, Any]]:
    """Dice of one case at every γ and ε; ``image`` is normalised, ``predict`` maps it to probabilities."""
    score = lambda x: foreground_dice(predict(x), gt, label_mode, num_classes)  # noqa: E731
    base = {"checkpoint": checkpoint, "case_id": case_id}
    shifted = ood_view(image, case_rng(case_id), shift)
    rows = [{**base, "attack": "ood", "level": g, "dice": score(mix(image, shifted, g))} for g in gammas]
    if epsilons:
        grad = gradient(image, label_to_onehot(gt, label_mode, num_classes))
        rows += [{**base, "attack": "fgsm", "level": e, "dice": score(fgsm(image, grad, e))} for e in epsilons]
    return rows


def summarize_robustness(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """``{attack: [{"level", "mean", "std", "n"}, ...]}`` over cases, levels ascending."""
    grouped: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["attack"]][float(row["level"])].append(float(row["dice"]))
    return {
        attack: [{"level": lvl, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                 for lvl, v in sorted(levels.items())]
        for attack, levels in grouped.items()
    }


def format_robustness_table(summary: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per attack and level, Dice mean ± std over cases."""
    names = {"ood": "OOD mix-up γ", "fgsm": "FGSM ε"}
    lines = ["| perturbation | level | Dice |", "|---|---|---|"]
    for attack, points in summary.items():
        for p in points:
            lines.append(f"| {names.get(attack, attack)} | {p['level']:g} | {p['mean']:.3f} ± {p['std']:.3f} |")
    return "\n".join(lines)


def write_robustness(rows: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ROBUSTNESS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
