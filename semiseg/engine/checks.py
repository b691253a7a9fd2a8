"""Config checks and warnings of a run, all before its folder is written or its first step runs.

What needs no data (the method's options, its unlabelled batch, TensorBoard) fails a run and a dry run before
the dataset is opened; what needs the dataset or the networks (dimensions, the patch) before the run folder
exists; what is legal but probably unintended (an EMA longer than the run, a warm-up as long as the run, the
source's own findings) is a ``warning:`` line on stderr.
"""

from __future__ import annotations

import sys

import numpy as np

from semiseg.config import Config, TrainConfig
from semiseg.data.case import DatasetSpec
from semiseg.engine.loop import check_unlabelled_batch
from semiseg.engine.tensorboard import check_tensorboard
from semiseg.errors import ConfigError
from semiseg.methods import Method, get_method, parse_method_options
from semiseg.ssl.ema import decay_for_horizon, ema_half_life, ema_horizon

_SHORTEST_EMA_HORIZON = 2  # updates: an "average" over fewer is the student itself (decay 0)


def print_dataset_warnings(spec: DatasetSpec) -> None:
    """What the source found legal but probably unintended (e.g. images without a label), before training."""
    for text in spec.warnings:
        print(f"warning: {text}", file=sys.stderr)


def check_method_settings(cfg: Config) -> type[Method]:
    """The registered method, once its options, its unlabelled batch and the logging extras are valid.

    These checks need no data, so a run (and a dry run) fails on them before touching the dataset.
    """
    method_cls = get_method(cfg.train.method)
    parse_method_options(method_cls, cfg.method)
    check_unlabelled_batch(method_cls, cfg.train.unlabelled_batch_size)
    check_tensorboard(cfg.train.tensorboard)
    return method_cls


def print_ema_warnings(method: Method, steps: int) -> None:
    """Say so when a teacher's EMA looks back over more updates than the run has (it would stay near its init)."""
    for name, spec in method.networks().items():
        decay = spec.decay(steps)
        horizon = ema_horizon(decay)
        if spec.ema_of and horizon > steps:
            print(f"warning: net {name!r} of {method.name!r} is an EMA with decay {decay:.4g}, which averages "
                  f"over ~{horizon:.0f} updates (half-life {ema_half_life(decay):.0f}), but train.steps is "
                  f"{steps}: it keeps much of the early, untrained weights; "
                  f"{_shorter_ema(steps, spec.decay_option)}",
                  file=sys.stderr)


def _shorter_ema(steps: int, option: str = "ema_decay") -> str:
    """The way out: an average over a tenth of the run, or, when a tenth is under two updates, no average at all.
    ``option`` is the method option that sets the memory (a mean teacher's ``ema_decay``, which ``ema_half_life``
    can override; a predicting weight average's half-life ``predict_average``)."""
    tenth = steps / 10
    if tenth < _SHORTEST_EMA_HORIZON:
        none = ("set method.ema_decay=0 (the teacher then copies its student at every update)"
                if option == "ema_decay" else f"leave method.{option} unset (the trained network then predicts)")
        return (f"train longer (an average over a tenth of the run needs {10 * _SHORTEST_EMA_HORIZON} steps or "
                f"more) or {none}")
    if option != "ema_decay":
        return f"train longer or give method.{option} as a share of the run (e.g. 0.05, a twentieth of it)"
    return ("train longer, set method.ema_half_life (e.g. 0.05, a twentieth of the run) or lower method.ema_decay "
            f"(e.g. {decay_for_horizon(tenth):.3g}, an average over ~{tenth:.0f} updates, a tenth of the run)")


def print_schedule_warnings(train: TrainConfig) -> None:
    """Say so when the learning-rate warm-up is as long as the run: the rate never reaches ``train.lr``.

    A warm-up of half the run is not warned about: on the short protocol (100 steps) the 50-step warm-up beat a
    5-step one for supervised training and every method measured (``experiments/short_warmup.yaml``).
    """
    if train.warmup_steps >= train.steps:
        print(f"warning: train.warmup_steps={train.warmup_steps} is train.steps={train.steps} or more: the learning "
              f"rate never reaches train.lr={train.lr:g}; lower train.warmup_steps (e.g. {max(1, train.steps // 2)}, "
              "half the run, which measured better than a tenth on 100-step runs) or train longer", file=sys.stderr)


def check_dims(cfg: Config, spec: DatasetSpec) -> None:
    if cfg.model.dim == 3 and spec.dim == 2:
        raise ConfigError(f"model.dim=3 but dataset {spec.name!r} holds 2D images; use model.dim=2")


def check_patch(cfg: Config, divisor: int) -> None:
    if cfg.train.patch_size and any(p % divisor for p in cfg.train.patch_size):
        raise ConfigError(
            f"train.patch_size={cfg.train.patch_size} must be multiples of {divisor} "
            f"(the network's divisor, 2 ** (len(model.widths) - 1) for model.widths={cfg.model.widths})"
        )
    _check_patch_minimum(cfg, divisor)


def _check_patch_minimum(cfg: Config, divisor: int) -> None:
    """Every size at least the divisor, and a normalised bottleneck of more than one voxel.

    The deepest level sees ``patch / divisor`` voxels per axis; batch, instance and group norm cannot
    normalise a single voxel in training (torch fails at the first step), so the network needs two there.
    """
    patch = cfg.train.patch_size
    if not patch:
        return
    bottleneck = int(np.prod([p // divisor for p in patch]))
    needed = 1 if cfg.model.norm == "none" else 2
    if min(patch) >= divisor and bottleneck >= needed:
        return
    smallest = [divisor] * cfg.model.dim if needed == 1 else [divisor] * (cfg.model.dim - 1) + [2 * divisor]
    raise ConfigError(
        f"train.patch_size={patch} is too small for model.widths={cfg.model.widths} ({len(cfg.model.widths)} levels, "
        f"divisor {divisor}): the smallest valid patch is {smallest} (each size a multiple of {divisor}"
        + ("" if needed == 1 else f", more than one voxel at the deepest level for model.norm={cfg.model.norm}")
        + "); raise train.patch_size or use fewer model.widths"
    )
