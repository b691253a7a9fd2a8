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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from semiseg.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    source: str = Field("demo_brain", description="auto | nnunet | folder2d | acdc | la | phantom | demo_brain | "
                        "heart_sites | liver_lesions (development data, docs/data.md)")
    path: str | None = Field(None, description="dataset folder (not needed for demo_brain / phantom)")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific keyword arguments")
    normalize: Literal["zscore", "minmax", "none"] = Field("zscore",
        description="intensity normalisation per case and channel")
    cache: str = Field("auto", description="prepared cases as memory-mapped .npy, so RAM does not grow with the "
                       "dataset: auto (~/.cache/semiseg/cases, or $SEMISEG_CACHE/cases) | off (in memory) | a folder")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_switch(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` (``--set data.cache=off``) as False, and ``on`` as True (meaning auto)."""
        return {True: "auto", False: "off"}.get(value, value) if isinstance(value, bool) else value


class SplitConfig(Strict):
    """How cases are divided. Counts are numbers of cases; floats in (0, 1) are fractions. The ``auto`` sizes
    keep 6 test and 2 validation cases on datasets of 20 labelled cases or more (the brain demo's split) and
    shrink on smaller ones, so that a dataset of a few cases (``data.source=phantom``) trains with the defaults."""

    labelled: int | float | Literal["all"] = Field(2, description="labelled training cases; all: full supervision")
    val: int | float | Literal["auto"] = Field("auto", description="validation cases (best checkpoint selection); "
                                               "auto: 2, or a tenth of the labelled cases (at least 1) if fewer")
    test: int | float | Literal["auto"] = Field("auto", description="test cases, drawn first so they do not depend "
                                                "on the budget; auto: 6, or 30% of the labelled cases (at least 1) "
                                                "if fewer")
    unlabelled: int | float | Literal["rest"] = Field("rest",
        description="unlabelled training cases; rest: every remaining case")
    labelled_slices: int | None = Field(None, gt=0,
        description="2D only: train on the labels of this many slices of each labelled case, evenly spaced over "
                    "its foreground slices (the RPG paper's budget of a few labelled images); None: every slice")
    seed: int | None = Field(None, ge=0, description="defaults to the run seed; a non-negative integer")
    file: str | None = Field(None, description="reuse a saved split JSON (every method of a comparison should)")

    def labelled_budget(self) -> str:
        """The labelled budget as a reader states it: cases, and slices per case when only some are labelled."""
        slices = "" if self.labelled_slices is None else f" ({self.labelled_slices} slices each)"
        return f"{self.labelled}{slices}"


class ModelConfig(Strict):
    arch: str = Field("unet", description="network architecture")
    dim: Literal[2, 3] = Field(2, description="2: train on slices (of 3D volumes); 3: train on 3D patches")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128],
        description="channels per U-Net level, finest first")
    norm: Literal["batch", "instance", "group", "none"] = Field("batch", description="normalisation layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in the U-Net blocks")
    init_from: str | None = Field(None, description="run folder whose best weights start every net "
                                  "(fine-tuning after new labels; train --init-from)")

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if len(value) < 2 or any(w <= 0 for w in value):
            raise ValueError("needs at least two positive widths, e.g. [16, 32, 64, 128]")
        return value


# Keys of the loader's former "strong" view, which no method asked for; old run folders still hold them.
_REMOVED_AUGMENT_KEYS = ("strong_noise", "strong_gamma")


class AugmentConfig(Strict):
    preset: Literal["basic", "nnunet", "nnunet_intensity"] = Field("basic",
        description="basic: the switches below; nnunet: nnU-Net v2's augmentation of the labelled batch of every "
                    "method (rotation and zoom at p 0.2 where off below, mirroring, noise, blur, brightness, "
                    "contrast, low resolution, gamma; docs/data.md); nnunet_intensity: the same without the "
                    "rotation and zoom; the unlabelled batch keeps basic")
    remap: float = Field(0.0, ge=0.0, le=1.0,
        description="probability of a random intensity remap of a labelled sample (GIN-IPA: a random shallow "
                    "network's contrast, blended by a smooth mask; another scanner's look, docs/data.md); the "
                    "unlabelled batch is never remapped")
    flip: bool = Field(True, description="random flips along the spatial axes of a slice / patch")
    intensity: bool = Field(True, description="random intensity scale and shift (nnunet: its own chain instead)")
    rotate: float = Field(0.0, ge=0.0, le=1.0,
        description="probability of a random rotation of a sample (nnU-Net: 0.2; off by default, see data.md)")
    rotate_degrees: float | None = Field(None, ge=0.0, le=180.0,
        description="largest rotation about each axis, degrees (null: 180 in 2D, 30 in 3D, as nnU-Net)")
    scale: float = Field(0.0, ge=0.0, le=1.0,
        description="probability of a random zoom of a sample (nnU-Net: 0.2; off by default, see data.md)")
    scale_range: tuple[float, float] = Field((0.7, 1.4), description="zoom factors drawn from; > 1 enlarges anatomy")
    elastic: float = Field(0.0, ge=0.0, le=1.0, description="probability of a random elastic deformation")
    elastic_magnitude: tuple[float, float] = Field((0.0, 8.0),
        description="largest control-point displacement (voxels) drawn from")
    elastic_spacing: int = Field(24, gt=0, description="elastic control-point spacing, voxels")

    @field_validator("scale_range", "elastic_magnitude")
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        zoom = info.field_name == "scale_range"
        if low > high or low < 0 or (zoom and low == 0):
            raise ValueError(f"must be [low, high] with {'0 < low' if zoom else '0 <= low'} <= high, "
                             f"e.g. {[0.7, 1.4] if zoom else [0.0, 8.0]}")
        return value

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
    _steps_auto: bool = PrivateAttr(False)  # set by Config when train.steps=auto was resolved

    method: str = Field("supervised", description="registered method name (semiseg methods lists them)")
    steps: int | Literal["auto"] = Field(
        "auto", description="optimiser steps of the run; auto: the method's default_steps, 1000 for supervised "
        "training and 2000 updates for a method that learns from unlabelled data (UCMT: 1000 steps of two), "
        "chosen on validation (docs/protocol.md); compare gives every method the longest")
    batch_size: int = Field(8, gt=0, description="labelled samples per step")
    unlabelled_batch_size: int = Field(8, ge=0, description="unlabelled samples per step (methods that use them)")
    patch_size: list[int] | None = Field(None, description="None: 2D whole slices padded; 3D 64³")
    foreground_fraction: float = Field(0.5, ge=0.0, le=1.0,
        description="share of labelled samples centred on foreground")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adamw",
        description="one optimiser over every trainable network")
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="optimiser weight decay")
    momentum: float = Field(0.9, description="SGD momentum")
    schedule: Literal["poly", "cosine", "constant"] = Field("cosine",
        description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(50, ge=0, description="linear learning-rate warm-up steps; 50 at any run length "
                              "(on 100-step runs it beat 5 steps, docs/protocol.md)")
    grad_clip: float | None = Field(12.0, description="gradient-norm clip (None: no clipping)")
    loss: Literal["dice", "ce", "dice_ce"] = Field("dice_ce", description="supervised loss shared by every method")
    include_background: bool = Field(False, description="multiclass Dice loss over foreground classes only")
    amp: Literal["auto", "on", "off"] = Field("auto", description="auto: on when CUDA is present")
    amp_dtype: Literal["auto", "bf16", "fp16"] = Field("auto",
        description="AMP precision; auto: bf16 where the device supports it, else fp16 (with a loss scaler)")
    channels_last: Literal["auto", "on", "off"] = Field("auto",
        description="channels-last nets and batches; auto: on for 2D on CUDA under AMP")
    compile: bool = Field(False, description="torch.compile the networks (checkpoints stay plain state_dicts)")
    val_every: int = Field(200, gt=0, description="steps between validations (and best/last checkpoints)")
    log_every: int = Field(10, gt=0, description="steps between log.csv rows")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:1 ...")
    threads: int | None = Field(None, description="torch CPU threads, at least 1 (None: torch's default); "
                                "predict and evaluate use the run's value too")
    tensorboard: Literal["auto", "on", "off"] = Field("auto",
        description="TensorBoard events in <run>/tensorboard (auto: when installed); log.csv stays the record")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="data augmentation of training samples")
    sync_batchnorm: bool = Field(False, description="under torchrun with several processes: BatchNorm over the global "
                                 "batch (SyncBatchNorm, CUDA only)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes drawing the batches ahead of the step "
                         "(0: in the training process); the batches are the same for any number")
    monitor_unlabelled: bool = Field(True, description="when unlabelled training cases have labels on disk, log "
                                     "what the method teaches against them (the method never sees them)")
    unlabelled_pass: Literal["auto", "joint", "separate", "separate_until_gate"] = Field("auto",
        description="separate: labelled and unlabelled images pass the network one part at a time, each with its "
                    "own BatchNorm statistics; joint: as one batch (the papers' code); separate_until_gate: "
                    "separate while the reliability gate keeps the unlabelled terms off, joint once it has opened; "
                    "auto: the method's own default_unlabelled_pass (each listed in docs/protocol.md, 'Decisions "
                    "and the data that took them'). Set here, it holds for every method; method.unlabelled_pass "
                    "overrides it for one method")
    unlabelled_gate: Literal["auto", "off", "labelled_dice", "labelled_dice_plateau"] = Field("auto",
        description="labelled_dice: unlabelled loss terms stay off until the predicting network's Dice on the "
                    "labelled batch reaches unlabelled_gate_threshold; labelled_dice_plateau: ... or, sooner, "
                    "until that Dice stops improving on its own best (unlabelled_gate_patience), a rule relative to "
                    "what the run measures; off: from step 0 (the papers' schedule); "
                    "auto: the method's own default_unlabelled_gate (each listed in docs/protocol.md, 'Decisions "
                    "and the data that took them')")
    unlabelled_gate_threshold: float = Field(0.8, ge=0.0, le=1.0,
        description="smoothed labelled-batch Dice at which the unlabelled terms switch on")
    unlabelled_gate_smoothing: float = Field(0.5, ge=0.0, lt=1.0,
        description="weight of the previous estimate when the gate folds in a new labelled-batch Dice (one every "
                    "5 steps while closed): 0 opens on a single batch, 0.8 averages about the last 25 steps")
    unlabelled_gate_patience: int = Field(4, ge=1,
        description="labelled_dice_plateau: measurements (one every 5 steps) without a new best smoothed "
                    "labelled-batch Dice after which the gate opens")
    unlabelled_gate_ramp: float = Field(0.1, ge=0.0, le=1.0,
        description="share of the run over which the unlabelled terms rise to full weight once switched on")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_preset(cls, value: Any) -> Any:
        """``--set train.augment=nnunet`` is short for ``train.augment.preset=nnunet``."""
        return {"preset": value} if isinstance(value, str) else value

    @property
    def steps_were_auto(self) -> bool:
        """Whether ``steps`` is the method's default (``train.steps=auto``) rather than a number someone set."""
        return self._steps_auto

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("expected a positive whole number of steps, or auto (the method's default length)")

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int | None) -> int | None:
        """0 and negative counts are rejected rather than ignored: torch would fail on them, or run its default."""
        if value is not None and value < 1:
            raise ValueError("must be a positive number of CPU threads, or null for torch's default")
        return value

    @field_validator("amp", "tensorboard", "channels_last", "unlabelled_gate", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` (``--set train.tensorboard=on``) as a boolean; mean the word."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class EvalConfig(Strict):
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="3D sliding-window overlap")
    sw_batch_size: int = Field(4, gt=0, description="windows (3D) or slices (2D) per forward pass")
    save_predictions: bool = Field(True, description="write test predictions into the run folder")
    save_probabilities: bool = Field(False, description="also write test probability maps")
    report_cases: int = Field(4, ge=0, description="cases drawn in the overlay figure")


