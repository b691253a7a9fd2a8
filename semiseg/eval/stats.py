"""Statistics across runs: mean ± std over seeds and paired tests of per-case scores between methods.

``results`` maps a label to ``{seed: {"cases": {checkpoint: {case_id: {metric: value}}}, "seconds": s}}``:
per-case scores (each case's mean over classes) of every seed's run, as ``compare`` collects them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from semiseg.eval.metrics import METRIC_COLUMNS


def paired_p(results: dict[str, Any], label: str, reference: str, checkpoint: str) -> float:
    """Wilcoxon signed-rank p of per-case Dice, all seeds pooled, ``label`` against ``reference``.

    NaN for the reference itself, for fewer than two pairs, or when every pair is tied (no test to run).
    """
    from scipy.stats import wilcoxon

    if label == reference:
        return math.nan
    a, b = [], []
    for seed, run in results[label].items():
        if seed not in results[reference]:  # a seed the reference has not finished pairs with nothing
            continue
        ref_cases = results[reference][seed]["cases"][checkpoint]
        for case, metrics in run["cases"][checkpoint].items():
            a.append(metrics["dice"])
            b.append(ref_cases[case]["dice"])
    diffs = np.asarray(a) - np.asarray(b)
    if len(diffs) < 2 or np.allclose(diffs, 0):
        return math.nan
    return float(wilcoxon(a, b).pvalue)


def seed_mean_std(runs: dict[int, Any], checkpoint: str) -> dict[str, float]:
    """``{metric}_mean`` / ``{metric}_std`` over seeds of each seed's test mean (NaN cases skipped)."""
    row: dict[str, float] = {}
    for metric in METRIC_COLUMNS:
        per_seed = [np.nanmean([c[metric] for c in run["cases"][checkpoint].values()]) for run in runs.values()]
        row[f"{metric}_mean"], row[f"{metric}_std"] = float(np.mean(per_seed)), float(np.std(per_seed))
    return row
