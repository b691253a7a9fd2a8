"""A short training run on CUDA with AMP and channels-last (``pytest -m gpu``; skipped without a GPU)."""

import csv
import math

import pytest
import torch
from test_training import _cfg

from semiseg.engine.model import load_model
from semiseg.engine.performance import memory_format
from semiseg.engine.run import Run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(("dim", "amp_dtype"), [(2, "auto"), (2, "fp16"), (3, "bf16")])
def test_cuda_training_with_amp_and_channels_last(tmp_path, dim, amp_dtype):
    if amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = _cfg(tmp_path, "train.device=cuda", "train.amp=on", f"train.amp_dtype={amp_dtype}",
               "train.channels_last=on", "train.method=mean_teacher", "train.unlabelled_batch_size=2", dim=dim)
    run = Run.build(cfg, progress=False)
    assert run.trainer.scaler.is_enabled() == (run.trainer.amp_dtype == torch.float16)
    weights = [p for p in run.trainer.nets["student"].parameters() if p.ndim == dim + 2]
    assert all(p.is_cuda and p.is_contiguous(memory_format=memory_format(dim)) for p in weights)
    run.fit()
    with (run.run_dir / "log.csv").open() as fh:
        assert all(math.isfinite(float(row["loss"])) for row in csv.DictReader(fh))
    model = load_model(run.run_dir, "last", device="cpu")  # a CUDA checkpoint predicts on CPU
    assert next(model.nets["student"].parameters()).device.type == "cpu"