class OutputConfig(Strict):
    root: str = Field("runs", description="folder that holds run folders")
    name: str | None = Field(None, description="run folder name; default <time>_<method>_<source>")


class Config(Strict):
    seed: int = Field(0, ge=0, description="run seed: initialisation, sampling and (by default) the split; a "
                      "non-negative integer (numpy's generators take no negative seed)")
    data: DataConfig = Field(default_factory=DataConfig, description="where the cases come from")
    split: SplitConfig = Field(default_factory=SplitConfig, description="how cases are divided")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    method: dict[str, Any] = Field(default_factory=dict, description="the chosen method's hyper-parameters")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="test evaluation and prediction")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where run folders go")

    @model_validator(mode="after")
    def _resolve_auto_steps(self) -> Config:
        """``train.steps=auto`` becomes the method's ``default_steps`` here, so every validated config (and every
        saved ``config.yaml``) holds a number; ``train.steps_were_auto`` remembers it for dry runs and compare.

        The method is looked up by name (importing its module: torch), the one place the config layer asks a
        method something, because the length a run needs depends on the method.
        """
        if self.train.steps == "auto":
            from semiseg.methods.registry import get_method

            try:
                self.train.steps = get_method(self.train.method).default_steps()
            except ConfigError as exc:  # an unknown method: pydantic reports ValueErrors with the key
                raise ValueError(str(exc)) from None
            self.train._steps_auto = True
        return self

    @model_validator(mode="after")
    def _patch_dims(self) -> Config:
        patch = self.train.patch_size
        if patch is not None and len(patch) != self.model.dim:
            raise ValueError(f"train.patch_size has {len(patch)} entries but model.dim is {self.model.dim}")
        if self.split.labelled_slices is not None and self.model.dim != 2:
            raise ValueError("split.labelled_slices keeps labelled 2D slices, but model.dim is 3; set model.dim=2 "
                             "or leave split.labelled_slices unset")
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
    value, msg = error.get("input"), error["msg"].removeprefix("Value error, ")
    return f"config key {key!r}: {msg} (got {value!r})" if key else f"config: {msg}"


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
    """Defaults ← YAML file ← ``--set`` overrides, validated strictly (a top-level ``recipe:`` block is notes)."""
    raw: dict[str, Any] = read_yaml(file) if file else {}
    raw.pop("recipe", None)  # a recipe's notes (paper, reported numbers, data layout) are not configuration
    for text in overrides or []:
        apply_override(raw, *parse_override(text))
    return validate_config(raw)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
