"""The one training loop every method runs in.

It builds the networks a method declares, optimises the sum of the loss terms the method returns,
updates EMA networks, validates every ``val_every`` steps on whole validation volumes (mean foreground
Dice), keeps the best and the last checkpoint, logs to CSV and shows a progress bar with ETA. It knows
methods only through the ``Method`` contract.

It owns what every method would otherwise repeat: a step without an unlabelled batch
(``train.unlabelled_batch_size=0``) is the method's ``supervised_step``, or a ``ConfigError`` before training
for methods that cannot run without one; the CSV log keeps every key a step ever reports (the file is
rewritten with the union of the columns when a new key appears). A method's optional ``Curriculum`` is
asked before each step: if it wants them, it gets every unlabelled case whole (eval mode, no gradients, the
run's ``Inferer``); its ``subset`` restricts the cases the unlabelled batch is drawn from; its
``artifacts`` are written as JSON into ``artifacts/`` of the run folder with every checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from semiseg.config import Config
from semiseg.data.loaders import PatchSampler, StoredCase
from semiseg.data.stream import BatchStream, StepBatches
from semiseg.engine import distributed, teach
from semiseg.engine.checkpoint import rng_state, save_checkpoint, set_rng_state
from semiseg.engine.device import autocast, resolve_amp_dtype
from semiseg.engine.inferer import Inferer
from semiseg.engine.performance import channels_last_enabled, prepare_nets, to_channels_last
from semiseg.engine.reliability import OBSERVE_EVERY, closed_gate_note, labelled_batch_dice, make_gate
from semiseg.engine.tensorboard import OVERLAY_CASES, TensorBoardLog
from semiseg.errors import ConfigError, SemisegError
from semiseg.eval.labels import probs_to_label
from semiseg.eval.metrics import foreground_overlaps
from semiseg.methods.base import Batch, Curriculum, Method, MethodContext, Nets, NetSpec, Progress, StepOut, WholeCase
from semiseg.nets import build_network, evaluating
from semiseg.ssl.ema import ema_update
from semiseg.ssl.gate import ReliabilityGate, gate_unlabelled_terms

_MAX_UPDATES_PER_STEP = 8


@dataclass
class TrainingData:
    labelled: PatchSampler
    unlabelled: PatchSampler | None
    val: list[StoredCase]


def network_options(cfg: Config) -> dict[str, Any]:
    return {"widths": cfg.model.widths, "norm": cfg.model.norm, "dropout": cfg.model.dropout}


def build_nets(method: Method, cfg: Config, ctx: MethodContext, device: torch.device) -> Nets:
    """Instantiate every ``NetSpec``; each net's init is seeded on its own so order does not matter."""
    nets: Nets = {}
    specs = method.networks()
    for name, spec in specs.items():
        torch.manual_seed(cfg.seed + 1000 * spec.init_seed_offset)
        if spec.builder is not None:
            net = spec.builder(ctx)
        else:
            net = build_network(
                cfg.model.arch, spatial_dims=cfg.model.dim, in_channels=ctx.in_channels,
                out_channels=ctx.num_classes, **{**network_options(cfg), **spec.overrides},
            )
        if spec.head_seed_offset is not None:
            reinit_heads(net, cfg.seed + 1000 * spec.head_seed_offset + 1)
        nets[name] = net.to(device)
    for name, spec in specs.items():
        if spec.ema_of:
            unknown = [s for s in spec.ema_of if s not in nets]
            if unknown:
                raise SemisegError(f"method {method.name!r}: net {name!r} follows unknown net(s) {unknown}")
            update_ema_net(nets, name, spec, step=0, total_steps=cfg.train.steps)
        if not spec.trainable:
            nets[name].requires_grad_(False)
    return nets


