"""Compare methods on one protocol: same data, split, network and steps; several seeds; one table.

``compare`` trains every (entry, seed) pair into ``<output.root>/<name>/<label>-s<seed>``, reusing runs
that are already finished and resuming interrupted ones, so a long comparison survives being stopped.
Each entry is a method with optional method options and config overrides (``label=method:key=value``).
The table gives mean ± std over seeds of the per-seed test means, for the best-on-validation and the
last checkpoint, and a paired Wilcoxon signed-rank test of per-case Dice (all seeds pooled) against the
first entry.

By default the split is held fixed across seeds (``split.seed`` = the comparison's ``split_seed`` unless the
config sets it), so seeds vary initialisation and sampling only; ``vary_split`` lets the split follow the run
seed, and the ± is then over splits. ``backend="ray"`` schedules the runs on a Ray cluster
(``semiseg.cluster``); ``train_commands`` writes the grid as one ``semiseg train`` line per run for any
other scheduler.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from semiseg.config import Config, load_config
from semiseg.errors import ConfigError, SemisegError
from semiseg.eval.metrics import METRIC_COLUMNS
from semiseg.eval.report import TEACH
from semiseg.eval.stats import paired_p, seed_mean_std

CONFIG_SECTIONS = ("data.", "split.", "model.", "train.", "eval.", "output.", "method.", "seed")


def yaml_value(value: Any) -> str:
    """A value as the right-hand side of ``key=value``, so ``load_config`` parses it back to itself."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a label, a registered method, its options and config overrides."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def config_overrides(self) -> list[str]:
        opts = [f"method.{k}={yaml_value(v)}" for k, v in self.options.items()]
        return [f"train.method={self.method}", *opts, *self.overrides]


def split_entries(text: str) -> list[str]:
    """Split ``--methods`` at commas outside brackets, so ``must:consistency_layers=[0,1]`` stays one entry."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ConfigError(f"--methods {text!r}: unbalanced brackets")
    return [e.strip() for e in [*entries, current] if e.strip()]


def parse_entry(text: str) -> Entry:
    """``method`` or ``label=method:key=value:train.steps=500`` (dotted keys are config overrides)."""
    head, *pairs = text.split(":")
    label, sep, method = head.partition("=")
    if not sep:
        method = label
    options: dict[str, Any] = {}
    overrides: list[str] = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"compare entry {text!r}: {pair!r} is not key=value")
        if key.startswith(CONFIG_SECTIONS):
            overrides.append(pair)
        else:
            options[key] = yaml.safe_load(value)
    if not label or not method:
        raise ConfigError(f"compare entry {text!r}: expected 'method' or 'label=method:key=value'")
    return Entry(label, method, options, tuple(overrides))


def run_configs(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int],
                name: str, *, vary_split: bool = False, split_seed: int = 0) -> dict[tuple[str, int], Config]:
    """Validate every run's config up front, so a typo fails before hours of training."""
    plan = run_plan(base_file, overrides, entries, seeds, name, vary_split=vary_split, split_seed=split_seed)
    return {key: cfg for key, (_, cfg) in plan.items()}


def run_plan(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int],
             name: str, *, vary_split: bool = False,
             split_seed: int = 0) -> dict[tuple[str, int], tuple[list[str], Config]]:
    """Every run's config overrides (what ``semiseg train --set`` needs to make it) and its validated config.

    Unless ``vary_split`` or the config sets ``split.seed`` (or ``split.file``), the split seed is pinned to
    ``split_seed``, so every seed of the comparison trains and tests on the same cases.
    """
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare labels must be unique, got {labels}")
    from semiseg.methods import get_method, parse_method_options

    plan = {}
    for entry in entries:
        for seed in seeds:
            run = [*overrides, f"seed={seed}", *entry.config_overrides(), f"output.name={name}/{entry.label}-s{seed}"]
            cfg = load_config(base_file, run)
            if not vary_split and cfg.split.seed is None and cfg.split.file is None:
                run.append(f"split.seed={split_seed}")
                cfg = load_config(base_file, run)
            parse_method_options(get_method(cfg.train.method), cfg.method)
            plan[(entry.label, seed)] = (run, cfg)
    return plan


