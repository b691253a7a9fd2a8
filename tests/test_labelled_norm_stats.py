"""benchmarks/labelled_norm_stats.py: a checkpoint scored with running statistics re-estimated on clean training
patches; the trained statistics come back afterwards, and the test split is refused."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "labelled_norm_stats.py"


@pytest.fixture
def norm_stats(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("labelled_norm_stats")


def _running(loaded):
    return {k: v.clone() for net in loaded.model.nets.values() for k, v in net.state_dict().items() if "running" in k}


def test_patches_are_slices_of_the_named_part_at_the_runs_patch_and_batch_size(norm_stats, tiny_heart_run):
    loaded = norm_stats.LoadedRun.open(tiny_heart_run, "last")
    patches = norm_stats.split_patches(loaded, "labelled", batches=3)
    assert len(patches) == 3
    assert patches[0].shape == (loaded.model.cfg.train.batch_size, 1, *loaded.model.patch_size)
    again = norm_stats.split_patches(loaded, "labelled", batches=3)
    assert all(torch.equal(a, b) for a, b in zip(patches, again, strict=True))  # seeded


def test_statistics_are_estimated_from_each_source_in_turn_and_the_trained_ones_put_back(norm_stats, tiny_heart_run):
    loaded = norm_stats.LoadedRun.open(tiny_heart_run, "last")
    before, trained = norm_stats.class_dice(loaded, ["val"]), _running(loaded)
    assert before.shape == (len(loaded.split["val"]), 3)
    seen = []

    def estimate_with(sources):
        original = norm_stats.split_patches
        norm_stats.split_patches = lambda run, part, batches: seen.append(part) or original(run, part, batches)
        try:
            return norm_stats.reestimated_dice(loaded, ["val"], 2, sources)
        finally:
            norm_stats.split_patches = original

    mixed = estimate_with(["labelled", "unlabelled"])
    assert seen == ["labelled", "unlabelled"] and mixed.shape == before.shape
    after = _running(loaded)
    assert all(torch.equal(trained[k], after[k]) for k in trained)  # the trained statistics are back
    assert np.array_equal(norm_stats.class_dice(loaded, ["val"]), before)


def test_refuses_the_test_split(norm_stats, tmp_path):
    with pytest.raises(SystemExit):
        norm_stats.main([str(tmp_path), "--parts", "val,test"])
