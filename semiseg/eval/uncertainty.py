"""Uncertainty evaluation: calibration scores and uncertainty maps of Monte-Carlo (or deterministic) predictions.

A method with ``predict_samples`` (SegPL-VI's threshold draws, an ensemble's members) gives S probability
maps per case; their mean is the prediction scored here and their variance the uncertainty map. Other
methods are scored on their deterministic probabilities, with the predictive entropy as their map.

Brier scores, both reported per case:

* ``brier``: the classic multiclass score ``mean_voxels Σ_k (p_k − y_k)²`` (``eval.metrics.brier_score``);
* ``brier_fg``: the paper's appendix Eq. 1, ``mean_voxels (p − y)²`` of a binary foreground, taken per
  foreground channel (multi-channel view) and averaged. For one sigmoid channel the two coincide; for a
  two-class softmax ``brier`` is twice Eq. 1.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from semiseg.data.case import Case
from semiseg.data.io.volume import write_nifti
from semiseg.eval.io import nifti_affine
from semiseg.eval.metrics import brier_score, expected_calibration_error
from semiseg.ssl.uncertainty import entropy, max_entropy, predictive_variance

UNCERTAINTY_COLUMNS = ("checkpoint", "case_id", "source", "samples", "brier", "brier_fg", "ece", "entropy", "variance")


def brier_foreground(probs: np.ndarray, onehot: np.ndarray, label_mode: str) -> float:
    """Appendix Eq. 1 per foreground channel, averaged: ``mean_k mean_voxels (p_k − y_k)²``."""
    first = 1 if label_mode == "multiclass" else 0
    diff = np.asarray(probs, dtype=np.float64)[first:] - np.asarray(onehot, dtype=np.float64)[first:]
    return float(np.mean(diff**2))


def uncertainty_maps(probs: np.ndarray, samples: np.ndarray | None, label_mode: str) -> dict[str, np.ndarray]:
    """``mean`` (K, *spatial) probabilities, ``entropy`` of the mean and, with samples, their ``variance``."""
    mean = samples.mean(axis=0) if samples is not None else probs
    maps = {"mean": mean, "entropy": entropy(torch.from_numpy(mean)[None], label_mode)[0].numpy()}
    if samples is not None:
        maps["variance"] = predictive_variance(torch.from_numpy(samples)[:, None])[0].numpy()
    return maps


def uncertainty_row(
    case_id: str, maps: dict[str, np.ndarray], onehot: np.ndarray, label_mode: str, samples: int | None,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Calibration of the (mean) prediction of one case and the average of its maps; ``samples`` None: deterministic."""
    mean = maps["mean"]
    return {
        "checkpoint": checkpoint, "case_id": case_id, "source": "deterministic" if samples is None else "monte_carlo",
        "samples": samples or 1, "brier": brier_score(mean, onehot),
        "brier_fg": brier_foreground(mean, onehot, label_mode),
        "ece": expected_calibration_error(mean, onehot, label_mode=label_mode),
        "entropy": float(maps["entropy"].mean()),
        "variance": float(maps["variance"].mean()) if "variance" in maps else float("nan"),
    }


def case_uncertainty(
    case: Case, probs: np.ndarray, samples: np.ndarray | None, onehot: np.ndarray, *, label_mode: str,
    out_dir: Path, checkpoint: str = "best",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score one case's (Monte-Carlo mean) prediction and write its maps; returns the row and the maps."""
    maps = uncertainty_maps(probs, samples, label_mode)
    row = uncertainty_row(case.case_id, maps, onehot, label_mode, None if samples is None else len(samples), checkpoint)
    write_uncertainty_maps(case, maps, out_dir, label_mode)
    return row, maps


def write_uncertainty(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=UNCERTAINTY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summarize_uncertainty(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± std over cases of every score column."""
    out = {}
    for col in ("brier", "brier_fg", "ece", "entropy", "variance"):
        values = np.array([float(r[col]) for r in rows])
        out[col] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def format_uncertainty_table(summary: dict[str, dict[str, float]], source: str, samples: int) -> str:
    """Markdown: mean ± std over cases; a deterministic prediction has no variance ("–")."""
    head = "| prediction | Brier | Brier (Eq. 1, foreground) | ECE | mean entropy | mean variance |"
    cells = " | ".join("–" if np.isnan(summary[c]["mean"]) else f"{summary[c]['mean']:.4f} ± {summary[c]['std']:.4f}"
                       for c in ("brier", "brier_fg", "ece", "entropy", "variance"))
    what = f"{source}, S = {samples}" if source == "monte_carlo" else source
    return "\n".join([head, "|" + "---|" * 6, f"| {what} | {cells} |"])


def _is_2d_image_case(case: Case) -> bool:
    return case.meta.get("format") == "png" or (case.affine is None and case.ndim == 2)


def write_uncertainty_maps(case: Case, maps: dict[str, np.ndarray], out_dir: Path, label_mode: str) -> list[Path]:
    """Entropy (and variance) maps, plus the mean probabilities, with the case's geometry.

    NIfTI float32 with the input's affine for volumes; for 2D images, 8-bit PNGs scaled by each map's
    largest possible value (entropy: ``max_entropy``; variance: K/4) and the mean as ``.npy``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = maps["mean"].shape[0]
    written = []
    if _is_2d_image_case(case):
        bounds = {"entropy": max_entropy(num_classes, label_mode), "variance": num_classes / 4.0}
        for name in ("entropy", "variance"):
            if name in maps:
                scaled = np.clip(maps[name] / bounds[name], 0.0, 1.0) * 255.0
                path = out_dir / f"{case.case_id}_{name}.png"
                Image.fromarray(np.rint(scaled).astype(np.uint8)).save(path)
                written.append(path)
        path = out_dir / f"{case.case_id}_mean.npy"
        np.save(path, maps["mean"].astype(np.float32))
        return [*written, path]
    affine = nifti_affine(case)
    for name, data in maps.items():
        array = np.moveaxis(data, 0, -1) if name == "mean" else data
        path = out_dir / f"{case.case_id}_{name}.nii.gz"
        write_nifti(path, array, affine, np.float32)
        written.append(path)
    return written
