"""The run folder's manifest: which files the run itself wrote, so ``--overwrite`` deletes only those.

A user may keep notes, or copy files into ``predictions/``; replacing a run must not take them along.
Every phase that writes into the run folder (setup, training, evaluation) is wrapped in ``recorded``,
which adds the files it created or changed to ``.semiseg-manifest.json``. The files a run always writes
under fixed names count as its own even when a hard kill left them unrecorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = ".semiseg-manifest.json"
ALWAYS_OWN = ("config.yaml", "split.json", "origin.json", "log.csv", "summary.json", "report.md", "checkpoints/best.pt",
              "checkpoints/last.pt")


def _snapshot(run_dir: Path) -> dict[str, int]:
    """Relative path → modification time (ns) of every file under the run folder."""
    if not run_dir.is_dir():
        return {}
    return {p.relative_to(run_dir).as_posix(): p.stat().st_mtime_ns
            for p in run_dir.rglob("*") if p.is_file() and p.name != MANIFEST}


def recorded_files(run_dir: Path) -> set[str]:
    path = run_dir / MANIFEST
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # a damaged manifest: only the fixed names count as the run's


def record(run_dir: Path, files: set[str]) -> None:
    """Add ``files`` (paths relative to the run folder) to the manifest."""
    if not files:
        return
    path = run_dir / MANIFEST
    path.write_text(json.dumps({"files": sorted(recorded_files(run_dir) | files)}, indent=1) + "\n")


@contextmanager
def recorded(run_dir: Path) -> Iterator[None]:
    """Record every file created or changed inside the block, also when it ends with an exception."""
    before = _snapshot(run_dir)
    try:
        yield
    finally:
        after = _snapshot(run_dir)
        record(run_dir, {name for name, mtime in after.items() if before.get(name) != mtime})


def remove_run_files(run_dir: Path) -> None:
    """Delete what the run wrote (the manifest's files and the fixed names), then the folders it emptied."""
    emptied: set[Path] = set()
    for name in recorded_files(run_dir) | set(ALWAYS_OWN):
        target = run_dir / name
        if target.is_file() or target.is_symlink():
            target.unlink()
            emptied.update(parent for parent in target.parents if run_dir in parent.parents)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            os.rmdir(folder)
    (run_dir / MANIFEST).unlink(missing_ok=True)
