"""Assembling a run's parts from its config: dataset, method and networks, samplers, Inferer, handlers.

Each function builds one part; ``engine.run.Run`` calls them in order, and ``engine.plan`` (the dry run) and
``engine.model`` (a trained model) reuse the ones they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semiseg.config import Config
from semiseg.data import sources
from semiseg.data.cache import CaseCache, resolve_cache_dir
from semiseg.data.case import DatasetSpec
from semiseg.data.loaders import Augmentation, PatchSampler, default_patch_size, keep_labelled_slices, load_store
from semiseg.data.splits import refs_by_id
from semiseg.engine.checkpoint import CheckpointHandler
from semiseg.engine.csvlog import CsvLogHandler
from semiseg.engine.curriculum import CurriculumHandler
from semiseg.engine.device import amp_enabled, resolve_amp_dtype
from semiseg.engine.handlers import Handler
from semiseg.engine.inferer import Inferer, network_divisor
from semiseg.engine.interrupt import DeferredInterrupt
from semiseg.engine.loop import TrainingData
from semiseg.engine.networks import build_nets
from semiseg.engine.progress import ProgressBar
from semiseg.engine.reliability import GateHandler
from semiseg.engine.teach import TeachHandler
from semiseg.engine.tensorboard import OVERLAY_CASES, TensorBoardHandler, tensorboard_wanted
from semiseg.engine.validation import ValidationHandler
from semiseg.errors import DataError
from semiseg.losses import supervised_loss
from semiseg.methods import Method, MethodContext, get_method
from semiseg.methods.base import Nets
from semiseg.ssl.gate import ReliabilityGate


def open_configured_dataset(cfg: Config) -> DatasetSpec:
    return sources.open_dataset(cfg.data.source, cfg.data.path, **cfg.data.options)


def dataset_info(spec: DatasetSpec) -> dict[str, Any]:
    return {"name": spec.name, "label_mode": spec.label_mode, "class_names": list(spec.class_names),
            "channels": spec.channels, "dim": spec.dim}


def method_context(cfg: Config, info: dict[str, Any]) -> MethodContext:
    return MethodContext(
        label_mode=info["label_mode"],
        num_classes=len(info["class_names"]),
        spatial_dims=cfg.model.dim,
        in_channels=info["channels"],
        supervised_loss=supervised_loss(cfg.train.loss, info["label_mode"], cfg.train.include_background),
        include_background=cfg.train.include_background,
        unlabelled_pass=cfg.train.unlabelled_pass,
    )


def make_inferer(cfg: Config, label_mode: str, device: torch.device, nets: Nets, patch_size: list[int]) -> Inferer:
    """The run's Inferer: the divisor comes from the networks, the 3D window is the training patch."""
    divisor = network_divisor(nets.values())
    return Inferer(dim=cfg.model.dim, label_mode=label_mode, device=device, divisor=divisor, roi_size=tuple(patch_size),
                   batch_size=cfg.eval.sw_batch_size, overlap=cfg.eval.overlap, amp=amp_enabled(cfg.train.amp, device),
                   amp_dtype=resolve_amp_dtype(cfg.train.amp_dtype, device))


def build_data(cfg: Config, spec: DatasetSpec, split: dict[str, Any], method_cls: type[Method], divisor: int,
                progress: bool) -> tuple[TrainingData, list[int]]:
    refs = refs_by_id(spec)
    common = {"normalize": cfg.data.normalize, "label_mode": spec.label_mode, "progress": progress,
              "cache": case_cache(cfg, spec)}
    labelled = load_store([refs[i] for i in split["labelled"]], with_labels=True, desc="labelled cases", **common)
    if cfg.split.labelled_slices is not None:
        labelled = keep_labelled_slices(labelled, cfg.split.labelled_slices)
    unlabelled = []
    if method_cls.uses_unlabelled:
        if not split["unlabelled"]:
            raise DataError(f"method {method_cls.name!r} needs unlabelled cases but the split has none; "
                            "lower split.labelled or add unlabelled images")
        unlabelled = load_store([refs[i] for i in split["unlabelled"]], with_labels=False,
                                keep_truth=cfg.train.monitor_unlabelled, desc="unlabelled cases", **common)
    val = load_store([refs[i] for i in split["val"]], with_labels=True, desc="validation cases", **common)
    patch = cfg.train.patch_size or default_patch_size([labelled, unlabelled, val], cfg.model.dim, divisor)
    train = cfg.train
    sampler_args = {"dim": cfg.model.dim, "patch_size": patch, "augment": Augmentation(**train.augment.model_dump())}
    lab_sampler = PatchSampler(labelled, batch_size=train.batch_size, foreground_fraction=train.foreground_fraction,
                               seed=cfg.seed * 7919 + 1, **sampler_args)
    unl_sampler = None
    if unlabelled and train.unlabelled_batch_size > 0:
        unl_sampler = PatchSampler(unlabelled, batch_size=train.unlabelled_batch_size,
                                   seed=cfg.seed * 7919 + 2, **{**sampler_args,
                                   "augment": sampler_args["augment"].for_unlabelled()})
    return TrainingData(lab_sampler, unl_sampler, val), patch


def case_cache(cfg: Config, spec: DatasetSpec) -> CaseCache | None:
    """The on-disk cache of prepared cases for this dataset and preprocessing (None: ``data.cache=off``)."""
    root = resolve_cache_dir(cfg.data.cache)
    if root is None:
        return None
    settings = {"source": cfg.data.source, "options": cfg.data.options, "normalize": cfg.data.normalize,
                "label_mode": spec.label_mode, "class_names": list(spec.class_names), "channels": spec.channels}
    return CaseCache(root, settings)


def set_threads(cfg: Config, threads: int | None = None) -> None:
    """``threads`` (a ``--threads`` option) or the run's ``train.threads``; None of both keeps torch's default."""
    chosen = threads or cfg.train.threads
    if chosen:
        torch.set_num_threads(chosen)


def method_and_nets(cfg: Config, spec: DatasetSpec, device: torch.device) -> tuple[Method, Nets]:
    """The method and its networks, seeded by ``cfg.seed`` (each net's init is seeded on its own)."""
    torch.manual_seed(cfg.seed)
    method = get_method(cfg.train.method)(method_context(cfg, dataset_info(spec)), cfg.method)
    return method, build_nets(method, cfg, method.ctx, device)


def default_handlers(cfg: Config, run_dir: Path, describe: dict[str, Any], gate: ReliabilityGate | None, *,
                     main: bool, progress: bool) -> list[Handler]:
    """The built-in handlers of a training run, in the order their events must run (see ``engine.handlers``).

    Rank 0 alone writes the log, TensorBoard and checkpoints and prints; every rank validates (rank 0 computes,
    all receive), observes the gate and follows the curriculum, so all take the same decisions.
    """
    writes_events = main and tensorboard_wanted(cfg.train.tensorboard)
    class_names = describe["dataset"]["class_names"]
    validation = ValidationHandler(keep_overlays=OVERLAY_CASES if writes_events else 0, class_names=class_names)
    handlers: list[Handler] = [DeferredInterrupt(), CurriculumHandler()]
    if gate is not None:
        handlers.append(GateHandler(gate, notes=main))
    # the row's columns: gate, val_dice, then teach/unl_dice_*
    handlers += [validation, TeachHandler(class_names)]
    if main:
        handlers.append(CsvLogHandler(run_dir / "log.csv"))
    if writes_events:
        handlers.append(TensorBoardHandler(cfg.train.tensorboard, run_dir, validation))
    handlers += [CheckpointHandler(run_dir, describe, writes=main), ProgressBar(progress and main)]
    return handlers
