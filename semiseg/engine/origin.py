"""Where a run was trained: the code's commit and the machine, one record per start or resume (``origin.json``).

Training is bit-identical at one thread on one machine, not across machines: PyTorch's CPU kernels follow the
processor's instruction set (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX-512) and CUDA's follow the GPU,
so the same seed trained on another machine can end several Dice points away. A table that mixes runs from two
machines compares more than its methods; ``experiment.scores`` reads these records and the table says so.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from semiseg import __version__

ORIGIN = "origin.json"
CODE = Path(__file__).resolve().parents[1]  # the semiseg package, inside the checkout whose commit is recorded


def git_state(where: Path = CODE) -> tuple[str, list[str]] | None:
    """The checkout's commit and what it does not hold (repository-relative paths); None outside git.

    That is every tracked file with uncommitted changes, and every untracked file under ``where`` (a new module
    there is code that runs: a method file is discovered without being imported by name).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--untracked-files=no")
        new_code = git("status", "--porcelain", "--untracked-files=all", "--", ".")  # only under ``where``
    except (OSError, subprocess.SubprocessError):
        return None
    lines = changed.splitlines() + [line for line in new_code.splitlines() if line.startswith("??")]
    return commit, [line[3:] for line in lines if line.strip()]


def git_commit(where: Path = CODE) -> str | None:
    """The commit of the checkout semiseg runs from (``+dirty`` with uncommitted changes), None outside git."""
    state = git_state(where)
    if state is None:
        return None
    commit, dirty = state
    return commit + ("+dirty" if dirty else "")


def machine(device: str) -> dict[str, Any]:
    """The machine as a comparison's stamp names it."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "device": device}


def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often just the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device) -> dict[str, str]:
    """What decides which kernels run, hence the bits a run produces: CPU model and instruction set, torch, GPU."""
    record = {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        record["device"] = f"cuda {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return record


def fingerprint(record: dict[str, Any]) -> str:
    """One line naming a machine; two runs with the same line ran the same kernels."""
    hw = record.get("machine", {})
    return f"{hw.get('cpu')}, {hw.get('cpu_capability')}, torch {hw.get('torch')}, {hw.get('device')}"


def record_start(run_dir: Path, device: torch.device, step: int) -> None:
    """Append this start (step 0) or resume (the step it continues from) to the run's ``origin.json``."""
    starts = read_origin(run_dir)
    starts.append({"step": step, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
                   "semiseg": __version__, "threads": torch.get_num_threads(), "machine": hardware(device)})
    (run_dir / ORIGIN).write_text(json.dumps(starts, indent=2))


def read_origin(run_dir: Path) -> list[dict[str, Any]]:
    """The run's starts, oldest first; none for a run trained before runs recorded them (or an unreadable file)."""
    try:
        starts = json.loads((run_dir / ORIGIN).read_text())
    except (OSError, ValueError):
        return []
    return starts if isinstance(starts, list) else []
