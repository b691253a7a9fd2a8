"""Two processes (gloo on CPU, as torchrun starts them) train the run one process trains with the same global batch.

One pair of processes runs every scenario of this module (a module-scoped fixture), so the cost of starting
torch twice is paid once. Exact equality is impossible (the gradient mean is summed in another order), so
weights are compared within ``ATOL`` after six steps with Adam (lr 3e-3); a wrong shard, a missing gradient average or a
rank-local Batch statistic moves them by orders of magnitude more.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from semiseg.config import load_config
from semiseg.engine.distributed import Distributed, check_batches
from semiseg.engine.run import Run
from semiseg.errors import ConfigError
from semiseg.methods import available_methods

ATOL = 1e-5  # measured: at most 2.1e-7 (ucmt); Adam divides small gradients by their own size
WORLD = 2
# Exactly equivalent settings: instance norm (no batch statistics), no input noise in mean_teacher (torch noise is
# drawn per rank; see docs/distributed.md). The losses are the defaults: batch Dice is summed over the ranks.
METHODS = {
    "supervised": [],
    "mean_teacher": ["method.noise_std=0", "method.ema_decay=0.9"],
    "cps": [],
    "ucmt": ["method.ema_decay=0.9"],
    "dual_uncertainty": [],
}


# Settings under which two processes do not train the weights of one: measured and bounded, not claimed equal.
# Batch norm normalises each process's shard with that shard's statistics (docs/distributed.md).
NOT_EQUAL = {"supervised_batchnorm": ("supervised", ["model.norm=batch"])}
BATCHNORM_BOUND = 0.05  # measured: 2.0e-2 largest weight difference after six steps (docs/distributed.md)


def _cfg(root: Path, name: str, method: str, *extra: str):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 8, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=2", "model.dim=2", "model.widths=[4, 8]", "model.norm=instance",
        "train.steps=6", "train.val_every=3", "train.log_every=1", "train.batch_size=4",
        "train.unlabelled_batch_size=4", "train.patch_size=[32, 32]", "train.warmup_steps=1", "train.tensorboard=off",
        f"train.method={method}", f"output.root={root}", f"output.name={name}", "eval.report_cases=1", *extra,
    ])


def _final_state(run: Run) -> dict:
    trainer = run.trainer
    nets = {n: {k: v.detach().clone() for k, v in net.state_dict().items()} for n, net in trainer.nets.items()}
    return {"nets": nets,
            "method_state": trainer.method.state_dict(), "best": run.best, "step": trainer.step}


def _train_all(root: Path, out: Path, tag: str) -> None:
    """Every method of ``METHODS`` (and the interrupted-and-resumed supervised run) in this process."""
    for method, extra in METHODS.items():
        run = Run.build(_cfg(root, method, method, *extra), progress=False)
        run.fit()
        torch.save(_final_state(run), out / f"{method}-{tag}.pt")
    for name, (method, extra) in NOT_EQUAL.items():
        run = Run.build(_cfg(root, name, method, *extra), progress=False)
        run.fit()
        torch.save(_final_state(run), out / f"{name}-{tag}.pt")
    torch.save(_first_batches(root), out / f"batches-{tag}.pt")

    _stop_at_step_3(root, "resumed")
    resumed = Run.resume(root / "resumed", progress=False)
    resumed.fit()
    torch.save(_final_state(resumed), out / f"resumed-{tag}.pt")


def _first_batches(root: Path) -> dict[str, torch.Tensor]:
    """The labelled and unlabelled images the method's first step receives in this process (its shard)."""
    run = Run.build(_cfg(root, "batches", "mean_teacher", *METHODS["mean_teacher"], "train.steps=1",
                         "train.val_every=1"), progress=False)
    method, seen = run.trainer.method, {}
    step = method.training_step

    def recording(nets, labelled, unlabelled, progress):
        seen.setdefault("labelled", labelled.image.detach().clone())
        seen.setdefault("unlabelled", unlabelled.image.detach().clone())
        return step(nets, labelled, unlabelled, progress)

    method.training_step = recording
    run.fit()
    return seen


class _Stop(Exception):
    pass


def _stop_at_step_3(root: Path, name: str) -> None:
    """A supervised run interrupted after its checkpoint of step 3 (val_every=3)."""

    def stop(step: int) -> None:
        if step == 3:
            raise _Stop

    run = Run.build(_cfg(root, name, "supervised"), progress=False)
    with pytest.raises(_Stop):
        run.fit(on_step=stop)


