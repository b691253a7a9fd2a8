"""Checks on folders the user names for output, made before anything is loaded or written.

A folder under an existing file, on a read-only file system or without write permission would otherwise
fail as an ``OSError`` traceback halfway through a run; these checks name the folder and say what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from semiseg.errors import SemisegError


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (where a ``mkdir`` would start)."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Fail unless ``path`` is a folder semiseg can create or write into; ``flag`` names the option that set it."""
    folder = Path(path)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "is a file" if existing == folder.absolute() else f"is under the file {existing}"
        raise SemisegError(f"{flag} {folder}: {where}, not a folder; choose a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(existing) else "no write permission"
        raise SemisegError(f"{flag} {folder}: cannot write into {existing} ({reason}); choose a writable folder")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
