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


def sets(*pairs: str) -> list[str]:
    """``--set`` before each ``key=value``."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def tiny(dim: int = 2, widths: str = "[4, 8]") -> list[str]:
    """Flags of a two-step training run on six phantoms: a real run folder in a second or two."""
    return ["--quiet", *sets(
        "data.source=phantom", f"data.options={{n_cases: 6, dim: {dim}, seed: 0}}", f"model.dim={dim}",
        f"model.widths={widths}", "split.labelled=2", "split.val=1", "split.test=1", "train.steps=2",
        "train.val_every=2", "train.batch_size=2", "train.warmup_steps=1", "eval.report_cases=1")]
