"""AMP precision, channels-last and torch.compile on CPU: each one trains, resumes and loads like a plain run."""

import csv
import math

import pytest
import torch
from test_training import _cfg, _interrupt_at, _log_without_time

from semiseg import api
from semiseg.engine import performance
from semiseg.engine.device import resolve_amp_dtype
from semiseg.engine.model import load_model
from semiseg.engine.performance import channels_last_enabled, memory_format
from semiseg.engine.run import Run
from semiseg.methods import available_methods


def _losses(run_dir):
    with (run_dir / "log.csv").open() as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def _weights(run_dir, net="model"):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["nets"][net]


def test_amp_dtype_auto_is_bf16_where_supported(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp_dtype("auto", cpu) == torch.bfloat16
    assert resolve_amp_dtype("fp16", cpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp_dtype("auto", cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp_dtype("auto", cuda) == torch.bfloat16


def test_channels_last_auto_only_for_2d_on_cuda_under_amp():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not channels_last_enabled("auto", 2, cpu, amp=True)
    assert channels_last_enabled("auto", 2, cuda, amp=True)
    assert not channels_last_enabled("auto", 3, cuda, amp=True)
    assert not channels_last_enabled("auto", 2, cuda, amp=False)
    assert channels_last_enabled("on", 3, cpu, amp=False) and not channels_last_enabled("off", 2, cuda, amp=True)


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_every_method_trains_finite_under_bf16_autocast(tmp_path, method):
    """The Trainer refuses a non-finite loss term, so finishing the run is the check; losses are float32."""
    cfg = _cfg(tmp_path, f"train.method={method}", "train.amp=on", "train.amp_dtype=bf16", "train.steps=3",
               "train.val_every=3", "train.unlabelled_batch_size=2")
    run = Run.build(cfg, progress=False)
    assert run.trainer.amp and run.trainer.amp_dtype == torch.bfloat16 and not run.trainer.scaler.is_enabled()
    run.fit()
    assert all(math.isfinite(v) for v in _losses(run.run_dir))


def test_bf16_autocast_runs_the_networks_in_bf16(tmp_path, monkeypatch):
    seen = []
    from semiseg.methods.supervised import Supervised

    step = Supervised.training_step

    def spying(self, nets, labelled, unlabelled, progress):
        seen.append(nets["model"](labelled.image).dtype)
        return step(self, nets, labelled, unlabelled, progress)

    monkeypatch.setattr(Supervised, "training_step", spying)
    api.train(_cfg(tmp_path, "train.amp=on", "train.steps=1"), progress=False, evaluate=False)
    assert seen == [torch.bfloat16]


def test_fp16_uses_a_loss_scaler_unscaled_before_clipping(tmp_path, monkeypatch):
    from semiseg.engine import loop

    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm):
        norms.append(float(clip(params, float("inf"))))
        return clip(params, max_norm)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", recording_clip)
    api.train(_cfg(tmp_path / "fp32", "train.steps=2"), progress=False, evaluate=False)
    plain, norms[:] = list(norms), []
    run = Run.build(_cfg(tmp_path / "fp16", "train.amp=on", "train.amp_dtype=fp16", "train.steps=2"), progress=False)
    assert run.trainer.scaler.is_enabled() and run.trainer.scaler.get_scale() > 1000
    run.fit()
    state = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["scaler"]["scale"] > 1000  # the scaler's state travels with the checkpoint
    finite = [(a, b) for a, b in zip(norms, plain, strict=True) if math.isfinite(a)]
    assert finite and all(a < 10 * b for a, b in finite)  # clipped gradients were unscaled first


def test_fp16_resume_continues_exactly(tmp_path):
    extra = ("train.amp=on", "train.amp_dtype=fp16")
    straight = api.train(_cfg(tmp_path / "a", *extra), progress=False, evaluate=False)
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b", *extra), progress=False, evaluate=False, on_step=_interrupt_at(4))
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)


@pytest.mark.parametrize("dim", [2, 3])
def test_channels_last_trains_like_the_default_layout(tmp_path, dim):
    plain = api.train(_cfg(tmp_path / "a", dim=dim), progress=False, evaluate=False)
    run = Run.build(_cfg(tmp_path / "b", "train.channels_last=on", dim=dim), progress=False)
    weights = [p for p in run.trainer.nets["model"].parameters() if p.ndim == dim + 2]
    assert weights and all(p.is_contiguous(memory_format=memory_format(dim)) for p in weights)
    run.fit()
    assert _losses(run.run_dir) == pytest.approx(_losses(plain.run_dir), rel=1e-3, abs=1e-4)
    a, b = _weights(plain.run_dir), _weights(run.run_dir)
    # Adam divides by the gradients' running RMS, so a last-bit difference in a tiny gradient moves a weight by
    # up to ~lr per step: 1e-2 bounds that over the few steps, far below the change of a wrong layout.
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-2, atol=1e-2) for k in a)


def test_compiled_nets_train_through_dynamo_and_save_plain_checkpoints(tmp_path, monkeypatch):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(performance, "_COMPILE_OPTIONS", {"backend": counting_backend})
    extra = ("train.method=mean_teacher", "train.steps=3", "train.val_every=3")
    plain = api.train(_cfg(tmp_path / "a", *extra), progress=False, evaluate=False)
    torch._dynamo.reset()
    compiled = api.train(_cfg(tmp_path / "b", *extra, "train.compile=true"), progress=False, evaluate=False)
    assert graphs, "the compiled run did not go through torch.compile"
    for net in ("student", "teacher"):  # the teacher (EMA) follows the compiled student's real parameters
        a, b = _weights(plain.run_dir, net), _weights(compiled.run_dir, net)
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    model = load_model(compiled.run_dir, "last", device="cpu")  # uncompiled nets load it
    assert all(getattr(n, "_compiled_call_impl", None) is None for n in model.nets.values())
