"""Python entry points: ``train``, ``evaluate_run``, ``evaluate_folders``, ``predict``.

The CLI is a thin layer over these. A run folder holds everything about one training run::

    config.yaml  split.json  log.csv  checkpoints/{best,last}.pt
    metrics/per_case.csv  summary.json  report.md  figures/*.png  predictions/
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg import __version__
from semiseg.config import Config, config_to_yaml, read_yaml, validate_config
from semiseg.data.case import Case, DatasetSpec, label_to_onehot
from semiseg.data.loaders import PatchSampler, default_patch_size, load_store, normalize_image
from semiseg.data.sources import open_dataset
from semiseg.data.splits import load_split, make_split, refs_by_id, save_split
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.device import amp_enabled, autocast, resolve_device
from semiseg.engine.loop import Trainer, TrainingData, build_nets
from semiseg.errors import ConfigError, DataError, SemisegError
from semiseg.eval.evaluate import score_case, summarize, write_rows
from semiseg.eval.inference import predict_case_probs, probs_to_label
from semiseg.eval.io import label_files, read_inputs, read_label_file, write_label, write_probabilities
from semiseg.eval.report import write_report
from semiseg.eval.robustness import (
    DEFAULT_EPSILONS,
    DEFAULT_GAMMAS,
    check_grid,
    input_gradient,
    robustness_rows,
    summarize_robustness,
    write_robustness,
)
from semiseg.eval.uncertainty import case_uncertainty, predict_case_samples, summarize_uncertainty, write_uncertainty
from semiseg.losses import segmentation_loss
from semiseg.methods import Method, MethodContext, get_method

RUN_ARTEFACTS = ("config.yaml", "split.json", "log.csv", "summary.json", "report.md",
                 "checkpoints", "metrics", "figures", "predictions", "uncertainty", "artifacts")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    fit: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# shared set-up


def open_configured_dataset(cfg: Config) -> DatasetSpec:
    return open_dataset(cfg.data.source, cfg.data.path, **cfg.data.options)


def supervised_loss(name: str, label_mode: str, include_background: bool) -> Callable[..., torch.Tensor]:
    """The configured supervised loss as ``loss(logits, target, mask=None, weight=None)``."""
    return partial(segmentation_loss(name), label_mode=label_mode, include_background=include_background)


def method_context(cfg: Config, spec_info: dict[str, Any]) -> MethodContext:
    return MethodContext(
        label_mode=spec_info["label_mode"],
        num_classes=len(spec_info["class_names"]),
        spatial_dims=cfg.model.dim,
        in_channels=spec_info["channels"],
        supervised_loss=supervised_loss(cfg.train.loss, spec_info["label_mode"], cfg.train.include_background),
        include_background=cfg.train.include_background,
    )


def dataset_info(spec: DatasetSpec) -> dict[str, Any]:
    return {"name": spec.name, "label_mode": spec.label_mode, "class_names": list(spec.class_names),
            "channels": spec.channels, "dim": spec.dim}


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
    for name in existing:  # only the run's own files; anything else the user put there stays
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_compatible(cfg: Config, spec: DatasetSpec) -> None:
    if cfg.model.dim == 3 and spec.dim == 2:
        raise ConfigError(f"model.dim=3 but dataset {spec.name!r} holds 2D images; use model.dim=2")
    divisor = 2 ** (len(cfg.model.widths) - 1)
    if cfg.train.patch_size and any(p % divisor for p in cfg.train.patch_size):
        raise ConfigError(
            f"train.patch_size={cfg.train.patch_size} must be multiples of {divisor} "
            f"(2 ** (len(model.widths) - 1) for model.widths={cfg.model.widths})"
        )


def _build_data(cfg: Config, spec: DatasetSpec, split: dict[str, Any], method_cls: type[Method],
                progress: bool) -> tuple[TrainingData, list[int]]:
    refs = refs_by_id(spec)
    common = {"normalize": cfg.data.normalize, "label_mode": spec.label_mode, "progress": progress}
    labelled = load_store([refs[i] for i in split["labelled"]], with_labels=True, desc="labelled cases", **common)
    unlabelled = []
    if method_cls.uses_unlabelled:
        if not split["unlabelled"]:
            raise DataError(f"method {method_cls.name!r} needs unlabelled cases but the split has none; "
                            "lower split.labelled or add unlabelled images")
        unlabelled = load_store([refs[i] for i in split["unlabelled"]], with_labels=False,
                                desc="unlabelled cases", **common)
    val = load_store([refs[i] for i in split["val"]], with_labels=True, desc="validation cases", **common)
    divisor = 2 ** (len(cfg.model.widths) - 1)
    patch = cfg.train.patch_size or default_patch_size([labelled, unlabelled, val], cfg.model.dim, divisor)
    train = cfg.train
    sampler_args = {"dim": cfg.model.dim, "patch_size": patch, "augment": train.augment}
    lab_sampler = PatchSampler(labelled, batch_size=train.batch_size, foreground_fraction=train.foreground_fraction,
                               seed=cfg.seed * 7919 + 1, **sampler_args)
    unl_sampler = None
    if unlabelled and train.unlabelled_batch_size > 0:
        unl_sampler = PatchSampler(unlabelled, batch_size=train.unlabelled_batch_size,
                                   seed=cfg.seed * 7919 + 2, **sampler_args)
    return TrainingData(lab_sampler, unl_sampler, val), patch


# ----------------------------------------------------------------------------------------------
# training


def train(
    cfg: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Train ``cfg.train.method`` on the configured data, then evaluate and report."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    method_cls = get_method(cfg.train.method)
    method_cls.parse_options(cfg.method)  # fail on bad method keys before touching data
    device = resolve_device(cfg.train.device)
    spec = open_configured_dataset(cfg)
    _check_compatible(cfg, spec)
    split = load_split(cfg.split.file, spec) if cfg.split.file else make_split(
        spec, cfg.split, cfg.split.seed if cfg.split.seed is not None else cfg.seed)
    run_dir = prepare_run_dir(cfg, overwrite)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    save_split(split, run_dir / "split.json")
    return _run(cfg, spec, split, run_dir, device, progress=progress, evaluate=evaluate, on_step=on_step)


def resume(run_dir: str | Path, *, progress: bool = True, evaluate: bool = True,
           on_step: Callable[[int], None] | None = None) -> RunResult:
    """Continue an interrupted run from its ``last.pt`` exactly where it stopped."""
    run_dir = Path(run_dir)
    cfg = validate_config(read_yaml(run_dir / "config.yaml"))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    spec = open_configured_dataset(cfg)
    split = load_split(run_dir / "split.json", spec)
    return _run(cfg, spec, split, run_dir, resolve_device(cfg.train.device), progress=progress, evaluate=evaluate,
                on_step=on_step, state=state)


def _run(cfg: Config, spec: DatasetSpec, split: dict[str, Any], run_dir: Path, device: torch.device, *,
         progress: bool, evaluate: bool, on_step: Callable[[int], None] | None,
         state: dict[str, Any] | None = None) -> RunResult:
    torch.manual_seed(cfg.seed)
    method_cls = get_method(cfg.train.method)
    info = dataset_info(spec)
    method = method_cls(method_context(cfg, info), cfg.method)
    data, patch = _build_data(cfg, spec, split, method_cls, progress)
    describe = {"semiseg_version": __version__, "method": method_cls.name, "config": cfg.model_dump(mode="json"),
                "dataset": info, "patch_size": patch, "divisor": 2 ** (len(cfg.model.widths) - 1)}
    trainer = Trainer(cfg, method, method.ctx, data, run_dir=run_dir, device=device, describe=describe,
                      progress=progress)
    if state is not None:
        trainer.load_state(state)
    fit = trainer.fit(on_step=on_step)
    summary = evaluate_run(run_dir, progress=progress) if evaluate else {}
    return RunResult(run_dir, summary, fit)


# ----------------------------------------------------------------------------------------------
# loading a trained run


@dataclass
class LoadedModel:
    """A trained method ready to predict: nets in eval mode and what is needed to prepare inputs."""

    cfg: Config
    method: Method
    nets: dict[str, torch.nn.Module]
    info: dict[str, Any]
    patch_size: list[int]
    divisor: int
    device: torch.device

    def probabilities(self, case: Case) -> np.ndarray:
        return self.predict_normalized(self.normalized(case))

    def normalized(self, case: Case) -> np.ndarray:
        """The network's input: the case image after the run's intensity normalisation."""
        return normalize_image(case.image, self.cfg.data.normalize)

    def _amp(self) -> Callable[[], Any]:
        return partial(autocast, amp_enabled(self.cfg.train.amp, self.device), self.device)

    def predictor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        amp = self._amp()

        def predictor(x: torch.Tensor) -> torch.Tensor:
            with amp():
                return self.method.predict(self.nets, x)

        return predictor

    def _geometry(self) -> dict[str, Any]:
        return {"model_dim": self.cfg.model.dim, "device": self.device, "divisor": self.divisor,
                "roi_size": self.patch_size, "batch_size": self.cfg.eval.sw_batch_size,
                "overlap": self.cfg.eval.overlap}

    def predict_normalized(self, image: np.ndarray) -> np.ndarray:
        """``(K, *spatial)`` probabilities of an already normalised image (robustness perturbs that input)."""
        return predict_case_probs(self.predictor(), image, label_mode=self.info["label_mode"], **self._geometry())

    def input_gradient(self, image: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """Gradient of the cross-entropy against ``onehot`` w.r.t. a normalised image (FGSM)."""
        return input_gradient(self.predictor(), image, onehot, label_mode=self.info["label_mode"], **self._geometry())

    def sample_probabilities(self, image: np.ndarray, n: int) -> np.ndarray | None:
        """``(S, K, *spatial)`` Monte-Carlo probabilities (``Method.predict_samples``), or None without them."""
        amp = self._amp()

        def sampler(x: torch.Tensor) -> torch.Tensor | None:
            with amp():
                return self.method.predict_samples(self.nets, x, n)

        return predict_case_samples(sampler, image, num_classes=len(self.info["class_names"]), **self._geometry())


def load_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> LoadedModel:
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    cfg = validate_config(state["config"])
    info = state["dataset"]
    method = get_method(state["method"])(method_context(cfg, info), cfg.method)
    method.load_state_dict(state["method_state"])
    nets = build_nets(method, cfg, method.ctx, dev)
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
        net.eval()
    return LoadedModel(cfg, method, nets, info, state["patch_size"], state["divisor"], dev)


def _require_run(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        raise SemisegError(f"{run_dir} is not a semiseg run folder (no config.yaml); pass --run runs/<id>")


# ----------------------------------------------------------------------------------------------
# evaluation and prediction


@dataclass
class _ExtraEvaluation:
    """Robustness curves and uncertainty scores/maps of the first checkpoint, gathered case by case."""

    robustness: bool
    uncertainty: bool
    gammas: tuple[float, ...]
    epsilons: tuple[float, ...]
    samples: int
    report_cases: int
    robustness_rows: list[dict[str, Any]] = field(default_factory=list)
    uncertainty_rows: list[dict[str, Any]] = field(default_factory=list)
    uncertainty_examples: list[dict[str, Any]] = field(default_factory=list)

    def add_case(self, model: LoadedModel, case: Case, probs: np.ndarray, checkpoint: str, run_dir: Path) -> None:
        label_mode, num_classes = model.info["label_mode"], len(model.info["class_names"])
        image = model.normalized(case) if self.robustness or self.uncertainty else None
        if self.robustness:
            self.robustness_rows += robustness_rows(
                case.case_id, image, case.label, predict=model.predict_normalized, gradient=model.input_gradient,
                label_mode=label_mode, num_classes=num_classes, gammas=self.gammas, epsilons=self.epsilons,
                checkpoint=checkpoint)
        if self.uncertainty:
            row, maps = case_uncertainty(
                case, probs, model.sample_probabilities(image, self.samples),
                label_to_onehot(case.label, label_mode, num_classes), label_mode=label_mode,
                out_dir=run_dir / "uncertainty", checkpoint=checkpoint)
            self.uncertainty_rows.append(row)
            if len(self.uncertainty_examples) < self.report_cases:
                self.uncertainty_examples.append({"case_id": case.case_id, "image": case.image, "gt": case.label,
                                                  **{k: v for k, v in maps.items() if k != "mean"}})

    def finish(self, run_dir: Path) -> dict[str, Any]:
        """Write the per-case CSVs; the summaries go into ``summary.json`` and the report."""
        out: dict[str, Any] = {}
        if self.robustness_rows:
            write_robustness(self.robustness_rows, run_dir / "metrics" / "robustness.csv")
            out["robustness"] = summarize_robustness(self.robustness_rows)
        if self.uncertainty_rows:
            write_uncertainty(self.uncertainty_rows, run_dir / "metrics" / "uncertainty.csv")
            first = self.uncertainty_rows[0]
            out["uncertainty"] = {"source": first["source"], "samples": first["samples"],
                                  "scores": summarize_uncertainty(self.uncertainty_rows)}
        return out


def evaluate_run(run_dir: str | Path, *, checkpoints: tuple[str, ...] = ("best", "last"), progress: bool = True,
                 robustness: bool = False, uncertainty: bool = False,
                 gammas: tuple[float, ...] = DEFAULT_GAMMAS, epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
                 samples: int = 5) -> dict[str, Any]:
    """Evaluate the run's checkpoints on its test split; write metrics, summary, predictions and report.

    ``robustness`` adds Dice against the OOD mix-up strength γ and the FGSM step ε; ``uncertainty`` adds
    Brier/ECE of the (Monte-Carlo mean, ``samples`` draws where the method samples) prediction and writes
    uncertainty maps to ``uncertainty/``. Both use the first checkpoint only (``best`` by default).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    _require_run(run_dir)
    gammas, epsilons = check_grid(gammas, "gammas", upper=1.0), check_grid(epsilons, "epsilons")
    if samples < 1:
        raise ConfigError(f"samples: Monte-Carlo samples must be at least 1, got {samples}")
    cfg = validate_config(read_yaml(run_dir / "config.yaml"))
    spec = open_configured_dataset(cfg)
    split = load_split(run_dir / "split.json", spec)
    refs = refs_by_id(spec)
    rows, examples = [], []
    extra = _ExtraEvaluation(robustness, uncertainty, gammas, epsilons, samples, cfg.eval.report_cases)
    models = {name: load_model(run_dir, name, cfg.train.device) for name in checkpoints}
    for case_id in tqdm(split["test"], desc="evaluate", disable=not progress, leave=False):
        case = refs[case_id].load()
        for name, model in models.items():
            probs = model.probabilities(case)
            pred = probs_to_label(probs, spec.label_mode)
            case_rows = score_case(case_id=case_id, checkpoint=name, pred=pred, probs=probs, gt=case.label,
                                   spacing=case.spacing, class_names=spec.class_names, label_mode=spec.label_mode)
            rows += case_rows
            if name == checkpoints[0]:
                _save_prediction(cfg, run_dir, case, pred, probs)
                extra.add_case(model, case, probs, name, run_dir)
                if len(examples) < cfg.eval.report_cases:
                    dice = float(np.mean([r["dice"] for r in case_rows]))
                    examples.append({"case_id": case_id, "image": case.image, "gt": case.label, "pred": pred,
                                     "dice": dice})
    write_rows(rows, run_dir / "metrics" / "per_case.csv")
    summary = summarize(rows)
    extras = extra.finish(run_dir)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")["best"]
    payload = {"method": cfg.train.method, "dataset": spec.name, "test_cases": len(split["test"]),
               "best_step": best["step"], "best_val_dice": best["score"], "metrics": summary, **extras}
    (run_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    info = {"method": cfg.train.method, "dataset": spec.name, "labelled cases": len(split["labelled"]),
            "unlabelled cases": len(split["unlabelled"]), "test cases": len(split["test"]),
            "model": f"{cfg.model.dim}D {cfg.model.arch} widths {cfg.model.widths}", "steps": cfg.train.steps,
            "best checkpoint": f"step {best['step']} (val Dice {best['score']:.3f})", "seed": cfg.seed}
    uncertainty_block = ({**extras["uncertainty"], "examples": extra.uncertainty_examples}
                         if "uncertainty" in extras else None)
    write_report(run_dir, summary=summary, info=info, examples=examples, label_mode=spec.label_mode,
                 robustness=extras.get("robustness"), uncertainty=uncertainty_block)
    return summary


def _save_prediction(cfg: Config, run_dir: Path, case: Case, pred: np.ndarray, probs: np.ndarray) -> None:
    if cfg.eval.save_predictions:
        write_label(case, pred, run_dir / "predictions")
    if cfg.eval.save_probabilities:
        write_probabilities(case, probs, run_dir / "predictions")


def predict(run_dir: str | Path, input_path: str | Path, output_dir: str | Path, *, checkpoint: str = "best",
            save_probabilities: bool = False, device: str = "auto", overwrite: bool = False) -> list[Path]:
    """Segment every image in ``input_path``; outputs keep the input's geometry (NIfTI affine / PNG size)."""
    run_dir, output = Path(run_dir), Path(output_dir)
    _require_run(run_dir)
    model = load_model(run_dir, checkpoint, device)
    cases = read_inputs(input_path, model.info["channels"])
    clashes = [c.case_id for c in cases if any(output.glob(f"{c.case_id}.*"))]
    if clashes and not overwrite:
        raise SemisegError(
            f"{output} already holds predictions for {clashes[:3]}; pass --overwrite or another --output"
        )
    written = []
    for case in cases:
        probs = model.probabilities(case)
        written.append(write_label(case, probs_to_label(probs, model.info["label_mode"]), output))
        if save_probabilities:
            written.append(write_probabilities(case, probs, output))
    return written


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, *, class_names: list[str] | None = None,
                     label_mode: str = "multiclass") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metrics of label files in ``pred_dir`` against same-named files in ``gt_dir`` (spacing from the GT)."""
    preds, gts = label_files(Path(pred_dir)), label_files(Path(gt_dir))
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise DataError(f"{pred_dir} has no prediction for {missing[:5]} (ground truth in {gt_dir})")
    if not gts:
        raise DataError(f"{gt_dir} holds no label files (.nii.gz, .nii, .png)")
    loaded = {cid: (read_label_file(preds[cid]), read_label_file(gts[cid])) for cid in gts}
    if class_names is None:
        top = max(int(max(p.max(), g.max())) for (p, _), (g, _) in loaded.values())
        class_names = ["background"] + [f"class_{k}" for k in range(1, top + 1)]
    rows = []
    for cid, ((pred, _), (gt, spacing)) in loaded.items():
        if pred.shape != gt.shape:
            raise DataError(f"{preds[cid]} has shape {pred.shape} but {gts[cid]} has {gt.shape}")
        rows += score_case(case_id=cid, checkpoint="given", pred=pred, probs=None, gt=gt, spacing=spacing,
                           class_names=class_names, label_mode=label_mode)
    return rows, summarize(rows)