def split_statement(configs: dict[tuple[str, int], Config]) -> str:
    """What the seeds of a comparison vary, as ``compare.md`` and ``compare.json`` state it."""
    files = {cfg.split.file for cfg in configs.values()}
    split_seeds = {cfg.split.seed for cfg in configs.values()}
    if len(files) == 1 and None not in files:
        return f"split fixed (file {files.pop()}); seeds vary initialisation and sampling"
    if split_seeds == {None}:
        return "split varies with the seed; ± is over splits"
    if len(split_seeds) == 1:
        return f"split fixed (seed {split_seeds.pop()}); seeds vary initialisation and sampling"
    shown = ", ".join("run seed" if s is None else str(s) for s in sorted(split_seeds, key=str))
    return f"split seeds differ between runs ({shown}); compare rows with care"


def train_commands(plan: dict[tuple[str, int], tuple[list[str], Config]], base_file: str | None,
                   jobs: int = 1) -> list[str]:
    """One shell line per run that makes exactly the run ``compare`` makes, for any scheduler (SLURM, PBS…).

    Each line changes to this directory (relative paths stay as the user wrote them) and runs
    ``semiseg train --continue``: a finished run is left alone, an interrupted one resumed, a missing one trained,
    into the folder a later ``semiseg compare`` collects.
    """
    threads = with_job_threads({key: cfg for key, (_, cfg) in plan.items()}, jobs)
    lines = []
    for key, (run, cfg) in plan.items():
        chosen = threads[key].train.threads
        extra = [f"train.threads={chosen}"] if chosen != cfg.train.threads else []
        words = ["semiseg", "train", *(["--config", base_file] if base_file else [])]
        for override in [*run, *extra]:
            words += ["--set", override]
        lines.append(f"cd {shlex.quote(os.getcwd())} && {shlex.join([*words, '--continue', '--quiet'])}")
    return lines


def run_folder(cfg: Config) -> Path:
    """Where a run of the grid (or of ``train --continue``) lives: ``output.root / output.name``."""
    return Path(cfg.output.root) / str(cfg.output.name)


def finished(cfg: Config) -> bool:
    """A run whose folder has a ``summary.json`` is done; every backend reuses it."""
    return (run_folder(cfg) / "summary.json").is_file()


def train_or_resume(cfg: Config, progress: bool,
                    on_start: Callable[[Path], None] | None = None) -> tuple[str, float]:
    """Reuse, resume or train one run; returns what was done and the seconds it took.

    The one place that decides it, for the local and Ray backends and ``semiseg train --continue``.
    """
    from semiseg import api

    if cfg.output.name is None:
        raise ConfigError("continuing a run needs a fixed run folder: give --output or --set output.name")
    run_dir, start = run_folder(cfg), time.perf_counter()
    if finished(cfg):
        return "reused", 0.0
    if (run_dir / "checkpoints" / "last.pt").is_file():
        api.resume(run_dir, progress=progress, on_start=on_start)
        return "resumed", time.perf_counter() - start
    api.train(cfg, overwrite=True, progress=progress, on_start=on_start)
    return "trained", time.perf_counter() - start


def done_message(label: str, seed: int, status: str, seconds: float) -> str:
    return f"{label} seed {seed}: {status}" + (f" in {seconds:.1f} s" if status != "reused" else "")


def _train_all(configs: dict[tuple[str, int], Config], jobs: int, progress: bool) -> dict[tuple[str, int], str]:
    """Train what is missing; a run that fails with a user error is reported and the others go on.

    Returns the failed runs with their error. Ctrl-C stops here; what finished is still tabulated.
    """
    failed: dict[tuple[str, int], str] = {}
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            futures = {pool.submit(train_or_resume, cfg, False): key
                       for key, cfg in with_job_threads(configs, jobs).items()}
            for future in as_completed(futures):
                label, seed = futures[future]
                try:
                    print(done_message(label, seed, *future.result()), flush=True)
                except SemisegError as exc:
                    failed[(label, seed)] = str(exc)
                    print(f"{label} seed {seed}: failed: {exc}", flush=True)
        return failed
    for (label, seed), cfg in configs.items():
        if not finished(cfg):
            print(f"== {label} seed {seed}", flush=True)
        try:
            print(done_message(label, seed, *train_or_resume(cfg, progress)), flush=True)
        except SemisegError as exc:
            failed[(label, seed)] = str(exc)
            print(f"{label} seed {seed}: failed: {exc}", flush=True)
    return failed


