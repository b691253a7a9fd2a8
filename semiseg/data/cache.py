"""An on-disk cache of prepared cases: decoded, normalised arrays and foreground voxels as memory-mapped ``.npy``.

A training process that reads 400 volumes into RAM needs RAM for 400 volumes; one that maps them from disk
holds only the pages it samples, and the operating system shares and evicts those as it needs. The first run
writes each case once; later runs (and loader workers) map the files without re-reading NIfTI.

An entry is keyed by the case id, every source file's absolute path, size and modification time, and the
preprocessing settings that change the arrays (normalisation, label mode, the source and its options, the
cache format). A changed file or setting gives another key, so a stale entry is never read; old entries stay
until the folder is deleted. An entry is written to a temporary folder and renamed into place, so readers see
it complete or not at all, and two processes filling the cache at once both end up with one valid entry.
Cases that do not come from files (phantoms) are generated in memory and never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.data.case import CaseRef
from semiseg.errors import DataError

CACHE_FORMAT = 1  # bump when the preparation of the arrays changes, so older entries are not read
ENV_VAR = "SEMISEG_CACHE"  # the demo brain's cache moves with it
_ENTRY_DONE = "entry.json"  # written last inside the temporary folder; the renamed folder is complete


@dataclass(frozen=True)
class PreparedCase:
    """A case as the samplers use it: ``(C, X, Y, Z)`` image, label or None, flat indices of its foreground."""

    image: np.ndarray
    label: np.ndarray | None
    foreground: np.ndarray  # flat (C-order) indices of labelled foreground voxels, ascending; empty without label


def default_cache_dir() -> Path:
    """``$SEMISEG_CACHE/cases``, else ``~/.cache/semiseg/cases`` (beside the demo's ``demo_brain`` folder)."""
    base = Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else Path.home() / ".cache" / "semiseg"
    return base / "cases"


def resolve_cache_dir(setting: str) -> Path | None:
    """The folder for ``setting`` (``auto``, ``off`` or a folder), checked writable; None when caching is off.

    An explicit folder that cannot be written is an error; for ``auto`` the run goes on without a cache and
    says why, because nobody asked for that folder.
    """
    if setting == "off":
        return None
    folder = default_cache_dir() if setting == "auto" else Path(setting).expanduser()
    problem = _unwritable(folder)
    if problem is None:
        return folder
    if setting != "auto":
        raise DataError(f"case cache folder {folder} cannot be written ({problem}); set data.cache to a writable "
                        "folder, or data.cache=off to hold cases in memory")
    print(f"warning: case cache folder {folder} cannot be written ({problem}); cases are held in memory "
          f"(set data.cache to a writable folder or {ENV_VAR})", file=sys.stderr)
    return None


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold cache entries, or None when a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _file_stamp(path: str) -> list[Any]:
    """Absolute path, size and modification time (ns) of a source file: what makes its entry current."""
    resolved = Path(path).absolute()
    stat = resolved.stat()
    return [str(resolved), stat.st_size, stat.st_mtime_ns]


class CaseCache:
    """Prepared cases of one dataset and preprocessing, memory-mapped from ``root``."""

    def __init__(self, root: Path, settings: Mapping[str, Any]) -> None:
        self.root, self.settings = Path(root), dict(settings)

    def entry_dir(self, ref: CaseRef) -> Path | None:
        """Where ``ref``'s entry lives for its files as they are now (None: not from files, not cached)."""
        if not ref.files:
            return None
        stamps = [_file_stamp(p) for p in ref.files]
        payload = {"format": CACHE_FORMAT, "case": ref.case_id, "files": stamps, "settings": self.settings}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', ref.case_id)}.{digest}"

    def prepared(self, ref: CaseRef, prepare: Callable[[], PreparedCase]) -> PreparedCase:
        """``ref`` mapped from its entry, made with ``prepare`` and written first when there is none."""
        entry = self.entry_dir(ref)
        if entry is None:
            return prepare()
        if (entry / _ENTRY_DONE).is_file():
            try:
                return _read_entry(entry)
            except (OSError, ValueError):  # damaged by hand (a file deleted or truncated): made again
                shutil.rmtree(entry, ignore_errors=True)
        case = prepare()
        if self.entry_dir(ref) != entry:  # a source file changed while it was read: do not store a mix
            return case
        _write_entry(entry, case, ref)
        return _read_entry(entry)


def _write_entry(entry: Path, case: PreparedCase, ref: CaseRef) -> None:
    """Write into a private folder and rename it into place; another process's complete entry wins a race."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "image.npy", case.image)
        np.save(tmp / "foreground.npy", case.foreground)
        if case.label is not None:
            np.save(tmp / "label.npy", case.label)
        (tmp / _ENTRY_DONE).write_text(json.dumps({"case": ref.case_id, "files": list(ref.files),
                                                   "format": CACHE_FORMAT}, indent=1))
        os.rename(tmp, entry)
    except OSError as exc:
        if not (entry / _ENTRY_DONE).is_file():  # not a lost race: a full disk or a folder made read-only
            raise DataError(f"case cache folder {entry.parent}: cannot write the entry of {ref.origin} ({exc}); "
                            "free space, or set data.cache to another folder or off") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_entry(entry: Path) -> PreparedCase:
    """Copy-on-write maps: pages come from the file when read, and nothing can write the cache through them."""
    label_file = entry / "label.npy"
    label = np.load(label_file, mmap_mode="c") if label_file.is_file() else None
    return PreparedCase(np.load(entry / "image.npy", mmap_mode="c"), label,
                        np.load(entry / "foreground.npy", mmap_mode="c"))
