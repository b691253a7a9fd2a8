"""One run on several processes (``torchrun``): ranks, batch shards, gradient averaging, rank-0 duties.

``torchrun --nproc-per-node N -m semiseg train …`` starts N copies of the same command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``setup`` reads them, joins the process group (NCCL on CUDA, gloo on
CPU) and puts each process on the GPU of its local rank. Without those variables (or with one process)
everything here is a no-op, and a run computes exactly what it computed before.

Why not ``DistributedDataParallel``? Its wrapper all-reduces gradients from hooks armed by the wrapped
module's ``forward``, once per backward. Methods here call their networks in ways it cannot serve: several
forwards of one network before one backward (CMT/UCMT, joint labelled+unlabelled passes), sub-modules called
without ``forward`` (dual-uncertainty's ``encode``/``decode``/``head``), chained updates within one step
(UCMT), a network both trained and averaged (UCMT's teacher), parameters unused in some steps (auxiliary
decoders), and it would rename every checkpoint key with a ``module.`` prefix. The Trainer therefore averages
the gradients of every trainable parameter itself after each backward (``average_gradients``, one flat
all-reduce per dtype), which is what DDP computes, for every method alike.

Batches are global: ``train.batch_size`` and ``train.unlabelled_batch_size`` are the samples of one step
over all processes, and rank r draws the contiguous share ``[r·b, (r+1)·b)`` with b = batch / N, each sample
from its own generator keyed by (seed, step, index). The union of the shards is the single-process batch,
whatever N, which makes results independent of N (up to float summation order) and ``--resume`` with another
N meaningful. Batches not divisible by N are refused.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from semiseg.errors import ConfigError, SemisegError
from semiseg.losses import batch_totals

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; ``world_size == 1`` makes every method a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints, artefacts and the report, and validates."""
        return self.rank == 0

    # -- batches -----------------------------------------------------------------------------
    def shard(self, global_batch: int) -> list[int] | None:
        """This rank's sample indices of a global batch (None: the whole batch, one process)."""
        if not self.enabled:
            return None
        per_rank = global_batch // self.world_size
        return list(range(self.rank * per_rank, (self.rank + 1) * per_rank))

    def seed_step(self, seed: int, step: int) -> None:
        """Seed torch for this step on this rank, so noise, dropout and strong augmentation differ per rank
        and a resumed run draws the same numbers again (one process keeps its single stream)."""
        if self.enabled:
            torch.manual_seed(int(np.random.SeedSequence((seed % 2**63, step, self.rank)).generate_state(1)[0]))

    # -- collectives -------------------------------------------------------------------------
    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Every rank's gradients replaced by their mean over ranks (what DDP's reducer computes).

        A parameter without a gradient on every rank keeps none, so the optimiser skips it as one process
        would; one with a gradient on some rank only counts zeros for the others.
        """
        if not self.enabled or not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        used = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._all_reduce_mean([p.grad for p in used])

    def average_buffers(self, nets: Iterable[nn.Module]) -> None:
        """Floating buffers (BatchNorm running statistics) averaged over ranks, so EMA teachers, which copy
        them from their students, stay identical on every rank."""
        if self.enabled:
            self._all_reduce_mean([b for net in nets for b in net.buffers() if b.dtype.is_floating_point])

    def mean(self, value: float) -> float:
        """A scalar averaged over ranks (itself in one process): decisions taken from it agree everywhere."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._all_reduce_mean([tensor])
        return float(tensor.item())

    def _all_reduce_mean(self, tensors: list[Tensor]) -> None:
        def mean(flat: Tensor) -> None:
            dist.all_reduce(flat)
            flat /= self.world_size

        _flat_collective(tensors, mean)

    def broadcast_nets(self, nets: Iterable[nn.Module]) -> None:
        """Rank 0's weights and buffers on every rank (after a pass only rank 0 made)."""
        if self.enabled:
            tensors = [t.data for net in nets for t in (*net.parameters(), *net.buffers())]
            _flat_collective(tensors, lambda flat: dist.broadcast(flat, src=0))

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; every rank returns its (picklable) result, or raises its error."""
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                payload[0] = (fn(), None)
            except BaseException as exc:  # the other ranks must not wait forever for a result
                error, payload[0] = exc, (None, f"{type(exc).__name__}: {exc}")
        dist.broadcast_object_list(payload, src=0, device=self.device if self.backend == "nccl" else None)
        if error is not None:
            raise error
        result, message = payload[0]
        if message is not None:
            raise SemisegError(f"rank 0 failed: {message}")
        return result

    def whole_batch_losses(self) -> AbstractContextManager[None]:
        """Batch Dice over the global batch within the block (``losses.batch_totals``); the gradient of the sum
        reaches every process, so the averaged gradients are those of one process with the whole batch."""
        if not self.enabled:
            return nullcontext()
        return batch_totals(differentiable_all_reduce)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def describe_batches(self, labelled: int, unlabelled: int) -> str:
        text = f"global batch {labelled} labelled"
        if unlabelled:
            text += f" + {unlabelled} unlabelled"
        per_rank = f"{labelled // self.world_size}" + (f" + {unlabelled // self.world_size}" if unlabelled else "")
        return (f"distributed: {self.world_size} processes ({self.backend}); {text}, "
                f"{per_rank} per process")


_current = Distributed()


def current() -> Distributed:
    """The process's ``Distributed`` (one process until ``setup`` found a torchrun environment)."""
    return _current


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of several."""
    return all(name in os.environ for name in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def setup(device: torch.device) -> Distributed:
    """Join the torchrun process group once and return this process's ``Distributed`` and device.

    ``device`` is the run's resolved device: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    global _current
    if not launched():
        return _current
    if _current.enabled:
        return _current
    rank, world, local = (int(os.environ[name]) for name in _ENV)
    if device.type == "cuda":
        if device.index not in (None, local):
            raise ConfigError(f"train.device={device} under torchrun: every process would use that one GPU; "
                              "use train.device=auto or cuda (each process takes the GPU of its LOCAL_RANK)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
        atexit.register(_shutdown)
    _current = Distributed(rank, world, local, backend, device)
    return _current


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batches(batch_size: int, unlabelled_batch_size: int, world_size: int) -> None:
    """Global batches must split evenly over the processes, or the shards' mean losses would not average to the
    single-process loss."""
    for key, size in (("train.batch_size", batch_size), ("train.unlabelled_batch_size", unlabelled_batch_size)):
        if size % world_size:
            raise ConfigError(f"{key}={size} is the global batch of all {world_size} processes and must be a "
                              f"multiple of {world_size}; set {key} to a multiple of {world_size} "
                              "(or start another number of processes)")


def sync_batchnorm(nets: dict[str, nn.Module], ctx: Distributed) -> None:
    """``train.sync_batchnorm``: BatchNorm layers normalise with the statistics of the global batch.

    torch's SyncBatchNorm runs on GPUs only; on CPU (gloo) a ``ConfigError`` says to use ``model.norm=instance``
    or ``group``, which need no batch statistics. The state-dict keys stay those of BatchNorm.
    """
    if not ctx.enabled:
        return
    check_sync_batchnorm(ctx)
    for name, net in nets.items():
        nets[name] = nn.SyncBatchNorm.convert_sync_batchnorm(net)


def check_sync_batchnorm(ctx: Distributed) -> None:
    if ctx.device.type != "cuda":
        raise ConfigError("train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm has no CPU version); "
                          "on CPU set train.sync_batchnorm=false and model.norm=instance or group")


def print_on_main(text: str, ctx: Distributed | None = None) -> None:
    if (ctx or _current).is_main:
        print(text, file=sys.stderr)


def _flat_collective(tensors: list[Tensor], collective: Callable[[Tensor], Any]) -> None:
    """``collective`` on one flat buffer per dtype and device (one call each, not one per tensor), in place."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = _flatten_dense_tensors(group)
        collective(flat)
        for tensor, synced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            tensor.copy_(synced)


def join(train: Any) -> torch.device:
    """The device this process trains on, after joining the torchrun process group when there is one and
    checking the batches against it (``current()`` then says where the process stands).

    ``train`` is the run's ``TrainConfig``; rank 0 prints the global and per-process batch.
    """
    from semiseg.engine.device import resolve_device  # device.py stays free of process groups
    from semiseg.methods import get_method

    device = resolve_device(train.device)
    ctx = setup(device)
    if not ctx.enabled:
        return device
    unlabelled = train.unlabelled_batch_size if get_method(train.method).uses_unlabelled else 0
    check_batches(train.batch_size, unlabelled, ctx.world_size)
    if train.sync_batchnorm:
        check_sync_batchnorm(ctx)  # before any data is read
    print_on_main(ctx.describe_batches(train.batch_size, unlabelled), ctx)
    return ctx.device
