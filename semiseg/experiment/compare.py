"""Compare methods on one protocol: same data, split, network and steps; several seeds; one table.

``compare`` trains every (entry, seed) pair into ``<output.root>/<name>/<label>-s<seed>`` on a backend, reusing
runs that are already finished and resuming interrupted ones, so a long comparison survives being stopped. It then
collects the per-case scores into the comparison folder and builds the tables from them (``tables``). By default
the split is held fixed across seeds; ``vary_split`` lets it follow the run seed, and the spread is then over splits.
``publish`` copies the tables and the per-case scores to ``results/<name>/``; ``rebuild`` rewrites a published (or
any) comparison's tables from those scores alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from semiseg.engine.device import resolve_device
from semiseg.errors import ConfigError, SemisegError
from semiseg.experiment.backends import make_backend
from semiseg.experiment.plan import run_configs, split_statement
from semiseg.experiment.provenance import stamp
from semiseg.experiment.scores import PER_CASE, RUNS, collect, has_scores, read_scores
from semiseg.experiment.spec import Entry, Experiment, check_evaluation
from semiseg.experiment.tables import DERIVED_KEYS, protocol_facts, write_tables

PUBLISHED_FILES = ("compare.json", "compare.md", PER_CASE, RUNS)


def compare(base_file: str | None, overrides: Sequence[str], entries: Sequence[Entry], seeds: Sequence[int], *,
            name: str, jobs: int = 1, progress: bool = True, experiment: Experiment | None = None,
            rerun: str = "the same 'semiseg compare' command", vary_split: bool = False, split_seed: int = 0,
            backend: str = "local", address: str | None = None, evaluation: str | None = None) -> Path:
    """Train what is missing, then write the per-case scores and ``compare.md``, ``compare.csv``, ``compare.json``.

    ``experiment`` is recorded in the stamp of ``compare.json``. Runs that did not finish are listed under
    ``missing`` and marked in ``compare.md`` with ``rerun``, the command that finishes them. ``evaluation`` names
    the evaluation the table reports (None: the training-time one; see ``scores.evaluation_dir``).
    """
    if not entries or not seeds:
        raise ConfigError("compare needs at least one method and one seed")
    check_evaluation(evaluation)
    runner = make_backend(backend, jobs=jobs, progress=progress, address=address)
    configs = run_configs(base_file, overrides, entries, seeds, name, vary_split=vary_split, split_seed=split_seed)
    first = next(iter(configs.values()))
    root = Path(first.output.root) / name
    root.mkdir(parents=True, exist_ok=True)
    failed: dict[tuple[str, int], str] = {}
    try:
        failed = runner.train(configs)
    finally:  # also after Ctrl-C or a crash: the table of what finished, with the missing runs marked
        collect(root, entries, seeds, evaluation)
        finished = {(run["label"], run["seed"]) for run in json.loads((root / RUNS).read_text())}
        missing = [{"label": label, "seed": seed, "reason": failed.get((label, seed), "not finished")}
                   for label, seed in configs if (label, seed) not in finished]
        meta = {"name": name, "stamp": stamp(experiment, resolve_device(first.train.device).type),
                "seeds": list(seeds), "split": split_statement(configs), "evaluation": evaluation,
                "protocol": protocol_facts(first), "entries": [e.as_json() for e in entries],
                "missing": missing, "rerun": rerun}
        write_tables(root, meta, read_scores(root))
    return root


def rebuild(folder: Path) -> bool:
    """Rewrite ``compare.md`` and ``compare.json`` in ``folder`` from its per-case scores; True if they changed."""
    if not (folder / "compare.json").is_file():
        raise SemisegError(f"{folder}: no compare.json; give a comparison folder (runs/<name>) or results/<name>")
    if not has_scores(folder):
        raise SemisegError(f"{folder}: no {PER_CASE} and {RUNS}: an archived table of aggregates, published before "
                           "per-case scores were kept, cannot be rebuilt; rerun its experiment and --publish it")
    before = {n: (folder / n).read_text() for n in ("compare.md", "compare.json")}
    try:
        meta = {k: v for k, v in json.loads(before["compare.json"]).items() if k not in DERIVED_KEYS}
    except (ValueError, AttributeError) as exc:
        raise SemisegError(f"{folder / 'compare.json'}: not a comparison's JSON ({exc}); restore it from git") from None
    absent = [k for k in ("name", "seeds", "split", "evaluation", "protocol", "entries", "missing", "rerun")
              if k not in meta]
    if absent:
        raise SemisegError(f"{folder / 'compare.json'}: lacks {', '.join(absent)}, which compare writes; restore it "
                           "from git, or rerun the comparison")
    write_tables(folder, meta, read_scores(folder), with_csv=(folder / "compare.csv").is_file())
    return any((folder / n).read_text() != text for n, text in before.items())


def publish(comparison: Path, target: Path) -> Path:
    """Copy a finished comparison's tables and per-case scores to ``target`` (``results/<name>/``).

    Refuses a comparison whose stamp is not a clean commit (``provenance.require_clean_tree`` is checked before
    training; this catches a tree that changed while the runs trained).
    """
    commit = (json.loads((comparison / "compare.json").read_text()).get("stamp") or {}).get("commit")
    if not commit or commit.endswith("+dirty"):
        raise SemisegError(f"{comparison / 'compare.json'}: stamped with commit {commit!r}, not a clean commit (the "
                           "tree changed while the runs trained?); commit the changes and rerun with --publish")
    target.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_FILES:
        shutil.copyfile(comparison / name, target / name)
    return target
