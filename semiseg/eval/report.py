"""The run report: a folder a person opens (``report.md`` with PNG figures beside it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from semiseg.eval.evaluate import format_table
from semiseg.eval.robustness import format_robustness_table
from semiseg.eval.uncertainty import format_uncertainty_table

TEACH = "teach/"  # log.csv prefix of the diagnostics against held-out truth (written by semiseg.engine.teach)
TEACH_CLASS = "teach_class/"  # the same per foreground class, where a task has two or more: <target>_dice/<class>
VAL_CLASS = "val_class/"  # validation Dice per foreground class, where a task has two or more: val_class/<class>
PREDICTION = "prediction"  # their entry for the predicting network's own answer on the batch: a yardstick, not a target
UNLABELLED_DICE = "unl_dice"  # their entries for each network on whole unlabelled cases
_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240]]
) / 255.0


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A figure drawn on its own Agg canvas, so reports never select (or depend on) pyplot's global backend."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _label_rgb(label2d: np.ndarray, label_mode: str) -> np.ndarray:
    """RGBA overlay of a 2D label slice (multilabel: later channels drawn on top)."""
    rgba = np.zeros((*label2d.shape[-2:], 4))
    channels = [label2d == k for k in range(1, int(label2d.max()) + 1)] if label_mode == "multiclass" else label2d
    for k, mask in enumerate(channels, start=1):
        rgba[mask > 0, :3] = _COLOURS[k % len(_COLOURS)]
        rgba[mask > 0, 3] = 0.45
    return rgba


def _middle_slice(array: np.ndarray, spatial_ndim: int, label: np.ndarray, label_mode: str) -> int:
    """The slice (last axis) with the most foreground, so the picture shows the structures."""
    if spatial_ndim == 2:
        return -1
    fg = label > 0 if label_mode == "multiclass" else label.any(axis=0)
    counts = fg.reshape(-1, fg.shape[-1]).sum(axis=0)
    return int(np.argmax(counts)) if counts.any() else array.shape[-1] // 2


def _take(array: np.ndarray, index: int) -> np.ndarray:
    return array if index == -1 else array[..., index]


def _legend_handles(class_names: list[str], label_mode: str) -> list[Patch]:
    """One coloured patch per foreground class, in the colours ``_label_rgb`` draws them."""
    named = list(enumerate(class_names))[1:] if label_mode == "multiclass" else [
        (k + 1, name) for k, name in enumerate(class_names)]
    return [Patch(color=_COLOURS[k % len(_COLOURS)], alpha=0.45, label=name) for k, name in named]


def _overlay_titles(ex: dict[str, Any], index: int) -> list[str]:
    """Titles naming the case, the slice shown (3D) and the checkpoint that predicted."""
    where = "" if index == -1 else f", slice {index}"
    checkpoint = f"{ex['checkpoint']} checkpoint, " if ex.get("checkpoint") else ""
    return [f"{ex['case_id']}: image{where}", "ground truth", f"prediction ({checkpoint}Dice {ex['dice']:.3f})"]


def overlay_figure(examples: list[dict[str, Any]], label_mode: str, path: Path,
                   class_names: list[str] | None = None) -> None:
    """Rows of (image, ground truth, prediction) for a few cases, with a legend of the class colours."""
    if not examples:
        return
    fig, axes = _subplots(len(examples), 3, figsize=(9, 3 * len(examples) + 0.4), squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        ndim = ex["image"].ndim - 1
        index = _middle_slice(ex["image"], ndim, ex["gt"], label_mode)
        image = _take(ex["image"][0], index)
        for ax, title, overlay in zip(row, _overlay_titles(ex, index), [None, ex["gt"], ex["pred"]], strict=True):
            ax.imshow(image.T, cmap="gray", origin="lower")
            if overlay is not None:
                ax.imshow(np.transpose(_label_rgb(_take(overlay, index), label_mode), (1, 0, 2)), origin="lower")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight() if class_names else 0, 1, 1))
    if class_names:
        handles = _legend_handles(class_names, label_mode)
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)


def read_log(log_csv: Path) -> list[dict[str, str]]:
    """The rows of a run's log.csv (none when the run has not logged yet)."""
    if not log_csv.is_file():
        return []
    with log_csv.open() as fh:
        return list(csv.DictReader(fh))