def reinit_heads(net: nn.Module, seed: int) -> None:
    """Fresh initial weights for the output heads only (``NetSpec.head_seed_offset``)."""
    heads = getattr(net, "heads", None)
    if heads is None:
        raise SemisegError(f"{type(net).__name__} has no output heads to re-initialise")
    torch.manual_seed(seed)
    for module in heads.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def update_ema_net(nets: Nets, name: str, spec: NetSpec, step: int, total_steps: int = 0) -> None:
    """EMA of ``spec.ema_of`` into ``nets[name]`` with the warmed-up decay min(1 − 1/(t + 1), decay)."""
    decay = min(1.0 - 1.0 / (step + 1), spec.decay(total_steps))
    ema_update(nets[name], [nets[s] for s in spec.ema_of], decay, spec.ema_weights or None, spec.ema_buffers)


def trainable_parameters(nets: Nets, specs: dict[str, NetSpec]) -> list[nn.Parameter]:
    return [p for n, net in nets.items() if specs[n].trainable for p in net.parameters() if p.requires_grad]


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    train = cfg.train

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        t = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        if train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if train.schedule == "poly":
            return (1 - min(t, 1.0)) ** 0.9
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    train = cfg.train
    if not params:
        raise SemisegError(f"method {train.method!r} declares no trainable parameters")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


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


