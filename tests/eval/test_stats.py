"""Statistics across runs: paired Wilcoxon of per-case Dice and mean ± std over seeds."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from semiseg.eval.stats import paired_p, seed_mean_std


def _run(dices, seconds=1.0):
    cases = {f"c{i}": {"dice": d, "jaccard": d / 2, "hd95": 1.0, "asd": float("nan") if i == 0 else 0.5}
             for i, d in enumerate(dices)}
    return {"cases": {"best": cases, "last": cases}, "seconds": seconds}


RESULTS = {
    "ref": {0: _run([0.5, 0.6, 0.7]), 1: _run([0.4, 0.5, 0.6])},
    "new": {0: _run([0.6, 0.65, 0.9]), 1: _run([0.45, 0.8, 0.62])},
}


def test_paired_p_pools_cases_of_every_seed():
    expected = wilcoxon([0.6, 0.65, 0.9, 0.45, 0.8, 0.62], [0.5, 0.6, 0.7, 0.4, 0.5, 0.6]).pvalue
    assert paired_p(RESULTS, "new", "ref", "best") == pytest.approx(expected)
    assert math.isnan(paired_p(RESULTS, "ref", "ref", "best"))
    assert math.isnan(paired_p({"a": RESULTS["ref"], "b": RESULTS["ref"]}, "a", "b", "last"))  # all ties


def test_seed_mean_std_is_over_each_seeds_case_mean():
    row = seed_mean_std(RESULTS["ref"], "best")
    per_seed = [np.mean([0.5, 0.6, 0.7]), np.mean([0.4, 0.5, 0.6])]
    assert row["dice_mean"] == pytest.approx(np.mean(per_seed)) and row["dice_std"] == pytest.approx(np.std(per_seed))
    assert row["asd_mean"] == pytest.approx(0.5)  # a NaN case distance is skipped, not propagated