def _watch_writes(root: Path, found: list[str]) -> None:
    """Record every file this process opens for writing, renames, creates or removes under ``root``."""
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if event not in {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"} or not args:
            return
        path = args[0]
        if not isinstance(path, (str, os.PathLike)) or not os.path.abspath(path).startswith(str(root)):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not ((isinstance(mode, str) and set(mode) & set("wax+")) or (mode is None and flags & writing)):
                return
        found.append(f"{event} {path}")

    sys.addaudithook(hook)


def _worker(rank: int, port: int, root: str, out: str, started_alone: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    writes: list[str] = []
    if rank:
        _watch_writes(Path(root).resolve(), writes)
    _train_all(Path(root), Path(out), f"rank{rank}")
    crossed = Run.resume(started_alone, progress=False)  # a run one process started, resumed by two
    crossed.fit()
    torch.save(_final_state(crossed), Path(out) / f"crossed-rank{rank}.pt")
    every = {}
    for method in sorted(available_methods()):
        run = Run.build(_cfg(Path(root), f"all-{method}", method, "train.steps=2", "train.val_every=2"), progress=False)
        run.fit()
        every[method] = _final_state(run)
    torch.save(every, Path(out) / f"every-rank{rank}.pt")
    (Path(out) / f"writes-rank{rank}.json").write_text(json.dumps(writes))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("states")
    ddp_root, single_root = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    _train_all(single_root, out, "single")
    _stop_at_step_3(single_root, "crossed")
    mp.start_processes(_worker, args=(_free_port(), str(ddp_root), str(out), str(single_root / "crossed")),
                       nprocs=WORLD, start_method="spawn")
    return out, ddp_root


def _load(out: Path, name: str) -> dict:
    return torch.load(out / f"{name}.pt", weights_only=False)


def _assert_same_state(state: dict, expected: dict) -> None:
    """Method state equal, its float scores (a curriculum's uncertainties) within a relative 1e-4."""
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_same_state(state[key], value)
        elif isinstance(value, float):
            assert state[key] == pytest.approx(value, rel=1e-4), key
        else:
            assert state[key] == value, key


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[n][k].cpu().float() - b[n][k].cpu().float()).abs().max()) for n in a for k in a[n])


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_the_weights_of_one(results, method):
    out, _ = results
    single, rank0 = _load(out, f"{method}-single"), _load(out, f"{method}-rank0")
    assert _max_difference(single["nets"], rank0["nets"]) < ATOL
    _assert_same_state(rank0["method_state"], single["method_state"])
    assert rank0["best"]["step"] == single["best"]["step"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_rank_holds_the_same_nets_and_state(results, method):
    out, _ = results
    rank0, rank1 = _load(out, f"{method}-rank0"), _load(out, f"{method}-rank1")
    assert _max_difference(rank0["nets"], rank1["nets"]) == 0.0  # EMA teachers and snapshots included
    assert rank0["method_state"] == rank1["method_state"] and rank0["best"] == rank1["best"]


def test_every_method_trains_under_two_processes_with_identical_ranks(results):
    out, _ = results
    rank0, rank1 = _load(out, "every-rank0"), _load(out, "every-rank1")
    assert set(rank0) == set(available_methods())
    for method in rank0:
        assert rank0[method]["step"] == 2, method
        assert _max_difference(rank0[method]["nets"], rank1[method]["nets"]) == 0.0, method
        assert rank0[method]["method_state"] == rank1[method]["method_state"], method


def test_curriculum_ranked_every_case_once(results):
    out, ddp_root = results
    state = _load(out, "dual_uncertainty-rank1")["method_state"]
    assert state["stage"] == 4 and len(state["ranking"]["order"]) == 3
    ranking = json.loads((ddp_root / "dual_uncertainty" / "artifacts" / "ranking.json").read_text())
    assert ranking["order"] == state["ranking"]["order"]


def test_only_rank_0_writes_into_the_run_folders(results):
    out, ddp_root = results
    assert json.loads((out / "writes-rank1.json").read_text()) == []
    log = (ddp_root / "supervised" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 6  # header and one row per step, written once


def test_resume_under_two_processes_continues_the_run(results):
    out, ddp_root = results
    resumed, single = _load(out, "resumed-rank0"), _load(out, "supervised-single")
    assert resumed["step"] == 6
    assert _max_difference(single["nets"], resumed["nets"]) < ATOL
    assert _max_difference(resumed["nets"], _load(out, "resumed-rank1")["nets"]) == 0.0
    rows = (ddp_root / "resumed" / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_run_one_process_started_resumes_under_two(results):
    out, _ = results
    crossed, single = _load(out, "crossed-rank0"), _load(out, "supervised-single")
    assert crossed["step"] == 6 and _max_difference(single["nets"], crossed["nets"]) < ATOL
    assert _max_difference(crossed["nets"], _load(out, "crossed-rank1")["nets"]) == 0.0


def test_each_process_trains_on_its_own_shard_of_the_one_process_batch(results):
    """Every rank drawing the whole batch would pass the weight tests (batch Dice summed over ranks and averaged
    gradients of equal batches give the one-process update); the batches themselves tell."""
    out, _ = results
    single, ranks = _load(out, "batches-single"), [_load(out, f"batches-rank{r}") for r in range(WORLD)]
    for part in ("labelled", "unlabelled"):
        assert single[part].shape[0] == 4 and all(r[part].shape[0] == 4 // WORLD for r in ranks), part
        assert torch.equal(torch.cat([r[part] for r in ranks]), single[part]), part


def test_batch_norm_under_two_processes_stays_close_but_is_not_the_one_process_run(results):
    """Each process normalises with its shard's statistics: the weights move away from one process's, by far more
    than the summation order does (ATOL), yet stay close; both ranks stay identical."""
    out, _ = results
    for name in NOT_EQUAL:
        single, rank0, rank1 = (_load(out, f"{name}-{tag}") for tag in ("single", "rank0", "rank1"))
        difference = _max_difference(single["nets"], rank0["nets"])
        print(f"{name}: largest weight difference to one process {difference:.2e}")
        assert 100 * ATOL < difference < BATCHNORM_BOUND, name
        assert _max_difference(rank0["nets"], rank1["nets"]) == 0.0, name


def test_shards_are_contiguous_and_cover_the_global_batch():
    shards = [Distributed(rank=r, world_size=3).shard(6) for r in range(3)]
    assert shards == [[0, 1], [2, 3], [4, 5]]
    assert Distributed().shard(6) is None  # one process draws the whole batch as before


def test_batch_dice_of_shards_with_totals_is_the_dice_of_the_whole_batch():
    """What two processes compute, in one: each shard's loss with the other's sums added is the whole batch's Dice,
    and the shards' gradients add up to the whole batch's gradient (the all-reduce's backward does the adding)."""
    from semiseg.losses import batch_totals, dice_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (4, 8, 8))
    dice_loss(logits, target).backward()
    whole = logits.grad.clone()

    def stats(part: slice) -> torch.Tensor:
        captured = []
        with batch_totals(lambda t: captured.append(t.detach()) or t):
            dice_loss(logits[part], target[part])
        return captured[0]

    shards = [slice(0, 2), slice(2, 4)]
    others = [stats(shards[1]), stats(shards[0])]
    logits.grad = None
    for part, other in zip(shards, others, strict=True):
        with batch_totals(lambda t, other=other: t + other):
            loss = dice_loss(logits[part], target[part])
        assert float(loss.detach()) == pytest.approx(float(dice_loss(logits, target).detach()), abs=1e-6)
        loss.backward()
    assert torch.allclose(logits.grad, whole, atol=1e-7)


def test_batches_not_divisible_by_the_processes_are_refused():
    with pytest.raises(ConfigError, match="train.unlabelled_batch_size=5 .* multiple of 2"):
        check_batches(4, 5, 2)
    check_batches(4, 0, 2)


@pytest.mark.slow
def test_torchrun_trains_and_only_rank_0_reports(tmp_path):
    """The real launcher: ``torchrun --standalone --nproc-per-node 2 -m semiseg train`` on CPU."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "semiseg", "train", "--method", "mean_teacher", "--output", str(tmp_path / "run"), "--quiet",
               "--set", "data.source=phantom", "--set", "data.options={n_cases: 8, dim: 2, seed: 0}",
               "--set", "split.labelled=2", "--set", "split.val=1", "--set", "split.test=2", "--set", "model.dim=2",
               "--set", "model.widths=[4, 8]", "--set", "train.steps=4", "--set", "train.val_every=2",
               "--set", "train.batch_size=4", "--set", "train.unlabelled_batch_size=4", "--set", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report:") == 1 and "2 + 2 per process" in done.stderr
    assert (tmp_path / "run" / "report.md").is_file()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across processes needs two GPUs")
def test_nccl_with_sync_batchnorm_matches_one_process(tmp_path):
    """Two GPUs, NCCL, SyncBatchNorm: BatchNorm over the global batch gives the one-process weights."""
    from semiseg.engine import distributed

    out = tmp_path / "states"
    out.mkdir()
    mp.start_processes(_gpu_worker, args=(_free_port(), str(tmp_path / "ddp"), str(out)), nprocs=2,
                       start_method="spawn")
    single = Run.build(_cfg(tmp_path / "single", "run", "supervised", *_GPU), progress=False)
    single.fit()
    assert distributed.current().world_size == 1
    assert _max_difference(_final_state(single)["nets"], _load(out, "gpu-rank0")["nets"]) < 1e-4


_GPU = ("model.norm=batch", "train.sync_batchnorm=true", "train.device=cuda", "train.amp=off")


def _gpu_worker(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from semiseg.engine import distributed

    run = Run.build(_cfg(Path(root), "run", "supervised", *_GPU), progress=False)
    assert distributed.current().backend == "nccl"
    run.fit()
    state = _final_state(run)
    state["nets"] = {n: {k: v.cpu() for k, v in sd.items()} for n, sd in state["nets"].items()}
    torch.save(state, Path(out) / f"gpu-rank{rank}.pt")

