"""Step time of each method ÷ the supervised step, and ÷ the bound set by its unavoidable network passes.

Run: ``python benchmarks/bench_step_time.py [--methods a,b] [--variant label=method:k=v] [--dim 2]
[--repeats 10] [--device cpu] [--threads N]``.

Everything is measured in one run, on the same network, batch and device, so the ratios are comparable
across machines even when the seconds are not. A method's bound is the sum over ``Method.passes()`` of the
measured time of that bare pass (forward + backward, or forward under ``no_grad``) plus one optimiser
step per trainable network and update (UCMT makes two updates per step); ``step/bound`` near 1 means the
method adds little beyond the passes its equations need (target ≤ 1.10). Batches mimic the 2D brain demo:
8 labelled + 8 unlabelled 88×104 slices, 3 classes; ``--dim 3`` uses 2 + 2 patches of 48³.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.api import supervised_loss
from semiseg.config import load_config
from semiseg.engine.loop import build_nets, make_optimizer, trainable_parameters, update_ema_net
from semiseg.methods import Batch, MethodContext, Progress, available_methods

NUM_CLASSES = 3


def make_batches(dim: int, device: torch.device) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(0)
    n, spatial = (8, (88, 104)) if dim == 2 else (2, (48, 48, 48))
    image = torch.randn(n, 1, *spatial, generator=g)
    label = torch.randint(0, NUM_CLASSES, (n, *spatial), generator=g)
    unl = torch.randn(n, 1, *spatial, generator=g)
    strong = unl + 0.1 * torch.randn(unl.shape, generator=g)
    to = lambda t: t.to(device)  # noqa: E731
    labelled = Batch(to(image), to(label), {"weak": to(image)}, [f"l{i}" for i in range(n)])
    unlabelled = Batch(to(unl), None, {"weak": to(unl), "strong": to(strong)}, [f"u{i}" for i in range(n)])
    return labelled, unlabelled


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


def setup(name: str, dim: int, device: torch.device, options: dict | None = None):
    cfg = load_config(None, [f"model.dim={dim}", f"train.method={name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=NUM_CLASSES, spatial_dims=dim, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False))
    method = available_methods()[name](ctx, options or {})
    nets = build_nets(method, cfg, ctx, device)
    return cfg, method, nets


def method_step_time(name: str, dim: int, device: torch.device, repeats: int, options: dict | None = None) -> float:
    cfg, method, nets = setup(name, dim, device, options)
    specs = method.networks()
    params = trainable_parameters(nets, specs)
    optimizer = make_optimizer(cfg, params)
    labelled, unlabelled = make_batches(dim, device)
    step = {"i": 0}

    def one_step() -> None:
        for net in nets.values():
            net.train()
        progress = Progress(step["i"] % 1000, 1000)
        out = method.training_step(nets, labelled, unlabelled if method.uses_unlabelled else None, progress)
        while out is not None:
            total = torch.stack(list(out.losses.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for net_name, spec in specs.items():
                if spec.ema_of:
                    update_ema_net(nets, net_name, spec, step["i"] + 1)
            out = out.followup() if out.followup is not None else None
        method.on_step_end(nets, progress)
        step["i"] += 1

    return timed(one_step, repeats, device)


def pass_bound(name: str, dim: int, device: torch.device, repeats: int, options: dict | None = None) -> float:
    cfg, method, nets = setup(name, dim, device, options)
    specs = method.networks()
    labelled, unlabelled = make_batches(dim, device)
    batches = {"labelled": labelled.image, "unlabelled": unlabelled.image,
               "both": torch.cat([labelled.image, unlabelled.image])}
    total = 0.0
    for p in method.passes():
        net, x = nets[p.net], batches[p.batch].repeat(p.repeat, *([1] * (labelled.image.ndim - 1)))
        net.train()
        if p.grad:
            net.requires_grad_(True)
            total += timed(lambda net=net, x=x: net(x).float().square().mean().backward(), repeats, device)
        else:
            total += timed(lambda net=net, x=x: _no_grad_forward(net, x), repeats, device)
    updates = count_updates(method, nets, labelled, unlabelled)
    for net_name, spec in specs.items():
        if spec.trainable:
            opt = make_optimizer(cfg, list(nets[net_name].parameters()))
            for q in nets[net_name].parameters():
                q.grad = torch.zeros_like(q)
            total += updates * timed(opt.step, repeats, device)
    return total


def count_updates(method, nets, labelled: Batch, unlabelled: Batch) -> int:
    """Optimiser updates per step: 1 + the length of the method's ``followup`` chain."""
    out = method.training_step(nets, labelled, unlabelled if method.uses_unlabelled else None, Progress(0, 1000))
    updates = 1
    while out.followup is not None:
        out, updates = out.followup(), updates + 1
    return updates


@torch.no_grad()
def _no_grad_forward(net: torch.nn.Module, x: torch.Tensor) -> None:
    net(x)


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``label=method:key=value:key=value`` (values parsed as YAML scalars)."""
    import yaml

    label, _, rest = text.partition("=")
    name, *pairs = rest.split(":")
    options = {k: yaml.safe_load(v) for k, v in (pair.split("=", 1) for pair in pairs)}
    return label, name, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(available_methods()), help="comma-separated method names")
    parser.add_argument("--variant", action="append", default=[],
                        help="a configured method, label=method:key=value:key=value (repeatable)")
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    variants = [(m, m, {}) for m in args.methods.split(",") if m] + [parse_variant(v) for v in args.variant]
    base = method_step_time("supervised", args.dim, device, args.repeats)
    print(f"device={device} dim={args.dim} threads={torch.get_num_threads()} supervised step {base * 1e3:.1f} ms")
    print(f"{'method':<22}{'step ms':>9}{'÷ supervised':>14}{'bound ms':>10}{'÷ bound':>9}")
    for label, name, options in variants:
        step = method_step_time(name, args.dim, device, args.repeats, options)
        bound = pass_bound(name, args.dim, device, args.repeats, options)
        print(f"{label:<22}{step * 1e3:>9.1f}{step / base:>14.2f}{bound * 1e3:>10.1f}{step / bound:>9.2f}")


if __name__ == "__main__":
    main()
