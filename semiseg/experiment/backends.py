"""Where the runs of a grid execute, behind one small interface: ``train(configs) -> failed runs``.

``local`` trains in this process, or in ``jobs`` processes on this machine; ``ray`` (``ray_backend``) runs one Ray
task per run. Both call ``executor.train_or_resume``, so a run is reused, resumed or trained the same way
everywhere, and a run that fails with a user error is reported while the others go on.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Protocol

from semiseg.config import Config
from semiseg.errors import ConfigError, SemisegError
from semiseg.experiment.executor import done_message, train_or_resume
from semiseg.experiment.plan import Key, finished, with_job_threads

BACKENDS = ("local", "ray")


class Backend(Protocol):
    def train(self, configs: dict[Key, Config]) -> dict[Key, str]:
        """Train the runs that are not finished; returns the runs that failed with their error message."""
        ...


class LocalBackend:
    """Runs on this machine: one after the other (with progress bars) or ``jobs`` processes at once."""

    def __init__(self, jobs: int = 1, progress: bool = True) -> None:
        self.jobs, self.progress = jobs, progress

    def train(self, configs: dict[Key, Config]) -> dict[Key, str]:
        return self._parallel(configs) if self.jobs > 1 else self._serial(configs)

    def _serial(self, configs: dict[Key, Config]) -> dict[Key, str]:
        failed: dict[Key, str] = {}
        for (label, seed), cfg in configs.items():
            if not finished(cfg):
                print(f"== {label} seed {seed}", flush=True)
            try:
                print(done_message(label, seed, *train_or_resume(cfg, self.progress)), flush=True)
            except SemisegError as exc:
                failed[(label, seed)] = str(exc)
                print(f"{label} seed {seed}: failed: {exc}", flush=True)
        return failed

    def _parallel(self, configs: dict[Key, Config]) -> dict[Key, str]:
        failed: dict[Key, str] = {}
        with ProcessPoolExecutor(self.jobs) as pool:
            futures = {pool.submit(train_or_resume, cfg, False): key
                       for key, cfg in with_job_threads(configs, self.jobs).items()}
            for future in as_completed(futures):
                label, seed = futures[future]
                try:
                    print(done_message(label, seed, *future.result()), flush=True)
                except SemisegError as exc:
                    failed[(label, seed)] = str(exc)
                    print(f"{label} seed {seed}: failed: {exc}", flush=True)
        return failed


def make_backend(name: str, *, jobs: int = 1, progress: bool = True, address: str | None = None) -> Backend:
    """The backend ``name``; an unknown one, ``--address`` without Ray, Ray missing or an address nothing answers
    at fails here, before anything is written."""
    if name not in BACKENDS:
        raise ConfigError(f"compare backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if address is not None and name != "ray":
        raise ConfigError("--address names a Ray cluster: use it with --backend ray")
    if name == "ray":
        from semiseg.experiment.ray_backend import RayBackend

        return RayBackend(jobs, address)
    return LocalBackend(jobs, progress)
