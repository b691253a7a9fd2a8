"""Parameters and FLOPs per method, printed next to the cost rows of Xu et al. 2022 (Table 1).

Run: ``python benchmarks/bench_cost.py [--methods supervised,segpl,segpl_vi,self_training,ensemble]
[--dim 3] [--widths 8,16,32,64] [--patch 48] [--classes 2] [--batch 2]``.

* params: every network the method builds (``trainable``: what the optimiser updates; frozen teachers and
  EMA nets count in ``total`` only);
* inference GFLOPs: one patch through ``Method.predict`` (the paper's FLOPs column compares this);
* training GFLOPs: one training step, forward + backward, on ``batch`` labelled + ``batch`` unlabelled patches.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, 2 per
multiply-add). The defaults mirror the paper's 3D setting (U-Net with 8 channels in the first encoder,
binary task); its U-Net is not ours, so compare ratios to ``supervised`` rather than absolute counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semiseg.config import load_config
from semiseg.engine.networks import build_nets, trainable_parameters
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, Method, MethodContext, Progress, available_methods
from semiseg.methods.base import Nets

# Table 1 of the paper (CARVE, 3D U-Net with 8 base channels): parameters (K) and FLOPs (G).
PAPER = {"supervised": (626.74, 6.22), "segpl": (626.74, 6.22), "segpl_vi": (630.0, 6.23),
         "cps": (1253.48, 12.44), "cct": (646.74, 8.3), "fixmatch": (626.74, 12.44)}


def setup(name: str, args: argparse.Namespace) -> tuple[Method, Nets]:
    cfg = load_config(None, [f"model.dim={args.dim}", f"model.widths=[{args.widths}]", f"train.method={name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=args.classes, spatial_dims=args.dim, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False))
    method = available_methods()[name](ctx, {})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def batches(args: argparse.Namespace) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(0)
    spatial = (args.patch,) * args.dim
    image = torch.randn(args.batch, 1, *spatial, generator=g)
    label = torch.randint(0, args.classes, (args.batch, *spatial), generator=g)
    unl = torch.randn(args.batch, 1, *spatial, generator=g)
    return Batch(image, label), Batch(unl)


def gflops(fn: object) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def inference_gflops(method: Method, nets: Nets, args: argparse.Namespace) -> float:
    for net in nets.values():
        net.eval()
    x = torch.randn(1, 1, *((args.patch,) * args.dim))
    with torch.no_grad():
        return gflops(lambda: method.predict(nets, x))


def training_gflops(method: Method, nets: Nets, args: argparse.Namespace) -> float:
    """One step at mid-training (multi-stage methods are in their semi-supervised stage there)."""
    labelled, unlabelled = batches(args)
    for net in nets.values():
        net.train()

    def step() -> None:
        out = method.training_step(nets, labelled, unlabelled if method.uses_unlabelled else None, Progress(5, 8))
        while out is not None:  # chained updates (UCMT) count too
            torch.stack([v.float() for v in out.losses.values()]).sum().backward()
            out = out.followup() if out.followup is not None else None

    return gflops(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="supervised,segpl,segpl_vi,self_training,ensemble")
    parser.add_argument("--dim", type=int, default=3, choices=(2, 3))
    parser.add_argument("--widths", default="8,16,32,64", help="U-Net channels per level")
    parser.add_argument("--patch", type=int, default=48, help="patch side (divisible by 2^(levels-1))")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="labelled (and unlabelled) patches per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.dim}D U-Net widths [{args.widths}], {args.classes} classes, patch {args.patch}^{args.dim}, "
          f"training batch {args.batch} labelled + {args.batch} unlabelled")
    head = (f"{'method':<16}{'params K':>10}{'trainable K':>13}{'Δ vs sup K':>12}{'infer GFLOPs':>14}"
            f"{'train GFLOPs':>14}{'÷ sup':>7}  paper (params K, GFLOPs)")
    print(head)
    base: dict[str, float] = {}
    for name in [m for m in args.methods.split(",") if m]:
        method, nets = setup(name, args)
        total = sum(p.numel() for net in nets.values() for p in net.parameters()) / 1e3
        trainable = sum(p.numel() for p in trainable_parameters(nets, method.networks())) / 1e3
        infer, train = inference_gflops(method, nets, args), training_gflops(method, nets, args)
        base = base or {"params": total, "train": train}
        paper = PAPER.get(name)
        print(f"{name:<16}{total:>10.2f}{trainable:>13.2f}{total - base['params']:>12.2f}{infer:>14.3f}"
              f"{train:>14.3f}{train / base['train']:>7.2f}  " + (f"{paper[0]:.2f}, {paper[1]:.2f}" if paper else "-"))


if __name__ == "__main__":
    main()
