"""The tables of a comparison (``compare.md``, ``compare.csv``, ``compare.json``), built from its per-case scores.

Per entry and checkpoint (best on validation, last): mean ± std and median (min–max) over seeds of each seed's
test mean, a paired Wilcoxon signed-rank test of per-case Dice (all seeds pooled) against the first entry, and the
training time relative to it. Everything here reads ``scores.read_scores`` output and the facts the comparison
recorded in ``compare.json``, so rebuilding a published table needs no run folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.config import Config
from semiseg.eval.metrics import METRIC_COLUMNS
from semiseg.eval.report import PREDICTION, TEACH, TEACH_CLASS
from semiseg.eval.stats import paired_p, seed_mean_std
from semiseg.experiment.scores import CHECKPOINTS
from semiseg.experiment.spec import Entry

Results = dict[str, dict[int, dict[str, Any]]]
DERIVED_KEYS = ("rows", "teaching", "origins", "validation_classes")  # compare.json's keys built from the scores


def seed_spread(runs: dict[int, Any], checkpoint: str) -> dict[str, float]:
    """``{metric}_median`` / ``_min`` / ``_max`` over seeds of each seed's test mean: robust to one diverged seed."""
    row: dict[str, float] = {}
    for metric in METRIC_COLUMNS:
        per_seed = [np.nanmean([c[metric] for c in run["cases"][checkpoint].values()]) for run in runs.values()]
        row[f"{metric}_median"] = float(np.median(per_seed))
        row[f"{metric}_min"], row[f"{metric}_max"] = float(np.min(per_seed)), float(np.max(per_seed))
    return row


