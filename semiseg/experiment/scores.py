"""Per-case scores of a comparison: collected once from its run folders, kept beside its tables, read back from there.

``per_case.csv`` holds one row per run, checkpoint (best on validation, last), test case and class; ``runs.json``
holds each run's training time, validation Dice (best and last checkpoint), what it taught and the machines and
commits it was trained on (``engine.origin``). ``compare`` writes both into the comparison folder and builds every
table and p-value from them, and ``--publish`` copies them to ``results/<name>/``, so a published table can be
rebuilt (``semiseg compare --from-results results/<name>``) without its run folders.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.engine.origin import fingerprint, read_origin
from semiseg.errors import SemisegError
from semiseg.eval.metrics import METRIC_COLUMNS
from semiseg.eval.report import TEACH, TEACH_CLASS, VAL_CLASS, read_log
from semiseg.experiment.spec import Entry

PER_CASE, RUNS = "per_case.csv", "runs.json"
CHECKPOINTS = ("best", "last")
CASE_COLUMNS = ("label", "seed", "checkpoint", "case_id", "class", *METRIC_COLUMNS)


def evaluation_dir(run_dir: Path, evaluation: str | None) -> Path:
    """The evaluation a comparison reads: the training-time one in the run folder, or ``evaluations/<name>/``."""
    return run_dir if evaluation is None else run_dir / "evaluations" / evaluation


def _scored_split(folder: Path) -> str:
    """The cases an evaluation scored (``settings.split`` of its summary.json; test before the setting existed)."""
    try:
        return json.loads((folder / "summary.json").read_text()).get("settings", {}).get("split", "test")
    except (OSError, ValueError, AttributeError):
        return "test"


def _run_rows(run_dir: Path, evaluation: str | None) -> list[dict[str, str]]:
    """The per-case rows of one finished run's evaluation, with both checkpoints, or one error saying what to do."""
    folder = evaluation_dir(run_dir, evaluation)
    file = folder / "metrics" / "per_case.csv"
    if evaluation is not None and not file.is_file():
        raise SemisegError(f"{run_dir}: the comparison reports evaluation {evaluation!r} but {folder} holds none; "
                           f"make it with 'semiseg evaluate --run {run_dir}' and the settings named {evaluation!r}, "
                           "or drop 'evaluation' to report the training-time evaluation")
    if not file.is_file():
        raise SemisegError(f"{run_dir}: summary.json is there but {file} is not; delete the run folder so that "
                           "compare trains it again")
    if _scored_split(folder) != "test":
        raise SemisegError(f"{folder}: evaluation {evaluation!r} scores the validation cases, and a comparison's "
                           "test columns need test scores; name a test evaluation, or drop 'evaluation'")
    with file.open() as fh:
        rows = list(csv.DictReader(fh))
    absent = [ck for ck in CHECKPOINTS if not any(r.get("checkpoint") == ck for r in rows)]
    if absent:
        raise SemisegError(f"{file}: no {' or '.join(repr(a) for a in absent)} checkpoint scores, and a comparison "
                           "reports the best and the last checkpoint (was the run re-evaluated with --checkpoint?); "
                           f"evaluate both with 'semiseg evaluate --run {run_dir}', or delete the run folder so "
                           "compare trains it again")
    return [r for r in rows if r["checkpoint"] in CHECKPOINTS]


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    return read_log(run_dir / "log.csv")


def last_teaching(rows: list[dict[str, str]]) -> dict[str, float]:
    """Mean of each ``teach/*`` and ``teach_class/*`` column (diagnostics against held-out truth; a per-class one
    over the logged batches that held the class) and of val Dice over the last fifth of
    training (``rows``: a run's log.csv): one logged batch is too noisy a summary, the whole run mixes in the
    warm-up."""
    if not rows:
        return {}
    start = 0.8 * float(rows[-1]["step"])
    values: dict[str, list[float]] = defaultdict(list)
    for row in (r for r in rows if float(r["step"]) >= start):
        for key, value in row.items():
            if value not in (None, "") and (key.startswith((TEACH, TEACH_CLASS)) or key == "val_dice"):
                values[key].append(float(value))
    return {key: float(np.mean(v)) for key, v in values.items()}


