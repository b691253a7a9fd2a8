"""Per-case evaluation and its aggregation into the tables every report uses.

Rows are one (checkpoint, case, class) each with the fixed columns Dice, Jaccard, HD95, ASD (mm), plus the
Brier score and ECE of the case's probabilities. Summaries are mean ± std over cases, per class and over
classes (each case's class mean first, so every case weighs the same).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import label_to_onehot
from semiseg.eval.metrics import METRIC_COLUMNS, brier_score, case_metrics, expected_calibration_error

CSV_COLUMNS = ("checkpoint", "case_id", "class", *METRIC_COLUMNS, "brier", "ece", "gt_empty", "pred_empty")


def score_case(
    *, case_id: str, checkpoint: str, pred: np.ndarray, probs: np.ndarray | None, gt: np.ndarray,
    spacing: tuple[float, ...], class_names: list[str], label_mode: str,
) -> list[dict[str, Any]]:
    """Metric rows of one case (calibration columns are per case, repeated on its class rows)."""
    rows = case_metrics(pred, gt, spacing, class_names, label_mode)
    calibration = {"brier": math.nan, "ece": math.nan}
    if probs is not None:
        onehot = label_to_onehot(gt, label_mode, len(class_names))
        calibration = {
            "brier": brier_score(probs, onehot),
            "ece": expected_calibration_error(probs, onehot, label_mode=label_mode),
        }
    return [{"checkpoint": checkpoint, "case_id": case_id, **row, **calibration} for row in rows]


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(array)), "std": float(np.std(array)), "n": int(array.size)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{checkpoint: {"classes": {name: {metric: stats}}, "mean": {metric: stats}}}``."""
    out: dict[str, Any] = {}
    by_ckpt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_ckpt[row["checkpoint"]].append(row)
    for ckpt, ckpt_rows in by_ckpt.items():
        classes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        per_case: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in ckpt_rows:
            for metric in (*METRIC_COLUMNS, "brier", "ece"):
                classes[row["class"]][metric].append(row[metric])
                per_case[row["case_id"]][metric].append(row[metric])
        case_means = {m: [float(np.mean(v[m])) for v in per_case.values()] for m in (*METRIC_COLUMNS, "brier", "ece")}
        out[ckpt] = {
            "classes": {name: {m: _stats(v) for m, v in metrics.items()} for name, metrics in classes.items()},
            "mean": {m: _stats(v) for m, v in case_means.items()},
            "cases": len(per_case),
        }
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per checkpoint and class, mean ± std of every metric column."""
    head = "| checkpoint | class | Dice | Jaccard | HD95 (mm) | ASD (mm) |"
    lines = [head, "|" + "---|" * 6]
    for ckpt, block in summary.items():
        for name, metrics in [*block["classes"].items(), ("mean", block["mean"])]:
            cells = [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in METRIC_COLUMNS]
            label = f"**{name}**" if name == "mean" else name
            lines.append(f"| {ckpt} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
