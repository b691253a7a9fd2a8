"""Loader samples/s against what the training step consumes, for the demo's 2D network, at 0 and 2 workers.

Run: ``python benchmarks/bench_loader.py [--workers 0,2] [--steps 30] [--method supervised] [--threads 1]
[--set key=value ...]``.

The run is the demo's (``semiseg train`` defaults: 2D brain slices, widths 16…128, batch 8, whole slices), built
once in a temporary folder; everything below is measured on its samplers and its Trainer, in one process:

* **loader alone**: labelled (+ unlabelled) batches per second from ``BatchStream`` with N workers and a consumer
  that does nothing, after the first batch (worker start-up is paid once per run, or per curriculum pool change);
* **step alone**: the training step (forward, backward, optimiser, EMA) on one batch drawn beforehand, so no
  loading at all: the samples per second the step consumes;
* **training**: the Trainer's real step with N loader workers (loading included).

``loader / step`` above 1 means the loader draws faster than the step consumes; ``training / step alone`` near 1
means the loader is not the bottleneck (the workers draw the next batches while the step runs). On a 2-core machine
the workers compete with the step's own torch threads for the cores, which the training figure includes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.config import load_config
from semiseg.data.stream import BatchStream, StepBatches
from semiseg.engine.loop import Trainer
from semiseg.engine.run import Run


def samples_per_step(trainer: Trainer) -> int:
    data = trainer.data
    return data.labelled.batch_size + (0 if data.unlabelled is None else data.unlabelled.batch_size)


def loader_rate(trainer: Trainer, workers: int, steps: int) -> float:
    """Samples/s of the stream alone (the first batch, with the workers' start-up, is not timed)."""
    stream = BatchStream(StepBatches(trainer.data.labelled, trainer.data.unlabelled), workers, stop=steps + 1)
    try:
        stream.batch(0)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            stream.batch(step)
        return steps * samples_per_step(trainer) / (time.perf_counter() - start)
    finally:
        stream.close()


def step_rate(trainer: Trainer, steps: int, workers: int | None) -> float:
    """Samples/s of ``train_step``: on a batch drawn beforehand (``workers=None``) or from a stream of workers."""
    fixed = StepBatches(trainer.data.labelled, trainer.data.unlabelled)[0]
    trainer.stream = None
    if workers is None:
        trainer._raw_batches = lambda: (fixed["labelled"], fixed["unlabelled"])  # type: ignore[method-assign]
    else:
        trainer.__dict__.pop("_raw_batches", None)
        trainer.cfg.train.workers = workers
    try:
        trainer.train_step()  # warm-up (and the workers' start-up)
        trainer.step += 1
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
            trainer.step += 1
        return steps * samples_per_step(trainer) / (time.perf_counter() - start)
    finally:
        if trainer.stream is not None:
            trainer.stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="0,2", help="worker counts, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--set", action="append", default=[], help="further config overrides (key=value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"train.method={args.method}", f"train.threads={args.threads}",
                                 f"train.steps={10 * args.steps}", "train.tensorboard=off", f"output.root={tmp}",
                                 "output.name=bench", *args.set])
        trainer = Run.build(cfg, progress=False).trainer
        counts = [int(w) for w in args.workers.split(",")]
        per_step = samples_per_step(trainer)
        print(f"demo run: {cfg.train.method}, {cfg.model.dim}D widths {cfg.model.widths}, {per_step} samples a step "
              f"of {trainer.inferer.roi_size}, torch threads {args.threads}, {args.steps} timed steps each")
        step = step_rate(trainer, args.steps, None)
        print(f"step alone (batch drawn beforehand): {step:7.1f} samples/s")
        for workers in counts:
            loader = loader_rate(trainer, workers, args.steps)
            training = step_rate(trainer, args.steps, workers)
            print(f"workers={workers}: loader alone {loader:7.1f} samples/s (loader / step {loader / step:5.2f}); "
                  f"training {training:6.1f} samples/s (training / step alone {training / step:4.2f})")


if __name__ == "__main__":
    main()
