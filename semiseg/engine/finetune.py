"""``train --init-from RUN``: start a run from another run's trained weights (the active-learning loop's
"train again" after new labels).

Each of the new method's networks takes the source run's network of the same name when there is one;
the others take the source's predicting network (a supervised run's ``model`` starts both nets of CPS, or a
Mean Teacher's student and teacher). Nets a method builds itself (SegPL-VI's threshold head) are only
matched by name. Shapes must agree: a different ``model.widths``, channel count or class count is a
``ConfigError`` naming the net and the first parameter that differs. Optimiser, schedule and method state
start fresh; only weights travel.
"""

from __future__ import annotations

from pathlib import Path

import torch

from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.methods.base import Method, Nets


def source_prediction_net(method_name: str, net_names: list[str], method_options: dict | None = None) -> str:
    """The net a run of ``method_name`` predicts with: its ``method.predict_with`` where it has one, else
    ``model``, a teacher, the first co-training net or ensemble member."""
    chosen = (method_options or {}).get("predict_with")
    if chosen in net_names:
        return chosen
    for candidate in ("model", "teacher", "net1", "member0", "student1"):
        if candidate in net_names:
            return candidate
    raise ConfigError(f"cannot tell which of the {method_name!r} run's nets {net_names} predicts")


def _mismatch(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> str | None:
    """The first parameter whose presence or shape differs, described; None when the state dicts fit."""
    for key in sorted(set(target) | set(source)):
        if key not in source or key not in target:
            return f"{key} is only in the {'new' if key in target else 'source'} net"
        if target[key].shape != source[key].shape:
            return f"{key} has shape {tuple(source[key].shape)} in the source, {tuple(target[key].shape)} here"
    return None


def init_from_run(nets: Nets, method: Method, run_dir: str | Path, checkpoint: str = "best") -> dict[str, str]:
    """Load ``run_dir``'s ``checkpoint`` weights into ``nets`` in place; returns {new net: source net}."""
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(f"model.init_from={str(run_dir)!r}: {path} does not exist; give a trained run folder")
    state = load_checkpoint(path)
    sources = state["nets"]
    fallback = source_prediction_net(state["method"], list(sources), state["config"].get("method"))
    specs = method.networks()
    mapping = {}
    for name, net in nets.items():
        source = name if name in sources else None if specs[name].builder is not None else fallback
        if source is None:
            continue
        problem = _mismatch(net.state_dict(), sources[source])
        if problem:
            raise ConfigError(
                f"model.init_from={str(run_dir)!r}: net {name!r} of method {method.name!r} does not match net "
                f"{source!r} of the {state['method']!r} run ({problem}); use the source run's model.widths and data")
        net.load_state_dict(sources[source])
        mapping[name] = source
    if not mapping:
        raise ConfigError(f"model.init_from={str(run_dir)!r}: none of method {method.name!r}'s nets {list(nets)} "
                          f"matches the run's nets {list(sources)}")
    return mapping
