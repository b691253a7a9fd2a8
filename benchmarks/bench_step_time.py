"""Step time of each method ÷ the supervised step, and ÷ the bound set by the network work its step does.

Run: ``python benchmarks/bench_step_time.py [--methods a,b] [--variant label=method:k=v] [--dim 2]
[--widths 16,32,64,128] [--batch 8] [--unlabelled-batch 8] [--patch 88,104] [--classes 3] [--at 0.9]
[--repeats 10] [--device cpu] [--threads N]``.

Everything is measured in one run, on the same network, batch and device, so the ratios are comparable
across machines even when the seconds are not. A method's bound is the network work one of its steps really
does, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, forward and
backward, every update of the step), priced at the seconds per FLOP of a bare forward + backward pass of the
shared network over the batch the method feeds it (labelled + unlabelled, or labelled only), measured next to the
method's steps, plus one optimiser step per trainable network and update.
So a partial pass counts as partial (CCT's auxiliary decoders, MuST's students, the second decoder of
dual-uncertainty self-training), a pass under ``no_grad`` counts its forward only, and a method counts for the
stage it is in. The work is counted on a step at the progress fraction ``--at`` (default 0.9, where every ramp
is up and staged methods are in their last stage) and the timed steps follow it in that same stage.
``step/bound`` near 1 means the method adds little beyond the network work its equations need (target ≤ 1.10);
EMA updates of teachers are not in the bound. The defaults mimic the 2D brain demo: 8 labelled + 8 unlabelled
88×104 slices, 3 classes; ``--dim 3`` defaults to 2 + 2 patches of 48³.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.config import Config, load_config
from semiseg.engine.networks import build_nets, network_options, trainable_parameters, update_ema_net
from semiseg.engine.optim import make_optimizer
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, Method, MethodContext, Progress, StepOut, available_methods
from semiseg.methods.base import Nets
from semiseg.nets import build_network

TOTAL_STEPS = 1000


@dataclass(frozen=True)
class Setting:
    """Network, batch and device every method of one benchmark run shares."""

    dim: int
    widths: tuple[int, ...]
    batch: int
    unlabelled_batch: int
    patch: tuple[int, ...]
    classes: int
    device: torch.device

    def config(self, method: str) -> Config:
        widths = ",".join(map(str, self.widths))
        return load_config(None, [f"model.dim={self.dim}", f"model.widths=[{widths}]", f"train.method={method}"])

    def context(self) -> MethodContext:
        return MethodContext(label_mode="multiclass", num_classes=self.classes, spatial_dims=self.dim, in_channels=1,
                             supervised_loss=supervised_loss("dice_ce", "multiclass", False))

    def batches(self) -> tuple[Batch, Batch]:
        g = torch.Generator().manual_seed(0)
        image = torch.randn(self.batch, 1, *self.patch, generator=g)
        label = torch.randint(0, self.classes, (self.batch, *self.patch), generator=g)
        unl = torch.randn(self.unlabelled_batch, 1, *self.patch, generator=g)
        return Batch(image.to(self.device), label.to(self.device)), Batch(unl.to(self.device))


def timed(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Bench:
    """One method with its nets, optimiser and batches; runs its steps the way the engine does."""

    def __init__(self, name: str, setting: Setting, options: dict | None = None) -> None:
        self.setting, self.cfg = setting, setting.config(name)
        self.method: Method = available_methods()[name](setting.context(), options or {})
        self.nets: Nets = build_nets(self.method, self.cfg, self.method.ctx, setting.device)
        self.specs = self.method.networks()
        self.optimizer = make_optimizer(self.cfg, trainable_parameters(self.nets, self.specs))
        self.labelled, self.unlabelled = setting.batches()

    def first_update(self, progress: Progress) -> StepOut:
        for net in self.nets.values():
            net.train()
        if self.method.uses_unlabelled:
            return self.method.training_step(self.nets, self.labelled, self.unlabelled, progress)
        return self.method.training_step(self.nets, self.labelled, None, progress)

    def step(self, progress: Progress) -> None:
        """One step: every chained update with its backward, optimiser step and EMA (the engine's loop)."""
        out: StepOut | None = self.first_update(progress)
        while out is not None:
            total = torch.stack([v.float() for v in out.losses.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for name, spec in self.specs.items():
                if spec.ema_of:
                    update_ema_net(self.nets, name, spec, progress.step + 1)
            out = out.followup() if out.followup is not None else None

    def work(self, progress: Progress) -> tuple[int, int]:
        """FLOPs of one step (forward and backward of every update) and its number of optimiser updates."""
        counted, updates = 0, 0
        out: StepOut | None = None

        def forward() -> None:
            nonlocal out
            out = self.first_update(progress) if updates == 0 else out.followup()

        while True:
            counted += flops(forward)
            total = torch.stack([v.float() for v in out.losses.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            counted += flops(total.backward)
            updates += 1
            if out.followup is None:
                return counted, updates

    def optimiser_seconds(self, repeats: int) -> float:
        """One optimiser step per trainable net (each net on its own, as the bound counts them)."""
        total = 0.0
        for name, spec in self.specs.items():
            if spec.trainable:
                params = list(self.nets[name].parameters())
                opt = make_optimizer(self.cfg, params)
                for p in params:
                    p.grad = torch.zeros_like(p)
                total += timed(opt.step, repeats, self.setting.device)
        return total


def seconds_per_flop(setting: Setting, rows: int, repeats: int) -> float:
    """Price of network work: a bare forward + backward of the shared network over ``rows`` images."""
    cfg = setting.config("supervised")
    torch.manual_seed(0)
    net = build_network(cfg.model.arch, spatial_dims=setting.dim, in_channels=1, out_channels=setting.classes,
                        **network_options(cfg)).to(setting.device).train()
    x = torch.randn(rows, 1, *setting.patch, device=setting.device)

    def bare_pass() -> None:
        net(x).float().square().mean().backward()

    return timed(bare_pass, repeats, setting.device) / flops(bare_pass)


def measure(name: str, setting: Setting, at: float, repeats: int, options: dict | None = None) -> tuple[float, float]:
    """Median step seconds at progress ``at`` and the bound of the work counted on a step of that stage.

    The price per FLOP is measured right after the method's steps, on the batch its step feeds the network
    (labelled + unlabelled, or labelled only), so a slow phase of a shared machine hits both sides alike.
    """
    bench = Bench(name, setting, options)
    start = round(at * TOTAL_STEPS)
    counted, updates = bench.work(Progress(start, TOTAL_STEPS))
    index = {"step": start}

    def one_step() -> None:
        bench.step(Progress(index["step"], TOTAL_STEPS))
        index["step"] += 1

    if start + repeats + 2 > TOTAL_STEPS:
        raise SystemExit(f"--at {at} leaves fewer than {repeats + 2} of {TOTAL_STEPS} steps to time")
    step = timed(one_step, repeats, setting.device)
    rows = setting.batch + (setting.unlabelled_batch if bench.method.uses_unlabelled else 0)
    bound = counted * seconds_per_flop(setting, rows, repeats) + updates * bench.optimiser_seconds(repeats)
    return step, bound


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``label=method:key=value:key=value`` (values parsed as YAML scalars)."""
    import yaml

    label, _, rest = text.partition("=")
    name, *pairs = rest.split(":")
    options = {k: yaml.safe_load(v) for k, v in (pair.split("=", 1) for pair in pairs)}
    return label, name, options


def parse_setting(args: argparse.Namespace) -> Setting:
    default_patch, default_batch = ((88, 104), 8) if args.dim == 2 else ((48, 48, 48), 2)
    patch = tuple(int(v) for v in args.patch.split(",")) if args.patch else default_patch
    if len(patch) == 1:
        patch = patch * args.dim
    if len(patch) != args.dim:
        raise SystemExit(f"--patch needs 1 or {args.dim} sizes, got {args.patch}")
    batch = args.batch or default_batch
    unlabelled = batch if args.unlabelled_batch is None else args.unlabelled_batch
    return Setting(dim=args.dim, widths=tuple(int(w) for w in args.widths.split(",")), batch=batch,
                   unlabelled_batch=unlabelled, patch=patch, classes=args.classes, device=torch.device(args.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(available_methods()), help="comma-separated method names")
    parser.add_argument("--variant", action="append", default=[],
                        help="a configured method, label=method:key=value:key=value (repeatable)")
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--widths", default="16,32,64,128", help="U-Net channels per level")
    parser.add_argument("--batch", type=int, default=0, help="labelled images per step (0: 8 in 2D, 2 in 3D)")
    parser.add_argument("--unlabelled-batch", type=int, default=None, help="unlabelled images per step (def. --batch)")
    parser.add_argument("--patch", default="", help="slice / patch size, e.g. 88,104 or 48 (default: 88,104 / 48³)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--at", type=float, default=0.9, help="progress fraction where the timed steps start")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = parse_setting(args)
    torch.manual_seed(0)
    variants = [(m, m, {}) for m in args.methods.split(",") if m] + [parse_variant(v) for v in args.variant]
    base, _ = measure("supervised", setting, args.at, args.repeats)
    print(f"device={setting.device} dim={setting.dim} widths={list(setting.widths)} batch={setting.batch}"
          f"+{setting.unlabelled_batch} patch={list(setting.patch)} classes={setting.classes} at={args.at} "
          f"threads={torch.get_num_threads()} supervised step {base * 1e3:.1f} ms")
    print(f"{'method':<22}{'step ms':>9}{'÷ supervised':>14}{'bound ms':>10}{'÷ bound':>9}")
    for label, name, options in variants:
        step, bound = measure(name, setting, args.at, args.repeats, options)
        print(f"{label:<22}{step * 1e3:>9.1f}{step / base:>14.2f}{bound * 1e3:>10.1f}{step / bound:>9.2f}")


if __name__ == "__main__":
    main()
