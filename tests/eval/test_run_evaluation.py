"""Evaluation settings: which cases an evaluation scores, and where it may write."""

import pytest

from semiseg.errors import ConfigError
from semiseg.eval.run_evaluation import EvaluationOptions


def test_an_evaluation_scores_test_or_validation_cases_and_validation_only_beside():
    assert EvaluationOptions(split="val", beside=True, checkpoints=("last",)).name == "val-last"
    assert EvaluationOptions(split="val", beside=True).settings()["split"] == "val"
    assert EvaluationOptions(beside=True).name == "default"
    with pytest.raises(ConfigError, match="beside the run's own"):
        EvaluationOptions(split="val")
    with pytest.raises(ConfigError, match="test or val"):
        EvaluationOptions(split="train", beside=True)
