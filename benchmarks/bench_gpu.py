"""Steps per second and peak GPU memory of each method at the papers' sizes, and both ÷ supervised.

Run: ``python benchmarks/bench_gpu.py [--methods a,b] [--dims 2,3] [--amp on|off] [--amp-dtype auto|bf16|fp16]
[--channels-last auto|on|off] [--compile] [--repeats 10] [--at 0.9] [--device cuda] [--tiny]``.

The sizes are those of the papers' benchmarks, on synthetic tensors (no download): 2D ACDC-like slices of 256²
with 12 labelled + 12 unlabelled per step and 4 classes, 3D LA-like patches of 112×112×80 with 2 + 2 per step and
2 classes, a U-Net of widths 16…256 in both. Every step is the engine's: the method's step and each chained update
under the run's autocast (fp16 through a loss scaler), then the EMA teachers; the networks and batches are
channels-last and compiled as ``train.channels_last`` and ``train.compile`` would make them. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (networks, optimiser state and activations).
Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0; ``--device cpu --tiny`` runs the same
code on tiny sizes as a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step_time, run from anywhere
from bench_step_time import TOTAL_STEPS, Bench, Setting, timed  # noqa: E402

from semiseg.engine.device import autocast, resolve_amp_dtype  # noqa: E402
from semiseg.engine.networks import update_ema_net  # noqa: E402
from semiseg.engine.performance import (  # noqa: E402
    channels_last_enabled,
    compile_nets,
    nets_to_channels_last,
    to_channels_last,
)
from semiseg.methods import Progress, StepOut, available_methods  # noqa: E402

PAPER_SIZES = {  # dim: (patch, labelled + unlabelled batch, classes)
    2: ((256, 256), 12, 4),   # ACDC: 2D slices
    3: ((112, 112, 80), 2, 2),  # LA: 3D patches
}
TINY_SIZES = {2: ((32, 32), 2, 3), 3: ((16, 16, 16), 1, 2)}


@dataclass(frozen=True)
class Speed:
    """The speed settings of a benchmark run, as ``train.amp``/``amp_dtype``/``channels_last``/``compile`` set them."""

    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    compile: bool

    def describe(self) -> str:
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype] if self.amp else "fp32"
        return f"amp={precision} channels_last={self.channels_last} compile={self.compile}"


class GpuBench(Bench):
    """One method's step as the Trainer runs it: autocast, loss scaler (fp16), channels-last, compiled nets."""

    def __init__(self, name: str, setting: Setting, speed: Speed) -> None:
        super().__init__(name, setting)
        self.speed = speed
        if speed.channels_last:
            nets_to_channels_last(self.nets, setting.dim)
            self.labelled, self.unlabelled = (replace(b, image=to_channels_last(b.image, setting.dim))
                                              for b in (self.labelled, self.unlabelled))
        if speed.compile:
            compile_nets(self.nets)
        fp16 = speed.amp and speed.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(setting.device.type, enabled=fp16)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.speed.amp, self.setting.device, self.speed.amp_dtype)

    def step(self, progress: Progress) -> None:
        with self._autocast():
            out: StepOut | None = self.first_update(progress)
        while out is not None:
            total = torch.stack([v.float() for v in out.losses.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, spec in self.specs.items():
                if spec.ema_of:
                    update_ema_net(self.nets, name, spec, progress.step + 1)
            if out.followup is None:
                return
            with self._autocast():
                out = out.followup()


def measure(name: str, setting: Setting, speed: Speed, at: float, repeats: int) -> tuple[float, float | None]:
    """Median seconds of one step at progress ``at``, and the peak GiB allocated on CUDA (None on CPU)."""
    cuda = setting.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(setting.device)
    bench = GpuBench(name, setting, speed)
    index = {"step": round(at * TOTAL_STEPS)}

    def one_step() -> None:
        bench.step(Progress(index["step"], TOTAL_STEPS))
        index["step"] += 1

    seconds = timed(one_step, repeats, setting.device)
    peak = torch.cuda.max_memory_allocated(setting.device) / 2**30 if cuda else None
    if speed.compile:
        torch._dynamo.reset()
    return seconds, peak


def setting_for(dim: int, tiny: bool, device: torch.device) -> Setting:
    patch, batch, classes = (TINY_SIZES if tiny else PAPER_SIZES)[dim]
    widths = (4, 8) if tiny else (16, 32, 64, 128, 256)
    return Setting(dim=dim, widths=widths, batch=batch, unlabelled_batch=batch, patch=patch, classes=classes,
                   device=device)


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table(setting: Setting, speed: Speed, methods: list[str], at: float, repeats: int) -> list[str]:
    """The markdown table of one setting: a row per method, supervised first (the base of the ratios)."""
    base_s, base_mem = measure("supervised", setting, speed, at, repeats)
    lines = [f"### {setting.dim}D {'×'.join(map(str, setting.patch))}, batch {setting.batch} + "
             f"{setting.unlabelled_batch}, {setting.classes} classes, widths {list(setting.widths)}, "
             f"{setting.device}, {speed.describe()}", "",
             "| method | steps/s | step ÷ supervised | peak GiB | memory ÷ supervised |", "|---|---|---|---|---|"]
    for name in ["supervised", *(m for m in methods if m != "supervised")]:
        try:
            seconds, peak = (base_s, base_mem) if name == "supervised" else measure(name, setting, speed, at, repeats)
        except torch.cuda.OutOfMemoryError:
            lines.append(f"| {name} | out of memory | | | |")
            continue
        ratio = None if peak is None or not base_mem else peak / base_mem
        lines.append(f"| {name} | {1 / seconds:.2f} | {seconds / base_s:.2f} | {_cell(peak, '.2f')} | "
                     f"{_cell(ratio, '.2f')} |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(available_methods()), help="comma-separated method names")
    parser.add_argument("--dims", default="2,3", help="2, 3 or 2,3: the ACDC-like and/or LA-like setting")
    parser.add_argument("--amp", choices=("on", "off"), default="on")
    parser.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16"), default="auto")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (train.compile)")
    parser.add_argument("--at", type=float, default=0.9, help="progress fraction where the timed steps start")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny: a smoke test)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and widths [4, 8] instead of the papers'")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (pass --device cpu --tiny for a CPU smoke test)")
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(available_methods())}")
    amp = args.amp == "on"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    for dim in (int(d) for d in args.dims.split(",")):
        speed = Speed(amp=amp, amp_dtype=resolve_amp_dtype(args.amp_dtype, device), compile=args.compile,
                      channels_last=channels_last_enabled(args.channels_last, dim, device, amp))
        print("\n".join(["", *table(setting_for(dim, args.tiny, device), speed, methods, args.at, args.repeats)]))


if __name__ == "__main__":
    main()
