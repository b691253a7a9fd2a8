"""The per-run executor: reuse, resume or train one run of the grid. Every backend and ``train --continue`` call it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from semiseg.config import Config
from semiseg.errors import ConfigError
from semiseg.experiment.plan import finished, run_folder


def train_or_resume(cfg: Config, progress: bool,
                    on_start: Callable[[Path], None] | None = None) -> tuple[str, float]:
    """Reuse, resume or train one run; returns what was done and the seconds it took."""
    from semiseg import api

    if cfg.output.name is None:
        raise ConfigError("continuing a run needs a fixed run folder: give --output or --set output.name")
    run_dir, start = run_folder(cfg), time.perf_counter()
    if finished(cfg):
        return "reused", 0.0
    if (run_dir / "checkpoints" / "last.pt").is_file():
        api.resume(run_dir, progress=progress, on_start=on_start)
        return "resumed", time.perf_counter() - start
    api.train(cfg, overwrite=True, progress=progress, on_start=on_start)
    return "trained", time.perf_counter() - start


def done_message(label: str, seed: int, status: str, seconds: float) -> str:
    return f"{label} seed {seed}: {status}" + (f" in {seconds:.1f} s" if status != "reused" else "")
