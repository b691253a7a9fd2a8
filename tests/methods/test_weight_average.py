"""A weight average that predicts (``WeightAverageOption``): supervised training and FixMatch alike."""

from __future__ import annotations

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.checkpoint import load_checkpoint, save_checkpoint
from semiseg.engine.networks import build_nets, update_ema_net
from semiseg.losses import supervised_loss
from semiseg.methods import MethodContext, get_method
from semiseg.ssl.ema import ema_update


def _setup(name: str, options: dict, dims: int = 2):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", f"train.method={name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False), unlabelled_pass="joint")
    method = get_method(name)(ctx, options)
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def _shift_model(nets) -> None:
    with torch.no_grad():
        for p in nets["model"].parameters():
            p.add_(1.0)
        for b in nets["model"].buffers():
            if b.dtype.is_floating_point:
                b.add_(2.0)


def test_average_buffers_follow_the_weights_decay():
    target, source = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        source.running_mean.fill_(1.0)
        source.weight.fill_(3.0)
    source.num_batches_tracked.fill_(7)
    ema_update(target, [source], 0.75, buffers="average")
    assert torch.allclose(target.running_mean, torch.full((2,), 0.25))  # 0.75·0 + 0.25·1
    assert torch.allclose(target.running_var, torch.ones(2))  # both 1
    assert torch.allclose(target.weight, torch.full((2,), 1.5))  # 0.75·1 + 0.25·3
    assert int(target.num_batches_tracked) == 7  # integers are copied, not averaged


@pytest.mark.parametrize("name", ["supervised", "fixmatch", "fixmatch_mix"])
def test_no_average_by_default_and_the_model_predicts(name):
    method, nets = _setup(name, {})
    assert set(method.networks()) == {"model"}
    x = torch.randn(1, 1, 8, 8)
    nets["model"].eval()
    assert torch.equal(method.predict(nets, x), nets["model"](x))


@pytest.mark.parametrize("name", ["supervised", "fixmatch", "fixmatch_mix"])
def test_the_average_follows_the_model_and_predicts(name, tmp_path):
    half_life = 6.5788  # steps: 2^(−1/6.5788) ≈ 0.9
    method, nets = _setup(name, {"predict_average": half_life})
    spec = method.networks()["average"]
    assert spec.ema_of == ("model",) and not spec.trainable and spec.ema_buffers == "average"
    assert spec.decay(1000) == pytest.approx(0.9, abs=1e-4)
    start = [p.clone() for p in nets["average"].parameters()]
    _shift_model(nets)
    update_ema_net(nets, "average", spec, step=3, total_steps=10)  # decay min(1 − 1/4, 0.9) = 0.75
    for before, avg, model in zip(start, nets["average"].parameters(), nets["model"].parameters(), strict=True):
        assert torch.allclose(avg, 0.75 * before + 0.25 * model)
    update_ema_net(nets, "average", spec, step=100, total_steps=1000)  # decay 0.9 once warmed up
    first_avg, first_model = next(nets["average"].parameters()), next(nets["model"].parameters())
    assert torch.allclose(first_avg, 0.9 * (0.75 * start[0] + 0.25 * first_model) + 0.1 * first_model, atol=1e-4)
    for net in nets.values():
        net.eval()
    x = torch.randn(1, 1, 8, 8)
    expected = method.predict(nets, x)
    assert torch.equal(expected, nets["average"](x)) and not torch.allclose(expected, nets["model"](x))
    save_checkpoint({"nets": {n: net.state_dict() for n, net in nets.items()}}, tmp_path / "c.pt")
    method2, nets2 = _setup(name, {"predict_average": half_life})
    for n, net in nets2.items():
        net.load_state_dict(load_checkpoint(tmp_path / "c.pt")["nets"][n])
        net.eval()
    assert torch.allclose(method2.predict(nets2, x), expected)


def test_an_average_longer_than_the_run_names_its_own_option(capsys):
    from semiseg.engine.checks import print_ema_warnings

    method, _ = _setup("fixmatch", {"predict_average": 700})  # steps: α ≈ 0.999, over ~1000 updates
    print_ema_warnings(method, 500)
    err = capsys.readouterr().err
    assert "net 'average'" in err and "give method.predict_average as a share of the run (e.g. 0.05" in err
    assert "ema_half_life" not in err
    print_ema_warnings(method, 5)
    assert "leave method.predict_average unset" in capsys.readouterr().err
    print_ema_warnings(_setup("fixmatch", {"predict_average": 0.1})[0], 500)  # a share of the run: no warning
    assert capsys.readouterr().err == ""


def test_the_average_is_not_trained():
    method, nets = _setup("supervised", {"predict_average": 0.99})
    from semiseg.engine.networks import trainable_parameters

    trained = {id(p) for p in trainable_parameters(nets, method.networks())}
    assert not trained & {id(p) for p in nets["average"].parameters()}
    assert {id(p) for p in nets["model"].parameters()} <= trained
