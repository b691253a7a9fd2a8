"""Each start and resume of a run records its commit and machine, so a table can tell runs from two machines apart."""

from __future__ import annotations

import json

import pytest
import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.origin import ORIGIN, fingerprint, hardware, read_origin, record_start


def _cfg(tmp_path, steps: int = 4):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", f"train.steps={steps}", "train.val_every=2", "train.batch_size=2",
        "train.warmup_steps=1", "train.threads=1", "train.method=supervised", f"output.root={tmp_path}",
        "output.name=run",
    ])


def test_a_start_and_a_resume_each_add_a_record_naming_the_step_commit_and_machine(tmp_path, monkeypatch):
    monkeypatch.setattr("semiseg.engine.origin.git_state", lambda where=None: ("c0ffee", []))

    def stop_at_2(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path), progress=False, evaluate=False, on_step=stop_at_2)
    run_dir = tmp_path / "run"
    assert [start["step"] for start in read_origin(run_dir)] == [0]
    monkeypatch.setattr("semiseg.engine.origin.git_state", lambda where=None: ("beef", ["semiseg/x.py"]))
    api.resume(run_dir, progress=False, evaluate=False)
    starts = read_origin(run_dir)
    assert [(s["step"], s["commit"]) for s in starts] == [(0, "c0ffee"), (2, "beef+dirty")]
    assert starts[0]["machine"] == hardware(torch.device("cpu")) and starts[0]["threads"] == 1
    assert ORIGIN in json.loads((run_dir / ".semiseg-manifest.json").read_text())["files"]


def test_the_fingerprint_names_what_picks_the_kernels():
    record = {"machine": {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.13.0", "device": "cpu"}}
    assert fingerprint(record) == "AMD EPYC, AVX2, torch 2.13.0, cpu"
    other = {"machine": {**record["machine"], "cpu_capability": "AVX512"}}
    assert fingerprint(other) != fingerprint(record)
    assert hardware(torch.device("cpu"))["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_run_without_a_record_or_with_a_broken_one_has_no_starts(tmp_path):
    assert read_origin(tmp_path) == []
    (tmp_path / ORIGIN).write_text("{not json")
    assert read_origin(tmp_path) == []
    record_start(tmp_path, torch.device("cpu"), 5)  # a broken record is started afresh, not crashed on
    assert [start["step"] for start in read_origin(tmp_path)] == [5]
