"""Evaluation of a run's checkpoints on its test split: metrics, predictions, robustness, uncertainty, report.

The engine hands over what it already holds (the models, the test cases, the facts the report states), so
nothing here reads a config or opens a dataset: evaluating right after training and evaluating an old run
folder are the same code. Robustness and uncertainty use the first checkpoint only (``best`` by default).

The evaluation made right after training lives in the run folder itself (``summary.json``, ``report.md``,
``metrics/per_case.csv``). A later one (``semiseg evaluate --run``: TTA, one checkpoint, robustness, ...) is
written beside it, in ``<run>/evaluations/<name>/`` with the same file names, the name spelling its settings;
both record those settings in ``summary.json`` (``"settings"``) so a comparison can pick evaluations made
alike. Nothing replaces the training-time evaluation, and a second evaluation with the same settings needs
``overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from semiseg.data.case import Case, CaseRef, label_to_onehot
from semiseg.errors import ConfigError, SemisegError
from semiseg.eval.evaluate import score_case, summarize, write_rows
from semiseg.eval.io import write_label, write_probabilities
from semiseg.eval.labels import probs_to_label
from semiseg.eval.report import write_report
from semiseg.eval.robustness import (
    DEFAULT_EPSILONS,
    DEFAULT_GAMMAS,
    check_grid,
    robustness_rows,
    summarize_robustness,
    write_robustness,
)
from semiseg.eval.uncertainty import case_uncertainty, summarize_uncertainty, write_uncertainty


class CaseModel(Protocol):
    """A trained model as evaluation needs it: whole-case probabilities, FGSM gradients, MC samples."""

    def probabilities(self, case: Case) -> np.ndarray: ...

    def normalized(self, case: Case) -> np.ndarray: ...

    def predict_normalized(self, image: np.ndarray) -> np.ndarray: ...

    def input_gradient(self, image: np.ndarray, onehot: np.ndarray) -> np.ndarray: ...

    def sample_probabilities(self, image: np.ndarray, n: int) -> np.ndarray | None: ...


SPLIT_NAMES = {"test": "test", "val": "validation"}  # the cases an evaluation may score, as a report names them
SPLITS = tuple(SPLIT_NAMES)


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate beyond the metrics; a bad grid or sample count fails before any inference."""

    checkpoints: tuple[str, ...] = ("best", "last")
    robustness: bool = False
    uncertainty: bool = False
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    samples: int = 5
    tta: bool = False  # flip test-time augmentation of every prediction
    case_norm: bool = False  # BatchNorm statistics re-estimated on each test case (AdaBN)
    beside: bool = False  # a re-evaluation: write into <run>/evaluations/<name>/, never over the run's own files
    overwrite: bool = False  # with beside: replace an earlier evaluation made with the same settings
    split: str = "test"  # the cases scored: "test", or "val" (per case and class, for decisions that leave test unread)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gammas", check_grid(self.gammas, "gammas", upper=1.0))
        object.__setattr__(self, "epsilons", check_grid(self.epsilons, "epsilons"))
        if self.samples < 1:
            raise ConfigError(f"samples: Monte-Carlo samples must be at least 1, got {self.samples}")
        if self.split not in SPLITS:
            raise ConfigError(f"split: an evaluation scores the {' or '.join(SPLITS)} cases, got {self.split!r}")
        if self.split != "test" and not self.beside:
            raise ConfigError("a validation evaluation goes beside the run's own (test) evaluation, never over it")
        if self.case_norm and (self.robustness or self.uncertainty):
            raise ConfigError("--adapt-bn re-estimates BatchNorm statistics for plain predictions only; evaluate "
                              "--robustness or --uncertainty in a separate call without it")

    def settings(self) -> dict[str, Any]:
        """What changes the numbers, as ``summary.json`` records it (grids and samples only where used)."""
        out: dict[str, Any] = {"name": self.name, "split": self.split, "checkpoints": list(self.checkpoints),
                               "tta": self.tta,
                               "adapt_bn": self.case_norm, "robustness": self.robustness,
                               "uncertainty": self.uncertainty}
        if self.robustness:
            out |= {"gammas": list(self.gammas), "epsilons": list(self.epsilons)}
        if self.uncertainty:
            out["samples"] = self.samples
        return out

    @property
    def name(self) -> str:
        """The evaluation folder's name: one word per setting, e.g. ``tta``, ``best-tta``, ``robust``, ``val``."""
        words = [] if self.split == "test" else [self.split]
        words += [] if set(self.checkpoints) == {"best", "last"} else list(self.checkpoints)
        words += [word for flag, word in ((self.tta, "tta"), (self.case_norm, "adapt-bn"),
                                          (self.robustness, "robust"),
                                          (self.uncertainty, "uncertainty")) if flag]
        return "-".join(words) or "default"


def evaluation_folder(run_dir: Path, options: EvaluationOptions) -> Path:
    """Where an evaluation writes: the run folder after training, ``evaluations/<name>/`` for a re-evaluation."""
    return run_dir / "evaluations" / options.name if options.beside else run_dir


def _check_new_evaluation(folder: Path, options: EvaluationOptions) -> None:
    if options.beside and (folder / "summary.json").exists() and not options.overwrite:
        raise SemisegError(f"{folder} already holds an evaluation with these settings ({options.name}); "
                           "pass --overwrite to replace it")


