"""benchmarks/bench_gpu.py: it skips cleanly without CUDA and its CPU smoke mode prints the table."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_skips_cleanly_without_cuda():
    result = _run("--methods", "supervised")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "skipped: no CUDA device (pass --device cpu --tiny for a CPU smoke test)"


@pytest.fixture
def bench_gpu(monkeypatch):
    """The script as a module (run in this process: importing torch again would cost more than the run)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("bench_gpu")


def test_cpu_smoke_mode_prints_a_row_per_method_with_the_ratio_to_supervised(bench_gpu, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cpu", "--tiny", "--dims", "2", "--methods",
                                      "mean_teacher", "--repeats", "1", "--amp-dtype", "fp16", "--channels-last", "on"])
    bench_gpu.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["method", "supervised", "mean_teacher"]
    assert "amp=fp16 channels_last=True" in out
    assert rows[1].split("|")[3].strip() == "1.00" and float(rows[2].split("|")[2]) > 0


def test_unknown_methods_are_named(bench_gpu, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cpu", "--tiny", "--methods", "mean_teachr"])
    with pytest.raises(SystemExit, match="mean_teachr"):
        bench_gpu.main()
