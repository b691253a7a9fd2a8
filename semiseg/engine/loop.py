"""The one training loop every method runs in: the step and the update, and nothing else.

Each step draws this process's share of the step's batches, asks the method for its loss terms
(``training_step``; ``supervised_step`` when the run has no unlabelled batch), weighs the unlabelled terms by
the reliability gate, and updates: AMP (a gradient scaler for float16), gradient clipping, the optimiser and
the EMA of every declared teacher, repeated for each chained update the method asks for (``StepOut.followup``),
then the learning-rate schedule. Everything a run does around that — log, TensorBoard, validation, best and
last checkpoints, diagnostics against held-out truth, the gate's observations, a curriculum's whole-case
passes, Ctrl-C — is a ``Handler`` called at the events of ``engine/handlers.py``. The loop knows methods only
through the ``Method`` contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from semiseg.config import Config
from semiseg.data.loaders import PatchSampler, StoredCase
from semiseg.data.stream import BatchStream, StepBatches
from semiseg.engine import distributed
from semiseg.engine.checkpoint import rng_state, set_rng_state
from semiseg.engine.device import autocast, resolve_amp_dtype
from semiseg.engine.handlers import Handler, StepRecord
from semiseg.engine.inferer import Inferer
from semiseg.engine.networks import trainable_parameters, update_ema_net
from semiseg.engine.optim import make_optimizer, make_scheduler
from semiseg.engine.performance import channels_last_enabled, prepare_nets, to_channels_last
from semiseg.errors import ConfigError, SemisegError
from semiseg.methods.base import Batch, Method, MethodContext, Nets, Progress, StepOut
from semiseg.ssl.gate import ReliabilityGate, gate_unlabelled_terms

_MAX_UPDATES_PER_STEP = 8


@dataclass
class TrainingData:
    labelled: PatchSampler
    unlabelled: PatchSampler | None
    val: list[StoredCase]


def check_unlabelled_batch(method: Method | type[Method], unlabelled_batch_size: int) -> None:
    """Refuse, before anything runs, a method that has no step without an unlabelled batch when there is none."""
    if method.needs_unlabelled_batch and unlabelled_batch_size == 0:
        raise ConfigError(
            f"method {method.name!r} needs an unlabelled batch in every step (its losses compare networks on "
            "unlabelled images), but train.unlabelled_batch_size is 0; set train.unlabelled_batch_size to 1 or "
            "more, or train with method 'supervised'"
        )


def to_batch(raw: dict[str, Any], device: torch.device, label_mode: str) -> Batch:
    image = torch.from_numpy(raw["image"]).to(device)
    label = None
    if raw["label"] is not None:
        label = torch.from_numpy(raw["label"]).to(device)
        label = label.long() if label_mode == "multiclass" else label.float()
    return Batch(image=image, label=label, case_ids=raw["case_ids"])


class Trainer:
    """Trains ``method`` until ``train.steps``; ``handlers`` do everything around the steps, in list order."""

    def __init__(self, cfg: Config, method: Method, ctx: MethodContext, data: TrainingData, *, nets: Nets,
                 inferer: Inferer, run_dir: Path, gate: ReliabilityGate | None = None,
                 handlers: list[Handler] | None = None) -> None:
        self.cfg, self.method, self.ctx, self.data, self.run_dir = cfg, method, ctx, data, run_dir
        check_unlabelled_batch(method, 0 if data.unlabelled is None else data.unlabelled.batch_size)
        self.nets, self.inferer, self.device = nets, inferer, inferer.device
        self.amp, self.amp_dtype = inferer.amp, resolve_amp_dtype(cfg.train.amp_dtype, self.device)
        self.channels_last = channels_last_enabled(cfg.train.channels_last, cfg.model.dim, self.device, self.amp)
        prepare_nets(nets, cfg, channels_last=self.channels_last)
        self.specs = method.networks()
        self.params = trainable_parameters(self.nets, self.specs)
        self.optimizer = make_optimizer(cfg, self.params)
        self.scheduler = make_scheduler(cfg, self.optimizer, method.schedule_restarts(cfg.train.steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.dist = distributed.current()
        self.gate, self.handlers = gate, list(handlers or [])
        self.step = 0
        self.stream: BatchStream | None = None  # started at the first step, so a resumed run starts where it stopped

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from ``self.step`` until ``train.steps``; returns the steps done and this call's seconds."""
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            for handler in self.handlers:
                handler.on_train_start(self)
            while self.step < self.cfg.train.steps:
                record = StepRecord(self._progress())
                self._call("on_step_start", record)
                self.train_step(record)
                self.step += 1
                self._call("on_step_end", record)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(error)
        return {"steps": self.step, "seconds": time.perf_counter() - started}

    def _progress(self) -> Progress:
        """Where training stands, as the method is told it (built in this one place)."""
        return Progress(self.step, self.cfg.train.steps, unlabelled_on=self.gate is None or self.gate.is_open)

    def train_step(self, record: StepRecord | None = None) -> dict[str, Any]:
        """One step: batches, the method's loss terms, the update(s) and the schedule; returns the step's row.

        ``fit`` passes the step's record (after ``on_step_start``); alone (a benchmark) it makes its own."""
        record = record if record is not None else StepRecord(self._progress())
        for net in self.nets.values():
            net.train()
        self.dist.seed_step(self.cfg.seed, self.step)
        raw_labelled, record.raw_unlabelled = self._raw_batches()
        record.labelled = self._to_batch(raw_labelled)
        record.unlabelled = None if record.raw_unlabelled is None else self._to_batch(record.raw_unlabelled)
        self._call("on_batches", record)
        out = record.out = self._forward(lambda: self._method_step(record))
        self._call("on_forward", record)
        gate = 1.0 if self.gate is None else self.gate.value(self.step)
        for update in range(_MAX_UPDATES_PER_STEP):
            prefix = f"u{update + 1}_" if update else ""
            losses = gate_unlabelled_terms(out.losses, out.unlabelled, gate)
            record.row["loss"] += float(self._update(losses).detach())
            record.row.update({prefix + k: float(v.detach()) for k, v in losses.items()})
            record.row.update({prefix + k: v for k, v in out.logs.items()})
            if out.followup is None:
                break
            out = self._forward(out.followup)
        else:
            raise SemisegError(f"method {self.method.name!r} chained more than {_MAX_UPDATES_PER_STEP} updates")
        self.scheduler.step()
        return record.row

    def _call(self, event: str, record: StepRecord) -> None:
        for handler in self.handlers:
            getattr(handler, event)(self, record)

    def _end(self, error: BaseException | None) -> None:
        """``on_train_end`` in reverse order, every handler even if one fails; the loader workers stop last."""
        failures = []
        for handler in reversed(self.handlers):
            try:
                handler.on_train_end(self, error)
            except BaseException as exc:  # noqa: BLE001 - the others must still close what they opened
                failures.append(exc)
        if self.stream is not None:  # loader workers end with the loop, also on Ctrl-C and errors
            self.stream.close()
        if failures and error is None:
            raise failures[0]

    # -- the step's parts ----------------------------------------------------------------------
    def _raw_batches(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """This process's share of the step's global batches, from ``train.workers`` loader processes (the
        same batches for any number of workers or processes)."""
        if self.stream is None:
            unlabelled = self.data.unlabelled
            batches = StepBatches(
                self.data.labelled, unlabelled,
                labelled_indices=self.dist.shard(self.data.labelled.batch_size),
                unlabelled_indices=None if unlabelled is None else self.dist.shard(unlabelled.batch_size),
            )
            self.stream = BatchStream(batches, self.cfg.train.workers, self.cfg.train.steps)
        return self.stream.batch(self.step)

    def _to_batch(self, raw: dict[str, Any]) -> Batch:
        """A sampled batch on the run's device, channels-last when the nets are."""
        batch = to_batch(raw, self.device, self.ctx.label_mode)
        if self.channels_last:
            batch.image = to_channels_last(batch.image, self.cfg.model.dim)
        return batch

    def _forward(self, step: Any) -> StepOut:
        """A method forward under the run's autocast, its losses taken over the whole (global) batch."""
        with autocast(self.amp, self.device, self.amp_dtype), self.dist.whole_batch_losses():
            return step()

    def _method_step(self, record: StepRecord) -> StepOut:
        """The method's step; a method that uses unlabelled data gets its supervised step when there is none."""
        assert record.labelled is not None
        if self.method.uses_unlabelled and record.unlabelled is None:
            return self.method.supervised_step(self.nets, record.labelled, record.progress)
        return self.method.training_step(self.nets, record.labelled, record.unlabelled, record.progress)

    def _update(self, losses: dict[str, Tensor]) -> Tensor:
        """One optimiser update on the sum of ``losses``, then the EMA nets follow."""
        total = self._total_loss(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.dist.average_gradients(self.params)
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.dist.average_buffers(self.nets.values())
        for name, spec in self.specs.items():
            if spec.ema_of and (spec.ema_on is None or spec.ema_on(self.step)):
                update_ema_net(self.nets, name, spec, self.step + 1, self.cfg.train.steps)
        return total

    def _total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        if not losses:
            raise SemisegError(f"method {self.method.name!r} returned no loss terms at step {self.step}")
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise SemisegError(
                    f"training diverged: loss term {name!r} is {float(value)} at step {self.step}; "
                    "lower train.lr, check the images for extreme values, or set train.amp=off"
                )
        return torch.stack([v.float() for v in losses.values()]).sum()

    # -- what a checkpoint holds ---------------------------------------------------------------
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state(self) -> dict[str, Any]:
        """Everything to continue exactly: nets, method, optimiser, schedule, scaler, step, RNGs, handlers."""
        samplers = {"labelled": self.data.labelled.state_dict()}
        if self.data.unlabelled is not None:
            samplers["unlabelled"] = self.data.unlabelled.state_dict()
        handlers = {h.state_key: h.state_dict() for h in self.handlers if h.state_key is not None}
        return {
            "nets": {name: net.state_dict() for name, net in self.nets.items()},
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": {**rng_state(), "samplers": samplers},
            **handlers,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, net in self.nets.items():
            net.load_state_dict(state["nets"][name])
        self.method.load_state_dict(state["method_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        for handler in self.handlers:
            if handler.state_key is not None and state.get(handler.state_key) is not None:
                handler.load_state_dict(state[handler.state_key])
        set_rng_state(state["rng"])
        self.data.labelled.load_state_dict(state["rng"]["samplers"]["labelled"])
        if self.data.unlabelled is not None:
            self.data.unlabelled.load_state_dict(state["rng"]["samplers"]["unlabelled"])
