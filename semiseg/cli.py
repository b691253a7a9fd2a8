"""The ``semiseg`` console script: thin wrappers over ``semiseg.api``.

User mistakes (``SemisegError``) are printed as one line without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from semiseg.errors import SemisegError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semiseg", description="Semi-supervised medical image segmentation.")
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
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--dry-run", action="store_true",
                       help="check the config, build the method and nets, print the plan; write nothing")

    pred = sub.add_parser("predict", help="segment images with a trained run, an ensemble of runs or an export")
    pred.add_argument("--run", action="append", default=[],
                      help="run folder; repeat it for an ensemble (mean probabilities + an uncertainty map)")
    pred.add_argument("--model", help="export folder written by 'semiseg export' (instead of --run)")
    pred.add_argument("--tta", action="store_true", help="average over flips of the spatial axes")
    pred.add_argument("--input", required=True, help="NIfTI/PNG file or folder")
    pred.add_argument("--output", required=True, help="folder for the predictions")
    pred.add_argument("--checkpoint", default="best", choices=["best", "last"])
    pred.add_argument("--probabilities", action="store_true", help="also save class probabilities")
    pred.add_argument("--overwrite", action="store_true")
    pred.add_argument("--device", default="auto")

    ev = sub.add_parser("evaluate", help="metrics of a run on its test split, or of a prediction folder")
    ev.add_argument("--run", help="run folder: evaluates best and last checkpoints on the test split")
    ev.add_argument("--pred", help="folder of predicted label files")
    ev.add_argument("--gt", help="folder of ground-truth label files (same names as --pred)")
    ev.add_argument("--classes", help="comma-separated class names, background first (with --pred/--gt)")
    ev.add_argument("--label-mode", default="multiclass", choices=["multiclass", "multilabel"])
    ev.add_argument("--csv", help="write the per-case rows here (with --pred/--gt)")
    ev.add_argument("--robustness", action="store_true",
                    help="with --run: Dice against OOD mix-up strength γ and FGSM step ε (tables + curves)")
    ev.add_argument("--uncertainty", action="store_true",
                    help="with --run: Brier/ECE of the (Monte-Carlo) prediction and uncertainty maps")
    ev.add_argument("--gammas", help="comma-separated γ in [0, 1] (default 0,0.2,0.4,0.6,0.8,1)")
    ev.add_argument("--epsilons", help="comma-separated FGSM ε >= 0 (default 0,0.01,0.02,0.05,0.1,0.2)")
    ev.add_argument("--samples", type=int, default=5, help="Monte-Carlo samples for --uncertainty (default 5)")
    ev.add_argument("--tta", action="store_true", help="with --run: average predictions over flips of the axes")
    ev.add_argument("--quiet", action="store_true")

    cmp_ = sub.add_parser("compare", help="train several methods × seeds on one protocol and tabulate them")
    cmp_.add_argument("experiment", nargs="?", help="experiment file (experiments/<name>.yaml)")
    cmp_.add_argument("--methods",
                      help="without a file: comma-separated entries, a method name or label=method:key=value")
    cmp_.add_argument("--seeds", help="comma-separated run seeds (default: the file's, else 0,1,2)")
    cmp_.add_argument("--name", help="comparison folder under output.root (default: the file's name)")
    cmp_.add_argument("--config", help="YAML config shared by every run")
    cmp_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="config override shared by every run (repeatable)")
    cmp_.add_argument("--jobs", type=int, help="runs trained in parallel (default: the file's, else 1)")
    cmp_.add_argument("--publish", action="store_true",
                      help="copy compare.json and compare.md to results/<name>/ (read by docs/results.md)")
    cmp_.add_argument("--quiet", action="store_true")

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("path", help="dataset folder ('demo' for the built-in brain demo)")
    check.add_argument("--source", default="auto", help="auto, nnunet, folder2d, acdc, la, demo_brain, phantom")

    exp = sub.add_parser("export", help="write a run's network as TorchScript or ONNX with its preprocessing")
    exp.add_argument("--run", required=True, help="run folder")
    exp.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"])
    exp.add_argument("--checkpoint", default="best", choices=["best", "last"])
    exp.add_argument("--output", help="export folder (default <run>/export/<format>)")
    exp.add_argument("--overwrite", action="store_true")

    sub.add_parser("methods", help="list the registered methods")
    sub.add_parser("config", help="print the default configuration as YAML")
    return parser


def _train(args: argparse.Namespace) -> None:
    from semiseg import api
    from semiseg.config import load_config

    if args.dry_run:
        _dry_run(args)
        return
    if args.resume:
        if args.config or args.overrides or args.method or args.data or args.output:
            raise SemisegError("--resume takes everything from the run folder; drop --config/--set/--method/--data")
        result = api.resume(args.resume, progress=not args.quiet)
    else:
        overrides = list(args.overrides)
        if args.method:
            overrides.append(f"train.method={args.method}")
        if args.data:
            overrides += ["data.source=auto", f"data.path={args.data}"]
        if args.output:
            out = Path(args.output)
            overrides += [f"output.root={out.parent}", f"output.name={out.name}"]
        cfg = load_config(args.config, overrides)
        result = api.train(cfg, overwrite=args.overwrite, progress=not args.quiet)
    print(f"\nrun folder: {result.run_dir}")
    print(_short_table(result.summary))
    print(f"report: {result.run_dir / 'report.md'}")


def _dry_run(args: argparse.Namespace) -> None:
    from semiseg import api

    if args.resume:
        raise SemisegError("--dry-run plans a new run from --config/--set; it does not take --resume")
    overrides = list(args.overrides) + ([f"train.method={args.method}"] if args.method else [])
    if args.data:
        overrides += ["data.source=auto", f"data.path={args.data}"]
    if args.output:
        overrides += [f"output.root={Path(args.output).parent}", f"output.name={Path(args.output).name}"]
    print(api.plan(args.config, overrides))
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
    rows, summary = api.evaluate_folders(args.pred, args.gt, class_names=classes, label_mode=args.label_mode)
    if args.csv:
        from semiseg.eval.evaluate import write_rows

        write_rows(rows, Path(args.csv))
    print(_short_table(summary))


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

    from semiseg import api
    from semiseg.eval.robustness import format_robustness_table
    from semiseg.eval.uncertainty import format_uncertainty_table

    summary = api.evaluate_run(args.run, progress=not args.quiet, robustness=args.robustness,
                               uncertainty=args.uncertainty, samples=args.samples, tta=args.tta,
                               **_levels(args.gammas, "gammas"), **_levels(args.epsilons, "epsilons"))
    print(_short_table(summary))
    saved = json.loads((Path(args.run) / "summary.json").read_text())
    if "robustness" in saved:
        print("\n" + format_robustness_table(saved["robustness"]))
    if "uncertainty" in saved:
        block = saved["uncertainty"]
        print("\n" + format_uncertainty_table(block["scores"], block["source"], block["samples"]))
    print(f"report: {Path(args.run) / 'report.md'}")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SemisegError(f"--seeds must be comma-separated integers, got {text!r}") from None


def _compare(args: argparse.Namespace) -> None:
    from semiseg.compare import compare, parse_entry, split_entries
    from semiseg.experiments import load_experiment, publish

    if args.experiment:
        if args.methods:
            raise SemisegError("give an experiment file or --methods, not both")
        exp = load_experiment(args.experiment)
        entries, protocol, name = list(exp.entries), list(exp.protocol), args.name or exp.name
        seeds = _seeds(args.seeds) if args.seeds else list(exp.seeds)
        jobs = args.jobs or exp.jobs
    elif args.methods and args.name:
        exp, protocol, name, jobs = None, [], args.name, args.jobs or 1
        entries = [parse_entry(text) for text in split_entries(args.methods)]
        seeds = _seeds(args.seeds or "0,1,2")
    else:
        raise SemisegError("compare needs an experiment file (experiments/<name>.yaml) or --methods and --name")
    root = compare(args.config, [*protocol, *args.overrides], entries, seeds, name=name, jobs=jobs,
                   progress=not args.quiet, experiment=exp)
    print((root / "compare.md").read_text())
    print(f"tables: {root / 'compare.md'}, {root / 'compare.csv'}")
    if args.publish:
        print(f"published: {publish(root, Path('results') / name)}")


def _data_check(args: argparse.Namespace) -> int:
    from semiseg.data.check import check_dataset, format_report
    from semiseg.data.sources import open_dataset

    spec = open_dataset("demo_brain", None) if args.path == "demo" else open_dataset(args.source, args.path)
    report = check_dataset(spec)
    print(format_report(report))
    return 0 if report.ok else 1


def _methods() -> None:
    from semiseg.methods import available_methods

    methods = available_methods()
    width = max(len(n) for n in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.summary}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "predict":
            from semiseg import api

            files = api.predict(args.run, args.input, args.output, checkpoint=args.checkpoint,
                                save_probabilities=args.probabilities, device=args.device, overwrite=args.overwrite,
                                tta=args.tta, model_dir=args.model)
            print(f"wrote {len(files)} file(s) to {args.output}")
        elif args.command == "export":
            from semiseg import api

            out = api.export(args.run, args.format, checkpoint=args.checkpoint, output_dir=args.output,
                             overwrite=args.overwrite)
            print(f"exported to {out} (sidecar: {out / 'export.json'})")
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "data":
            return _data_check(args)
        elif args.command == "methods":
            _methods()
        elif args.command == "config":
            from semiseg.config import Config, config_to_yaml

            print(config_to_yaml(Config()), end="")
    except SemisegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint was saved: continue with 'semiseg train --resume <run folder>'",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
