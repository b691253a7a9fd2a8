"""The run folder on disk: creating it, refusing to reuse one, undoing a run that failed before its first step.

A run folder holds everything about one training run::

    config.yaml  split.json  origin.json  log.csv  checkpoints/{best,last}.pt
    metrics/per_case.csv  summary.json  report.md  figures/*.png  predictions/  .semiseg-manifest.json

``origin.json`` names the commit and machine of each start and resume (``origin``). The manifest lists the files
the run wrote; ``--overwrite`` deletes those and nothing a user put there.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiseg.config import Config, config_to_yaml
from semiseg.data.splits import save_split
from semiseg.engine.finetune import InitRecord
from semiseg.engine.manifest import MANIFEST, recorded, remove_run_files
from semiseg.errors import SemisegError

RUN_ARTEFACTS = ("config.yaml", "split.json", "origin.json", "log.csv", "summary.json", "report.md",
                 "checkpoints", "metrics", "figures", "predictions", "uncertainty", "artifacts",
                 "export", "tensorboard")


def _default_run_name(cfg: Config) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.train.method}_{cfg.data.source}"


def prepare_run_dir(cfg: Config, overwrite: bool) -> Path:
    """Create the run folder; refuse to reuse one that holds a run unless ``overwrite``."""
    run_dir = Path(cfg.output.root) / (cfg.output.name or _default_run_name(cfg))
    existing = [name for name in RUN_ARTEFACTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise SemisegError(
            f"{run_dir} already holds a run ({', '.join(existing)}); choose another output.name, "
            "resume it with --resume, or pass --overwrite to replace it"
        )
    if existing:  # only the files the run wrote (its manifest); anything the user put there stays
        remove_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def require_run(run_dir: Path) -> None:
    if not (run_dir / "config.yaml").is_file():
        raise SemisegError(f"{run_dir} is not a semiseg run folder (no config.yaml); pass --run runs/<id>")


@dataclass
class RunFolderUndo:
    """What ``Run.build`` created in the output folder, so a run that fails before its first step leaves nothing.

    Only this call's work is removed: a folder it created, or (in a folder that existed) the run files it wrote.
    """

    root: Path
    root_created: Path | None
    existing_names: set[str]

    @classmethod
    def before(cls, cfg: Config) -> RunFolderUndo:
        root = Path(cfg.output.root)
        if not root.exists():
            top = root.absolute()
            while not top.parent.exists():
                top = top.parent
            return cls(root, top, set())
        return cls(root, None, {p.name for p in root.iterdir()})

    def undo(self, run_dir: Path) -> None:
        # output.name may hold a sub-folder (or be absolute: then only the run files go)
        first = run_dir.relative_to(self.root).parts[0] if run_dir.is_relative_to(self.root) else None
        if self.root_created is not None and first is not None:
            shutil.rmtree(self.root_created, ignore_errors=True)
        elif first is not None and first not in self.existing_names:
            shutil.rmtree(self.root / first, ignore_errors=True)
        else:  # the user's folder: prepare_run_dir emptied it of run files, so those present are this call's
            for target in (run_dir / name for name in (*RUN_ARTEFACTS, MANIFEST)):
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def new_run_folder(cfg: Config, overwrite: bool, split: dict[str, Any],
                   init: InitRecord | None = None) -> tuple[RunFolderUndo, Path]:
    """The run folder with its config and split (on rank 0 under torchrun); a failure leaves nothing of it."""
    undo = RunFolderUndo.before(cfg)
    run_dir = prepare_run_dir(cfg, overwrite)
    try:
        with recorded(run_dir):
            (run_dir / "config.yaml").write_text(config_text(cfg))
            save_split(split, run_dir / "split.json")
            if init is not None:
                init.save(run_dir)
    except BaseException:
        undo.undo(run_dir)
        raise
    return undo, run_dir


# The config keys that name a file or folder the run reads; a relative one means "from the folder training
# was started in", which a run folder moved, copied or opened from elsewhere cannot know.
_INPUT_PATHS = (("data", "path"), ("split", "file"), ("model", "init_from"))


def recorded_config(cfg: Config) -> tuple[Config, dict[str, str]]:
    """The config as a run folder records it: every input path absolute, and what each relative one was given as.

    So ``evaluate``, ``export``, ``predict``, ``suggest`` and ``--resume`` find the data from any working
    directory; a dataset that moved since is pointed at with ``--data``.
    """
    given: dict[str, str] = {}
    sections: dict[str, Any] = {}
    for section, key in _INPUT_PATHS:
        value = getattr(getattr(cfg, section), key)
        if value is None or Path(value).is_absolute():
            continue
        given[f"{section}.{key}"] = value
        sections.setdefault(section, {})[key] = str(Path(value).absolute())
    updates = {section: getattr(cfg, section).model_copy(update=keys) for section, keys in sections.items()}
    return cfg.model_copy(update=updates), given


def config_text(cfg: Config) -> str:
    """``config.yaml``: the recorded config, headed by a comment naming each path as it was given."""
    recorded_cfg, given = recorded_config(cfg)
    header = "".join(f"# {key} was given as {value!r} in {Path.cwd()}\n" for key, value in given.items())
    return header + config_to_yaml(recorded_cfg)


def checkpoint_to_use(run_dir: Path, name: str) -> str:
    """``name``, or ``last`` with a notice when a run stopped before its first validation has no ``best.pt``."""
    folder = run_dir / "checkpoints"
    if name == "best" and not (folder / "best.pt").is_file() and (folder / "last.pt").is_file():
        print(f"note: {run_dir} has no best.pt (stopped before its first validation); using last.pt",
              file=sys.stderr)
        return "last"
    return name
