"""A Run: one training run assembled once and kept in memory from training to evaluation.

``Run.build(cfg)`` checks the config (``engine.checks``), opens the dataset, makes the split, builds the method,
its networks, the samplers, the ``Inferer`` and the handlers (``engine.assemble``), and prepares the run folder
(``engine.run_folder``); ``fit()`` trains and ``evaluate()`` scores the checkpoints on the test split with what
the Run already holds (only the checkpoints' weights are read back). ``Run.resume`` continues an interrupted
run, ``Run.open`` evaluates an existing run folder. The face (``api.py``, ``cli.py``) never assembles a run: it
asks a Run, or the plain functions that need only a run folder (``engine.model.load_model``,
``engine.predict.predict``, ``engine.export.export_run``, ``engine.suggest.suggest_run``, ``engine.plan.dry_run``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from semiseg import __version__
from semiseg.config import Config, read_yaml, validate_config
from semiseg.data.case import DatasetSpec
from semiseg.data.splits import load_split, make_split, refs_by_id
from semiseg.engine import distributed
from semiseg.engine.assemble import (
    build_data,
    dataset_info,
    default_handlers,
    make_inferer,
    method_and_nets,
    open_configured_dataset,
    set_threads,
)
from semiseg.engine.checkpoint import CheckpointHandler, load_checkpoint
from semiseg.engine.checks import (
    check_dims,
    check_method_settings,
    check_patch,
    print_dataset_warnings,
    print_ema_warnings,
    print_schedule_warnings,
)
from semiseg.engine.csvlog import CsvLogHandler
from semiseg.engine.device import resolve_device
from semiseg.engine.finetune import init_from_run, provenance
from semiseg.engine.handlers import Handler
from semiseg.engine.inferer import network_divisor
from semiseg.engine.loop import Trainer
from semiseg.engine.manifest import recorded
from semiseg.engine.model import LoadedModel
from semiseg.engine.origin import record_start
from semiseg.engine.progress import StepCallback
from semiseg.engine.reliability import make_gate
from semiseg.engine.run_folder import RunFolderUndo, checkpoint_to_use, new_run_folder, recorded_config, require_run
from semiseg.errors import SemisegError
from semiseg.eval.run_evaluation import SPLIT_NAMES, EvaluationOptions, RunFacts, evaluate_checkpoints
from semiseg.methods import Method
from semiseg.methods.base import Nets
from semiseg.paths import check_writable_dir


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
    undo: RunFolderUndo | None = None  # set by build: a failure before the first step removes the new run

    @classmethod
    def build(cls, cfg: Config, *, overwrite: bool = False, progress: bool = True,
              handlers: list[Handler] | None = None) -> Run:
        """Assemble a new run; every config check happens before the run folder is written.

        ``handlers`` run after the built-in ones at every event of the loop (``engine.handlers``).
        """
        set_threads(cfg)
        check_writable_dir(Path(cfg.output.root) / (cfg.output.name or ""), "output folder")
        check_method_settings(cfg)
        device = distributed.join(cfg.train)
        ctx = distributed.current()
        progress = progress and ctx.is_main  # one progress bar and one set of warnings under torchrun
        spec = open_configured_dataset(cfg)
        if ctx.is_main:
            print_dataset_warnings(spec)
        check_dims(cfg, spec)
        method, nets = method_and_nets(cfg, spec, device)
        if ctx.is_main:
            print_ema_warnings(method, cfg.train.steps)
            print_schedule_warnings(cfg.train)
        init = init_from_run(nets, method, cfg.model.init_from, model=cfg.model.model_dump()) \
            if cfg.model.init_from else None
        if init and ctx.is_main:
            print(init.describe(), file=sys.stderr)
        check_patch(cfg, network_divisor(nets.values()))
        split = load_split(cfg.split.file, spec) if cfg.split.file else make_split(
            spec, labelled=cfg.split.labelled, val=cfg.split.val, test=cfg.split.test,
            unlabelled=cfg.split.unlabelled, seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed)
        undo, run_dir = ctx.on_main(lambda: new_run_folder(cfg, overwrite, split, init))  # one folder, rank 0 writes
        try:
            run = cls(cfg, run_dir, spec, split, device, progress)
            run.trainer = run._trainer(method, nets, handlers)
        except BaseException:
            if ctx.is_main:
                undo.undo(run_dir)
            raise
        run.undo = undo if ctx.is_main else None
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, *, progress: bool = True, handlers: list[Handler] | None = None,
               data: str | Path | None = None) -> Run:
        """The interrupted run in ``run_dir``, restored from its ``last.pt`` exactly where it stopped.

        A run stopped before its first checkpoint has nothing to restore: it restarts from step 0 with its
        own config and split (the same numbers as a fresh run), and says so on stderr. ``data`` is where the
        run's dataset is now, when it moved since training started.
        """
        run_dir = Path(run_dir)
        require_run(run_dir)
        saved = read_yaml(run_dir / "config.yaml")
        cfg = _with_data(validate_config(saved), data)
        device = distributed.join(cfg.train)  # another number of processes works: batches are global
        distributed.current().barrier()  # rank 0 may still be writing the last.pt the others are about to read
        last = run_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(last) if last.exists() else None
        if state is None:
            print(f"{run_dir}: stopped before its first checkpoint ({last} does not exist); "
                  "restarting it from step 0", file=sys.stderr)
        set_threads(cfg)
        spec = _open_recorded_dataset(cfg, run_dir)
        run = cls(cfg, run_dir, spec, load_split(run_dir / "split.json", spec), device,
                  progress and distributed.current().is_main)
        run.trainer = run._trainer(*method_and_nets(cfg, spec, run.device), handlers)
        if state is not None:
            run.trainer.load_state(state)
        return run

    @classmethod
    def open(cls, run_dir: str | Path, *, progress: bool = True, threads: int | None = None,
             data: str | Path | None = None) -> Run:
        """A finished run folder, to evaluate its checkpoints (no training data is loaded).

        Uses the run's ``train.threads`` (``threads`` overrides it) and its inference settings; ``data`` is
        where the run's dataset is now, when it moved since training.
        """
        run_dir = Path(run_dir)
        require_run(run_dir)
        cfg = _with_data(validate_config(read_yaml(run_dir / "config.yaml")), data)
        set_threads(cfg, threads)
        spec = _open_recorded_dataset(cfg, run_dir)
        return cls(cfg, run_dir, spec, load_split(run_dir / "split.json", spec), resolve_device(cfg.train.device),
                   progress)

    def _trainer(self, method: Method, nets: Nets, extra: list[Handler] | None) -> Trainer:
        data, patch = build_data(self.cfg, self.dataset, self.split, type(method), network_divisor(nets.values()),
                                 self.progress)
        if self.cfg.train.sync_batchnorm:
            distributed.sync_batchnorm(nets, distributed.current())
        inferer = make_inferer(self.cfg, self.dataset.label_mode, self.device, nets, patch)
        describe = {"semiseg_version": __version__, "method": method.name,
                    "config": recorded_config(self.cfg)[0].model_dump(mode="json"),
                    "dataset": dataset_info(self.dataset), "patch_size": patch, "divisor": inferer.divisor}
        gate = make_gate(self.cfg, method)
        handlers = default_handlers(self.cfg, self.run_dir, describe, gate, main=distributed.current().is_main,
                                    progress=self.progress)
        return Trainer(self.cfg, method, method.ctx, data, nets=nets, inferer=inferer, run_dir=self.run_dir,
                       gate=gate, handlers=[*handlers, *(extra or [])])

    def _handler(self, kind: type[Handler]) -> Any:
        """The trainer's handler of ``kind`` (None: not installed, e.g. the log on ranks other than 0)."""
        handlers = self.trainer.handlers if self.trainer is not None else []
        return next((h for h in handlers if isinstance(h, kind)), None)

    @property
    def best(self) -> dict[str, Any]:
        """The best-on-validation record so far: ``{"score": val Dice, "step": step}``."""
        return dict(self._handler(CheckpointHandler).best)

    def fit(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train until ``train.steps`` (from where a resumed run stopped); ``on_step(step)`` after each step."""
        if self.trainer is None:
            raise SemisegError(f"{self.run_dir}: this run was opened for evaluation; build or resume it to train")
        if on_step is not None:
            self.trainer.handlers.append(StepCallback(on_step))
        try:
            with recorded(self.run_dir) if distributed.current().is_main else nullcontext():
                if distributed.current().is_main:
                    record_start(self.run_dir, self.device, self.trainer.step)
                done = self.trainer.fit()
        except Exception:
            if self.undo is not None and self.trainer.step == 0:
                self.undo.undo(self.run_dir)
            raise
        log = self._handler(CsvLogHandler)  # its clock counts the time before an interruption too
        return {"best": self.best, "steps": done["steps"],
                "seconds": log.elapsed() if log is not None else done["seconds"]}

    def evaluate(self, options: EvaluationOptions | None = None) -> dict[str, Any]:
        """Evaluate the checkpoints on the test split (``options.split``: or the validation cases); write metrics,
        summary, predictions and report."""
        options = options or EvaluationOptions()
        names = tuple(dict.fromkeys(checkpoint_to_use(self.run_dir, name) for name in options.checkpoints))
        options = replace(options, checkpoints=names)
        states = {name: load_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.device) for name in names}
        models = {name: LoadedModel.from_checkpoint(state, self.device).with_tta(options.tta)
                  .with_case_norm(options.case_norm) for name, state in states.items()}
        best = self.best if self.trainer is not None else _best_of(self.run_dir, states)
        refs = refs_by_id(self.dataset)
        cases = [refs[case_id] for case_id in self.split[options.split]]
        if not cases:
            raise SemisegError(f"{self.run_dir}: its split has no {options.split} cases to evaluate")
        with recorded(self.run_dir):
            return evaluate_checkpoints(models, cases, self._facts(best, options), self.run_dir, options,
                                        progress=self.progress)

    def _facts(self, best: dict[str, Any], options: EvaluationOptions) -> RunFacts:
        cfg, spec, split = self.cfg, self.dataset, self.split
        scored = len(split[options.split])
        header = {"method": cfg.train.method, "dataset": spec.name, f"{options.split}_cases": scored,
                  "best_step": best["step"], "best_val_dice": best["score"]}
        if options.tta:
            header["tta"] = "flips"
        if options.case_norm:
            header["adapt_bn"] = "per case"
        info = {"method": cfg.train.method, "dataset": spec.name, "labelled cases": len(split["labelled"]),
                "unlabelled cases": len(split["unlabelled"]),
                f"{SPLIT_NAMES[options.split]} cases": scored,
                "model": f"{cfg.model.dim}D {cfg.model.arch} widths {cfg.model.widths}", "steps": cfg.train.steps,
                "best checkpoint": f"step {best['step']} (val Dice {best['score']:.3f})", "seed": cfg.seed}
        if options.tta:
            info["test-time augmentation"] = "mean over flips of the spatial axes"
        if options.case_norm:
            info["BatchNorm statistics"] = "re-estimated on each test case (AdaBN)"
        info |= provenance(self.run_dir, cfg.split.file)
        return RunFacts(label_mode=spec.label_mode, class_names=list(spec.class_names), summary_header=header,
                        report_info=info, report_cases=cfg.eval.report_cases,
                        save_predictions=cfg.eval.save_predictions, save_probabilities=cfg.eval.save_probabilities)


def is_main_process() -> bool:
    """Whether this process reports the run: always, but under torchrun only rank 0 (the others train only)."""
    return distributed.current().is_main


def _open_recorded_dataset(cfg: Config, run_dir: Path) -> DatasetSpec:
    """The dataset a run folder records; when it is not there, the error says how to point at its new place."""
    try:
        return open_configured_dataset(cfg)
    except SemisegError as exc:
        if cfg.data.path is None:
            raise
        raise type(exc)(f"{exc} (the dataset {run_dir} was trained on; if it moved, pass --data PATH)") from None


def _with_data(cfg: Config, data: str | Path | None) -> Config:
    """The run's config with ``data.path`` at ``data`` (``--data``: the dataset moved since training)."""
    if data is None:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(Path(data).absolute())})})


def _best_of(run_dir: Path, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best-on-validation record, from the best checkpoint (already loaded when it is evaluated)."""
    best_file = run_dir / "checkpoints" / "best.pt"
    if "best" in states or not best_file.is_file():  # without best.pt, last.pt holds the record so far
        return dict(states.get("best", next(iter(states.values())))["best"])
    return dict(load_checkpoint(best_file)["best"])
