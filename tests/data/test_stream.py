"""Loader workers: the same batches as the training process draws, in step order, never from a stale pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semiseg.data.loaders import Augmentation, PatchSampler, load_store
from semiseg.data.sources.phantom import make_phantoms
from semiseg.data.stream import BatchStream, StepBatches


def _samplers():
    refs = make_phantoms(n_cases=3, n_unlabelled=3, dim=2, size=32).cases
    store = load_store(refs, normalize="zscore", label_mode="multiclass", with_labels=True, desc="", progress=False)
    common = {"dim": 2, "patch_size": [16, 16], "augment": Augmentation()}
    labelled = PatchSampler(store[:3], batch_size=3, foreground_fraction=0.5, seed=1, **common)
    unlabelled = PatchSampler(store[3:], batch_size=4, seed=2, **common)
    return labelled, unlabelled


def _same(a, b):
    return a["case_ids"] == b["case_ids"] and np.array_equal(a["image"], b["image"]) and (
        (a["label"] is None and b["label"] is None) or np.array_equal(a["label"], b["label"]))


def test_workers_give_the_in_process_batches_in_step_order_from_any_start():
    labelled, unlabelled = _samplers()
    inline = BatchStream(StepBatches(labelled, unlabelled), workers=0, stop=8)
    expected = [inline.batch(step) for step in range(8)]
    rng_before = torch.get_rng_state()
    stream = BatchStream(StepBatches(labelled, unlabelled), workers=2, stop=8)
    try:
        for start in (0, 5):  # 5: a resumed run starts its stream there
            for step in range(start, 8):
                lab, unl = stream.batch(step)
                assert _same(lab, expected[step][0]) and _same(unl, expected[step][1]), step
    finally:
        stream.close()
    assert torch.equal(torch.get_rng_state(), rng_before)  # the DataLoader's seed came from its own generator
    assert stream.restarts == 2  # a jump back to another step restarts the workers there


def test_a_changed_pool_restarts_the_workers_before_the_next_batch():
    labelled, unlabelled = _samplers()
    stream = BatchStream(StepBatches(labelled, unlabelled), workers=2, stop=10)
    try:
        stream.batch(0), stream.batch(1)  # workers are drawing steps 2.. from the whole pool now
        chosen = [c.case_id for c in unlabelled.store[:1]]
        unlabelled.restrict(chosen)
        for step in range(2, 6):
            _, unl = stream.batch(step)
            assert set(unl["case_ids"]) == set(chosen)
            assert _same(unl, unlabelled.batch_at(step))
        assert stream.restarts == 2
    finally:
        stream.close()


def test_close_stops_the_workers_and_a_worker_error_reaches_the_training_process():
    labelled, unlabelled = _samplers()
    stream = BatchStream(StepBatches(labelled, unlabelled), workers=2, stop=6)
    stream.batch(0)
    workers = list(stream._iterator._workers)
    stream.close()
    assert not any(w.is_alive() for w in workers)
    labelled.patch = [16]  # a 2D sampler with a 1D patch fails in the worker
    broken = BatchStream(StepBatches(labelled, None), workers=1, stop=6)
    with pytest.raises(Exception, match="DataLoader worker"):
        broken.batch(0)
    broken.close()
