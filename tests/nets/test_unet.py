import pytest
import torch

from semiseg.errors import ConfigError
from semiseg.nets import UNet, build_network


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
