"""A Run: one training run assembled once and kept in memory from training to evaluation.

``Run.build(cfg)`` opens the dataset, makes the split, builds the method, its networks, the samplers and
the ``Inferer``, and prepares the run folder; ``fit()`` trains and ``evaluate()`` scores the checkpoints on
the test split with what the Run already holds (only the checkpoints' weights are read back). ``Run.resume``
continues an interrupted run, ``Run.open`` evaluates an existing run folder, ``Run.load_model`` gives one
checkpoint ready to predict. The face (``api.py``, ``cli.py``) asks a Run and assembles nothing itself.

A run folder holds everything about one training run::

    config.yaml  split.json  log.csv  checkpoints/{best,last}.pt
    metrics/per_case.csv  summary.json  report.md  figures/*.png  predictions/  .semiseg-manifest.json

The manifest lists the files the run wrote; ``--overwrite`` deletes those and nothing a user put there.
"""

from __future__ import annotations

import dataclasses
import glob
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from semiseg import __version__
from semiseg.config import Config, TrainConfig, config_to_yaml, read_yaml, validate_config
from semiseg.data import sources
from semiseg.data.cache import CaseCache, resolve_cache_dir
from semiseg.data.case import Case, DatasetSpec
from semiseg.data.loaders import (
    Augmentation,
    PatchSampler,
    default_patch_size,
    keep_labelled_slices,
    load_store,
    normalize_image,
)
from semiseg.data.splits import load_split, make_split, refs_by_id, save_split
from semiseg.engine import distributed
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.device import amp_enabled, resolve_amp_dtype, resolve_device
from semiseg.engine.export import FORMATS as EXPORT_FORMATS
from semiseg.engine.export import SIDECAR, ExportedModel, describe_export, export_model, training_spacing
from semiseg.engine.finetune import init_from_run
from semiseg.engine.inferer import Inferer, network_divisor
from semiseg.engine.loop import Trainer, TrainingData, build_nets, check_unlabelled_batch
from semiseg.engine.manifest import MANIFEST, recorded, remove_run_files
from semiseg.engine.performance import pin_legacy_speed_settings
from semiseg.engine.predict import CasePredictor, Ensemble, predict_files
from semiseg.engine.reliability import pin_legacy_unlabelled_settings
from semiseg.engine.tensorboard import check_tensorboard
from semiseg.errors import ConfigError, DataError, SemisegError
from semiseg.eval.io import input_case_ids
from semiseg.eval.run_evaluation import EvaluationOptions, RunFacts, evaluate_checkpoints
from semiseg.losses import supervised_loss
from semiseg.methods import Method, MethodContext, get_method, parse_method_options
from semiseg.methods.base import Nets
from semiseg.paths import check_writable_dir
from semiseg.ssl.ema import decay_for_horizon, ema_half_life, ema_horizon

RUN_ARTEFACTS = ("config.yaml", "split.json", "log.csv", "summary.json", "report.md",
                 "checkpoints", "metrics", "figures", "predictions", "uncertainty", "artifacts",
                 "export", "tensorboard")


# ----------------------------------------------------------------------------------------------
# assembling the parts


def open_configured_dataset(cfg: Config) -> DatasetSpec:
    return sources.open_dataset(cfg.data.source, cfg.data.path, **cfg.data.options)


def print_dataset_warnings(spec: DatasetSpec) -> None:
    """What the source found legal but probably unintended (e.g. images without a label), before training."""
    for text in spec.warnings:
        print(f"warning: {text}", file=sys.stderr)


def check_method_settings(cfg: Config) -> type[Method]:
    """The registered method, once its options, its unlabelled batch and the logging extras are valid.

    These checks need no data, so a run (and a dry run) fails on them before touching the dataset.
    """
    method_cls = get_method(cfg.train.method)
    parse_method_options(method_cls, cfg.method)
    check_unlabelled_batch(method_cls, cfg.train.unlabelled_batch_size)
    check_tensorboard(cfg.train.tensorboard)
    return method_cls


