"""Peak memory and time of RPG's pseudo-label step, at the paper's settings and for Table 3's k.

Run: ``python benchmarks/bench_rpg_memory.py [--device auto|cpu|cuda] [--threads 1] [--repeats 3]``.

Setting: 2D slices of the brain demo's size (88×104 after padding to the U-Net divisor), U-Net widths
[8, 16, 32, 64] (the compare protocol), 4 labelled + 4 unlabelled slices of synthetic phantoms, 3 classes;
p = 3, s = 64, so p·s² = 12288 references and 4·88·104 = 36608 unlabelled pixels. Each k (the paper's 7000;
25 %, 50 % and 100 % of the references, Table 3) runs in a fresh subprocess, which reports:

* the peak memory of the pseudo-label step above what the process held just before it (CPU: the kernel's
  peak-RSS counter, reset through ``/proc/self/clear_refs``, else ``ru_maxrss``; CUDA:
  ``torch.cuda.max_memory_allocated``);
* its median time, the median time of a whole RPG training step (forward, matching, loss, backward,
  optimiser update), the share of that step spent on pseudo labels, and the pseudo-label time ÷ the same
  training step without them (``supervised`` on the same forward/backward over 4 + 4 slices).

The naive form (whole distance matrix, then ``torch.topk``) is printed as its size: the float32 distance
matrix plus k float32 values and int64 indices per unlabelled pixel.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_step_time import timed  # noqa: E402  (the script folder is on sys.path)

from semiseg.config import load_config
from semiseg.data.sources.phantom import make_phantoms
from semiseg.engine.device import resolve_device
from semiseg.engine.networks import build_nets, trainable_parameters
from semiseg.engine.optim import make_optimizer
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods
from semiseg.ssl.reference import ReferenceSettings, reference_pseudo_labels

SPATIAL, BATCH, CLASSES, WIDTHS = (88, 104), 4, 3, "[8, 16, 32, 64]"
POOL, SIZE, PAPER_K = 3, 64, 7000
GIB = 2**30


def make_batches(device: torch.device) -> tuple[Batch, Batch]:
    """Phantom slices (ellipses with class intensities) of the demo's size: 4 labelled, 4 unlabelled."""
    cases = [ref.load() for ref in make_phantoms(n_cases=2 * BATCH, size=SPATIAL, num_classes=CLASSES).cases]
    image = torch.stack([torch.from_numpy(c.image) for c in cases]).float().to(device)
    label = torch.stack([torch.from_numpy(c.label) for c in cases]).long().to(device)
    return Batch(image[:BATCH], label[:BATCH]), Batch(image[BATCH:])


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` entry in bytes (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory of ``fn`` above what the process held before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        fn()
        return _proc_status("VmHWM") - before
    except (OSError, TypeError):  # no procfs: ru_maxrss (KiB on Linux), only exact for a first peak
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024


def setup(name: str, options: dict, device: torch.device):
    cfg = load_config(None, ["model.dim=2", f"model.widths={WIDTHS}", f"train.method={name}"])
    ctx = MethodContext(
        label_mode="multiclass",
        num_classes=CLASSES,
        spatial_dims=2,
        in_channels=1,
        supervised_loss=supervised_loss("dice_ce", "multiclass", False),
    )
    method = available_methods()[name](ctx, options)
    nets = build_nets(method, cfg, ctx, device)
    return cfg, method, nets


def step_time(
    name: str, options: dict, labelled: Batch, unlabelled: Batch, device: torch.device, repeats: int
) -> float:
    """Median time of one training step of ``name``: loss terms, backward, optimiser update."""
    cfg, method, nets = setup(name, options, device)
    optimizer = make_optimizer(cfg, trainable_parameters(nets, method.networks()))

    def one() -> None:
        out = method.training_step(nets, labelled, unlabelled if method.uses_unlabelled else None, Progress(0, 10))
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(out.losses.values())).sum().backward()
        optimizer.step()

    return timed(one, repeats, device)


def worker(k: int, args: argparse.Namespace) -> dict:
    """Measure one setting in this (fresh) process."""
    device = resolve_device(args.device)
    labelled, unlabelled = make_batches(device)
    _, _, nets = setup("rpg", {}, device)
    with torch.no_grad():
        out = nets["model"](torch.cat([labelled.image, unlabelled.image]), return_features=True)
    feats_l, feats_u = out.features[:BATCH], out.features[BATCH:]
    settings = ReferenceSettings(pool_size=POOL, size=SIZE, k=k)

    def pseudo_labels() -> None:
        reference_pseudo_labels(
            feats_l, labelled.label, feats_u, label_mode="multiclass", num_classes=CLASSES, settings=settings
        )

    peak = peak_bytes(pseudo_labels, device)
    t_pl = timed(pseudo_labels, args.repeats, device)
    options = {"pool_size": POOL, "reference_size": SIZE, "k": k}
    t_rpg = step_time("rpg", options, labelled, unlabelled, device, args.repeats)
    t_sup = step_time(
        "supervised",
        {},
        Batch(torch.cat([labelled.image, unlabelled.image]), torch.cat([labelled.label, labelled.label])),
        None,
        device,
        args.repeats,
    )
    return {
        "peak": peak,
        "t_pl": t_pl,
        "t_rpg": t_rpg,
        "t_sup": t_sup,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args)))
        return
    refs = POOL * SIZE * SIZE
    queries = BATCH * SPATIAL[0] * SPATIAL[1]
    rows = [("paper k=7000", PAPER_K)] + [
        (f"k={p}% ({round(p / 100 * refs)})", round(p / 100 * refs)) for p in (25, 50, 100)
    ]
    print(
        f"RPG pseudo-label step: p={POOL}, s={SIZE} → {refs} references; {BATCH}+{BATCH} slices "
        f"{SPATIAL[0]}×{SPATIAL[1]} → {queries} unlabelled pixels; U-Net widths {WIDTHS}"
    )
    header = (
        f"{'setting':<20}{'peak MiB':>10}{'naive GiB':>11}{'PL ms':>9}{'RPG step ms':>13}"
        f"{'PL ÷ step':>11}{'PL ÷ sup step':>15}"
    )
    print(header)
    for label, k in rows:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            str(k),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        ]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        naive = (queries * refs * 4 + queries * k * 12) / GIB
        print(
            f"{label:<20}{result['peak'] / 2**20:>10.1f}{naive:>11.2f}{result['t_pl'] * 1e3:>9.0f}"
            f"{result['t_rpg'] * 1e3:>13.0f}{result['t_pl'] / result['t_rpg']:>10.0%}"
            f"{result['t_pl'] / result['t_sup']:>15.2f}"
        )
    print(f"device={result['device']} threads={result['threads']}; goal: peak < 2048 MiB, PL ÷ step < 30 %")


if __name__ == "__main__":
    main()
