"""One validated config per (entry, seed), where each run lives, and the grid as shell lines for any scheduler."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from semiseg.config import Config, load_config
from semiseg.errors import ConfigError
from semiseg.experiment.spec import Entry, check_seeds

Key = tuple[str, int]
Plan = dict[Key, tuple[list[str], Config]]


def run_configs(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int],
                name: str, *, vary_split: bool = False, split_seed: int = 0) -> dict[Key, Config]:
    """Validate every run's config up front, so a typo fails before hours of training."""
    plan = run_plan(base_file, overrides, entries, seeds, name, vary_split=vary_split, split_seed=split_seed)
    return {key: cfg for key, (_, cfg) in plan.items()}


def run_plan(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int],
             name: str, *, vary_split: bool = False, split_seed: int = 0) -> Plan:
    """Every run's config overrides (what ``semiseg train --set`` needs to make it) and its validated config.

    Unless ``vary_split`` or the config sets ``split.seed`` (or ``split.file``), the split seed is pinned to
    ``split_seed``, so every seed of the comparison trains and tests on the same cases.
    """
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare labels must be unique, got {labels}")
    check_seeds(seeds)
    if split_seed < 0:
        raise ConfigError(f"--split-seed: seeds are non-negative integers, got {split_seed}")
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
    return _one_auto_length(plan, base_file)


def _one_auto_length(plan: Plan, base_file: str | None) -> Plan:
    """Runs left at ``train.steps=auto`` all get the longest of their methods' default lengths, in updates.

    A comparison gives every method the same schedule, so supervised training is not cut short beside a method
    that needs longer (UCMT, two updates per step, gets half the steps, as its paper compares it). A length set
    by the protocol or an entry is kept.
    """
    from semiseg.methods import get_method

    auto = {key: get_method(cfg.train.method) for key, (_, cfg) in plan.items() if cfg.train.steps_were_auto}
    if not auto:
        return plan
    updates = max(plan[key][1].train.steps * method.updates_per_step for key, method in auto.items())
    for key, method in auto.items():
        run, cfg = plan[key]
        steps = max(1, updates // method.updates_per_step)
        if steps != cfg.train.steps:
            run = [*run, f"train.steps={steps}"]
            plan[key] = (run, load_config(base_file, run))
    return plan


def split_statement(configs: dict[Key, Config]) -> str:
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


def with_job_threads(configs: dict[Key, Config], jobs: int) -> dict[Key, Config]:
    """Parallel runs share the CPU cores; a ``train.threads`` the protocol states explicitly is kept."""
    if jobs <= 1:
        return configs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return {key: cfg if cfg.train.threads is not None else
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
            for key, cfg in configs.items()}


def train_commands(plan: Plan, base_file: str | None, jobs: int = 1) -> list[str]:
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
