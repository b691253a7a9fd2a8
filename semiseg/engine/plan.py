"""``semiseg train --dry-run``: what a config would train, checked and printed, with nothing written.

The dry run resolves the config, checks the method's options, builds the method and its networks (on the CPU,
seeded as training would) and prints the plan: method, data, split, networks with parameter counts, steps,
batches, patch, optimiser and schedule. The dataset is opened only to describe it: when the data folder is
missing (a recipe on a machine without the download) the plan says so and takes the dataset's channels,
classes and label mode from the file's ``recipe.dataset`` block instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semiseg.config import Config, TrainConfig, load_config, read_yaml
from semiseg.data.case import DatasetSpec
from semiseg.data.splits import load_split, make_split
from semiseg.engine.assemble import dataset_info, method_context, open_configured_dataset
from semiseg.engine.checks import check_method_settings, check_patch
from semiseg.engine.inferer import network_divisor
from semiseg.engine.networks import build_nets
from semiseg.engine.optim import restart_steps
from semiseg.engine.reliability import PlateauGate, make_gate
from semiseg.errors import ConfigError, SemisegError
from semiseg.methods.base import Method, NetSpec
from semiseg.ssl.ema import ema_half_life

_DATASET_KEYS = ("channels", "class_names", "label_mode")


def _protocol_line(method: Method, gated: bool) -> list[str]:
    """The papers' protocol is one joint pass and no gate: say that a run follows it, or name each departure."""
    if not method.uses_unlabelled:
        return []
    departures = {"joint": [], "separate": ["separate passes"],
                  "separate_until_gate": ["separate passes until the gate opens"]}[method.unlabelled_pass_setting]
    departures += ["the reliability gate"] if gated else []
    if not departures:
        return ["protocol:   the papers' (one joint pass, unlabelled terms from step 0)"]
    return [f"protocol:   departs from the papers' (one joint pass, no gate): {', '.join(departures)} "
            "(train.unlabelled_pass=joint and train.unlabelled_gate=off follow them)"]


def recipe_block(file: str | Path | None) -> dict[str, Any]:
    """The ``recipe:`` block of a config file (notes the config loader ignores), or an empty dict."""
    block = read_yaml(file).get("recipe", {}) if file else {}
    if not isinstance(block, dict):
        raise ConfigError(f"{file}: 'recipe' must be a mapping (paper:, dataset:, ...), got {type(block).__name__}")
    return block


def _dataset(cfg: Config, recipe: dict[str, Any], file: str | Path | None) -> tuple[dict[str, Any], str]:
    """The dataset description and a line about the data: opened when present, else from ``recipe.dataset``."""
    try:
        spec = open_configured_dataset(cfg)
    except SemisegError as exc:
        declared = recipe.get("dataset", {})
        missing = [k for k in _DATASET_KEYS if k not in declared]
        if missing:
            raise SemisegError(f"{exc}\n(the dry run needs the data, or a recipe.dataset block in {file} "
                               f"with {', '.join(_DATASET_KEYS)}; missing {', '.join(missing)})") from None
        info = {"name": cfg.data.path or cfg.data.source, "dim": cfg.model.dim, **declared}
        return info, f"MISSING ({exc}); channels/classes from recipe.dataset"
    counts = f"{len(spec.labelled)} labelled, {len(spec.unlabelled)} unlabelled, {len(spec.test_cases)} test cases"
    return dataset_info(spec), f"found: {spec.name}, {counts}; {_split_line(cfg, spec)}"


def _split_line(cfg: Config, spec: DatasetSpec) -> str:
    """The split training would make (or read), in cases: a split the data cannot fill fails here, as it would."""
    split = load_split(cfg.split.file, spec) if cfg.split.file else make_split(
        spec, labelled=cfg.split.labelled, val=cfg.split.val, test=cfg.split.test, unlabelled=cfg.split.unlabelled,
        seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed)
    return "split into " + ", ".join(f"{len(split[k])} {k}" for k in ("labelled", "unlabelled", "val", "test"))


