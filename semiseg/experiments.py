"""Experiment files: a comparison written down once, in ``experiments/<name>.yaml``, instead of a shell script.

A file names the comparison, its seeds, the number of parallel jobs, the protocol every run shares (config
overrides) and the methods, each with a label, its options and its own overrides::

    name: teachers
    seeds: [0, 1, 2]
    jobs: 2
    protocol: {split.labelled: 1, train.steps: 600, train.threads: 1}
    methods:
      - supervised
      - {label: ucmt_code, method: ucmt, options: {umix: copy}, overrides: {train.steps: 300}}

The split is held fixed across seeds (``split_seed``, default 0) unless the protocol sets ``split.seed``;
``vary_split: true`` lets it follow the run seed instead (the ± of the table is then over splits).
``semiseg compare experiments/teachers.yaml`` runs it; the stamp written into ``compare.json`` (file and its
sha256, git commit, machine) says which text, code and hardware produced the numbers.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiseg.compare import Entry, yaml_value
from semiseg.config import read_yaml
from semiseg.errors import ConfigError

EXPERIMENT_KEYS = {"name", "description", "seeds", "jobs", "protocol", "methods", "vary_split", "split_seed"}
ENTRY_KEYS = {"label", "method", "options", "overrides"}


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file: everything ``compare`` needs, plus where it came from."""

    name: str
    seeds: tuple[int, ...]
    jobs: int
    protocol: tuple[str, ...]
    entries: tuple[Entry, ...]
    path: Path
    sha256: str
    vary_split: bool = False
    split_seed: int = 0


def as_overrides(mapping: dict[str, Any], where: str) -> tuple[str, ...]:
    """``{train.steps: 600}`` → ``("train.steps=600",)``; values keep their YAML meaning."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of dotted config keys to values")
    return tuple(f"{key}={yaml_value(value)}" for key, value in mapping.items())


def _entry(item: Any, where: str) -> Entry:
    if isinstance(item, str):
        return Entry(item, item)
    if not isinstance(item, dict) or "method" not in item:
        raise ConfigError(f"{where}: expected a method name or a mapping with 'method'")
    unknown = set(item) - ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options must be a mapping of method options")
    return Entry(str(item.get("label", item["method"])), str(item["method"]), dict(options),
                 as_overrides(item.get("overrides") or {}, f"{where}.overrides"))


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every error names the file and the key."""
    file = Path(path)
    raw = read_yaml(file)
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ConfigError(f"{file}: unknown keys {sorted(unknown)}; allowed: {sorted(EXPERIMENT_KEYS)}")
    if not raw.get("methods"):
        raise ConfigError(f"{file}: 'methods' must list at least one method")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{file}: 'seeds' must be a list of integers, got {seeds!r}")
    return Experiment(
        name=str(raw.get("name", file.stem)),
        seeds=tuple(seeds),
        jobs=int(raw.get("jobs", 1)),
        protocol=as_overrides(raw.get("protocol") or {}, f"{file}: protocol"),
        entries=tuple(_entry(item, f"{file}: methods[{i}]") for i, item in enumerate(raw["methods"])),
        path=file,
        sha256=file_sha256(file),
        vary_split=_typed(raw, "vary_split", bool, False, file),
        split_seed=_typed(raw, "split_seed", int, 0, file),
    )


def _typed(raw: dict[str, Any], key: str, kind: type, default: Any, file: Path) -> Any:
    value = raw.get(key, default)
    if type(value) is not kind:  # a bool is not a split seed, a 1 is not a yes
        raise ConfigError(f"{file}: '{key}' must be {'true or false' if kind is bool else 'an integer'}, got {value!r}")
    return value


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit() -> str | None:
    """The commit of the checkout semiseg runs from (``+dirty`` with uncommitted changes), None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine(device: str) -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "device": device}


def stamp(experiment: Experiment | None, device: str) -> dict[str, Any]:
    """What produced a comparison's numbers: the experiment text, the code and the machine."""
    source = None if experiment is None else {"path": experiment.path.as_posix(), "sha256": experiment.sha256}
    return {"experiment": source, "commit": git_commit(), "machine": machine(device)}


PUBLISHED_FILES = ("compare.json", "compare.md")


def publish(comparison: Path, target: Path) -> Path:
    """Copy a finished comparison's tables to ``target`` (``results/<name>/``), where ``docs/results.md`` reads them."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_FILES:
        shutil.copyfile(comparison / name, target / name)
    return target