def print_ema_warnings(method: Method, steps: int) -> None:
    """Say so when a teacher's EMA looks back over more updates than the run has (it would stay near its init)."""
    for name, spec in method.networks().items():
        decay = spec.decay(steps)
        horizon = ema_horizon(decay)
        if spec.ema_of and horizon > steps:
            print(f"warning: net {name!r} of {method.name!r} is an EMA with decay {decay:.4g}, which averages "
                  f"over ~{horizon:.0f} updates (half-life {ema_half_life(decay):.0f}), but train.steps is "
                  f"{steps}: the teacher keeps much of its early, untrained students; train longer, set "
                  f"method.ema_half_life (e.g. 0.05, a twentieth of the run) or lower method.ema_decay "
                  f"(e.g. {decay_for_horizon(steps / 10):.3g}, a tenth of the run)", file=sys.stderr)


def print_schedule_warnings(train: TrainConfig) -> None:
    """Say so when the learning-rate warm-up is as long as the run: the rate never reaches ``train.lr``.

    A warm-up of half the run is not warned about: on the short protocol (100 steps) the 50-step warm-up beat a
    5-step one for supervised training and every method measured (``experiments/short_warmup.yaml``).
    """
    if train.warmup_steps >= train.steps:
        print(f"warning: train.warmup_steps={train.warmup_steps} is train.steps={train.steps} or more: the learning "
              f"rate never reaches train.lr={train.lr:g}; lower train.warmup_steps (e.g. {max(1, train.steps // 2)}, "
              "half the run, which measured better than a tenth on 100-step runs) or train longer", file=sys.stderr)


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


def _default_run_name(cfg: Config) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.train.method}_{cfg.data.source}"