def dry_run(file: str | Path | None, overrides: list[str]) -> str:
    """The plan of ``semiseg train --config FILE --set ...``; raises on every mistake training would hit first."""
    cfg = load_config(file, overrides)
    method_cls = check_method_settings(cfg)
    recipe = recipe_block(file)
    info, data_line = _dataset(cfg, recipe, file)
    torch.manual_seed(cfg.seed)
    method = method_cls(method_context(cfg, info), cfg.method)
    nets = build_nets(method, cfg, method.ctx, torch.device("cpu"))
    divisor = network_divisor(nets.values())
    check_patch(cfg, divisor)
    return format_plan(cfg, method, nets, info, data_line, divisor)


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _net_note(spec: NetSpec, steps: int) -> str:
    """Whether a net is trained and, for an EMA, its resolved decay and half-life (what α means for this run)."""
    if not spec.ema_of:
        return "" if spec.trainable else "  (not trained)"
    decay = spec.decay(steps)
    trained = "" if spec.trainable else ", not trained"
    turns = "" if spec.ema_on is None else ", on its own steps only"
    return f"  (EMA α {decay:.4g}, half-life {ema_half_life(decay):.0f} updates{turns}{trained})"


def _steps_note(method: Method, train: TrainConfig) -> str:
    """Where an ``auto`` length came from, so a user sees why a method trains longer than supervised training."""
    if not train.steps_were_auto:
        return ""
    updates = f"{train.steps * method.updates_per_step} updates, " if method.updates_per_step > 1 else ""
    kind = "learns from unlabelled data" if method.uses_unlabelled else "has no unlabelled term"
    return f"; auto: {updates}the default length for a method that {kind} (train.steps=N sets it)"


def format_plan(cfg: Config, method: Any, nets: dict[str, torch.nn.Module], info: dict[str, Any], data_line: str,
                divisor: int) -> str:
    train, split, specs, gate = cfg.train, cfg.split, method.networks(), make_gate(cfg, method)
    patch = train.patch_size or ("whole slices padded to the divisor (≤ 256)" if cfg.model.dim == 2 else
                                 "64³ (or the volume, if smaller)")
    rows = [f"  {name:<12} {_count(net):>12,} parameters{_net_note(specs[name], train.steps)}"
            for name, net in nets.items()]
    optimiser = f"{train.optimizer}, lr {train.lr:g}, weight decay {train.weight_decay:g}" + (
        f", momentum {train.momentum:g}" if train.optimizer == "sgd" else "")
    lines = [
        f"method:     {method.name} — {type(method).summary}",
        f"options:    {method.cfg.model_dump()}",
        f"data:       {cfg.data.source} {cfg.data.path or ''} — {data_line}",
        f"dataset:    {info['channels']} channel(s), {info['label_mode']}, classes {info['class_names']}",
        f"split:      labelled {split.labelled_budget()}, unlabelled {split.unlabelled}, val {split.val}, "
        f"test {split.test}"
        + (f" (from {split.file})" if split.file else ""),
        f"model:      {cfg.model.dim}D {cfg.model.arch} widths {cfg.model.widths}, norm {cfg.model.norm}, "
        f"divisor {divisor}",
        "networks:", *rows,
        f"  {'total':<12} {sum(_count(n) for n in nets.values()):>12,} parameters",
        f"steps:      {train.steps} (validation every {train.val_every}), seed {cfg.seed}{_steps_note(method, train)}",
        f"batch:      {train.batch_size} labelled + "
        + (f"{train.unlabelled_batch_size} unlabelled" if method.uses_unlabelled else "no unlabelled")
        + ({"joint": " (one joint pass)", "separate": " (separate passes)",
            "separate_until_gate": " (separate passes until the gate opens, then one joint pass)"}
           [method.unlabelled_pass_setting]
           if method.uses_unlabelled else ""),
        f"patch:      {patch}",
        f"optimiser:  {optimiser}",
        f"schedule:   {train.schedule} after {train.warmup_steps} warm-up steps{_restarts_note(method, train)}; "
        f"loss {train.loss}; amp {train.amp}",
        *([f"gate:       unlabelled terms from a labelled-batch Dice of {train.unlabelled_gate_threshold:g}"
           + (f" or once it stops improving ({train.unlabelled_gate_patience} measurements without a new best)"
              if isinstance(gate, PlateauGate) else "")
           + f", then a ramp over {train.unlabelled_gate_ramp:g} of the run"]
          if gate is not None else []),
        *_protocol_line(method, gated=gate is not None),
        f"run folder: {Path(cfg.output.root) / (cfg.output.name or '<time>_<method>_<source>')} (not written)",
    ]
    return "\n".join(lines)


def _restarts_note(method: Method, train: TrainConfig) -> str:
    restarts = restart_steps(method.schedule_restarts(train.steps), train.steps)
    if not restarts:
        return ""
    return f", started again at step{'s' if len(restarts) > 1 else ''} {', '.join(map(str, restarts))}"
