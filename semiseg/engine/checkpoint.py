"""Self-describing checkpoints, written atomically.

A checkpoint holds everything needed to predict (method, resolved config, dataset description, nets) and
everything needed to continue exactly (optimiser, scheduler, scaler, step, method state, RNG states).
It is written to a temporary file in the same folder and renamed, so a crash mid-write never leaves a
truncated ``last.pt`` that ``--resume`` would trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semiseg.data.io import atomic_write
from semiseg.errors import SemisegError

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise SemisegError(f"checkpoint {str(path)!r} does not exist; is this a finished or resumable run folder?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise SemisegError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise SemisegError(f"{str(path)!r} is not a semiseg checkpoint of format {FORMAT_VERSION}")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
