"""joint_forward: one pass over labelled + unlabelled images, split back exactly."""

import pytest
import torch

from semiseg.nets.unet import NetOutput, UNet
from semiseg.ssl.joint import joint_forward, take_rows


def test_one_pass_split_into_the_two_batches():
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=3, widths=(4, 8))
    labelled, unlabelled = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 8, 8)
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    out_l, out_u = joint_forward(net, labelled, unlabelled, "joint")
    whole = net(torch.cat([labelled, unlabelled]))
    assert calls == [5, 5] and torch.equal(out_l, whole[:2]) and torch.equal(out_u, whole[2:])


def test_separate_passes_normalise_each_part_with_its_own_statistics():
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=3, widths=(4, 8))  # BatchNorm, train mode
    labelled, unlabelled = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 8, 8) + 2.0
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    out_l, out_u = joint_forward(net, labelled, unlabelled, passes="separate")
    assert calls == [2, 3]
    assert torch.equal(out_l, net(labelled)) and torch.equal(out_u, net(unlabelled))
    joint_u = joint_forward(net, labelled, unlabelled, "joint")[1]
    assert not torch.allclose(out_u, joint_u, atol=1e-3)  # mixed statistics change the unlabelled outputs


def test_structured_outputs_are_split_field_by_field():
    out = NetOutput(torch.arange(5.0), features=None, scales=[torch.arange(10.0).view(5, 2)])
    nested = (out, [torch.ones(5, 1)], None)
    first, rest = take_rows(nested, slice(None, 2)), take_rows(nested, slice(2, None))
    assert torch.equal(first[0].logits, torch.tensor([0.0, 1.0])) and first[0].features is None
    assert rest[0].scales[0].shape == (3, 2) and rest[1][0].shape == (3, 1) and rest[2] is None
    with pytest.raises(TypeError, match="str"):
        take_rows("logits", slice(None, 2))


def test_an_unresolved_pass_setting_is_refused_not_taken_for_joint():
    net = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(ValueError, match="unlabelled_pass\\(progress\\)"):
        joint_forward(net, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "separate_until_gate")