def validation_dice(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Validation Dice of each checkpoint: the best one's (the highest, which chose it) and the last logged one,
    with ``classes`` (checkpoint → class → Dice, the ``val_class/*`` columns of the same rows) where logged.

    Tables show it beside test Dice so that a decision can be taken on validation without reading test."""
    logged = [r for r in rows if r.get("val_dice") not in (None, "")]
    if not logged:
        return {}
    values = [float(r["val_dice"]) for r in logged]
    best = logged[int(np.argmax(values))]  # the first of equal scores, as the checkpoint handler keeps it
    found: dict[str, Any] = {"best": max(values), "last": values[-1]}
    classes = {checkpoint: _class_values(row) for checkpoint, row in (("best", best), ("last", logged[-1]))}
    return found | ({"classes": classes} if classes["last"] else {})


def _class_values(row: dict[str, str]) -> dict[str, float]:
    return {key.removeprefix(VAL_CLASS): float(v) for key, v in row.items()
            if key.startswith(VAL_CLASS) and v not in (None, "")}


def run_origin(run_dir: Path) -> dict[str, list[str]]:
    """The machines and commits a run was trained on (several if resumed elsewhere); empty if it recorded none."""
    starts = read_origin(run_dir)
    if not starts:
        return {}
    return {"machines": sorted({fingerprint(start) for start in starts}),
            "commits": sorted({start.get("commit") or "unknown" for start in starts})}


def run_record(run_dir: Path) -> dict[str, Any]:
    """What ``runs.json`` keeps of one run, from one read of its log.csv: seconds, teaching, validation Dice, and
    where it was trained."""
    rows = log_rows(run_dir)
    return {"seconds": float(rows[-1]["elapsed_s"]) if rows else math.nan, "teaching": last_teaching(rows),
            "validation": validation_dice(rows), "origin": run_origin(run_dir)}


def collect(root: Path, entries: Sequence[Entry], seeds: Sequence[int], evaluation: str | None = None) -> None:
    """Write ``per_case.csv`` and ``runs.json`` into ``root`` from every finished run (one with a summary.json)."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for entry in entries:
        for seed in seeds:
            run_dir = root / f"{entry.label}-s{seed}"
            if not (run_dir / "summary.json").is_file():
                continue
            rows += [{"label": entry.label, "seed": seed, **r} for r in _run_rows(run_dir, evaluation)]
            runs.append({"label": entry.label, "seed": seed, **run_record(run_dir)})
    with (root / PER_CASE).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CASE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (root / RUNS).write_text(json.dumps(runs, indent=2))


def has_scores(folder: Path) -> bool:
    return (folder / PER_CASE).is_file() and (folder / RUNS).is_file()


def read_scores(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """label → seed → {"cases": checkpoint → case → metric → mean over classes, "seconds", "teaching"}."""
    try:
        return _read_scores(folder)
    except (KeyError, ValueError, TypeError) as exc:  # a hand-edited or truncated file, not a bug
        raise SemisegError(f"{folder}: {PER_CASE} or {RUNS} is not what compare writes (a missing column or key, or "
                           f"a bad value: {exc}); restore them from git, or rerun the comparison") from None


def _read_scores(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    grouped: dict[tuple[str, int], dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    with (folder / PER_CASE).open() as fh:
        for row in csv.DictReader(fh):
            for metric in METRIC_COLUMNS:
                grouped[(row["label"], int(row["seed"]))][row["checkpoint"]][row["case_id"]][metric].append(
                    float(row[metric]))
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for run in json.loads((folder / RUNS).read_text()):
        cases = grouped[(run["label"], run["seed"])]
        results.setdefault(run["label"], {})[run["seed"]] = {
            "cases": {ck: {case: {m: float(np.mean(v)) for m, v in metrics.items()}
                           for case, metrics in cases[ck].items()} for ck in CHECKPOINTS},
            "seconds": run["seconds"], "teaching": run["teaching"], "validation": run.get("validation", {}),
            "origin": run.get("origin", {})}
    return results