def summary_rows(results: Results, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Two rows (best, last) per entry with at least one finished seed."""
    reference = entries[0].label
    ref_runs = results.get(reference, {})
    ref_seconds = np.mean([r["seconds"] for r in ref_runs.values()]) if ref_runs else math.nan
    rows = []
    for entry in (e for e in entries if e.label in results):
        runs = results[entry.label]
        for checkpoint in CHECKPOINTS:
            row: dict[str, Any] = {"label": entry.label, "method": entry.method, "checkpoint": checkpoint,
                                   "seeds": len(runs)}
            row.update(seed_mean_std(runs, checkpoint))
            row.update(seed_spread(runs, checkpoint))
            row["val_dice_mean"] = _mean_validation(runs, checkpoint)
            row["p_dice_vs_ref"] = paired_p(results, entry.label, reference, checkpoint) if ref_runs else math.nan
            row["train_time_ratio"] = float(np.mean([r["seconds"] for r in runs.values()]) / ref_seconds)
            rows.append(row)
    return rows


def _mean_validation(runs: dict[int, Any], checkpoint: str) -> float:
    """Mean over seeds of the checkpoint's validation Dice (NaN where no seed logged one)."""
    values = [run.get("validation", {}).get(checkpoint) for run in runs.values()]
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else math.nan


def spread_cell(row: dict[str, Any], metric: str) -> str:
    """A summary row's median (min–max) over seeds; one seed has no spread."""
    if row["seeds"] == 1:
        return "—"
    return f"{row[f'{metric}_median']:.3f} ({row[f'{metric}_min']:.3f}–{row[f'{metric}_max']:.3f})"


def p_cell(row: dict[str, Any]) -> str:
    """A summary row's paired p against the reference entry; the reference itself has none."""
    return "—" if math.isnan(row["p_dice_vs_ref"]) else f"{row['p_dice_vs_ref']:.3g}"


def format_markdown(rows: list[dict[str, Any]], reference: str) -> str:
    lines = []
    for checkpoint in CHECKPOINTS:
        lines += [f"**{checkpoint} checkpoint** (val Dice: mean over seeds of the checkpoint's validation Dice, the "
                  "one to decide on; the other columns are test: mean ± std and median (min–max) over seeds; p: "
                  f"paired Wilcoxon of per-case Dice vs {reference})", "",
                  "| method | val Dice | Dice | Dice median (min–max) | Jaccard | HD95 (mm) | ASD (mm) | p | "
                  "train time ÷ ref |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if r["checkpoint"] == checkpoint):
            cells = [f"{row[f'{m}_mean']:.3f}" + (f" ± {row[f'{m}_std']:.3f}" if row["seeds"] > 1 else "")
                     for m in METRIC_COLUMNS]
            cells.insert(1, spread_cell(row, "dice"))
            val = row.get("val_dice_mean", math.nan)
            cells.insert(0, "—" if math.isnan(val) else f"{val:.3f}")
            lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {p_cell(row)} | "
                         f"{row['train_time_ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def teaching_rows(results: Results) -> dict[str, dict[str, float]]:
    """Per entry, the mean over its finished seeds of each run's ``scores.last_teaching`` (keys any seed logged)."""
    table = {}
    for label, runs in results.items():
        table[label] = _seed_means([run["teaching"] for run in runs.values()])
    return table


def format_teaching(table: dict[str, dict[str, float]]) -> str:
    """What each method trained on, scored against the unlabelled cases' held-out labels, at the end of training."""
    rows = [(label, values) for label, values in table.items() if any(k.startswith(TEACH) for k in values)]
    if not rows:
        return ""
    lines = ["", "**What the methods teach** (mean over the last fifth of training and over seeds; `*_dice`/`*_acc`: a "
             "method's targets on its unlabelled batches against their held-out labels, `*_kept`: share its mask "
             "kept, `unl_dice_<net>`: each network on whole unlabelled cases; see docs/protocol.md)", "",
             "| method | val Dice | diagnostics |", "|---|---|---|"]
    for label, values in rows:
        cells = ", ".join(f"{k.removeprefix(TEACH)} {v:.3f}" for k, v in values.items() if k.startswith(TEACH))
        lines.append(f"| {label} | {values.get('val_dice', math.nan):.3f} | {cells} |")
    return "\n".join(lines + [""]) + format_class_teaching(table)


def format_class_teaching(table: dict[str, dict[str, float]]) -> str:
    """Per foreground class, each target's Dice and the network's own (``teach_class/*``): where a class collapses."""
    rows = [(label, {k.removeprefix(TEACH_CLASS): v for k, v in values.items() if k.startswith(TEACH_CLASS)})
            for label, values in table.items()]
    rows = [(label, values) for label, values in rows if values]
    if not rows:
        return ""
    classes = sorted({key.rsplit("/", 1)[1] for _, values in rows for key in values})
    lines = ["", "**Per class** (each foreground class's Dice of the targets and of the network's own prediction on "
             "the unlabelled batches, over the logged batches that held the class; `teach_class/*`)", "",
             "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for label, values in rows:
        ordered = sorted(values.items(), key=lambda item: item[0].startswith(PREDICTION))  # the yardstick last
        cells = [", ".join(f"{key.split('/')[0].removesuffix('_dice')} {v:.3f}" for key, v in ordered
                           if key.endswith(f"/{cls}")) or "—" for cls in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def validation_class_rows(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """Per entry and checkpoint, each class's validation Dice averaged over the seeds that logged it (``val_class``)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, runs in results.items():
        per_seed = [run.get("validation", {}).get("classes", {}) for run in runs.values()]
        means = {ck: _seed_means([seed.get(ck, {}) for seed in per_seed]) for ck in CHECKPOINTS}
        if means["last"]:
            table[label] = means
    return table


def _seed_means(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the seeds that logged it, keys sorted."""
    keys = sorted({key for values in per_seed for key in values})
    return {key: float(np.mean([values[key] for values in per_seed if key in values])) for key in keys}


def format_validation_classes(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Each foreground class's validation Dice, last (best) checkpoint: which class a decision turns on."""
    if not table:
        return ""
    classes = sorted({cls for means in table.values() for cls in means["last"]})
    lines = ["", "**Validation per class** (each foreground class's validation Dice at the last checkpoint, the best "
             "in brackets, mean over seeds; `val_class/*`)", "", "| method | " + " | ".join(classes) + " |",
             "|---|" + "---|" * len(classes)]
    for label, means in table.items():
        cells = [f"{means['last'][cls]:.3f} ({means['best'][cls]:.3f})" if cls in means["last"] else "—"
                 for cls in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def format_missing(missing: Sequence[dict[str, Any]], entries: Sequence[Entry], n_seeds: int, rerun: str) -> str:
    """The runs the table lacks, why, and the command that finishes them; empty when all finished."""
    if not missing:
        return ""
    per_label = Counter(m["label"] for m in missing)
    absent = [e.label for e in entries if per_label[e.label] == n_seeds]
    lines = ["", f"**Not finished: {len(missing)} run(s)**; the table holds only the finished seeds"
             + (f" and has no row for {', '.join(absent)}" if absent else "") + ".", ""]
    lines += [f"- {m['label']} seed {m['seed']}: {m['reason']}" for m in missing]
    lines += ["", f"Finish them with `{rerun}` (finished runs are reused, interrupted ones resumed).", ""]
    return "\n".join(lines)


def dataset_label(cfg: Config) -> str:
    """The dataset a reader recognises: the data folder's name (and its source), or the built-in source."""
    if cfg.data.path:
        return f"{Path(str(cfg.data.path)).expanduser().resolve().name} ({cfg.data.source})"
    return cfg.data.source


def evaluation_statement(evaluation: str | None) -> str:
    """Which evaluation of each run the table reports, so TTA numbers never sit unlabelled beside plain ones."""
    if evaluation is None:
        return "evaluation: the one made at the end of training (each run folder's summary.json, no test-time " \
               "augmentation)"
    return f"evaluation: `{evaluation}` (each run folder's evaluations/{evaluation}/)"


def protocol_facts(first: Config) -> dict[str, Any]:
    """What the header states about the shared protocol, recorded so a rebuild needs no config."""
    return {"data": dataset_label(first), "labelled": first.split.labelled_budget(),
            "model": f"{first.model.dim}D {first.model.arch} {first.model.widths}", "steps": first.train.steps}


def header(meta: dict[str, Any]) -> str:
    facts = meta["protocol"]
    lines = [f"# Comparison `{meta['name']}`", "",
             f"data: {facts['data']}, labelled: {facts['labelled']}, model: {facts['model']}, steps: {facts['steps']}, "
             f"seeds: {', '.join(map(str, meta['seeds']))}", "", meta["split"], "",
             evaluation_statement(meta["evaluation"]), "", ""]
    return "\n".join(lines)


def origins(results: Results) -> dict[str, Any]:
    """Which runs were trained on which machine and at which commits (``engine.origin``), for the table to state."""
    machines: dict[str, list[str]] = {}
    commits: Counter[str] = Counter()
    unrecorded = []
    for label, runs in results.items():
        for seed, run in runs.items():
            record = run.get("origin") or {}
            if not record:
                unrecorded.append(f"{label}-s{seed}")
            for name in record.get("machines", []):
                machines.setdefault(name, []).append(f"{label}-s{seed}")
            commits.update(record.get("commits", []))
    return {"machines": machines, "commits": dict(commits), "unrecorded": unrecorded}


def format_origins(found: dict[str, Any]) -> str:
    """Where the runs were trained; a table mixing machines says so, since a seed's bits follow the machine.

    Empty when no run recorded its origin (runs trained before semiseg recorded one), so older tables rebuild as
    they were published."""
    machines, unrecorded = found["machines"], found["unrecorded"]
    if not machines:
        return ""
    commits = ", ".join(f"`{commit[:7]}{'+dirty' if commit.endswith('+dirty') else ''}` ({n})"
                        for commit, n in sorted(found["commits"].items()))
    if len(machines) == 1:
        lines = [f"trained on one machine ({next(iter(machines))}); commits (runs): {commits}"]
    else:
        lines = [f"**trained on {len(machines)} machines**: a seed is bit-identical only on the machine that trained "
                 "it, so entries trained on different machines differ by more than their method; commits (runs): "
                 f"{commits}", ""]
        lines += [f"- {name}: {', '.join(runs)}" for name, runs in machines.items()]
    if unrecorded:
        lines += ["", f"{len(unrecorded)} run(s) recorded no machine (trained before runs recorded one): "
                  f"{', '.join(unrecorded)}"]
    return "\n".join(lines + ["", ""])


def write_tables(folder: Path, meta: dict[str, Any], results: Results, *, with_csv: bool = True) -> None:
    """``compare.md`` and ``compare.json`` (and ``compare.csv``) in ``folder`` from ``meta`` and the scores.

    ``meta`` holds what the tables state besides the numbers: name, stamp, seeds, split, entries (as JSON),
    protocol, evaluation, missing runs and the command that finishes them.
    """
    entries = [Entry(e["label"], e["method"], e["options"], tuple(e["overrides"])) for e in meta["entries"]]
    rows = summary_rows(results, entries)
    if with_csv:
        with (folder / "compare.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["label", "method", "checkpoint"])
            writer.writeheader()
            writer.writerows(rows)
    teaching, found, per_class = teaching_rows(results), origins(results), validation_class_rows(results)
    extra = {"rows": rows, "teaching": teaching, **({"origins": found} if found["machines"] else {}),
             **({"validation_classes": per_class} if per_class else {})}
    (folder / "compare.json").write_text(json.dumps({**meta, **extra}, indent=2, default=str))
    (folder / "compare.md").write_text(header(meta) + format_origins(found) + format_markdown(rows, entries[0].label)
                                       + format_validation_classes(per_class) + format_teaching(teaching)
                                       + format_missing(meta["missing"], entries, len(meta["seeds"]), meta["rerun"]))
