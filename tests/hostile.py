"""What every hostile-input test file shares: run the CLI as a user would, and fingerprint what is on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from semiseg.cli import main


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` with the hash of its bytes (folders map to ''): nothing written, nothing lost."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return found


def cli(argv: list[str]) -> int:
    """The exit status of ``semiseg ARGV``, argparse's own usage errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as done:
        return int(done.code)
