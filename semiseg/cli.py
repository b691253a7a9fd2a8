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

    pred = sub.add_parser("predict", help="segment images with a trained run")
    pred.add_argument("--run", required=True, help="run folder")
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
    ev.add_argument("--quiet", action="store_true")

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("path", help="dataset folder ('demo' for the built-in brain demo)")
    check.add_argument("--source", default="auto", help="auto, nnunet, folder2d, acdc, la, demo_brain, phantom")

    sub.add_parser("methods", help="list the registered methods")
    sub.add_parser("config", help="print the default configuration as YAML")
    return parser


def _train(args: argparse.Namespace) -> None:
    from semiseg import api
    from semiseg.config import load_config

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


def _short_table(summary: dict[str, Any]) -> str:
    from semiseg.eval.evaluate import format_table

    return format_table(summary) if summary else "(no evaluation)"


def _evaluate(args: argparse.Namespace) -> None:
    from semiseg import api

    if args.run:
        summary = api.evaluate_run(args.run, progress=not args.quiet)
        print(_short_table(summary))
        print(f"report: {Path(args.run) / 'report.md'}")
        return
    if not (args.pred and args.gt):
        raise SemisegError("give --run RUN, or both --pred FOLDER and --gt FOLDER")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    rows, summary = api.evaluate_folders(args.pred, args.gt, class_names=classes, label_mode=args.label_mode)
    if args.csv:
        from semiseg.eval.evaluate import write_rows

        write_rows(rows, Path(args.csv))
    print(_short_table(summary))


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
                                save_probabilities=args.probabilities, device=args.device, overwrite=args.overwrite)
            print(f"wrote {len(files)} file(s) to {args.output}")
        elif args.command == "evaluate":
            _evaluate(args)
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
