"""The ``semiseg`` console script: thin wrappers over ``semiseg.api``.

User mistakes (``SemisegError``, or an ``OSError`` on a path the user gave) are printed as one line without a
traceback and exit with status 2; any other exception is a bug and keeps its traceback. Only the standard
library is imported up front, so ``--help``, ``methods`` and ``config`` answer without loading torch.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from semiseg import __version__
from semiseg.errors import SemisegError

# argparse attributes that hold a path the user typed: an OSError on one of them is the user's to fix
_PATH_ARGUMENTS = ("config", "data", "output", "resume", "run", "input", "pred", "gt", "csv", "path", "experiment",
                   "from_results")


_MOVED_DATA = "where the run's dataset is now, when it moved since training (default: the path the run recorded)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semiseg", description="Semi-supervised medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"semiseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method (default: supervised on the built-in brain demo)")
    train.add_argument("--config", help="YAML config file (see 'semiseg config')")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.steps=500 (repeatable)")
    train.add_argument("--method", help="shortcut for --set train.method=NAME")
    train.add_argument("--data", help="dataset folder; shortcut for --set data.source=auto --set data.path=PATH")
    train.add_argument("--output", help="run folder (default runs/<time>_<method>_<source>)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--init-from", metavar="RUN",
                       help="start from a trained run's weights (shortcut for --set model.init_from=RUN)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--dry-run", action="store_true",
                       help="check the config, build the method and nets, print the plan; write nothing")
    train.add_argument("--continue", dest="continue_run", action="store_true",
                       help="leave a finished run in the output folder alone, resume an interrupted one, else train "
                            "(what 'semiseg compare --print-commands' lines use)")

    pred = sub.add_parser("predict", help="segment images with a trained run, an ensemble of runs or an export")
    pred.add_argument("--run", action="append", default=[],
                      help="run folder; repeat it for an ensemble (mean probabilities + an uncertainty map)")
    pred.add_argument("--model", help="export folder written by 'semiseg export' (instead of --run)")
    pred.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    pred.add_argument("--adapt-bn", action="store_true",
                      help="with --run: normalise each image with BatchNorm statistics of that image (AdaBN), for "
                           "scans from scanners the labelled ones do not represent (docs/protocol.md)")
    pred.add_argument("--input", required=True, help="NIfTI/PNG file or folder")
    pred.add_argument("--output", required=True, help="folder for the predictions")
    pred.add_argument("--checkpoint", choices=["best", "last"],
                      help="with --run: best on validation (default; last when the run has no best.pt yet) or the "
                           "last one; an export (--model) holds one checkpoint, so --checkpoint must name it")
    pred.add_argument("--probabilities", action="store_true", help="also save class probabilities")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace predictions already in --output for the same cases (other files stay)")
    pred.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    pred.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the run's train.threads)")

    sug = sub.add_parser("suggest", help="rank unlabelled cases by what a label would teach the model")
    sug.add_argument("--run", required=True, help="run folder")
    sug.add_argument("--data", metavar="PATH", help=_MOVED_DATA)
    sug.add_argument("--top", type=int, default=5, help="cases shown with pictures in suggest.md (default 5)")
    sug.add_argument("--score", default="entropy", help="entropy | mutual_info | disagreement | threshold_variance")
    sug.add_argument("--input", help="rank the images of this folder instead of the run's unlabelled cases")
    sug.add_argument("--diversity", type=float, default=0.0,
                     help="weight of the penalty on similarity to cases ranked above (0: score only)")
    sug.add_argument("--region", default="volume", help="average the score over the volume or the foreground")
    sug.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples where the method samples")
    sug.add_argument("--output", help="report folder (default <run>/suggest)")
    sug.add_argument("--checkpoint", default="best", choices=["best", "last"],
                     help="which checkpoint scores the cases (default best; last when the run has no best.pt)")
    sug.add_argument("--overwrite", action="store_true", help="replace a report already in the output folder")
    sug.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    sug.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("evaluate", help="metrics of a run on its test split, or of a prediction folder")
    ev.add_argument("--run", help="run folder: evaluates its checkpoints on the test split, into "
                                  "<run>/evaluations/<settings>/ (the training-time evaluation stays)")
    ev.add_argument("--data", metavar="PATH", help=_MOVED_DATA)
    ev.add_argument("--checkpoint", default="both", choices=["best", "last", "both"],
                    help="with --run: which checkpoints (default both; best falls back to last without best.pt)")
    ev.add_argument("--split", default="test", choices=["test", "val"],
                    help="with --run: the cases scored (default test; val: per case and class on the validation "
                         "cases, into evaluations/val…/, for decisions that leave test unread)")
    ev.add_argument("--threads", type=_positive_int,
                    help="with --run: torch CPU threads (default: the run's train.threads)")
    ev.add_argument("--pred", help="folder of predicted label files")
    ev.add_argument("--gt", help="folder of ground-truth label files (same names as --pred)")
    ev.add_argument("--classes", help="comma-separated class names, background first (with --pred/--gt; default: "
                                      "one per ground-truth value)")
    ev.add_argument("--ignore", type=_non_negative_int, metavar="VALUE",
                    help="with --pred/--gt: a ground-truth value (e.g. 255) whose voxels no metric counts")
    ev.add_argument("--label-mode", default="multiclass", choices=["multiclass", "multilabel"],
                    help="with --pred/--gt: one label per voxel (default) or one binary channel per class")
    ev.add_argument("--csv", help="write the per-case rows here (with --pred/--gt)")
    ev.add_argument("--ignore-geometry", action="store_true",
                    help="with --pred/--gt: score even where spacing/affine of prediction and ground truth differ")
    ev.add_argument("--robustness", action="store_true",
                    help="with --run: Dice against OOD mix-up strength γ and FGSM step ε (tables + curves)")
    ev.add_argument("--uncertainty", action="store_true",
                    help="with --run: Brier/ECE of the (Monte-Carlo) prediction and uncertainty maps")
    ev.add_argument("--gammas", help="comma-separated γ in [0, 1] (default 0,0.2,0.4,0.6,0.8,1)")
    ev.add_argument("--epsilons", help="comma-separated FGSM ε >= 0 (default 0,0.01,0.02,0.05,0.1,0.2)")
    ev.add_argument("--samples", type=int, default=5, help="Monte-Carlo samples for --uncertainty (default 5)")
    ev.add_argument("--tta", action="store_true", help="with --run: average predictions over flips of the axes")
    ev.add_argument("--adapt-bn", action="store_true",
                    help="with --run: normalise each test case with BatchNorm statistics of that case (AdaBN)")
    ev.add_argument("--overwrite", action="store_true",
                    help="with --run: replace an earlier evaluation with the same settings (in <run>/evaluations/); "
                         "with --csv: replace that file")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")

    cmp_ = sub.add_parser("compare", help="train several methods × seeds on one protocol and tabulate them")
    cmp_.add_argument("experiment", nargs="?", help="experiment file (experiments/<name>.yaml)")
    cmp_.add_argument("--methods",
                      help="without a file: comma-separated entries, a method name or label=method:key=value")
    cmp_.add_argument("--seeds", help="comma-separated run seeds (default: the file's, else 0,1,2)")
    cmp_.add_argument("--name", help="comparison folder under output.root (default: the file's name)")
    cmp_.add_argument("--config", help="YAML config shared by every run")
    cmp_.add_argument("--data", help="dataset folder for every run; shortcut for --set data.source=auto "
                                     "--set data.path=PATH")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override shared by every run (repeatable)")
    cmp_.add_argument("--jobs", type=_positive_int, help="runs trained in parallel (default: the file's, else 1)")
    cmp_.add_argument("--publish", action="store_true",
                      help="copy the tables and per-case scores to results/<name>/ (read by docs/results.md); "
                           "refuses a git tree with uncommitted changes, so the stamp is a clean commit")
    cmp_.add_argument("--from-results", metavar="DIR",
                      help="train nothing; rebuild DIR's compare.md and compare.json (every mean, spread and "
                           "p-value) from its per_case.csv, e.g. results/<name> or runs/<name>")
    cmp_.add_argument("--evaluation", metavar="NAME",
                      help="report each run's evaluations/NAME/ instead of its training-time evaluation "
                           "(default: the file's, else the training-time one)")
    cmp_.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp_.add_argument("--backend", default="local", choices=["local", "ray"],
                      help="local: processes on this machine (default); ray: one Ray task per run "
                           '(pip install "semiseg[cluster]")')
    cmp_.add_argument("--address", help="with --backend ray: the Ray cluster (default: a local Ray instance)")
    cmp_.add_argument("--print-commands", action="store_true",
                      help="train nothing; print one 'semiseg train' line per run for another scheduler")
    cmp_.add_argument("--vary-split", action=argparse.BooleanOptionalAction,
                      help="let the split follow the run seed (default: the file's, else fixed across seeds)")
    cmp_.add_argument("--split-seed", type=int,
                      help="seed of the split held fixed across seeds (default: the file's, else 0)")

    data = sub.add_parser("data", help="dataset tools")
    data.set_defaults(print_data_help=data.print_help)
    data_sub = data.add_subparsers(dest="data_command", metavar="{check,export-demo}")
    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("path", help="dataset folder ('demo' for the built-in brain demo)")
    check.add_argument("--source", default="auto",
                       help="auto, nnunet, folder2d, acdc, la, demo_brain, heart_sites, liver_lesions, phantom")
    demo = data_sub.add_parser("export-demo", help="write the built-in demo's test images (no labels) as NIfTI, "
                                                   "to try 'semiseg predict' on")
    demo.add_argument("path", metavar="DIR", help="folder for the images (<subject>.nii.gz)")
    demo.add_argument("--overwrite", action="store_true", help="replace demo images already in DIR")

    exp = sub.add_parser("export", help="write a run's network as TorchScript or ONNX with its preprocessing")
    exp.add_argument("--run", required=True, help="run folder")
    exp.add_argument("--data", metavar="PATH", help="where the training data is now, only for the sidecar's spacing "
                     "(the export itself needs only the run folder)")
    exp.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"],
                     help="torchscript (default) or onnx (needs pip install \"semiseg[export]\")")
    exp.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)")
    exp.add_argument("--output", help="export folder (default <run>/export/<format>)")
    exp.add_argument("--overwrite", action="store_true", help="replace an export already in the output folder")

    sub.add_parser("methods", help="list the registered methods")
    sub.add_parser("config", help="print the default configuration as YAML")
    return parser


def _announce(run_dir: Path, started: list[Path]) -> None:
    """Say where the run lives before training starts (and remember it for the Ctrl-C message)."""
    started.append(run_dir)
    if _is_main_process():
        print(f"run folder: {run_dir}", flush=True)


def _is_main_process() -> bool:
    """False on every torchrun process but rank 0, which alone prints the run's results."""
    from semiseg.engine.run import is_main_process

    return is_main_process()


