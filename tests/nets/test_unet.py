import pytest
import torch
from torch import nn

from semiseg.errors import ConfigError
from semiseg.nets import UNet, build_network, evaluating


@pytest.mark.parametrize("dims", [2, 3])
def test_outputs_features_scales_and_second_decoder(dims):
    net = UNet(dims, 2, 3, widths=(4, 8, 16), aux_decoders=("interp",), scale_heads=True)
    x = torch.randn(2, 2, *([16] * dims))
    assert net(x).shape == (2, 3, *([16] * dims))
    out = net(x, return_features=True, return_scales=True)
    assert out.features.shape == (2, 4, *([16] * dims))
    assert [s.shape[-1] for s in out.scales] == [16, 8, 4]
    main, aux = net(x, decoder=0), net(x, decoder=1)
    assert aux.shape == main.shape and not torch.allclose(aux, main)


def test_perturb_hook_sees_every_level_and_changes_output():
    net = UNet(2, 1, 2, widths=(4, 8, 16)).eval()
    seen = []

    def hook(level, t, role):
        seen.append((level, role))
        return t * 0 if role == "bottleneck" else t

    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(net(x), net(x, perturb=hook))
    assert (2, "bottleneck") in seen and (0, "skip") in seen and (1, "up") in seen


def test_plain_net_has_no_scale_heads():
    net = UNet(2, 1, 2, widths=(4, 8))
    with pytest.raises(RuntimeError, match="scale_heads"):
        net(torch.randn(1, 1, 8, 8), return_scales=True)


def test_unknown_arch():
    with pytest.raises(ConfigError, match="unknown network"):
        build_network("vnet", spatial_dims=2, in_channels=1, out_channels=2)


@pytest.mark.parametrize("dims", [2, 3])
def test_layer_blocks_rebuild_the_forward_pass(dims):
    net = UNet(dims, 2, 3, widths=(4, 8, 16), scale_heads=True).eval()
    out = net(torch.randn(2, 2, *([16] * dims)), return_scales=True)
    enc, dec = out.encoder_features, out.decoder_features
    assert net.num_layers == 3 == len(out.scales) and len(enc) == 3
    assert torch.allclose(net.bottleneck(net.bottleneck_input(enc)), enc[-1])
    assert torch.allclose(net.decoder_level(0, 1, enc[-1], enc[1]), dec[1])
    assert torch.allclose(net.decoder_level(0, 0, dec[1], enc[0]), dec[0])
    for k, feats in enumerate([dec[0], dec[1], enc[-1]]):  # a_0 (main head), a_1, a_2 (bottleneck)
        assert torch.allclose(net.layer_logits(k, feats), out.scales[k])
        assert out.scales[k].shape == (2, 3, *([16 // 2**k] * dims))


def test_layer_logits_needs_scale_heads_of_the_main_decoder():
    net = UNet(2, 1, 2, widths=(4, 8), aux_decoders=("interp",))
    feats = torch.randn(1, 8, 4, 4)
    with pytest.raises(RuntimeError, match="scale_heads"):
        net.layer_logits(1, feats)
    assert net.layer_logits(0, torch.randn(1, 4, 8, 8), decoder=1).shape == (1, 2, 8, 8)


def test_frozen_norm_stats_keeps_running_statistics():
    from semiseg.nets.unet import frozen_norm_stats

    net = UNet(2, 1, 2, widths=(4, 8)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_norm_stats(net):
        net(torch.randn(2, 1, 8, 8) * 5 + 3).sum().backward()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    net(torch.randn(2, 1, 8, 8) * 5 + 3)  # outside the context the statistics move again
    assert not torch.equal(before["encoder.0.1.running_mean"], net.state_dict()["encoder.0.1.running_mean"])


def test_running_norm_stats_normalises_as_at_test_time_and_restores_training_mode():
    from semiseg.nets.unet import running_norm_stats

    net = UNet(2, 1, 2, widths=(4, 8)).train()
    net(torch.randn(4, 1, 8, 8) * 2 + 1)  # move the running statistics away from their initial values
    x = torch.randn(2, 1, 8, 8) * 5 + 3
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with running_norm_stats(net):
        inside = net(x)
        inside.sum().backward()  # gradients still flow
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    net.eval()
    assert torch.allclose(inside, net(x))  # the same normalisation as the test-time path
    net.train()
    assert not torch.allclose(inside, net(x))  # batch statistics differ


def test_evaluating_restores_each_nets_own_mode_even_after_an_error():
    training, frozen = nn.BatchNorm1d(2), nn.BatchNorm1d(2).eval()
    with pytest.raises(RuntimeError), evaluating([training, frozen]):
        assert not training.training and not frozen.training
        raise RuntimeError("inside")
    assert training.training and not frozen.training


def test_case_norm_stats_normalises_with_what_passed_through_and_restores_the_trained_statistics():
    from semiseg.nets.unet import case_norm_stats

    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(3))
    net[0].running_mean.fill_(5.0)
    net[0].running_var.fill_(4.0)
    net.eval()
    first, second = torch.randn(2, 3, 4, 4) * 3 + 1, torch.randn(2, 3, 4, 4) - 2
    both = torch.cat([first, second])

    def estimate():
        net(first)
        net(second)

    with case_norm_stats([net], estimate):
        assert not net.training and not net[0].training
        # a cumulative average over the two batches: the mean of their means and of their unbiased variances
        means = torch.stack([first.mean((0, 2, 3)), second.mean((0, 2, 3))]).mean(0)
        variances = torch.stack([first.var((0, 2, 3)), second.var((0, 2, 3))]).mean(0)
        assert torch.allclose(net[0].running_mean, means, atol=1e-5)
        assert torch.allclose(net[0].running_var, variances, atol=1e-5)
        expected = (both - means[:, None, None]) / torch.sqrt(variances[:, None, None] + 1e-5)
        assert torch.allclose(net(both), expected, atol=1e-4)
    assert torch.equal(net[0].running_mean, torch.full((3,), 5.0))
    assert torch.equal(net[0].running_var, torch.full((3,), 4.0))
    assert net[0].momentum == 0.1 and not net.training
    with pytest.raises(RuntimeError), case_norm_stats([net], estimate):
        raise RuntimeError("inside")
    assert torch.equal(net[0].running_mean, torch.full((3,), 5.0)) and net[0].momentum == 0.1
