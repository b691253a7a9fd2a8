"""The Ray backend gives the local backend's table; printed commands make the runs compare collects."""

import csv
import shlex
import subprocess
import sys

import pytest

from semiseg import api
from semiseg.cli import main
from semiseg.config import read_yaml, validate_config
from semiseg.experiment.compare import compare
from semiseg.experiment.plan import run_configs, run_plan, train_commands
from semiseg.experiment.spec import Entry

ENTRIES = [Entry("supervised", "supervised"), Entry("mt", "mean_teacher", {"weight": 0.5})]


def _settings(root):
    return [f"output.root={root}", "data.source=phantom", "split.test=2", "train.steps=4", "train.val_every=2",
            "model.widths=[4, 8]", "eval.save_predictions=false", "train.threads=1"]


def _interrupt_at(step):
    def hook(current):
        if current == step:
            raise KeyboardInterrupt

    return hook


def _interrupted(cfg):
    """A run stopped with Ctrl-C after ``step 2``: its folder has a last checkpoint and no summary."""
    with pytest.raises(KeyboardInterrupt):
        api.train(cfg, progress=False, evaluate=False, on_step=_interrupt_at(2))


def _table(root):
    """compare.csv without the wall-clock column."""
    with (root / "compare.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "train_time_ratio"} for row in csv.DictReader(fh)]


@pytest.mark.slow  # ~100 s on the shared 2-core machine, most of it Ray starting up: run with -m slow
def test_ray_backend_gives_the_local_table_resuming_and_reusing_runs(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    settings = _settings(tmp_path)
    local = compare(None, settings, ENTRIES, [0], name="local", progress=False)
    _interrupted(run_configs(None, settings, ENTRIES, [0], "ray")[("supervised", 0)])
    capsys.readouterr()
    ray_root = compare(None, settings, ENTRIES, [0], name="ray", jobs=2, backend="ray")  # a local 2-CPU instance
    out = capsys.readouterr().out
    assert "supervised seed 0: resumed in" in out and "mt seed 0: trained in" in out
    assert len(_table(local)) == 4 and float(_table(local)[0]["hd95_mean"]) > 0
    assert _table(ray_root) == _table(local)
    compare(None, settings, ENTRIES, [0], name="ray", jobs=2, backend="ray")  # finished: nothing to schedule
    assert "supervised seed 0: reused" in capsys.readouterr().out and not ray.is_initialized()


def _run_line(line, shim_dir=None):
    """Run one printed line: through a real shell with ``semiseg`` on PATH, or in-process."""
    cd, folder, conj, program, *argv = shlex.split(line)
    assert (cd, conj, program) == ("cd", "&&", "semiseg")
    if shim_dir is None:
        return main(argv)
    env = {"PATH": f"{shim_dir}:/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, check=True).stdout


def test_printed_commands_make_the_runs_compare_collects(tmp_path, capsys, monkeypatch):
    shim = tmp_path / "bin" / "semiseg"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m semiseg \"$@\"\n")
    shim.chmod(0o755)
    settings = _settings("runs")  # a relative root: the lines change to this directory first
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--name", "grid", "--seeds", "0", "--methods", "supervised,mt=mean_teacher:weight=0.5",
            "--quiet", *[word for s in settings for word in ("--set", s)]]
    assert main([*args, "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(" --set split.seed=0 " in line for line in lines)
    assert "trained in" in _run_line(lines[0], shim.parent)
    assert _run_line(lines[0]) == 0 and "runs/grid/supervised-s0: reused (already finished)" in capsys.readouterr().out
    plan = run_plan(None, settings, ENTRIES, [0], "grid")
    _interrupted(plan[("mt", 0)][1])
    assert _run_line(lines[1]) == 0 and "runs/grid/mt-s0: resumed in" in capsys.readouterr().out
    for (label, seed), (_, cfg) in plan.items():
        saved = validate_config(read_yaml(tmp_path / "runs" / "grid" / f"{label}-s{seed}" / "config.yaml"))
        assert saved.model_dump() == cfg.model_dump()
    assert main(args) == 0  # compare collects them all without training
    out = capsys.readouterr().out
    assert "supervised seed 0: reused" in out and "mt seed 0: reused" in out and "| mt |" in out


def test_printed_commands_follow_jobs_threads_and_the_split_choice(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    settings = ["data.source=phantom"]
    fixed = train_commands(run_plan(None, settings, ENTRIES, [0, 1], "g"), "base.yaml", jobs=2)
    assert all(" --set split.seed=0 " in line and " --set train.threads=4 " in line for line in fixed)
    assert all(shlex.split(line)[3:6] == ["semiseg", "train", "--config"] for line in fixed)
    varied = train_commands(run_plan(None, settings, ENTRIES, [0, 1], "g", vary_split=True), None)
    assert not any("split.seed" in line or "train.threads" in line for line in varied)


class _FakeRay:
    """Two alive nodes (4 and 8 CPUs, one GPU) and a dead one with more: what ``ray.nodes()`` reports."""

    @staticmethod
    def nodes():
        return [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
                {"Alive": False, "Resources": {"CPU": 64.0}}]


def test_tasks_ask_a_gpu_or_their_threads_and_must_fit_a_node(monkeypatch):
    from semiseg.errors import ConfigError
    from semiseg.experiment.ray_backend import _check_fits, local_cpus, local_slot, task_resources

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    configs = run_configs(None, ["data.source=phantom"], ENTRIES, [0], "g")
    cfg = configs[("supervised", 0)]
    pinned = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": 3})})
    cpu_only = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})
    assert task_resources(cfg, 1, gpus=True) == {"num_gpus": 1}
    assert task_resources(cpu_only, 1, gpus=True) == {"num_cpus": 1}
    assert task_resources(pinned, 1, gpus=False) == {"num_cpus": 3}
    assert (local_slot(2), local_cpus(configs, 2), local_cpus({("p", 0): pinned}, 2)) == (4, 8, 6)
    _check_fits(_FakeRay, {("a", 0): {"num_cpus": 8}, ("b", 0): {"num_gpus": 1}})
    with pytest.raises(ConfigError, match="b seed 1 asks 9 CPUs but no node .* more than 8: lower train.threads"):
        _check_fits(_FakeRay, {("b", 1): {"num_cpus": 9}})
