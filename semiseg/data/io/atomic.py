"""Files appear complete or not at all: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from semiseg.data.io.formats import split_suffix


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` and rename ``tmp`` onto ``path``; on any failure no file is left behind.

    The temporary name keeps the target's suffix, because nibabel and SimpleITK pick the format (and
    gzip) from it; it lives in the same folder so the rename is atomic on one file system.
    """
    parsed = split_suffix(path)
    suffix = parsed[1] if parsed else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
