"""Python entry points: ``train``, ``resume``, ``evaluate_run``, ``evaluate_folders``, ``predict``, ``load_model``.

The CLI is a thin layer over these, and these are thin functions over ``semiseg.engine.run.Run``, which
assembles a run once and keeps it in memory from training to evaluation (see its module for the run folder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semiseg.config import Config
from semiseg.engine.run import Run
from semiseg.errors import DataError
from semiseg.eval.evaluate import score_case, summarize
from semiseg.eval.io import label_files, read_label_file
from semiseg.eval.robustness import DEFAULT_EPSILONS, DEFAULT_GAMMAS
from semiseg.eval.run_evaluation import EvaluationOptions
from semiseg.losses import supervised_loss

if TYPE_CHECKING:
    from semiseg.engine.run import LoadedModel

__all__ = ["RunResult", "evaluate_folders", "evaluate_run", "export", "load_model", "plan", "predict", "resume",
           "supervised_loss", "train"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    fit: dict[str, Any]


def train(
    cfg: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Train ``cfg.train.method`` on the configured data, then evaluate and report."""
    return _fit_and_evaluate(Run.build(cfg, overwrite=overwrite, progress=progress), evaluate, on_step)


def resume(run_dir: str | Path, *, progress: bool = True, evaluate: bool = True,
           on_step: Callable[[int], None] | None = None) -> RunResult:
    """Continue an interrupted run from its ``last.pt`` exactly where it stopped."""
    return _fit_and_evaluate(Run.resume(run_dir, progress=progress), evaluate, on_step)


def _fit_and_evaluate(run: Run, evaluate: bool, on_step: Callable[[int], None] | None) -> RunResult:
    fit = run.fit(on_step=on_step)
    return RunResult(run.run_dir, run.evaluate() if evaluate else {}, fit)


def load_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> LoadedModel:
    """One checkpoint of a trained run, ready to predict."""
    return Run.load_model(run_dir, checkpoint, device)


def evaluate_run(run_dir: str | Path, *, checkpoints: tuple[str, ...] = ("best", "last"), progress: bool = True,
                 robustness: bool = False, uncertainty: bool = False,
                 gammas: tuple[float, ...] = DEFAULT_GAMMAS, epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
                 samples: int = 5, tta: bool = False) -> dict[str, Any]:
    """Evaluate the run's checkpoints on its test split; write metrics, summary, predictions and report.

    ``robustness`` adds Dice against the OOD mix-up strength γ and the FGSM step ε; ``uncertainty`` adds
    Brier/ECE of the (Monte-Carlo mean, ``samples`` draws where the method samples) prediction and writes
    uncertainty maps to ``uncertainty/``. Both use the first checkpoint only (``best`` by default).
    ``tta`` predicts every case as the mean over flips of the spatial axes.
    """
    options = EvaluationOptions(checkpoints=checkpoints, robustness=robustness, uncertainty=uncertainty,
                                gammas=gammas, epsilons=epsilons, samples=samples, tta=tta)
    return Run.open(run_dir, progress=progress).evaluate(options)


def predict(run_dir: str | Path | Sequence[str | Path] | None, input_path: str | Path, output_dir: str | Path, *,
            checkpoint: str = "best", save_probabilities: bool = False, device: str = "auto", overwrite: bool = False,
            tta: bool = False, model_dir: str | Path | None = None) -> list[Path]:
    """Segment every image in ``input_path``; outputs keep the input's geometry (NIfTI affine / PNG size).

    Several runs form an ensemble: their probabilities are averaged and the members' disagreement is written
    next to each prediction. ``model_dir`` predicts from an export (``semiseg export``) instead of a run;
    ``tta`` averages over flips of the spatial axes.
    """
    runs = [] if not run_dir else [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    return Run.predict(runs, input_path, output_dir, model_dir=model_dir, checkpoint=checkpoint, device=device,
                       tta=tta, save_probabilities=save_probabilities, overwrite=overwrite)


def export(run_dir: str | Path, fmt: str = "torchscript", *, checkpoint: str = "best",
           output_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the run's predicting network as TorchScript or ONNX plus ``export.json``; returns the folder."""
    return Run.export(run_dir, fmt, checkpoint=checkpoint, output_dir=output_dir, overwrite=overwrite)


def plan(config_file: str | Path | None, overrides: list[str] | None = None) -> str:
    """The plan of a training run (``semiseg train --dry-run``): checked and built, nothing written."""
    return Run.plan(config_file, overrides or [])


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