def _train(args: argparse.Namespace, started: list[Path]) -> None:
    from semiseg import api
    from semiseg.config import load_config

    if args.dry_run:
        _dry_run(args)
        return
    on_start = partial(_announce, started=started)
    if args.continue_run:
        _continue(args, on_start)
        return
    if args.resume:
        if args.config or args.overrides or args.method or args.output or args.init_from:
            raise SemisegError("--resume takes everything from the run folder (--data only if its dataset moved); "
                               "drop --config/--set/--method/--init-from")
        result = api.resume(args.resume, progress=not args.quiet, on_start=on_start, data=args.data)
    else:
        cfg = load_config(args.config, _train_overrides(args))
        result = api.train(cfg, overwrite=args.overwrite, progress=not args.quiet, on_start=on_start)
    if not _is_main_process():
        return
    print(f"\nrun folder: {result.run_dir}")
    print(_short_table(result.summary))
    print(f"report: {result.run_dir / 'report.md'}")


def _continue(args: argparse.Namespace, on_start: Any) -> None:
    """``train --continue``: the reuse/resume/train decision ``semiseg compare`` makes for each of its runs."""
    from semiseg.config import load_config
    from semiseg.experiment.executor import train_or_resume
    from semiseg.experiment.plan import run_folder

    if args.resume or args.overwrite:
        raise SemisegError("--continue decides itself whether to resume; drop --resume/--overwrite")
    cfg = load_config(args.config, _train_overrides(args))
    status, seconds = train_or_resume(cfg, progress=not args.quiet, on_start=on_start)
    run_dir = run_folder(cfg)
    print(f"{run_dir}: {status}" + (f" in {seconds:.1f} s" if status != "reused" else " (already finished)"))
    print(f"report: {run_dir / 'report.md'}")


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus what the shortcuts (--method, --data, --init-from, --output) stand for."""
    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"train.method={args.method}")
    if args.data:
        overrides += ["data.source=auto", f"data.path={args.data}"]
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    if args.output:
        out = Path(args.output)
        overrides += [f"output.root={out.parent}", f"output.name={out.name}"]
    return overrides


def _dry_run(args: argparse.Namespace) -> None:
    from semiseg import api

    if args.resume:
        raise SemisegError("--dry-run plans a new run from --config/--set; it does not take --resume")
    print(api.plan(args.config, _train_overrides(args)))
    print("dry run: nothing was written")


def _short_table(summary: dict[str, Any]) -> str:
    from semiseg.eval.evaluate import format_table

    return format_table(summary) if summary else "(no evaluation)"


def _evaluate(args: argparse.Namespace) -> None:
    from semiseg import api

    if args.run:
        _evaluate_run(args)
        return
    if not (args.pred and args.gt):
        raise SemisegError("give --run RUN, or both --pred FOLDER and --gt FOLDER")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.csv and Path(args.csv).exists() and not args.overwrite:
        raise SemisegError(f"--csv {args.csv} already exists; pass --overwrite to replace it, or another path")
    notes: list[str] = []
    rows, summary = api.evaluate_folders(args.pred, args.gt, class_names=classes, label_mode=args.label_mode,
                                         ignore_geometry=args.ignore_geometry, ignore=args.ignore,
                                         on_warning=_noted(notes))
    if args.csv:
        from semiseg.eval.evaluate import write_rows

        write_rows(rows, Path(args.csv))
    print(_short_table(summary))
    for note in notes:  # repeated under the table, where the user reads the result
        print(f"warning: {note}")


def _noted(notes: list[str]) -> Any:
    """A warning sink that prints at once (stderr) and keeps the text for the summary."""
    def note(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)
        notes.append(message)

    return note


def _levels(text: str | None, flag: str) -> dict[str, tuple[float, ...]]:
    """``--gammas 0,0.5,1`` → ``{"gammas": (0.0, 0.5, 1.0)}``; nothing when the flag is absent."""
    if text is None:
        return {}
    try:
        return {flag: tuple(float(v) for v in text.split(",") if v.strip())}
    except ValueError:
        raise SemisegError(f"--{flag} must be comma-separated numbers, e.g. 0,0.5,1; got {text!r}") from None


def _evaluate_run(args: argparse.Namespace) -> None:
    import json
    from dataclasses import replace

    from semiseg import api
    from semiseg.eval.robustness import format_robustness_table
    from semiseg.eval.run_evaluation import EvaluationOptions, evaluation_folder
    from semiseg.eval.uncertainty import format_uncertainty_table

    checkpoints = ("best", "last") if args.checkpoint == "both" else (args.checkpoint,)
    options = EvaluationOptions(checkpoints=checkpoints, robustness=args.robustness, uncertainty=args.uncertainty,
                                samples=args.samples, tta=args.tta, case_norm=args.adapt_bn, beside=True,
                                split=args.split,
                                overwrite=args.overwrite, **_levels(args.gammas, "gammas"),
                                **_levels(args.epsilons, "epsilons"))
    summary = api.evaluate_run_with(args.run, options, progress=not args.quiet, threads=args.threads,
                                    data=args.data)
    print(_short_table(summary))
    folder = evaluation_folder(Path(args.run), replace(options, checkpoints=tuple(summary)))  # best → last
    saved = json.loads((folder / "summary.json").read_text())
    if "robustness" in saved:
        print("\n" + format_robustness_table(saved["robustness"]))
    if "uncertainty" in saved:
        block = saved["uncertainty"]
        print("\n" + format_uncertainty_table(block["scores"], block["source"], block["samples"]))
    print(f"evaluation: {folder} (the training-time one in {args.run} is unchanged)")
    print(f"report: {folder / 'report.md'}")


def _seeds(text: str) -> list[int]:
    from semiseg.experiment.spec import check_seeds

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SemisegError(f"--seeds must be comma-separated integers, got {text!r}") from None
    return check_seeds(seeds)


def _compare(args: argparse.Namespace) -> int:
    import json

    from semiseg.experiment.compare import compare, publish, rebuild
    from semiseg.experiment.provenance import require_clean_tree
    from semiseg.experiment.spec import load_experiment, parse_entry, split_entries

    if args.from_results:
        if args.experiment or args.methods or args.publish:
            raise SemisegError("--from-results rebuilds published tables on its own: drop the experiment file, "
                               "--methods and --publish")
        folder = Path(args.from_results)
        changed = rebuild(folder)
        print((folder / "compare.md").read_text())
        print(f"{folder}: compare.md and compare.json " + ("rebuilt (they differed)" if changed else "unchanged"))
        return 0
    if args.experiment:
        if args.methods:
            raise SemisegError("give an experiment file or --methods, not both")
        exp = load_experiment(args.experiment)
        entries, protocol, name = list(exp.entries), list(exp.protocol), args.name or exp.name
        seeds = _seeds(args.seeds) if args.seeds else list(exp.seeds)
        jobs = args.jobs or exp.jobs
        vary_split, split_seed = _default(args.vary_split, exp.vary_split), _default(args.split_seed, exp.split_seed)
        evaluation = _default(args.evaluation, exp.evaluation)
    elif args.methods and args.name:
        exp, protocol, name, jobs = None, [], args.name, args.jobs or 1
        entries = [parse_entry(text) for text in split_entries(args.methods)]
        seeds = _seeds(args.seeds or "0,1,2")
        vary_split, split_seed = bool(args.vary_split), _default(args.split_seed, 0)
        evaluation = args.evaluation
    else:
        raise SemisegError("compare needs an experiment file (experiments/<name>.yaml) or --methods and --name")
    data = ["data.source=auto", f"data.path={args.data}"] if args.data else []
    if args.print_commands:
        return _print_commands(args.config, [*protocol, *args.overrides, *data], entries, seeds, name, jobs,
                               vary_split, split_seed)
    if args.publish:  # before hours of training: a table stamped with a dirty tree could not be reproduced
        require_clean_tree(experiment=Path(args.experiment) if args.experiment else None)
    root = compare(args.config, [*protocol, *args.overrides, *data], entries, seeds, name=name, jobs=jobs,
                   progress=not args.quiet, experiment=exp, rerun=_compare_command(args), vary_split=vary_split,
                   split_seed=split_seed, backend=args.backend, address=args.address, evaluation=evaluation)
    print((root / "compare.md").read_text())
    print(f"tables: {root / 'compare.md'}, {root / 'compare.csv'}")
    missing = json.loads((root / "compare.json").read_text())["missing"]
    if missing:
        print(f"{len(missing)} run(s) did not finish; finish them with: {_compare_command(args)}", file=sys.stderr)
        return 1
    if args.publish:
        print(f"published: {publish(root, Path('results') / name)}")
    return 0


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _print_commands(base_file: str | None, overrides: list[str], entries: list[Any], seeds: list[int], name: str,
                    jobs: int, vary_split: bool, split_seed: int) -> int:
    from semiseg.experiment.plan import run_plan, train_commands

    plan = run_plan(base_file, overrides, entries, seeds, name, vary_split=vary_split, split_seed=split_seed)
    print("\n".join(train_commands(plan, base_file, jobs)))
    return 0


def _compare_command(args: argparse.Namespace) -> str:
    """The command line that reruns this comparison (finished runs are reused, the others trained)."""
    import shlex

    words = ["semiseg", "compare", *([args.experiment] if args.experiment else [])]
    for flag in ("methods", "seeds", "name", "config", "data", "jobs", "split_seed", "address", "evaluation"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    for override in args.overrides:
        words += ["--set", override]
    words += ["--backend", args.backend] if args.backend != "local" else []
    words += [] if args.vary_split is None else ["--vary-split" if args.vary_split else "--no-vary-split"]
    return shlex.join(words + (["--quiet"] if args.quiet else []))


def _suggest(args: argparse.Namespace) -> None:
    from semiseg import api

    ranked = api.suggest(args.run, score=args.score, top=args.top, region=args.region, diversity=args.diversity,
                         samples=args.samples, input_path=args.input, output=args.output, checkpoint=args.checkpoint,
                         device=args.device, overwrite=args.overwrite, progress=not args.quiet, data=args.data)
    from semiseg.eval.suggest import score_digits

    digits = score_digits([case.score for case in ranked[: args.top]])
    for rank, case in enumerate(ranked[: args.top], start=1):
        print(f"{rank:>3}  {case.case_id}  {args.score} {case.score:.{digits}g}")
    print(f"report: {Path(args.output or Path(args.run) / 'suggest') / 'suggest.md'}")


def _data_check(args: argparse.Namespace) -> int:
    from semiseg.data.check import check_dataset, format_report
    from semiseg.data.sources import open_dataset

    spec = open_dataset("demo_brain", None) if args.path == "demo" else open_dataset(args.source, args.path)
    report = check_dataset(spec)
    print(format_report(report))
    return 0 if report.ok else 1


def _export_demo(args: argparse.Namespace) -> None:
    from semiseg import api

    files = api.export_demo(args.path, overwrite=args.overwrite)
    print(f"wrote {len(files)} test image(s) of the demo to {args.path}: images only, the test subjects of the "
          "default split, which 'semiseg train' on the demo never trains on (at the default seed)")
    print(f"try: semiseg predict --run runs/<id> --input {args.path} --output preds/")


def _methods() -> None:
    from semiseg.method_catalog import method_catalog  # reads the sources: no torch import

    catalog = method_catalog()
    width = max(len(n) for n in catalog)
    for name, entry in catalog.items():
        print(f"{name:<{width}}  {entry.summary}" + (f"  [{entry.provider}]" if entry.is_plugin else ""))


def _predict(args: argparse.Namespace) -> None:
    from semiseg import api

    files = api.predict(args.run, args.input, args.output, checkpoint=args.checkpoint,
                        save_probabilities=args.probabilities, device=args.device, overwrite=args.overwrite,
                        threads=args.threads, tta=args.tta, adapt_bn=args.adapt_bn, model_dir=args.model)
    print(f"wrote {len(files)} file(s) to {args.output}")


def _user_path_error(exc: OSError, args: argparse.Namespace) -> str | None:
    """The one-line message for an ``OSError`` on (or inside, or above) a path the user gave; None otherwise."""
    given = [Path(value).absolute() for name in _PATH_ARGUMENTS if isinstance(value := getattr(args, name, None), str)]
    for filename in (exc.filename, exc.filename2):
        if filename is None:
            continue
        failed = Path(filename).absolute()
        if any(failed == p or failed.is_relative_to(p) or p.is_relative_to(failed) for p in given):
            return f"{filename}: {exc.strerror or exc}; check that the path exists, is a folder where one is " \
                   "expected, and is readable/writable, or choose another"
    return None


def _interrupted(args: argparse.Namespace, started: list[Path]) -> str:
    if args.command != "train":
        return "\ninterrupted"
    if not started:
        return "\ninterrupted before training started; no run folder was kept"
    return (f"\ninterrupted; the last checkpoint was saved in {started[-1]}: continue with "
            f"'semiseg train --resume {started[-1]}'")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started: list[Path] = []  # the run folder, once train has made it
    try:
        if args.command == "train":
            _train(args, started)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "export":
            from semiseg import api

            out = api.export(args.run, args.format, checkpoint=args.checkpoint, output_dir=args.output,
                             overwrite=args.overwrite, data=args.data)
            print(f"exported to {out} (sidecar: {out / 'export.json'})")
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "suggest":
            _suggest(args)
        elif args.command == "compare":
            return _compare(args)
        elif args.command == "data":
            if args.data_command is None:
                args.print_data_help()
                return 0
            if args.data_command == "export-demo":
                _export_demo(args)
                return 0
            return _data_check(args)
        elif args.command == "methods":
            _methods()
        elif args.command == "config":
            from semiseg.config import Config, config_to_yaml

            # unvalidated defaults: train.steps stays "auto" (a file made from it follows its method's length),
            # and nothing asks a method, so the command answers without importing torch
            print(config_to_yaml(Config.model_construct()), end="")
    except SemisegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        message = _user_path_error(exc, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args, started), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