def with_job_threads(configs: dict[tuple[str, int], Config], jobs: int) -> dict[tuple[str, int], Config]:
    """Parallel runs share the CPU cores; a ``train.threads`` the protocol states explicitly is kept."""
    if jobs <= 1:
        return configs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return {key: cfg if cfg.train.threads is not None else
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
            for key, cfg in configs.items()}


BACKENDS = ("local", "ray")


def compare(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int], *,
            name: str, jobs: int = 1, progress: bool = True, experiment: Any = None,
            rerun: str = "the same 'semiseg compare' command", vary_split: bool = False, split_seed: int = 0,
            backend: str = "local", address: str | None = None) -> Path:
    """Train what is missing, then write ``compare.md``, ``compare.csv`` and ``compare.json``.

    ``experiment`` (a ``semiseg.experiments.Experiment``) is recorded in the stamp of ``compare.json``.
    Runs that did not finish are listed under ``missing`` in ``compare.json`` and marked in ``compare.md``
    with ``rerun``, the command that finishes them (finished runs are reused, interrupted ones resumed).
    ``backend`` is ``local`` (processes on this machine) or ``ray`` (one Ray task per run, on the cluster at
    ``address`` or on a local Ray instance sized to ``jobs``).
    """
    if not entries or not seeds:
        raise ConfigError("compare needs at least one method and one seed")
    check_backend(backend, address)
    configs = run_configs(base_file, overrides, entries, seeds, name, vary_split=vary_split, split_seed=split_seed)
    root = Path(next(iter(configs.values())).output.root) / name
    root.mkdir(parents=True, exist_ok=True)
    failed: dict[tuple[str, int], str] = {}
    try:
        if backend == "ray":
            from semiseg.cluster import train_all_ray

            failed = train_all_ray(with_job_threads(configs, jobs), jobs, address)
        else:
            failed = _train_all(configs, jobs, progress)
    finally:  # also after Ctrl-C or a crash: the table of what finished, with the missing runs marked
        results = collect(root, entries, seeds)
        missing = [{"label": label, "seed": seed, "reason": failed.get((label, seed), "not finished")}
                   for label, seed in configs if seed not in results.get(label, {})]
        write_outputs(root, results, entries, seeds, configs, _stamp(experiment, configs), missing=missing,
                      rerun=rerun)
    return root


