"""``train --init-from RUN``: start a run from another run's trained weights (the active-learning loop's
"train again" after new labels).

Each of the new method's networks takes the source run's network of the same name when there is one;
the others take the source's predicting network (a supervised run's ``model`` starts both nets of CPS, or a
Mean Teacher's student and teacher). Nets a method builds itself (SegPL-VI's threshold head) are only
matched by name. Shapes must agree: a different ``model.widths``, channel count or class count is a
``ConfigError`` naming the net and the first parameter that differs. Optimiser, schedule and method state
start fresh; only weights travel. The run prints which net came from where (and which matched nothing),
saves it as ``init_from.json`` in the run folder, and ``report.md`` names it with the run's ``split.file``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from semiseg.config import validate_config
from semiseg.engine.assemble import method_context
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.methods import get_method
from semiseg.methods.base import Method, Nets


def source_prediction_net(method_name: str, net_names: list[str], method_options: dict | None = None) -> str:
    """The net a run of ``method_name`` predicts with: its ``method.predict_with`` where it has one, else
    ``model``, a teacher, the first co-training net or ensemble member."""
    chosen = (method_options or {}).get("predict_with")
    chosen = {"students": "student1"}.get(chosen, chosen)  # CMT / UCMT's students' mean: start from student 1
    if chosen in net_names:
        return chosen
    for candidate in ("model", "teacher", "net1", "member0", "student1"):
        if candidate in net_names:
            return candidate
    raise ConfigError(f"cannot tell which of the {method_name!r} run's nets {net_names} predicts")


def _source_options(state: dict[str, Any]) -> dict[str, Any]:
    """The source run's method options as its method resolves them from the checkpoint: CMT / UCMT record which
    networks predicted during training, and their ``load_state_dict`` is the one place that reads the record."""
    cfg = validate_config(state["config"])
    method = get_method(state["method"])(method_context(cfg, state["dataset"]), cfg.method)
    method.load_state_dict(state.get("method_state") or {})
    return method.cfg.model_dump()


def _mismatch(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> str | None:
    """The first parameter whose presence or shape differs, described; None when the state dicts fit."""
    for key in sorted(set(target) | set(source)):
        if key not in source or key not in target:
            return f"{key} is only in the {'new' if key in target else 'source'} net"
        if target[key].shape != source[key].shape:
            return f"{key} has shape {tuple(source[key].shape)} in the source, {tuple(target[key].shape)} here"
    return None


# model.* keys that shape a network's weights, in the order a user would check them
_SHAPING_KEYS = ("dim", "arch", "widths", "norm")


def _shaping_hint(source_model: dict[str, Any], model: dict[str, Any] | None) -> str:
    """What to change so the nets fit: the ``model.*`` keys whose values differ, else the data (channels,
    classes) or the source run's settings in general."""
    if model is None:
        return "use the source run's model settings and data"
    differ = [f"model.{k}={source_model[k]!r} in the source, {model[k]!r} here" for k in _SHAPING_KEYS
              if k in source_model and k in model and source_model[k] != model[k]]
    if differ:
        return "; ".join(differ) + ": use the source run's values"
    return "the model settings agree, so the data differs (image channels or classes): use the source run's data"


@dataclass(frozen=True)
class InitRecord:
    """Where a run's starting weights came from: what the console prints and ``report.md`` records."""

    source: str  # the source run folder, absolute
    checkpoint: str
    source_method: str
    nets: dict[str, str]  # new net -> source net it was loaded from
    fresh: list[str]  # new nets no source net matched (a net the method builds itself): initialised as usual
    unused: list[str]  # source nets nothing was loaded from

    def describe(self) -> str:
        loaded = ", ".join(f"{new} <- {src}" for new, src in self.nets.items())
        text = f"initialised from {self.source} ({self.checkpoint}.pt of a {self.source_method!r} run): {loaded}"
        if self.fresh:
            text += f"; not matched, initialised fresh: {', '.join(self.fresh)}"
        if self.unused:
            text += f"; source nets not used: {', '.join(self.unused)}"
        return text

    def save(self, run_dir: Path) -> None:
        (run_dir / INIT_RECORD).write_text(json.dumps(asdict(self), indent=2))


INIT_RECORD = "init_from.json"


def provenance(run_dir: Path, split_file: str | None) -> dict[str, str]:
    """Report lines naming where a run's weights (``init_from.json``) and split (``split.file``) came from."""
    lines = {}
    record = run_dir / INIT_RECORD
    if record.is_file():
        lines["initialised from"] = InitRecord(**json.loads(record.read_text())).describe().removeprefix(
            "initialised from ")
    if split_file:
        lines["split file"] = split_file  # as the config gives it: resolving here would use today's folder
    return lines


def init_from_run(nets: Nets, method: Method, run_dir: str | Path, checkpoint: str = "best",
                  model: dict[str, Any] | None = None) -> InitRecord:
    """Load ``run_dir``'s ``checkpoint`` weights into ``nets`` in place; ``model`` (this run's ``model.*``
    settings) lets a mismatch name the key that differs. Returns what was loaded from where."""
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(f"model.init_from={str(run_dir)!r}: {path} does not exist; give a trained run folder")
    state = load_checkpoint(path)
    sources = state["nets"]
    fallback = source_prediction_net(state["method"], list(sources), _source_options(state))
    specs = method.networks()
    mapping = {}
    for name, net in nets.items():
        source = name if name in sources else None if specs[name].builder is not None else fallback
        if source is None:
            continue
        problem = _mismatch(net.state_dict(), sources[source])
        if problem:
            hint = _shaping_hint(state["config"].get("model", {}), model)
            raise ConfigError(
                f"model.init_from={str(run_dir)!r}: net {name!r} of method {method.name!r} does not match net "
                f"{source!r} of the {state['method']!r} run ({problem}); {hint}")
        net.load_state_dict(sources[source])
        mapping[name] = source
    if not mapping:
        raise ConfigError(f"model.init_from={str(run_dir)!r}: none of method {method.name!r}'s nets {list(nets)} "
                          f"matches the run's nets {list(sources)}")
    return InitRecord(str(Path(run_dir).resolve()), checkpoint, state["method"], mapping,
                      [n for n in nets if n not in mapping], [s for s in sources if s not in mapping.values()])
