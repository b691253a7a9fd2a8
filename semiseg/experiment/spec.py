"""What a comparison is: its entries (label, method, options, overrides), protocol, seeds and evaluation.

An experiment file (``experiments/<name>.yaml``) writes a comparison down once::

    name: teachers
    seeds: [0, 1, 2]
    jobs: 2
    protocol: {split.labelled: 1, train.steps: 600, train.threads: 1}
    methods:
      - supervised
      - {label: ucmt_code, method: ucmt, options: {umix: code}, overrides: {train.steps: 300}}

The split is held fixed across seeds (``split_seed``, default 0) unless the protocol sets ``split.seed``;
``vary_split: true`` lets it follow the run seed instead (the ± of the table is then over splits).
``evaluation`` names the evaluation the table reports: none (default) is the one made at the end of training, in
the run folder itself; a name reads ``<run>/evaluations/<name>/`` (a re-evaluation, e.g. with TTA). Keys are
checked as strictly as the config's: an unknown key names the closest valid one.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from semiseg.config import read_yaml
from semiseg.errors import ConfigError
from semiseg.experiment.provenance import file_sha256

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

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "options": self.options,
                "overrides": list(self.overrides)}


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


def check_seeds(seeds: Sequence[int], where: str = "--seeds") -> list[int]:
    """Seeds seed numpy's generators, which take non-negative integers only; one or more are needed."""
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ConfigError(f"{where}: seeds are non-negative integers, got {', '.join(map(str, negative))}")
    if not seeds:
        raise ConfigError(f"{where}: give at least one seed, e.g. 0,1,2")
    return list(seeds)


def check_evaluation(name: str | None, where: str = "--evaluation") -> str | None:
    """An evaluation is a folder name under ``<run>/evaluations/``, never a path that leaves it."""
    if name is not None and (not name or "/" in name or "\\" in name or name.startswith(".")):
        raise ConfigError(f"{where}: {name!r} is not a folder name under <run>/evaluations/ (e.g. tta)")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EntrySpec(_Strict):
    """One entry of ``methods:`` written as a mapping."""

    method: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)

    def entry(self) -> Entry:
        return Entry(self.label or self.method, self.method, dict(self.options),
                     tuple(f"{k}={yaml_value(v)}" for k, v in self.overrides.items()))


class ExperimentSpec(_Strict):
    """The schema of an experiment file."""

    name: str | None = None
    description: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    jobs: int = Field(1, ge=1)
    protocol: dict[str, Any] = Field(default_factory=dict)
    methods: list[EntrySpec] = Field(min_length=1)
    vary_split: bool = False
    split_seed: int = Field(0, ge=0)
    evaluation: str | None = None

    @field_validator("methods", mode="before")
    @classmethod
    def _names_are_entries(cls, value: Any) -> Any:
        """``- supervised`` is short for ``- {method: supervised}``."""
        return [{"method": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        try:
            return check_seeds(value, "seeds")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("seeds: ")) from None

    @field_validator("evaluation")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        try:
            return check_evaluation(value, "evaluation")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("evaluation: ")) from None


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
    evaluation: str | None = None


def _describe(error: Any) -> str:
    """One pydantic error as ``key: problem``, with the closest valid key for a misspelt one."""
    loc = [str(p) for p in error["loc"]]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
    if error["type"] == "extra_forbidden":
        model = EntrySpec if len(loc) > 1 and loc[0] == "methods" else ExperimentSpec
        close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.5)
        return f"unknown key {where!r}" + (f"; did you mean {close[0]!r}?" if close else "") + \
            f" (allowed: {', '.join(model.model_fields)})"
    if error["type"] == "missing":
        return f"{where!r} is required" + (" (list at least one method)" if where == "methods" else "")
    return f"{where!r}: {error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})"


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every error names the file and the key."""
    file = Path(path)
    raw = read_yaml(file)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{file}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    return Experiment(
        name=spec.name or file.stem, seeds=tuple(spec.seeds), jobs=spec.jobs,
        protocol=tuple(f"{key}={yaml_value(value)}" for key, value in spec.protocol.items()),
        entries=tuple(m.entry() for m in spec.methods), path=file, sha256=file_sha256(file),
        vary_split=spec.vary_split, split_seed=spec.split_seed, evaluation=spec.evaluation)
