"""The stamp of a comparison's numbers: the experiment file (and its sha256), the commit, the machine.

A published table must name a commit that holds exactly the code that made it, so ``--publish`` refuses a tree with
uncommitted changes (``require_clean_tree``) rather than recording a diff: a commit can be checked out and rerun
(``git checkout <commit> && semiseg compare experiments/<name>.yaml``), a diff beside it cannot be trusted to apply.
Untracked files count only inside the package (new code) and as the experiment file itself; scratch files and
run folders elsewhere in the checkout do not.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from semiseg.engine import origin
from semiseg.engine.origin import CODE
from semiseg.errors import SemisegError


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def require_clean_tree(where: Path = CODE, experiment: Path | None = None) -> str:
    """The clean commit a published table will be stamped with; otherwise one error naming what to do.

    ``experiment``, the experiment file, must be committed too: the results page reads the commit's copy.
    """
    state = origin.git_state(where)
    if state is None:
        raise SemisegError(f"--publish stamps the table with a git commit, but {where} is not in a git checkout: "
                           "publish from a clone of the repository")
    commit, dirty = state
    if experiment is not None and not _tracked(experiment):
        dirty = [*dirty, f"{experiment} (not committed)"]
    if dirty:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise SemisegError(f"--publish needs a clean tree so that the stamp's commit holds the code that made the "
                           f"table, but {len(dirty)} file(s) are not committed as they are: {shown}; commit or "
                           "stash them and rerun (finished runs are reused), or drop --publish")
    return commit


def _tracked(file: Path) -> bool:
    """Whether git holds ``file`` at all (its changes are among the tracked files' otherwise)."""
    try:
        subprocess.run(["git", "-C", str(file.resolve().parent), "ls-files", "--error-unmatch", file.resolve().name],
                       capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def stamp(experiment: Any, device: str) -> dict[str, Any]:
    """What produced a comparison's numbers: the experiment text (an ``Experiment`` or None), code and machine."""
    source = None if experiment is None else {"path": experiment.path.as_posix(), "sha256": experiment.sha256}
    return {"experiment": source, "commit": origin.git_commit(), "machine": origin.machine(device)}