class CsvLog:
    """A wide CSV, one row per logged step, with a column for every key any row reported.

    A key first reported late (a term that starts with a curriculum stage) adds a column: the file is
    rewritten with the union of the columns, earlier rows left empty there, so ``csv.DictReader`` reads it
    as usual. On resume the rows up to and including the checkpoint's step are kept (the Trainer logs a step's
    row before it saves that step's checkpoint, so the row is always there) and ``elapsed_before`` holds their
    last ``elapsed_s``, so training time keeps counting across interruptions.
    """

    def __init__(self, path: Path, keep_through_step: int | None = None) -> None:
        self.path, self.fields, self.elapsed_before = path, [], 0.0
        if keep_through_step is not None and path.exists():
            fields, rows = self._read()
            rows = [r for r in rows if int(r["step"]) <= keep_through_step]
            if not rows:  # nothing survives (a restart from step 0): the next append starts a fresh file
                path.unlink()
                return
            self.fields = fields
            self._write(rows, mode="w")
            self.elapsed_before = float(rows[-1].get("elapsed_s") or 0.0)

    def _read(self) -> tuple[list[str], list[dict[str, Any]]]:
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        with self.path.open(mode, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        if not self.fields:
            self.fields = list(row) + (["val_dice"] if "val_dice" not in row else [])
            self._write([row], mode="w")
            return
        new = [key for key in row if key not in self.fields]
        if not new:
            self._write([row], mode="a")
            return
        _, rows = self._read()
        self.fields += new
        self._write([*rows, row], mode="w")


class _DeferredInterrupt:
    """Hold a Ctrl-C (SIGINT) until the current step's update, log row and checkpoint are all done.

    A step interrupted half-way would save a ``last.pt`` whose weights, step count and log disagree,
    and a resumed run would differ from an uninterrupted one. A second Ctrl-C stops at once (``forced``,
    nothing is saved). Outside the main thread nothing is deferred.
    """

    def __init__(self) -> None:
        self.requested = self.forced = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class Trainer:
    def __init__(
        self,
        cfg: Config,
        method: Method,
        ctx: MethodContext,
        data: TrainingData,
        *,
        nets: Nets,
        inferer: Inferer,
        run_dir: Path,
        describe: dict[str, Any],
        progress: bool = True,
    ) -> None:
        self.cfg, self.method, self.ctx, self.data = cfg, method, ctx, data
        self.run_dir, self.describe, self.show_progress = run_dir, describe, progress
        check_unlabelled_batch(method, 0 if data.unlabelled is None else data.unlabelled.batch_size)
        self.nets, self.inferer, self.device = nets, inferer, inferer.device
        self.amp, self.amp_dtype = inferer.amp, resolve_amp_dtype(cfg.train.amp_dtype, self.device)
        self.channels_last = channels_last_enabled(cfg.train.channels_last, cfg.model.dim, self.device, self.amp)
        prepare_nets(nets, cfg, channels_last=self.channels_last)
        self.specs = method.networks()
        params = trainable_parameters(self.nets, self.specs)
        self.optimizer = make_optimizer(cfg, params)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.params = params
        self.dist = distributed.current()
        self.step = 0
        self.best = {"score": -math.inf, "step": -1}
        self.tensorboard: TensorBoardLog | None = None
        self._overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.stream: BatchStream | None = None  # started at the first step, so a resumed run starts where it stopped
        self._unlabelled_dice = teach.UnlabelledDice()
        self.gate = make_gate(cfg, method)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        samplers = {"labelled": self.data.labelled.state_dict()}
        if self.data.unlabelled is not None:
            samplers["unlabelled"] = self.data.unlabelled.state_dict()
        return {
            **self.describe,
            "nets": {name: net.state_dict() for name, net in self.nets.items()},
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": dict(self.best),
            "rng": {**rng_state(), "samplers": samplers},
            "gate": self.gate.state_dict() if self.gate is not None else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, net in self.nets.items():
            net.load_state_dict(state["nets"][name])
        self.method.load_state_dict(state["method_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = state["step"], dict(state["best"])
        if self.gate is not None and state.get("gate"):
            self.gate.load_state_dict(state["gate"])
        set_rng_state(state["rng"])
        self.data.labelled.load_state_dict(state["rng"]["samplers"]["labelled"])
        if self.data.unlabelled is not None:
            self.data.unlabelled.load_state_dict(state["rng"]["samplers"]["unlabelled"])

    def save(self, which: str) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.state(), self.run_dir / "checkpoints" / f"{which}.pt")
        curriculum = self.method.curriculum()
        for name, record in (curriculum.artifacts() if curriculum is not None else {}).items():
            path = self.run_dir / "artifacts" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")

    # -- one step ------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        progress = Progress(self.step, self.cfg.train.steps)
        self._prepare_unlabelled(progress)
        for net in self.nets.values():
            net.train()
        self.dist.seed_step(self.cfg.seed, self.step)
        raw_labelled, raw_unlabelled = self._raw_batches()
        labelled = self._to_batch(raw_labelled)
        unlabelled = truth = None
        if raw_unlabelled is not None:  # its "truth" stays here: to_batch never reads it
            unlabelled = self._to_batch(raw_unlabelled)
            truth = teach.truth_tensor(raw_unlabelled, self.device, self.ctx.label_mode)
        scored = truth is not None and self._logs_step(self.step + 1)
        row: dict[str, float] = {"loss": 0.0}
        if scored:  # before the step's forward, so BatchNorm's running statistics are the ones it started with
            row.update(self._prediction_scores(unlabelled, truth))
        self.method.unlabelled_terms_on = self.gate is None or self.gate.is_open  # separate_until_gate reads it
        with autocast(self.amp, self.device, self.amp_dtype), self.dist.whole_batch_losses():
            out = self._method_step(labelled, unlabelled, progress)
        # the truth describes the batch as drawn, which only the first update of a chained step trains on
        if scored:
            row.update(teach.score_step(out.targets, out.masks, truth, label_mode=self.ctx.label_mode,
                                        num_classes=self.ctx.num_classes, method=self.method.name))
        gate = 1.0 if self.gate is None else self.gate.value(self.step)
        for update in range(_MAX_UPDATES_PER_STEP):
            prefix = f"u{update + 1}_" if update else ""
            losses = gate_unlabelled_terms(out.losses, gate)
            total = self._update(losses)
            row["loss"] += float(total.detach())
            row.update({prefix + k: float(v.detach()) for k, v in losses.items()})
            row.update({prefix + k: v for k, v in out.logs.items()})
            if out.followup is None:
                break
            with autocast(self.amp, self.device, self.amp_dtype), self.dist.whole_batch_losses():
                out = out.followup()
        else:
            raise SemisegError(f"method {self.method.name!r} chained more than {_MAX_UPDATES_PER_STEP} updates")
        self.scheduler.step()
        if self.gate is not None:
            row.update(self._observe_gate(self.gate, labelled, gate))
        return row

    @torch.no_grad()
    def _prediction_scores(self, unlabelled: Batch, truth: Tensor) -> dict[str, float]:
        """``teach/prediction_*``: the predicting network's own answer on the unlabelled batch, in eval mode.

        Why: a method's targets help only where they beat what the model would predict anyway; this puts that
        yardstick on the same pixels and the same step, and leaves training as it was (``evaluating``).
        """
        with evaluating(self.nets.values()), autocast(self.amp, self.device, self.amp_dtype):
            logits = self.method.predict(self.nets, unlabelled.image)
        return teach.score_prediction(logits, truth, label_mode=self.ctx.label_mode, num_classes=self.ctx.num_classes)

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

    def _logs_step(self, step: int) -> bool:
        """Whether the row of the step that ends at ``step`` updates is written to ``log.csv``."""
        train = self.cfg.train
        return step % train.log_every == 0 or step % train.val_every == 0 or step == train.steps

    def _observe_gate(self, gate: ReliabilityGate, labelled: Batch, value: float) -> dict[str, float]:
        """The gate's log entries; while it is closed, every few steps a labelled-batch Dice feeds it."""
        if gate.is_open or (self.step + 1) % OBSERVE_EVERY:
            return {"unlabelled_gate": value}
        dice = labelled_batch_dice(self.method, self.nets, labelled, self.ctx.label_mode, self.ctx.num_classes)
        dice = self.dist.mean(dice)  # every rank opens the gate at the same step
        gate.observe(self.step + 1, dice)
        return {"unlabelled_gate": value, "labelled_dice": dice, "labelled_dice_smoothed": gate.reliability}

    def _method_step(self, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        """The method's step; a method that uses unlabelled data gets its supervised step when there is none."""
        if self.method.uses_unlabelled and unlabelled is None:
            return self.method.supervised_step(self.nets, labelled, progress)
        return self.method.training_step(self.nets, labelled, unlabelled, progress)

    def _prepare_unlabelled(self, progress: Progress) -> None:
        """The curriculum's optional pass over whole unlabelled cases, then its subset for this step's batch."""
        curriculum = self.method.curriculum()
        if curriculum is None:
            return
        if curriculum.wants_cases(progress):
            self._curriculum_pass(curriculum, progress)
        if self.data.unlabelled is not None:
            self.data.unlabelled.restrict(curriculum.subset(progress))

    def _curriculum_pass(self, curriculum: Curriculum, progress: Progress) -> None:
        """The pass over whole cases, on rank 0; the other processes take its method state and nets."""
        def on_main() -> dict[str, Any]:
            for net in self.nets.values():
                net.eval()
            store = self.data.unlabelled.store if self.data.unlabelled is not None else []
            with torch.no_grad():
                curriculum.on_cases(self.nets, (self._whole_case(c) for c in store), progress)
            return self.method.state_dict()

        state = self.dist.on_main(on_main)
        if not self.dist.is_main:
            self.method.load_state_dict(state)
        self.dist.broadcast_nets(self.nets.values())

    def _whole_case(self, case: StoredCase) -> WholeCase:
        volume = torch.from_numpy(case.image).to(self.device)
        return WholeCase(case.case_id, volume, partial(self._case_probabilities, volume))

    def _case_probabilities(self, volume: Tensor, predictor: Callable[[Tensor], Tensor]) -> Tensor:
        """``(K, X, Y, Z)`` probabilities of a ``(C, X, Y, Z)`` volume under the run's Inferer."""
        return self.inferer.volume_probabilities(predictor, volume)

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

    # -- validation ----------------------------------------------------------------------------
    def _predict(self, x: Tensor) -> Tensor:
        return self.method.predict(self.nets, x)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean foreground Dice over validation volumes (NaN when there is no validation set)."""
        if not self.data.val:
            return float("nan")
        for net in self.nets.values():
            net.eval()
        self._overlays = []
        scores = [self._case_dice(case) for case in self.data.val]
        return float(np.mean(scores))

    @torch.no_grad()
    def unlabelled_dice(self) -> dict[str, float]:
        """``teach/unl_dice_<net>`` of every segmentation net on whole unlabelled cases with truth (see ``teach``)."""
        if self.data.unlabelled is None or not self.cfg.train.monitor_unlabelled:
            return {}
        nets = {name: net for name, net in self.nets.items() if self.specs[name].builder is None}
        for net in nets.values():
            net.eval()
        return self._unlabelled_dice(nets, self.data.unlabelled.store, self.inferer.probabilities,
                                     label_mode=self.ctx.label_mode, num_classes=self.ctx.num_classes,
                                     dice=mean_foreground_dice)

    def _case_dice(self, case: StoredCase) -> float:
        pred = probs_to_label(self.inferer.probabilities(self._predict, case.image), self.ctx.label_mode)
        if self.tensorboard is not None and len(self._overlays) < OVERLAY_CASES:
            self._overlays.append((case.case_id, case.image, case.label, pred))
        return mean_foreground_dice(pred, case.label, self.ctx.label_mode, self.ctx.num_classes)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train until ``train.steps``; Ctrl-C saves ``last.pt`` so ``--resume`` can continue."""
        train = self.cfg.train
        main = self.dist.is_main  # only rank 0 writes the log, TensorBoard and checkpoints
        log = CsvLog(self.run_dir / "log.csv", keep_through_step=self.step) if main else None
        start_time = time.perf_counter() - (log.elapsed_before if log is not None else 0.0)
        bar = tqdm(total=train.steps, initial=self.step, desc=f"train {self.method.name}",
                   disable=not (self.show_progress and main), dynamic_ncols=True)
        val_score = float("nan")
        stop = _DeferredInterrupt()
        self.tensorboard = TensorBoardLog.open(train.tensorboard, self.run_dir, self.step) if main else None
        try:
            while self.step < train.steps:
                stop.raise_if_requested()  # Ctrl-C acts between steps, so last.pt and log.csv agree
                row = self.train_step()
                self.step += 1
                checkpoint_step = self.step % train.val_every == 0 or self.step == train.steps
                if checkpoint_step:
                    val_score = row["val_dice"] = self.dist.on_main(self.validate)  # same best on every rank
                    row.update(self.dist.on_main(self.unlabelled_dice))
                if self._logs_step(self.step):
                    self._log(log, {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **row,
                                    "elapsed_s": round(time.perf_counter() - start_time, 3)})
                if checkpoint_step:  # after the log row, so a resume from this checkpoint finds its row
                    self._save_checkpoints(val_score)
                bar.update(1)
                shown_dice = "–" if math.isnan(val_score) else f"{val_score:.3f}"  # no validation yet
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_dice=shown_dice)
                if on_step is not None:
                    on_step(self.step)
            stop.raise_if_requested()
        except KeyboardInterrupt:
            if not stop.forced:  # a second Ctrl-C stops mid-step: the last consistent checkpoint stays
                self.save("last")
            bar.close()
            raise
        finally:
            if self.stream is not None:  # loader workers end with the loop, also on Ctrl-C and errors
                self.stream.close()
            stop.restore()
            if self.tensorboard is not None:
                self.tensorboard.close()
        bar.close()
        if main and self.gate is not None and not self.gate.is_open:
            print(closed_gate_note(self.gate), file=sys.stderr)
        return {"best": dict(self.best), "steps": self.step, "seconds": time.perf_counter() - start_time}

    def _log(self, log: CsvLog | None, row: dict[str, Any]) -> None:
        """One ``log.csv`` row, mirrored (with the validation overlays) to TensorBoard when it is on."""
        if log is None:  # not rank 0
            return
        log.append(row)
        if self.tensorboard is not None:
            self.tensorboard.scalars(row)
            if "val_dice" in row:
                self.tensorboard.overlays(self._overlays, self.step, self.ctx.label_mode)

    def _save_checkpoints(self, score: float) -> None:
        # Without a validation set the last checkpoint is also the best one.
        if math.isnan(score) or score > self.best["score"]:
            self.best = {"score": score, "step": self.step}
            self.save("best")
        self.save("last")


def mean_foreground_dice(pred: np.ndarray, label: np.ndarray, label_mode: str, num_classes: int) -> float:
    """Mean Dice over foreground classes; a class absent from both counts as 1 (fast, for validation)."""
    overlaps = foreground_overlaps(pred, label, label_mode, num_classes)
    return float(np.mean([1.0 if size == 0 else 2.0 * inter / size for inter, size in overlaps]))

