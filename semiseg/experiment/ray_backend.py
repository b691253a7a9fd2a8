"""The Ray backend of ``semiseg compare``: one Ray task per run, on a cluster or on a local Ray instance.

Each task runs ``executor.train_or_resume``, the same code as the local backend, so finished runs are reused and
interrupted ones resumed in exactly the same way, and the driver tabulates the same run folders. A task asks for
one GPU when the cluster has GPUs (and the run may use one), otherwise ``train.threads`` CPUs. Runs write to
``output.root`` as the driver sees it, so on a multi-node cluster it must be a shared filesystem and semiseg must
be installed on every node. An ``--address`` is probed first, in bounded time (``probe_address``),
because Ray itself retries a wrong address for minutes.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import warnings
from typing import Any

from semiseg.config import Config
from semiseg.errors import ConfigError, SemisegError
from semiseg.experiment.executor import done_message, train_or_resume
from semiseg.experiment.plan import Key, finished, with_job_threads

RAY_MISSING = 'the ray backend needs Ray, which is not installed: pip install "semiseg[cluster]"'
PROBE_SECONDS = 5.0  # a TCP connection to --address
JOIN_SECONDS = 60.0  # a trial join of the cluster at --address


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise SemisegError(RAY_MISSING) from None
    return ray


# joins the cluster at argv[1] and leaves: run in a child process, so that a hang can be cut off and Ray's own
# retry log stays out of the terminal
_JOIN = "import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR); ray.shutdown()"


def probe_address(address: str, timeout: float = PROBE_SECONDS, join_timeout: float = JOIN_SECONDS) -> None:
    """Fail within ``timeout + join_timeout`` seconds, naming the address, unless a Ray cluster answers there.

    Ray itself retries a wrong address for minutes, printing its own log: first a TCP connection (refused at once
    when nothing listens), then a trial join in a child process that is cut off after ``join_timeout`` (something
    listens, but not Ray: a dashboard port, another service). ``auto`` is Ray's to find.
    """
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT of a Ray head node, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SemisegError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                           "with 'ray start --head' on that machine, or leave out --address for a local "
                           "instance") from None
    try:
        joined = subprocess.run([sys.executable, "-c", _JOIN, address], capture_output=True, text=True,
                                timeout=join_timeout, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    except subprocess.TimeoutExpired:
        raise SemisegError(f"--address {address}: something listens there but no Ray cluster answered within "
                           f"{join_timeout:g} s; give the head node's GCS port ('ray start --head' prints it, "
                           "6379 by default), not the dashboard's") from None
    if joined.returncode != 0:
        last = (joined.stderr.strip().splitlines() or ["no message"])[-1]
        raise SemisegError(f"--address {address}: could not join a Ray cluster there ({last})")


class RayBackend:
    """One Ray task per run, on the cluster at ``address`` or on a local Ray instance sized to ``jobs``."""

    def __init__(self, jobs: int, address: str | None) -> None:
        import_ray()
        if address is not None:
            probe_address(address, PROBE_SECONDS, JOIN_SECONDS)
        self.jobs, self.address = jobs, address

    def train(self, configs: dict[Key, Config]) -> dict[Key, str]:
        return train_all_ray(with_job_threads(configs, self.jobs), self.jobs, self.address)


def local_slot(jobs: int) -> int:
    """CPUs of one run on a local instance that runs ``jobs`` at once: the machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def local_cpus(configs: dict[Key, Config], jobs: int) -> int:
    """CPUs of a local Ray instance: ``jobs`` runs at once, each with the threads it asks for."""
    return max(1, jobs) * max(cfg.train.threads or local_slot(jobs) for cfg in configs.values())


def task_resources(cfg: Config, slot: int, gpus: bool) -> dict[str, float]:
    """One GPU per run on a GPU cluster (unless the run is pinned to the CPU), else ``train.threads`` CPUs.

    ``slot`` is what a run without ``train.threads`` asks for: its share of a local machine, one CPU on a cluster.
    """
    if gpus and cfg.train.device != "cpu":
        return {"num_gpus": 1}
    return {"num_cpus": cfg.train.threads or slot}


def _connect(ray: Any, address: str | None, configs: dict[Key, Config], jobs: int) -> bool:
    """Join ``address`` or start a local instance (quietly); True when this call started it and must stop it."""
    if ray.is_initialized():
        return False
    if not sys.stdout.isatty():  # task output copied into a log file stays free of colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Ray's own start-up logging stays out of the terminal; the runs' warnings still reach it
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "include_dashboard": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise SemisegError(f"--address {address}: could not join a Ray cluster there ({exc}); start one with "
                               "'ray start --head' or leave out --address for a local instance") from None
        return True
    import torch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats banner for a throwaway instance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ray.init(num_cpus=local_cpus(configs, jobs), num_gpus=min(torch.cuda.device_count(), max(1, jobs)),
                 **quiet)
    return True


def _check_fits(ray: Any, resources: dict[Key, dict[str, float]]) -> None:
    """A task no node can hold would wait forever: name the run and the key to change instead."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for (label, seed), asked in resources.items():
        for resource, amount in asked.items():
            name = "GPU" if resource == "num_gpus" else "CPU"
            largest = max((node.get(name, 0) for node in nodes), default=0)
            if amount > largest:
                raise ConfigError(f"{label} seed {seed} asks {amount:g} {name}s but no node of the Ray cluster has "
                                  f"more than {largest:g}: lower train.threads (or --jobs on a local instance)")


def _run_task(cfg: Config, cwd: str) -> tuple[str, Any]:
    """What a Ray worker runs: the local backend's reuse/resume/train, from the driver's directory."""
    os.chdir(cwd)  # relative output.root and data paths mean what they mean to the driver
    if cfg.train.threads is None:  # torch gets the CPUs Ray gave the task, not every core of the node
        import ray
        import torch

        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        return train_or_resume(cfg, progress=False)
    except SemisegError as exc:
        return "failed", str(exc)


def train_all_ray(configs: dict[Key, Config], jobs: int, address: str | None) -> dict[Key, str]:
    """Train what is missing as Ray tasks; returns the runs that failed with a user error, like the local backend."""
    ray = import_ray()
    todo = {key: cfg for key, cfg in configs.items() if not finished(cfg)}
    for label, seed in (key for key in configs if key not in todo):
        print(done_message(label, seed, "reused", 0.0), flush=True)
    if not todo:  # a finished grid is tabulated without starting or joining Ray
        return {}
    started = _connect(ray, address, todo, jobs)
    try:
        return _schedule(ray, todo, 1 if address else local_slot(jobs))
    finally:
        if started:
            ray.shutdown()


def _schedule(ray: Any, todo: dict[Key, Config], slot: int) -> dict[Key, str]:
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    resources = {key: task_resources(cfg, slot, gpus) for key, cfg in todo.items()}
    _check_fits(ray, resources)
    remote = ray.remote(_run_task)
    pending = {remote.options(**resources[key]).remote(cfg, os.getcwd()): key for key, cfg in todo.items()}
    failed: dict[Key, str] = {}
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            label, seed = pending.pop(ref)
            status, result = ray.get(ref)
            if status == "failed":
                failed[(label, seed)] = result
                print(f"{label} seed {seed}: failed: {result}", flush=True)
            else:
                print(done_message(label, seed, status, result), flush=True)
    finally:  # Ctrl-C or a crash: stop the runs still queued or running (interrupted ones resume next time)
        for ref in pending:
            ray.cancel(ref, force=True)
    return failed
