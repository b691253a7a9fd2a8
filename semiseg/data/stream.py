"""Training batches drawn ahead of the step by ``torch.utils.data.DataLoader`` worker processes.

A batch is a pure function of its step (``PatchSampler.batch_at``), so worker ``w`` can draw step ``t``'s
batch while the training process runs step ``t - 1``: the DataLoader is asked for the steps in order and
returns them in order, and the batches are the ones the training process would have drawn itself, whatever
the number of workers. ``--resume`` therefore stays exact: the stream simply starts at the resumed step.

A curriculum restricts the unlabelled pool from method state computed in the training process, step by step;
workers hold the pool they were started with. The stream notes that pool, and when the training process's
pool differs (or a batch comes back drawn from another pool) it discards what was drawn ahead and restarts
the workers from the current step, so no batch ever comes from a stale pool.

No random state is shared: each sample has its own generator keyed by (seed, step, index), the DataLoader's
base seed comes from a private generator (the training process's torch RNG is never touched), and nothing in
a worker uses a global RNG. ``indices`` select the samples of each batch a process needs (all by default), so
a DDP rank draws its share of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from semiseg.data.loaders import PatchSampler

Raw = dict[str, Any]


def _pool_of(sampler: PatchSampler | None) -> tuple[str, ...] | None:
    return None if sampler is None else sampler.pool_ids


def _as_is(item: Any) -> Any:
    """Keep the NumPy batch as the sampler made it (the default collate would turn it into tensors)."""
    return item


class StepBatches(Dataset):
    """Item ``t``: the labelled and unlabelled batches of step ``t`` and the unlabelled pool they came from."""

    def __init__(self, labelled: PatchSampler, unlabelled: PatchSampler | None,
                 labelled_indices: Sequence[int] | None = None,
                 unlabelled_indices: Sequence[int] | None = None) -> None:
        self.labelled, self.unlabelled = labelled, unlabelled
        self.labelled_indices, self.unlabelled_indices = labelled_indices, unlabelled_indices

    def __getitem__(self, step: int) -> dict[str, Any]:
        unlabelled = None
        if self.unlabelled is not None:
            unlabelled = self.unlabelled.batch_at(step, self.unlabelled_indices)
        return {"labelled": self.labelled.batch_at(step, self.labelled_indices), "unlabelled": unlabelled,
                "pool": _pool_of(self.unlabelled)}


class BatchStream:
    """The batches of consecutive steps, from ``workers`` processes (0: drawn in this process when asked)."""

    def __init__(self, batches: StepBatches, workers: int, stop: int, prefetch: int = 2) -> None:
        self.batches, self.workers, self.stop, self.prefetch = batches, workers, stop, prefetch
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._next_step = -1
        self._pool: tuple[str, ...] | None = None
        self.restarts = 0  # how often the workers were (re)started: once, plus once per pool change

    def batch(self, step: int) -> tuple[Raw, Raw | None]:
        """The labelled and unlabelled batches of ``step`` (for the unlabelled sampler's current pool)."""
        item = self.batches[step] if self.workers == 0 else self._from_workers(step)
        return item["labelled"], item["unlabelled"]

    def _from_workers(self, step: int) -> dict[str, Any]:
        current = _pool_of(self.batches.unlabelled)
        if self._iterator is None or step != self._next_step or current != self._pool:
            self._start(step)
        item = next(self._iterator)
        if item["pool"] != current:  # cannot happen after the check above; never train on a stale pool
            self._start(step)
            item = next(self._iterator)
        self._next_step = step + 1
        return item

    def _start(self, step: int) -> None:
        """Workers (forked now, so they hold the current pool) drawing steps ``step`` .. ``stop - 1`` in order."""
        self.close()
        loader = DataLoader(self.batches, batch_size=None, sampler=range(step, max(self.stop, step + 1)),
                            num_workers=self.workers, collate_fn=_as_is, prefetch_factor=self.prefetch,
                            generator=torch.Generator().manual_seed(0))
        self._iterator = iter(loader)
        self._pool, self._next_step = _pool_of(self.batches.unlabelled), step
        self.restarts += 1

    def close(self) -> None:
        """Stop the workers now (after an error, Ctrl-C or the last step); the stream restarts when asked."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