def prepare_run_dir(cfg: Config, overwrite: bool) -> Path:
    """Create the run folder; refuse to reuse one that holds a run unless ``overwrite``."""
    run_dir = Path(cfg.output.root) / (cfg.output.name or _default_run_name(cfg))
    existing = [name for name in RUN_ARTEFACTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise SemisegError(
            f"{run_dir} already holds a run ({', '.join(existing)}); choose another output.name, "
            "resume it with --resume, or pass --overwrite to replace it"
        )
    if existing:  # only the files the run wrote (its manifest); anything the user put there stays
        remove_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def require_run(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        raise SemisegError(f"{run_dir} is not a semiseg run folder (no config.yaml); pass --run runs/<id>")


def _check_dims(cfg: Config, spec: DatasetSpec) -> None:
    if cfg.model.dim == 3 and spec.dim == 2:
        raise ConfigError(f"model.dim=3 but dataset {spec.name!r} holds 2D images; use model.dim=2")


def check_patch(cfg: Config, divisor: int) -> None:
    if cfg.train.patch_size and any(p % divisor for p in cfg.train.patch_size):
        raise ConfigError(
            f"train.patch_size={cfg.train.patch_size} must be multiples of {divisor} "
            f"(the network's divisor, 2 ** (len(model.widths) - 1) for model.widths={cfg.model.widths})"
        )
    _check_patch_minimum(cfg, divisor)


def _check_patch_minimum(cfg: Config, divisor: int) -> None:
    """Every size at least the divisor, and a normalised bottleneck of more than one voxel.

    The deepest level sees ``patch / divisor`` voxels per axis; batch, instance and group norm cannot
    normalise a single voxel in training (torch fails at the first step), so the network needs two there.
    """
    patch = cfg.train.patch_size
    if not patch:
        return
    bottleneck = int(np.prod([p // divisor for p in patch]))
    needed = 1 if cfg.model.norm == "none" else 2
    if min(patch) >= divisor and bottleneck >= needed:
        return
    smallest = [divisor] * cfg.model.dim if needed == 1 else [divisor] * (cfg.model.dim - 1) + [2 * divisor]
    raise ConfigError(
        f"train.patch_size={patch} is too small for model.widths={cfg.model.widths} ({len(cfg.model.widths)} levels, "
        f"divisor {divisor}): the smallest valid patch is {smallest} (each size a multiple of {divisor}"
        + ("" if needed == 1 else f", more than one voxel at the deepest level for model.norm={cfg.model.norm}")
        + "); raise train.patch_size or use fewer model.widths"
    )


@dataclass
class _RunFolderUndo:
    """What ``Run.build`` created in the output folder, so a run that fails before its first step leaves nothing.

    Only this call's work is removed: a folder it created, or (in a folder that existed) the run files it wrote.
    """

    root: Path
    root_created: Path | None
    existing_names: set[str]

    @classmethod
    def before(cls, cfg: Config) -> _RunFolderUndo:
        root = Path(cfg.output.root)
        if not root.exists():
            top = root.absolute()
            while not top.parent.exists():
                top = top.parent
            return cls(root, top, set())
        return cls(root, None, {p.name for p in root.iterdir()})

    def undo(self, run_dir: Path) -> None:
        # output.name may hold a sub-folder (or be absolute: then only the run files go)
        first = run_dir.relative_to(self.root).parts[0] if run_dir.is_relative_to(self.root) else None
        if self.root_created is not None and first is not None:
            shutil.rmtree(self.root_created, ignore_errors=True)
        elif first is not None and first not in self.existing_names:
            shutil.rmtree(self.root / first, ignore_errors=True)
        else:  # the user's folder: prepare_run_dir emptied it of run files, so those present are this call's
            for target in (run_dir / name for name in (*RUN_ARTEFACTS, MANIFEST)):
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def _new_run_folder(cfg: Config, overwrite: bool, split: dict[str, Any]) -> tuple[_RunFolderUndo, Path]:
    """The run folder with its config and split (on rank 0 under torchrun); a failure leaves nothing of it."""
    undo = _RunFolderUndo.before(cfg)
    run_dir = prepare_run_dir(cfg, overwrite)
    try:
        with recorded(run_dir):
            (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
            save_split(split, run_dir / "split.json")
    except BaseException:
        undo.undo(run_dir)
        raise
    return undo, run_dir


def checkpoint_to_use(run_dir: Path, name: str) -> str:
    """``name``, or ``last`` with a notice when a run stopped before its first validation has no ``best.pt``."""
    folder = run_dir / "checkpoints"
    if name == "best" and not (folder / "best.pt").is_file() and (folder / "last.pt").is_file():
        print(f"note: {run_dir} has no best.pt (stopped before its first validation); using last.pt",
              file=sys.stderr)
        return "last"
    return name


def _build_data(cfg: Config, spec: DatasetSpec, split: dict[str, Any], method_cls: type[Method], divisor: int,
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


# ----------------------------------------------------------------------------------------------
# a trained model


@dataclass
class LoadedModel:
    """A trained method ready to predict: nets in eval mode, the run's Inferer and its normalisation."""

    cfg: Config
    method: Method
    nets: Nets
    info: dict[str, Any]
    patch_size: list[int]
    inferer: Inferer

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], device: torch.device) -> LoadedModel:
        """Method, nets and Inferer of a loaded checkpoint (its config and dataset description travel with it)."""
        cfg, info = validate_config(state["config"]), state["dataset"]
        method = get_method(state["method"])(method_context(cfg, info), cfg.method)
        method.load_state_dict(state["method_state"])
        nets = build_nets(method, cfg, method.ctx, device)
        for name, net in nets.items():
            net.load_state_dict(state["nets"][name])
            net.eval()
        inferer = make_inferer(cfg, info["label_mode"], device, nets, state["patch_size"])
        return cls(cfg, method, nets, info, state["patch_size"], inferer)

    def with_tta(self, tta: bool = True) -> LoadedModel:
        """The same model predicting with (or without) flip test-time augmentation."""
        return dataclasses.replace(self, inferer=dataclasses.replace(self.inferer, tta=tta))

    @property
    def divisor(self) -> int:
        return self.inferer.divisor

    @property
    def device(self) -> torch.device:
        return self.inferer.device

    def _predict(self, x: Tensor) -> Tensor:
        return self.method.predict(self.nets, x)

    def probabilities(self, case: Case) -> np.ndarray:
        return self.predict_normalized(self.normalized(case))

    def normalized(self, case: Case) -> np.ndarray:
        """The network's input: the case image after the run's intensity normalisation."""
        return normalize_image(case.image, self.cfg.data.normalize)

    def predict_normalized(self, image: np.ndarray) -> np.ndarray:
        """``(K, *spatial)`` probabilities of an already normalised image (robustness perturbs that input)."""
        return self.inferer.probabilities(self._predict, image)

    def input_gradient(self, image: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """Gradient of the cross-entropy against ``onehot`` w.r.t. a normalised image (FGSM)."""
        return self.inferer.input_gradient(self._predict, image, onehot)

    def sample_probabilities(self, image: np.ndarray, n: int) -> np.ndarray | None:
        """``(S, K, *spatial)`` Monte-Carlo probabilities (``Method.predict_samples``), or None without them."""
        return self.inferer.samples(lambda x: self.method.predict_samples(self.nets, x, n), image,
                                    len(self.info["class_names"]))


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class Run:
    """One run folder with its config, dataset, split and (when it trains) its Trainer, all in memory."""

    cfg: Config
    run_dir: Path
    dataset: DatasetSpec
    split: dict[str, Any]
    device: torch.device
    progress: bool = True
    trainer: Trainer | None = None
    undo: _RunFolderUndo | None = None  # set by build: a failure before the first step removes the new run

    @classmethod
    def build(cls, cfg: Config, *, overwrite: bool = False, progress: bool = True) -> Run:
        """Assemble a new run; every config check happens before the run folder is written."""
        _set_threads(cfg)
        check_writable_dir(Path(cfg.output.root) / (cfg.output.name or ""), "output folder")
        check_method_settings(cfg)
        device = distributed.join(cfg.train)
        ctx = distributed.current()
        progress = progress and ctx.is_main  # one progress bar and one set of warnings under torchrun
        spec = open_configured_dataset(cfg)
        if ctx.is_main:
            print_dataset_warnings(spec)
        _check_dims(cfg, spec)
        method, nets = _method_and_nets(cfg, spec, device)
        if ctx.is_main:
            print_ema_warnings(method, cfg.train.steps)
            print_schedule_warnings(cfg.train)
        if cfg.model.init_from:
            init_from_run(nets, method, cfg.model.init_from)
        check_patch(cfg, network_divisor(nets.values()))
        split = load_split(cfg.split.file, spec) if cfg.split.file else make_split(
            spec, labelled=cfg.split.labelled, val=cfg.split.val, test=cfg.split.test,
            unlabelled=cfg.split.unlabelled, seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed)
        undo, run_dir = ctx.on_main(lambda: _new_run_folder(cfg, overwrite, split))  # one folder, rank 0 writes
        try:
            run = cls(cfg, run_dir, spec, split, device, progress)
            run.trainer = run._trainer(method, nets)
        except BaseException:
            if ctx.is_main:
                undo.undo(run_dir)
            raise
        run.undo = undo if ctx.is_main else None
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, *, progress: bool = True) -> Run:
        """The interrupted run in ``run_dir``, restored from its ``last.pt`` exactly where it stopped.

        A run stopped before its first checkpoint has nothing to restore: it restarts from step 0 with its
        own config and split (the same numbers as a fresh run), and says so on stderr.
        """
        run_dir = Path(run_dir)
        require_run(run_dir)
        saved = read_yaml(run_dir / "config.yaml")
        cfg = validate_config(pin_legacy_unlabelled_settings(pin_legacy_speed_settings(saved)))
        device = distributed.join(cfg.train)  # another number of processes works: batches are global
        distributed.current().barrier()  # rank 0 may still be writing the last.pt the others are about to read
        last = run_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(last) if last.exists() else None
        if state is None:
            print(f"{run_dir}: stopped before its first checkpoint ({last} does not exist); "
                  "restarting it from step 0", file=sys.stderr)
        _set_threads(cfg)
        spec = open_configured_dataset(cfg)
        run = cls(cfg, run_dir, spec, load_split(run_dir / "split.json", spec), device,
                  progress and distributed.current().is_main)
        run.trainer = run._trainer(*_method_and_nets(cfg, spec, run.device))
        if state is not None:
            run.trainer.load_state(state)
        return run

    @classmethod
    def open(cls, run_dir: str | Path, *, progress: bool = True, threads: int | None = None) -> Run:
        """A finished run folder, to evaluate its checkpoints (no training data is loaded).

        Uses the run's ``train.threads`` (``threads`` overrides it) and its inference settings.
        """
        run_dir = Path(run_dir)
        require_run(run_dir)
        cfg = validate_config(read_yaml(run_dir / "config.yaml"))
        _set_threads(cfg, threads)
        spec = open_configured_dataset(cfg)
        return cls(cfg, run_dir, spec, load_split(run_dir / "split.json", spec), resolve_device(cfg.train.device),
                   progress)

    @staticmethod
    def load_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                   threads: int | None = None) -> LoadedModel:
        """One checkpoint of a run folder, ready to predict; needs neither the dataset nor the config file.

        Predicts with the run's ``train.threads`` (``threads`` overrides it) and its inference settings.
        """
        run_dir = Path(run_dir)
        require_run(run_dir)
        dev = resolve_device(device)
        state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint_to_use(run_dir, checkpoint)}.pt", dev)
        _set_threads(validate_config(state["config"]), threads)
        return LoadedModel.from_checkpoint(state, dev)

    @staticmethod
    def suggest(run_dir: str | Path, **kwargs: Any) -> list[Any]:
        """Rank the run's unlabelled cases by what a label would teach it (``semiseg.engine.suggest``)."""
        from semiseg.engine.suggest import suggest_run

        require_run(Path(run_dir))
        return suggest_run(Path(run_dir), **kwargs)

    @staticmethod
    def predict(runs: Sequence[str | Path], input_path: str | Path, output_dir: str | Path, *,
                model_dir: str | Path | None = None, checkpoint: str = "best", device: str = "auto", tta: bool = False,
                save_probabilities: bool = False, overwrite: bool = False, threads: int | None = None) -> list[Path]:
        """Predict with one run, an ensemble of runs (mean + disagreement map) or an export.

        Runs, output folder and name clashes are checked before any model or image is loaded.
        """
        if (model_dir is None) == (not runs):
            raise SemisegError("predict needs --run RUN (repeatable: an ensemble) or --model EXPORT_DIR, not both")
        output = Path(output_dir)
        for run in runs:
            require_run(Path(run))
        check_writable_dir(output, "--output")
        clashes = [cid for cid in input_case_ids(input_path) if any(output.glob(f"{glob.escape(cid)}.*"))]
        if clashes and not overwrite:
            raise SemisegError(
                f"{output} already holds predictions for {clashes[:3]}; pass --overwrite or another --output"
            )
        if model_dir is not None:
            model: CasePredictor = ExportedModel.load(model_dir, device, tta=tta)
        else:
            members = [Run.load_model(r, checkpoint, device, threads).with_tta(tta) for r in runs]
            model = members[0] if len(members) == 1 else Ensemble(members, [str(r) for r in runs])
        return predict_files(model, input_path, output, save_probabilities=save_probabilities, overwrite=True)

    @staticmethod
    def export(run_dir: str | Path, fmt: str, *, checkpoint: str = "best", output_dir: str | Path | None = None,
               overwrite: bool = False) -> Path:
        """The run's predicting network as TorchScript or ONNX plus ``export.json``, in ``output_dir``."""
        if fmt not in EXPORT_FORMATS:
            raise SemisegError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        run_dir = Path(run_dir)
        out = Path(output_dir) if output_dir is not None else run_dir / "export" / fmt
        if (out / SIDECAR).exists() and not overwrite:
            raise SemisegError(f"{out} already holds an export; pass --overwrite or another --output")
        model = Run.load_model(run_dir, checkpoint, "cpu")
        spacing = training_spacing(Run.open(run_dir, progress=False))
        export_model(model, describe_export(model, fmt, checkpoint, run_dir, spacing), out)
        return out

    @staticmethod
    def plan(config_file: str | Path | None, overrides: list[str]) -> str:
        """What ``semiseg train`` would do with this config (``--dry-run``); writes nothing."""
        from semiseg.engine.plan import dry_run  # plan.py builds on this module

        return dry_run(config_file, overrides)

    def _trainer(self, method: Method, nets: Nets) -> Trainer:
        data, patch = _build_data(self.cfg, self.dataset, self.split, type(method), network_divisor(nets.values()),
                                  self.progress)
        if self.cfg.train.sync_batchnorm:
            distributed.sync_batchnorm(nets, distributed.current())
        inferer = make_inferer(self.cfg, self.dataset.label_mode, self.device, nets, patch)
        describe = {"semiseg_version": __version__, "method": method.name, "config": self.cfg.model_dump(mode="json"),
                    "dataset": dataset_info(self.dataset), "patch_size": patch, "divisor": inferer.divisor}
        return Trainer(self.cfg, method, method.ctx, data, nets=nets, inferer=inferer, run_dir=self.run_dir,
                       describe=describe, progress=self.progress)

    def fit(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train until ``train.steps`` (from where a resumed run stopped)."""
        if self.trainer is None:
            raise SemisegError(f"{self.run_dir}: this run was opened for evaluation; build or resume it to train")
        try:
            with recorded(self.run_dir) if distributed.current().is_main else nullcontext():
                return self.trainer.fit(on_step=on_step)
        except Exception:
            if self.undo is not None and self.trainer.step == 0:
                self.undo.undo(self.run_dir)
            raise

    def evaluate(self, options: EvaluationOptions | None = None) -> dict[str, Any]:
        """Evaluate the checkpoints on the test split; write metrics, summary, predictions and report."""
        options = options or EvaluationOptions()
        names = tuple(dict.fromkeys(checkpoint_to_use(self.run_dir, name) for name in options.checkpoints))
        options = replace(options, checkpoints=names)
        states = {name: load_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.device) for name in names}
        models = {name: LoadedModel.from_checkpoint(state, self.device).with_tta(options.tta)
                  for name, state in states.items()}
        best = dict(self.trainer.best) if self.trainer is not None else _best_of(self.run_dir, states)
        refs = refs_by_id(self.dataset)
        test = [refs[case_id] for case_id in self.split["test"]]
        with recorded(self.run_dir):
            return evaluate_checkpoints(models, test, self._facts(best, options), self.run_dir, options,
                                        progress=self.progress)

    def _facts(self, best: dict[str, Any], options: EvaluationOptions) -> RunFacts:
        cfg, spec, split = self.cfg, self.dataset, self.split
        header = {"method": cfg.train.method, "dataset": spec.name, "test_cases": len(split["test"]),
                  "best_step": best["step"], "best_val_dice": best["score"]}
        if options.tta:
            header["tta"] = "flips"
        info = {"method": cfg.train.method, "dataset": spec.name, "labelled cases": len(split["labelled"]),
                "unlabelled cases": len(split["unlabelled"]), "test cases": len(split["test"]),
                "model": f"{cfg.model.dim}D {cfg.model.arch} widths {cfg.model.widths}", "steps": cfg.train.steps,
                "best checkpoint": f"step {best['step']} (val Dice {best['score']:.3f})", "seed": cfg.seed}
        if options.tta:
            info["test-time augmentation"] = "mean over flips of the spatial axes"
        return RunFacts(label_mode=spec.label_mode, class_names=list(spec.class_names), summary_header=header,
                        report_info=info, report_cases=cfg.eval.report_cases,
                        save_predictions=cfg.eval.save_predictions, save_probabilities=cfg.eval.save_probabilities)


def is_main_process() -> bool:
    """Whether this process reports the run: always, but under torchrun only rank 0 (the others train only)."""
    return distributed.current().is_main


def _set_threads(cfg: Config, threads: int | None = None) -> None:
    """``threads`` (a ``--threads`` option) or the run's ``train.threads``; None of both keeps torch's default."""
    chosen = threads or cfg.train.threads
    if chosen:
        torch.set_num_threads(chosen)


def _method_and_nets(cfg: Config, spec: DatasetSpec, device: torch.device) -> tuple[Method, Nets]:
    """The method and its networks, seeded by ``cfg.seed`` (each net's init is seeded on its own)."""
    torch.manual_seed(cfg.seed)
    method = get_method(cfg.train.method)(method_context(cfg, dataset_info(spec)), cfg.method)
    return method, build_nets(method, cfg, method.ctx, device)


def _best_of(run_dir: Path, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best-on-validation record, from the best checkpoint (already loaded when it is evaluated)."""
    best_file = run_dir / "checkpoints" / "best.pt"
    if "best" in states or not best_file.is_file():  # without best.pt, last.pt holds the record so far
        return dict(states.get("best", next(iter(states.values())))["best"])
    return dict(load_checkpoint(best_file)["best"])
