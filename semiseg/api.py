"""Python entry points: ``train``, ``resume``, ``evaluate_run``, ``evaluate_folders``, ``predict``, ``load_model``.

The CLI is a thin layer over these, and these are thin functions over ``semiseg.engine.run.Run``, which
assembles a run once and keeps it in memory from training to evaluation, and over the engine's functions that
need only a run folder (``load_model``, ``predict``, ``export``, ``suggest``, ``plan``). ``train`` and ``resume``
take ``handlers``: your own ``semiseg.engine.handlers.Handler`` objects, called at every event of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semiseg.config import Config
from semiseg.engine.demo import export_demo_images
from semiseg.engine.export import export_run
from semiseg.engine.model import load_model as load_run_model
from semiseg.engine.plan import dry_run
from semiseg.engine.predict import predict_runs
from semiseg.engine.run import Run, is_main_process
from semiseg.engine.suggest import suggest_run
from semiseg.eval.robustness import DEFAULT_EPSILONS, DEFAULT_GAMMAS
from semiseg.eval.run_evaluation import EvaluationOptions

if TYPE_CHECKING:
    from semiseg.engine.handlers import Handler
    from semiseg.engine.model import LoadedModel

__all__ = ["RunResult", "evaluate_folders", "evaluate_run", "evaluate_run_with", "export", "export_demo",
           "load_model", "plan", "predict", "resume", "suggest", "train"]


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
    on_start: Callable[[Path], None] | None = None,
    handlers: list[Handler] | None = None,
) -> RunResult:
    """Train ``cfg.train.method`` on the configured data, then evaluate and report.

    ``on_start`` receives the run folder once it exists, before the first step (the CLI prints it);
    ``handlers`` run after the built-in ones at every event of the training loop (``semiseg.engine.handlers``).
    """
    run = Run.build(cfg, overwrite=overwrite, progress=progress, handlers=handlers)
    return _fit_and_evaluate(run, evaluate, on_step, on_start)


def resume(run_dir: str | Path, *, progress: bool = True, evaluate: bool = True,
           on_step: Callable[[int], None] | None = None, on_start: Callable[[Path], None] | None = None,
           handlers: list[Handler] | None = None, data: str | Path | None = None) -> RunResult:
    """Continue an interrupted run from its ``last.pt`` exactly where it stopped (``data``: where its dataset
    is now, when it moved)."""
    return _fit_and_evaluate(Run.resume(run_dir, progress=progress, handlers=handlers, data=data), evaluate,
                             on_step, on_start)


def _fit_and_evaluate(run: Run, evaluate: bool, on_step: Callable[[int], None] | None,
                      on_start: Callable[[Path], None] | None = None) -> RunResult:
    if on_start is not None:
        on_start(run.run_dir)
    fit = run.fit(on_step=on_step)
    evaluate = evaluate and is_main_process()  # under torchrun rank 0 evaluates once
    return RunResult(run.run_dir, run.evaluate() if evaluate else {}, fit)


def load_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
               threads: int | None = None) -> LoadedModel:
    """One checkpoint of a trained run, ready to predict (``best`` falls back to ``last`` before validation)."""
    return load_run_model(run_dir, checkpoint, device, threads)


def evaluate_run(run_dir: str | Path, *, checkpoints: tuple[str, ...] = ("best", "last"), progress: bool = True,
                 robustness: bool = False, uncertainty: bool = False,
                 gammas: tuple[float, ...] = DEFAULT_GAMMAS, epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
                 samples: int = 5, threads: int | None = None, tta: bool = False, adapt_bn: bool = False,
                 overwrite: bool = False, data: str | Path | None = None, split: str = "test") -> dict[str, Any]:
    """Evaluate the run's checkpoints on its test split (``split="val"``: its validation cases); write metrics,
    summary, predictions and report.

    They go beside the training-time evaluation, into ``<run>/evaluations/<name>/`` (``evaluation_folder``;
    the name spells the settings, e.g. ``tta``, ``best-tta``, ``robust``); the same settings twice need
    ``overwrite``.

    ``robustness`` adds Dice against the OOD mix-up strength γ and the FGSM step ε; ``uncertainty`` adds
    Brier/ECE of the (Monte-Carlo mean, ``samples`` draws where the method samples) prediction and writes
    uncertainty maps to ``uncertainty/``. Both use the first checkpoint only (``best`` by default).
    ``threads`` overrides the run's ``train.threads``; a run without ``best.pt`` is evaluated on ``last``;
    ``tta`` predicts every case as the mean over flips of the spatial axes; ``adapt_bn`` normalises each case
    with BatchNorm statistics of that case (AdaBN; ``docs/protocol.md`` says where it pays); ``data`` is where
    the run's dataset is now, when it moved since training.
    """
    options = EvaluationOptions(checkpoints=checkpoints, robustness=robustness, uncertainty=uncertainty,
                                gammas=gammas, epsilons=epsilons, samples=samples, tta=tta, case_norm=adapt_bn,
                                beside=True, overwrite=overwrite, split=split)
    return evaluate_run_with(run_dir, options, progress=progress, threads=threads, data=data)


def evaluate_run_with(run_dir: str | Path, options: EvaluationOptions, *, progress: bool = True,
                      threads: int | None = None, data: str | Path | None = None) -> dict[str, Any]:
    """``evaluate_run`` from settings already gathered, for a caller that also needs them afterwards (the CLI
    prints what the evaluation folder holds); ``options.beside`` keeps the training-time evaluation intact."""
    return Run.open(run_dir, progress=progress, threads=threads, data=data).evaluate(options)


def predict(run_dir: str | Path | Sequence[str | Path] | None, input_path: str | Path, output_dir: str | Path, *,
            checkpoint: str | None = None, save_probabilities: bool = False, device: str = "auto",
            overwrite: bool = False, threads: int | None = None, tta: bool = False, adapt_bn: bool = False,
            model_dir: str | Path | None = None) -> list[Path]:
    """Segment every image in ``input_path``; outputs keep the input's geometry (NIfTI affine / PNG size).

    Several runs form an ensemble: their probabilities are averaged and the members' disagreement is written
    next to each prediction. ``model_dir`` predicts from an export (``semiseg export``) instead of a run;
    ``tta`` averages over flips of the spatial axes; ``adapt_bn`` normalises each case with BatchNorm statistics
    of that case (runs only: an export's statistics are fixed). The output folder is checked before any model or
    image is loaded, so a clash fails at once. ``checkpoint`` (default ``best``) picks a run's checkpoint; an
    export holds one, so asking it for another is an error. 2D images given to a 3D model are refused.
    """
    runs = [] if not run_dir else [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    return predict_runs(runs, input_path, output_dir, model_dir=model_dir, checkpoint=checkpoint, device=device,
                        tta=tta, adapt_bn=adapt_bn, save_probabilities=save_probabilities, overwrite=overwrite,
                        threads=threads)


def export(run_dir: str | Path, fmt: str = "torchscript", *, checkpoint: str = "best",
           output_dir: str | Path | None = None, overwrite: bool = False, data: str | Path | None = None) -> Path:
    """Write the run's predicting network as TorchScript or ONNX plus ``export.json``; returns the folder.

    Needs only the run folder; ``data`` (where the training data is now) only fills the sidecar's spacing."""
    return export_run(run_dir, fmt, checkpoint=checkpoint, output_dir=output_dir, overwrite=overwrite, data=data)


def export_demo(output_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The built-in demo's test subjects (the default config's split), images only, as ``<case>.nii.gz``.

    Images to try ``predict`` on: a model trained with ``semiseg train`` never saw them. Files already in
    ``output_dir`` under those names are refused unless ``overwrite``.
    """
    return export_demo_images(Path(output_dir), overwrite=overwrite)


def plan(config_file: str | Path | None, overrides: list[str] | None = None) -> str:
    """The plan of a training run (``semiseg train --dry-run``): checked and built, nothing written."""
    return dry_run(config_file, overrides or [])


def suggest(run_dir: str | Path, *, score: str = "entropy", top: int = 5, region: str = "volume",
            diversity: float = 0.0, samples: int = 8, input_path: str | Path | None = None,
            output: str | Path | None = None, checkpoint: str = "best", device: str = "auto",
            overwrite: bool = False, progress: bool = True, data: str | Path | None = None) -> list[Any]:
    """Rank the run's unlabelled cases (or ``input_path``'s images) by ``score``; write ``suggest.csv``,
    ``suggest.md`` and pictures into ``output`` (default ``<run>/suggest/``); ``data`` is where the run's dataset
    is now, when it moved (``input_path`` needs none). See docs/suggest.md."""
    return suggest_run(run_dir, data=data, score=score, top=top, region=region, diversity=diversity, samples=samples,
                       input_path=input_path, output=output, checkpoint=checkpoint, device=device,
                       overwrite=overwrite, progress=progress)


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, *, class_names: list[str] | None = None,
                     label_mode: str = "multiclass", ignore_geometry: bool = False, ignore: int | None = None,
                     on_warning: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metrics of label files in ``pred_dir`` against same-named files in ``gt_dir`` (spacing from the GT).

    Float/NaN labels, values outside ``class_names`` and predictions on another grid than their ground
    truth are errors naming the file (``ignore_geometry`` skips the grid check); predictions without
    ground truth go to ``on_warning`` (default: a ``UserWarning``). Without ``class_names`` the classes come
    from the ground truth, and values that are not plausible class indices (a gap up to 255) are refused;
    ``ignore`` (e.g. 255) leaves the ground truth's voxels of that value out of every metric.
    """
    from semiseg.eval.folders import evaluate_folders as evaluate

    return evaluate(pred_dir, gt_dir, class_names=class_names, label_mode=label_mode,
                    ignore_geometry=ignore_geometry, ignore=ignore, on_warning=on_warning)