def check_backend(backend: str, address: str | None) -> None:
    """An unknown backend, ``--address`` without Ray, or Ray not installed: say so before anything is written."""
    if backend not in BACKENDS:
        raise ConfigError(f"compare backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise ConfigError("--address names a Ray cluster: use it with --backend ray")
    if backend == "ray":
        from semiseg.cluster import import_ray

        import_ray()


def _stamp(experiment: Any, configs: dict[tuple[str, int], Config]) -> dict[str, Any]:
    from semiseg.engine.device import resolve_device
    from semiseg.experiments import stamp

    return stamp(experiment, resolve_device(next(iter(configs.values())).train.device).type)


def _case_rows(run_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """checkpoint → case id → metric → mean over classes."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    with (run_dir / "metrics" / "per_case.csv").open() as fh:
        for row in csv.DictReader(fh):
            for metric in METRIC_COLUMNS:
                grouped[row["checkpoint"]][row["case_id"]][metric].append(float(row[metric]))
    return {ck: {case: {m: float(np.mean(v)) for m, v in metrics.items()} for case, metrics in cases.items()}
            for ck, cases in grouped.items()}


def _log_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


def _train_seconds(run_dir: Path) -> float:
    rows = _log_rows(run_dir)
    return float(rows[-1]["elapsed_s"]) if rows else math.nan


def _last_teaching(run_dir: Path) -> dict[str, float]:
    """Mean of each ``teach/*`` column (diagnostics against held-out truth) and of val Dice over the last fifth of
    training: one logged batch is too noisy a summary, the whole run mixes in the warm-up."""
    rows = _log_rows(run_dir)
    if not rows:
        return {}
    start = 0.8 * float(rows[-1]["step"])
    values: dict[str, list[float]] = defaultdict(list)
    for row in (r for r in rows if float(r["step"]) >= start):
        for key, value in row.items():
            if value not in (None, "") and (key.startswith(TEACH) or key == "val_dice"):
                values[key].append(float(value))
    return {key: float(np.mean(v)) for key, v in values.items()}


def teaching_rows(root: Path, results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per entry, the mean over its finished seeds of what ``_last_teaching`` reads (keys any seed logged)."""
    table = {}
    for label, runs in results.items():
        per_seed = [_last_teaching(root / f"{label}-s{seed}") for seed in runs]
        keys = sorted({k for values in per_seed for k in values})
        table[label] = {k: float(np.mean([v[k] for v in per_seed if k in v])) for k in keys}
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
    return "\n".join(lines + [""])


def collect(root: Path, entries: Sequence[Entry], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-case scores and training time of every finished run (one with a ``summary.json``)."""
    results: dict[str, Any] = {}
    for entry in entries:
        per_seed = {}
        for seed in seeds:
            run_dir = root / f"{entry.label}-s{seed}"
            if (run_dir / "summary.json").is_file():
                per_seed[seed] = {"cases": _case_rows(run_dir), "seconds": _train_seconds(run_dir)}
        if per_seed:
            results[entry.label] = per_seed
    return results


def summary_rows(results: dict[str, Any], entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Two rows (best, last) per entry with at least one finished seed."""
    reference = entries[0].label
    ref_runs = results.get(reference, {})
    ref_seconds = np.mean([r["seconds"] for r in ref_runs.values()]) if ref_runs else math.nan
    rows = []
    for entry in (e for e in entries if e.label in results):
        runs = results[entry.label]
        for checkpoint in ("best", "last"):
            row: dict[str, Any] = {"label": entry.label, "method": entry.method, "checkpoint": checkpoint,
                                   "seeds": len(runs)}
            row.update(seed_mean_std(runs, checkpoint))
            row["p_dice_vs_ref"] = paired_p(results, entry.label, reference, checkpoint) if ref_runs else math.nan
            row["train_time_ratio"] = float(np.mean([r["seconds"] for r in runs.values()]) / ref_seconds)
            rows.append(row)
    return rows


def format_markdown(rows: list[dict[str, Any]], reference: str) -> str:
    lines = []
    for checkpoint in ("best", "last"):
        lines += [f"**{checkpoint} checkpoint** (mean ± std over seeds; p: paired Wilcoxon of per-case Dice "
                  f"vs {reference})", "",
                  "| method | Dice | Jaccard | HD95 (mm) | ASD (mm) | p | train time ÷ ref |",
                  "|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if r["checkpoint"] == checkpoint):
            cells = [f"{row[f'{m}_mean']:.3f}" + (f" ± {row[f'{m}_std']:.3f}" if row["seeds"] > 1 else "")
                     for m in METRIC_COLUMNS]
            p = "—" if math.isnan(row["p_dice_vs_ref"]) else f"{row['p_dice_vs_ref']:.3g}"
            lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {p} | {row['train_time_ratio']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(root: Path, results: dict[str, Any], entries: Sequence[Entry], seeds: Sequence[int],
                  configs: dict[tuple[str, int], Config], stamp: dict[str, Any] | None = None, *,
                  missing: Sequence[dict[str, Any]] = (), rerun: str = "the same 'semiseg compare' command") -> None:
    rows = summary_rows(results, entries)
    columns = list(rows[0]) if rows else ["label", "method", "checkpoint", "seeds"]
    with (root / "compare.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    split = split_statement(configs)
    teaching = teaching_rows(root, results)
    (root / "compare.json").write_text(json.dumps(
        {"stamp": stamp, "seeds": list(seeds), "split": split,
         "entries": [e.__dict__ | {"overrides": list(e.overrides)} for e in entries], "rows": rows,
         "teaching": teaching, "missing": list(missing)},
        indent=2, default=str))
    first = configs[(entries[0].label, seeds[0])]
    header = (f"# Comparison `{root.name}`\n\ndata: {dataset_label(first)}, labelled: {first.split.labelled_budget()}, "
              f"model: {first.model.dim}D {first.model.arch} {first.model.widths}, steps: {first.train.steps}, "
              f"seeds: {', '.join(map(str, seeds))}\n\n{split}\n\n")
    (root / "compare.md").write_text(header + format_markdown(rows, entries[0].label) + format_teaching(teaching)
                                     + format_missing(missing, entries, len(seeds), rerun))


def dataset_label(cfg: Config) -> str:
    """The dataset a reader recognises: the data folder's name (and its source), or the built-in source."""
    if cfg.data.path:
        return f"{Path(str(cfg.data.path)).expanduser().resolve().name} ({cfg.data.source})"
    return cfg.data.source


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
