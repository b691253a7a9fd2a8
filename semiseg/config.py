"""Typed configuration: defaults, strict keys, YAML files and ``--set a.b=value`` overrides.

Every key has a default, so ``semiseg train`` with no arguments runs the demo. Unknown keys are an
error that names the key and the closest valid one (a typo must never be silently ignored: it would
make a comparison unfair without anybody noticing). The resolved config is saved in every run folder
and inside every checkpoint.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from semiseg.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    source: str = "demo_brain"  # auto | nnunet | folder2d | acdc | la | phantom | demo_brain
    path: str | None = None  # dataset folder (not needed for demo_brain / phantom)
    options: dict[str, Any] = Field(default_factory=dict)  # source-specific keyword arguments
    normalize: Literal["zscore", "minmax", "none"] = "zscore"


class SplitConfig(Strict):
    """How cases are divided. Counts are numbers of cases; floats in (0, 1) are fractions."""

    labelled: int | float | Literal["all"] = 2
    val: int | float = 2
    test: int | float = 6
    unlabelled: int | float | Literal["rest"] = "rest"
    seed: int | None = None  # defaults to the run seed
    file: str | None = None  # reuse a saved split JSON (every method of a comparison should)


class ModelConfig(Strict):
    arch: str = "unet"
    dim: Literal[2, 3] = 2  # 2: train on slices (of 3D volumes); 3: train on 3D patches
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if len(value) < 2 or any(w <= 0 for w in value):
            raise ValueError("needs at least two positive widths, e.g. [16, 32, 64, 128]")
        return value


# Keys of the loader's former "strong" view, which no method asked for; old run folders still hold them.
_REMOVED_AUGMENT_KEYS = ("strong_noise", "strong_gamma")


class AugmentConfig(Strict):
    flip: bool = True  # random flips along the spatial axes of a slice / patch
    intensity: bool = True  # random intensity scale and shift

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_keys(cls, data: Any) -> Any:
        """Accept the removed strong-view keys with a warning, so old ``config.yaml`` files still resume."""
        if not isinstance(data, dict) or not any(k in data for k in _REMOVED_AUGMENT_KEYS):
            return data
        found = [k for k in _REMOVED_AUGMENT_KEYS if k in data]
        keys = ", ".join(f"train.augment.{k}" for k in found)
        warnings.warn(f"{keys}: removed (the loader builds no strong view; methods that need one build it "
                      "themselves, e.g. fixmatch's method.n_ops and method.ops), ignored", FutureWarning, stacklevel=2)
        return {k: v for k, v in data.items() if k not in _REMOVED_AUGMENT_KEYS}


class TrainConfig(Strict):
    method: str = "supervised"
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(8, gt=0)  # labelled samples per step
    unlabelled_batch_size: int = Field(8, ge=0)  # unlabelled samples per step (methods that use them)
    patch_size: list[int] | None = None  # None: 2D whole slices padded; 3D 64³
    foreground_fraction: float = Field(0.5, ge=0.0, le=1.0)  # share of labelled samples centred on foreground
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = 0.9
    schedule: Literal["poly", "cosine", "constant"] = "cosine"
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float | None = 12.0
    loss: Literal["dice", "ce", "dice_ce"] = "dice_ce"
    include_background: bool = False  # multiclass Dice loss over foreground classes only
    amp: Literal["auto", "on", "off"] = "auto"  # auto: on when CUDA is present
    val_every: int = Field(200, gt=0)
    log_every: int = Field(10, gt=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    threads: int | None = None  # torch CPU threads (None: torch's default)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class EvalConfig(Strict):
    overlap: float = Field(0.5, ge=0.0, lt=1.0)  # 3D sliding-window overlap
    sw_batch_size: int = Field(4, gt=0)  # windows (3D) or slices (2D) per forward pass
    save_predictions: bool = True  # write test predictions into the run folder
    save_probabilities: bool = False
    report_cases: int = Field(4, ge=0)  # cases drawn in the overlay figure


class OutputConfig(Strict):
    root: str = "runs"
    name: str | None = None  # run folder name; default <time>_<method>_<source>


class Config(Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    method: dict[str, Any] = Field(default_factory=dict)  # the chosen method's hyper-parameters
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _patch_dims(self) -> Config:
        patch = self.train.patch_size
        if patch is not None and len(patch) != self.model.dim:
            raise ValueError(f"train.patch_size has {len(patch)} entries but model.dim is {self.model.dim}")
        return self


# ----------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _valid_keys(sub, dotted + ".")
    return keys


def _describe(error: dict, root: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _valid_keys(root), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown config key {key!r}{hint}"
    value = error.get("input")
    return f"config key {key!r}: {error['msg']} (got {value!r})" if key else f"config: {error['msg']}"


def validate_config(raw: dict[str, Any]) -> Config:
    """Build a ``Config`` from nested dicts, turning pydantic errors into one readable ``ConfigError``."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, Config) for err in exc.errors()]
        raise ConfigError("; ".join(lines)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=100"`` → (["train", "steps"], 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.steps=100")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return path, parsed


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist; pass a YAML file made from 'semiseg config'")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a mapping of sections (data:, train:, ...)")
    return data


def load_config(file: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML file ← ``--set`` overrides, validated strictly."""
    raw: dict[str, Any] = read_yaml(file) if file else {}
    for text in overrides or []:
        apply_override(raw, *parse_override(text))
    return validate_config(raw)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