def curves_figure(log_csv: Path, path: Path) -> bool:
    """Training loss and validation Dice against step; False when there is no log."""
    rows = read_log(log_csv)
    if not rows:
        return False
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    val = [(float(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice") not in (None, "")]
    fig, ax = _subplots(1, 2, figsize=(9, 3))
    ax[0].plot(steps, loss)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log")
    if val:
        ax[1].plot(*zip(*val, strict=True), marker="o")
    ax[1].set(xlabel="step", ylabel="validation Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def threshold_figure(log_csv: Path, path: Path) -> bool:
    """A learnt threshold over training (SegPL-VI logs ``threshold_mu/sigma/sample``); False when not logged."""
    rows = [r for r in read_log(log_csv) if r.get("threshold_mu") not in (None, "")]
    if not rows:
        return False
    steps = np.array([float(r["step"]) for r in rows])
    mu, sigma = (np.array([float(r[k]) for r in rows]) for k in ("threshold_mu", "threshold_sigma"))
    fig, ax = _subplots(figsize=(5, 3))
    ax.fill_between(steps, mu - sigma, mu + sigma, alpha=0.3, label="μ ± σ (posterior, batch mean)")
    ax.plot(steps, mu, label="μ")
    if all(r.get("threshold_sample") not in (None, "") for r in rows):
        ax.plot(steps, [float(r["threshold_sample"]) for r in rows], ".", ms=3, label="sampled T (batch mean)")
    ax.set(xlabel="step", ylabel="threshold T")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where ``key`` was logged."""
    points = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def _teach_keys(fields: list[str], suffix: str) -> list[str]:
    """The ``teach/*`` columns of the method's targets and masks (not the networks' own scores)."""
    own = (TEACH + UNLABELLED_DICE, TEACH + PREDICTION + "_")
    return [k for k in fields if k.startswith(TEACH) and k.endswith(suffix) and not k.startswith(own)]


def teaching_figure(log_csv: Path, path: Path) -> bool:
    """What the method teaches, against the held-out truth of its unlabelled cases (``teach/*`` columns of
    ``log.csv``): target Dice next to the model's validation Dice, the share its masks keep, and every network's
    Dice on whole unlabelled cases. False when nothing was measured (no truth, or monitoring off)."""
    rows = read_log(log_csv)
    fields = list(rows[0]) if rows else []
    if not any(k.startswith(TEACH) for k in fields):
        return False
    fig, ax = _subplots(1, 3, figsize=(13, 3.4))
    val = _series(rows, "val_dice")
    for key in _teach_keys(fields, "_dice"):
        ax[0].plot(*_series(rows, key), ".-", ms=3, label=key[len(TEACH):-len("_dice")] + " (targets)")
    if (yardstick := TEACH + PREDICTION + "_dice") in fields:
        ax[0].plot(*_series(rows, yardstick), "k--", label="model's own prediction (same batches)")
    ax[0].plot(*val, "ko-", ms=3, label="model (validation)")
    ax[0].set(xlabel="step", ylabel="Dice vs truth", ylim=(0, 1), title="targets it trains on")
    for key in [k for k in _teach_keys(fields, "_kept") if not k.endswith("_acc_kept")]:
        ax[1].plot(*_series(rows, key), ".-", ms=3, label=key[len(TEACH):-len("_kept")] + " (share kept)")
    for key in _teach_keys(fields, "_acc_kept"):
        ax[1].plot(*_series(rows, key), ".--", ms=3, label=key[len(TEACH):-len("_acc_kept")] + " (accuracy kept)")
    ax[1].set(xlabel="step", ylim=(0, 1.02), title="what its masks keep")
    if not ax[1].lines:
        ax[1].text(0.5, 0.5, "no mask: every pixel counts", ha="center", va="center", transform=ax[1].transAxes)
    per_net = TEACH + UNLABELLED_DICE + "_"
    for key in [k for k in fields if k.startswith(per_net)]:
        ax[2].plot(*_series(rows, key), "o-", ms=3, label=key[len(per_net):])
    ax[2].plot(*val, "k:", label="validation (predicting net)")
    ax[2].set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="each network on unlabelled cases")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def robustness_figure(summary: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Dice (mean ± std over cases) against the OOD strength γ and the FGSM step ε."""
    axes_labels = {"ood": "γ (out-of-distribution strength)", "fgsm": "ε (FGSM step)"}
    attacks = [a for a in axes_labels if a in summary]
    fig, axes = _subplots(1, len(attacks), figsize=(4.5 * len(attacks), 3), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        points = summary[attack]
        ax.errorbar([p["level"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                    marker="o", capsize=3)
        ax.set(xlabel=axes_labels[attack], ylabel="Dice", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def uncertainty_figure(examples: list[dict[str, Any]], label_mode: str, path: Path) -> None:
    """Rows of (image, entropy, variance when sampled) for a few cases."""
    columns = [c for c in ("entropy", "variance") if c in examples[0]]
    fig, axes = _subplots(len(examples), 1 + len(columns), figsize=(3 * (1 + len(columns)), 3 * len(examples)),
                             squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        index = _middle_slice(ex["image"], ex["image"].ndim - 1, ex["gt"], label_mode)
        row[0].imshow(_take(ex["image"][0], index).T, cmap="gray", origin="lower")
        row[0].set_title(f"{ex['case_id']}: image", fontsize=8)
        for ax, name in zip(row[1:], columns, strict=True):
            shown = ax.imshow(_take(ex[name], index).T, cmap="magma", origin="lower")
            fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(name, fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _extra_sections(figures: Path, label_mode: str, robustness: dict[str, Any] | None,
                    uncertainty: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if robustness:
        robustness_figure(robustness, figures / "robustness.png")
        lines += ["## Robustness (best checkpoint)", "", format_robustness_table(robustness), "",
                  "Dice (mean ± std over test cases) when each test image x is mixed with an unseen contrast + "
                  "noise version x′ as γx′ + (1 − γ)x, and under an FGSM attack of step ε (normalised intensity "
                  "units). Per-case rows: `metrics/robustness.csv`.", "", "![robustness](figures/robustness.png)", ""]
    if uncertainty:
        lines += ["## Uncertainty (best checkpoint)", "",
                  format_uncertainty_table(uncertainty["scores"], uncertainty["source"], uncertainty["samples"]), "",
                  "Brier: mean over voxels of Σ_k (p_k − y_k)²; Eq. 1: the paper's binary Brier per foreground "
                  "channel, averaged. ECE: 15 equal-width bins. Maps: `uncertainty/`; per-case rows: "
                  "`metrics/uncertainty.csv`.", ""]
        if uncertainty.get("examples"):
            uncertainty_figure(uncertainty["examples"], label_mode, figures / "uncertainty.png")
            lines += ["![uncertainty](figures/uncertainty.png)", ""]
    return lines


def write_report(
    run_dir: Path, *, summary: dict[str, Any], info: dict[str, Any], examples: list[dict[str, Any]], label_mode: str,
    robustness: dict[str, Any] | None = None, uncertainty: dict[str, Any] | None = None,
    class_names: list[str] | None = None, log: Path | None = None, scored: str = "test",
) -> Path:
    """Write ``report.md`` and its figures into ``run_dir``; returns the report path.

    The training curves come from ``log`` (default ``run_dir/log.csv``; a re-evaluation folder names its run's);
    ``scored`` names the cases the metrics are of (``test``, or ``validation`` for ``evaluate --split val``).

    ``robustness`` (``summarize_robustness``) and ``uncertainty`` (scores, source, samples, examples) add
    their sections; a learnt-threshold plot appears whenever ``log.csv`` holds ``threshold_mu``.
    """
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.csv" if log is None else log
    overlay_figure(examples, label_mode, figures / "overlays.png", class_names)
    has_curves = curves_figure(log, figures / "training.png")
    lines = [f"# semiseg report: {info['method']} on {info['dataset']}", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", f"## {scored.capitalize()} metrics (per volume, mean ± std over cases)", "", format_table(summary),
              ""]
    lines += [
        "Distances are in millimetres. Empty-mask rule: both empty → Dice 1, HD95/ASD 0; one empty → Dice 0, "
        "HD95/ASD = image diagonal. Per-case rows: `metrics/per_case.csv`.",
        "",
    ]
    if examples:
        lines += ["## Predictions", "", "![overlays](figures/overlays.png)", ""]
    if has_curves:
        lines += ["## Training", "", "![training](figures/training.png)", ""]
    if threshold_figure(log, figures / "threshold.png"):
        lines += ["## Learnt threshold", "", "![threshold](figures/threshold.png)", ""]
    if teaching_figure(log, figures / "teaching.png"):
        lines += ["## What the method teaches", "",
                  "Measured against the labels of the unlabelled training cases, which the method never saw: "
                  "Dice of the targets (pseudo labels) it trained on next to the model's own prediction on the same "
                  "batches (targets below it teach less than the model knows) and its validation Dice, the share of "
                  "pixels its masks kept and how accurate those were, and each network's Dice on whole unlabelled "
                  "cases. Columns `teach/*` of `log.csv`.", "", "![teaching](figures/teaching.png)", ""]
    lines += _extra_sections(figures, label_mode, robustness, uncertainty)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