@dataclass(frozen=True)
class RunFacts:
    """What the summary and the report state about the run, and which outputs it asked for."""

    label_mode: str
    class_names: list[str]
    summary_header: dict[str, Any]  # method, dataset, test_cases, best_step, best_val_dice
    report_info: dict[str, Any]
    report_cases: int
    save_predictions: bool
    save_probabilities: bool


@dataclass
class _ExtraEvaluation:
    """Robustness curves and uncertainty scores/maps of the first checkpoint, gathered case by case."""

    options: EvaluationOptions
    facts: RunFacts
    out_dir: Path  # the evaluation's folder
    robustness_rows: list[dict[str, Any]] = field(default_factory=list)
    uncertainty_rows: list[dict[str, Any]] = field(default_factory=list)
    uncertainty_examples: list[dict[str, Any]] = field(default_factory=list)

    def add_case(self, model: CaseModel, case: Case, probs: np.ndarray, checkpoint: str) -> None:
        opts, label_mode, num_classes = self.options, self.facts.label_mode, len(self.facts.class_names)
        image = model.normalized(case) if opts.robustness or opts.uncertainty else None
        if opts.robustness:
            self.robustness_rows += robustness_rows(
                case.case_id, image, case.label, predict=model.predict_normalized, gradient=model.input_gradient,
                label_mode=label_mode, num_classes=num_classes, gammas=opts.gammas, epsilons=opts.epsilons,
                checkpoint=checkpoint)
        if opts.uncertainty:
            row, maps = case_uncertainty(
                case, probs, model.sample_probabilities(image, opts.samples),
                label_to_onehot(case.label, label_mode, num_classes), label_mode=label_mode,
                out_dir=self.out_dir / "uncertainty", checkpoint=checkpoint)
            self.uncertainty_rows.append(row)
            if len(self.uncertainty_examples) < self.facts.report_cases:
                self.uncertainty_examples.append({"case_id": case.case_id, "image": case.image, "gt": case.label,
                                                  **{k: v for k, v in maps.items() if k != "mean"}})

    def finish(self) -> dict[str, Any]:
        """Write the per-case CSVs; the summaries go into ``summary.json`` and the report."""
        out: dict[str, Any] = {}
        if self.robustness_rows:
            write_robustness(self.robustness_rows, self.out_dir / "metrics" / "robustness.csv")
            out["robustness"] = summarize_robustness(self.robustness_rows)
        if self.uncertainty_rows:
            write_uncertainty(self.uncertainty_rows, self.out_dir / "metrics" / "uncertainty.csv")
            first = self.uncertainty_rows[0]
            out["uncertainty"] = {"source": first["source"], "samples": first["samples"],
                                  "scores": summarize_uncertainty(self.uncertainty_rows)}
        return out


def evaluate_checkpoints(models: Mapping[str, CaseModel], test_cases: Sequence[CaseRef], facts: RunFacts,
                         run_dir: Path, options: EvaluationOptions, *, progress: bool = True) -> dict[str, Any]:
    """Score every model on every test case; write metrics, ``summary.json``, predictions and the report.

    They go into ``evaluation_folder(run_dir, options)``: the run folder, or beside it for a re-evaluation.
    """
    out_dir = evaluation_folder(run_dir, options)
    _check_new_evaluation(out_dir, options)
    first = options.checkpoints[0]
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    extra = _ExtraEvaluation(options, facts, out_dir)
    for ref in tqdm(test_cases, desc="evaluate", disable=not progress, leave=False):
        case = ref.load()
        for name, model in models.items():
            probs = model.probabilities(case)
            pred = probs_to_label(probs, facts.label_mode)
            case_rows = score_case(case_id=case.case_id, checkpoint=name, pred=pred, probs=probs, gt=case.label,
                                   spacing=case.spacing, class_names=facts.class_names, label_mode=facts.label_mode)
            rows += case_rows
            if name == first:
                _save_prediction(facts, out_dir, case, pred, probs)
                extra.add_case(model, case, probs, name)
                if len(examples) < facts.report_cases:
                    dice = float(np.mean([r["dice"] for r in case_rows]))
                    examples.append({"case_id": case.case_id, "image": case.image, "gt": case.label, "pred": pred,
                                     "dice": dice, "checkpoint": name})
    write_rows(rows, out_dir / "metrics" / "per_case.csv")
    summary = summarize(rows)
    extras = extra.finish()
    header = {**facts.summary_header, "settings": options.settings()}
    (out_dir / "summary.json").write_text(json.dumps({**header, "metrics": summary, **extras}, indent=2))
    uncertainty_block = ({**extras["uncertainty"], "examples": extra.uncertainty_examples}
                         if "uncertainty" in extras else None)
    info = facts.report_info | ({"evaluation": f"{options.name} (beside the training-time evaluation in {run_dir})"}
                                if options.beside else {})
    write_report(out_dir, summary=summary, info=info, examples=examples, label_mode=facts.label_mode,
                 robustness=extras.get("robustness"), uncertainty=uncertainty_block, class_names=facts.class_names,
                 log=run_dir / "log.csv", scored=SPLIT_NAMES[options.split])
    return summary


def _save_prediction(facts: RunFacts, out_dir: Path, case: Case, pred: np.ndarray, probs: np.ndarray) -> None:
    if facts.save_predictions:
        write_label(case, pred, out_dir / "predictions")
    if facts.save_probabilities:
        write_probabilities(case, probs, out_dir / "predictions")
