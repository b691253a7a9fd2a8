"""``unlabelled_pass``: labelled and unlabelled images through a network in one pass or in two (own statistics)."""

import pytest
import torch

from semiseg.api import supervised_loss
from semiseg.config import load_config
from semiseg.engine.loop import build_nets
from semiseg.methods import Batch, MethodContext, Progress, available_methods

K = 3
WITH_PASSES = sorted(name for name, cls in available_methods().items() if "unlabelled_pass" in cls.Config.model_fields)


def test_every_method_with_a_joint_pass_offers_separate_passes():
    assert WITH_PASSES == ["cct", "cmt", "cutmix", "dual_uncertainty", "fixmatch", "fixmatch_mix",
                           "mean_teacher", "must", "rpg",
                           "rpg_plus", "segpl", "segpl_vi", "self_training", "ua_mt", "ucmt", "urpc"]


def test_segpl_defaults_to_separate_passes_and_the_others_to_one():
    defaults = {name: available_methods()[name].Config().unlabelled_pass for name in WITH_PASSES}
    assert {name for name, mode in defaults.items() if mode == "separate"} == {"segpl", "segpl_vi"}


def _batch_sizes(name: str, passes: str) -> list[int]:
    """Batch sizes every network saw in one training step with 2 labelled and 3 unlabelled images."""
    cfg = load_config(None, ["model.widths=[4, 8]", f"train.method={name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=K, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False))
    method = available_methods()[name](ctx, {"unlabelled_pass": passes})
    nets = build_nets(method, cfg, ctx, torch.device("cpu"))
    sizes: list[int] = []
    first_convs = [m for net in nets.values() for m in net.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1]  # what sees the images
    for conv in first_convs:
        conv.register_forward_pre_hook(lambda _module, args: sizes.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(0)
    lab = Batch(torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, K, (2, 16, 16), generator=g), ["a", "b"])
    unl = Batch(torch.randn(3, 1, 16, 16, generator=g), None, ["c", "d", "e"])
    out = method.training_step(nets, lab, unl, Progress(9, 10))  # late: staged methods are past supervision alone
    while out is not None:
        out = out.followup() if out.followup is not None else None
    return sizes


@pytest.mark.parametrize("name", WITH_PASSES)
def test_separate_passes_never_put_labelled_and_unlabelled_images_in_one_batch(name):
    assert 5 in _batch_sizes(name, "joint")
    separate = _batch_sizes(name, "separate")
    assert 5 not in separate and 2 in separate and 3 in separate
