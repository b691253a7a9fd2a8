"""Resident memory of a training process against the number of cases, with the on-disk case cache and without.

Run: ``python benchmarks/bench_memory.py [--cases 50,400] [--shape 48,48,32] [--steps 20] [--root DIR]``.

A synthetic 3D dataset (nnU-Net v2 layout, uncompressed NIfTI, one channel, two classes) is written to a temporary
folder with each number of cases. Every training run is a fresh process (3D supervised, widths [4, 8], 32³
patches, batch 2, ``split.labelled=all`` so every training case is in the sampler's store, 2 validation cases,
``train.threads=1``); at its last step, after its validation, it reads its own ``/proc/self/status``:

* ``VmRSS``: every page of the process in RAM — anonymous memory (``RssAnon``: arrays, tensors, the heap) plus
  file-backed pages (``RssFile``: torch's shared libraries and the cache pages the sampler touched);
* ``RssAnon``: what the process holds privately and the kernel could only reclaim by swapping;
* ``VmHWM``: the peak of ``VmRSS`` over the process's life (loading included).

File-backed pages of the cache are counted in ``VmRSS``: they are clean page-cache pages that the kernel shares
with other processes (loader workers, other runs) and drops under pressure without writing anything, so they are
not memory the run needs, but they are resident, and the ratio is asked of ``VmRSS`` as it stands. They stay flat
because a run touches the windows its steps sample (steps × batch patches) and its validation cases, not the
dataset. With ``data.cache=auto`` the first run on a dataset fills the cache (each case read, prepared, written and
let go); the figures are those of the second run, which maps the entries and reads no NIfTI. ``data.cache=off``
holds every store case in RAM, as before the cache existed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import semiseg  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def write_dataset(root: Path, n_cases: int, shape: tuple[int, ...]) -> Path:
    """``n_cases`` cases of noise around one bright ellipsoid (the label), as an nnU-Net v2 folder of ``.nii``."""
    import nibabel as nib

    meta = {"channel_names": {"0": "ct"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii",
            "name": f"synthetic{n_cases}"}
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    for i in range(n_cases):
        rng = np.random.default_rng(i)
        centre = rng.uniform(0.3, 0.7, 3) * shape
        radii = rng.uniform(0.15, 0.3, 3) * shape
        label = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        image = rng.normal(size=shape).astype(np.float32) + 3 * label
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"case{i:04d}_0000.nii"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(root / "labelsTr" / f"case{i:04d}.nii"))
    return root


def memory_status() -> dict[str, float]:
    """The ``_FIELDS`` of ``/proc/self/status`` in MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _FIELDS:
            values[key] = int(rest.split()[0]) / 1024
    return values


def child(data: str, cache: str, steps: int, output: str) -> None:
    """One training run; prints its memory at the last step and the seconds until its first step as JSON."""
    from semiseg import api
    from semiseg.config import load_config

    cfg = load_config(None, [
        "data.source=nnunet", f"data.path={data}", f"data.cache={cache}", "split.labelled=all", "split.val=2",
        "split.test=2", "model.dim=3", "model.widths=[4, 8]", "train.patch_size=[32, 32, 32]", "train.batch_size=2",
        f"train.steps={steps}", f"train.val_every={steps}", "train.warmup_steps=1", "train.threads=1",
        "train.tensorboard=off", f"output.root={output}", "output.name=run",
    ])
    start, seen = time.perf_counter(), {}

    def on_step(step: int) -> None:
        if step == 1:
            seen["first_step_s"] = time.perf_counter() - start
        if step == steps:
            seen.update(memory_status())

    api.train(cfg, progress=False, evaluate=False, on_step=on_step, overwrite=True)
    print(json.dumps(seen))


def run_child(data: Path, cache: str, steps: int, output: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(data), "--cache", cache, "--steps", str(steps),
           "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"training run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="50,400", help="numbers of cases, comma-separated")
    parser.add_argument("--shape", default="48,48,32", help="voxels per case")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--root", default=None, help="working folder (default: a temporary one, removed after)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache, args.steps, args.output)
        return
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        measure(Path(tmp), [int(n) for n in args.cases.split(",")], tuple(int(s) for s in args.shape.split(",")),
                args.steps)


def measure(root: Path, counts: list[int], shape: tuple[int, ...], steps: int) -> None:
    results: dict[tuple[str, int], dict[str, float]] = {}
    for n in counts:
        data = write_dataset(root / f"data{n}", n, shape)
        cache = str(root / "cache")
        fill = run_child(data, cache, steps, root / "runs")
        results["cache", n] = run_child(data, cache, steps, root / "runs")
        results["cache", n]["fill_first_step_s"] = fill["first_step_s"]
        results["off", n] = run_child(data, "off", steps, root / "runs")
    mib_per_case = np.prod(shape) * (4 + 1) / 2**20
    print(f"{len(counts)} datasets of {shape} voxels (image float32 + label uint8 = {mib_per_case:.2f} MiB a case), "
          f"{steps} steps, memory at the last step in MiB")
    print(f"{'cache':>6} {'cases':>6} " + " ".join(f"{f:>8}" for f in _FIELDS) + "  first step (s)")
    for (mode, n), r in results.items():
        first = f"{r['first_step_s']:.1f}" + (f" (filling: {r['fill_first_step_s']:.1f})" if mode == "cache" else "")
        print(f"{mode:>6} {n:>6} " + " ".join(f"{r[f]:8.1f}" for f in _FIELDS) + f"  {first}")
    lo, hi = min(counts), max(counts)
    for mode in ("cache", "off"):
        ratios = ", ".join(f"{f} {results[mode, hi][f] / results[mode, lo][f]:.3f}" for f in _FIELDS)
        print(f"ratio {hi}/{lo} cases, {'cached (second run)' if mode == 'cache' else 'data.cache=off'}: {ratios}")


if __name__ == "__main__":
    main()
