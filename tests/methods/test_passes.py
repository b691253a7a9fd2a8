"""``unlabelled_pass``: labelled and unlabelled images through a network in one pass or in two (own statistics)."""

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods

K = 3
WITH_PASSES = sorted(name for name, cls in available_methods().items() if "unlabelled_pass" in cls.Config.model_fields)


def test_every_method_with_a_joint_pass_offers_separate_passes():
    assert WITH_PASSES == ["ad_mt", "cct", "cmt", "cps", "cutmix", "dual_uncertainty", "fixmatch", "fixmatch_mix",
                           "mean_teacher", "must", "rpg",
                           "rpg_plus", "segpl", "segpl_vi", "self_training", "ua_mt", "ucmt", "unimatch", "urpc"]


def _ctx(run_setting: str = "auto") -> MethodContext:
    return MethodContext(label_mode="multiclass", num_classes=K, spatial_dims=2, in_channels=1,
                         supervised_loss=supervised_loss("dice_ce", "multiclass", False), unlabelled_pass=run_setting)


def test_auto_is_each_methods_own_choice_and_no_option_defaults_to_one():
    assert {name: available_methods()[name].Config().unlabelled_pass for name in WITH_PASSES} == dict.fromkeys(
        WITH_PASSES)  # an option left unset follows the run
    chosen = {name: available_methods()[name](_ctx()).unlabelled_pass_setting for name in WITH_PASSES}
    assert {name: mode for name, mode in chosen.items() if mode != "separate"} == {
        "fixmatch": "joint", "rpg": "separate_until_gate", "rpg_plus": "separate_until_gate",
        "dual_uncertainty": "separate_until_gate", "ucmt": "separate_until_gate", "unimatch": "joint",
        "ad_mt": "joint"}
    assert load_config(None, []).train.unlabelled_pass == "auto"


@pytest.mark.parametrize("name", WITH_PASSES)
@pytest.mark.parametrize("run_setting", ["joint", "separate"])
def test_the_run_setting_holds_for_every_method_and_a_method_option_overrides_it(name, run_setting):
    """One switch: --set train.unlabelled_pass=joint is the papers' pass for segpl, segpl_vi, fixmatch_mix too."""
    method = available_methods()[name]
    assert method(_ctx(run_setting)).unlabelled_pass_setting == run_setting
    other = "joint" if run_setting == "separate" else "separate"
    assert method(_ctx(run_setting), {"unlabelled_pass": other}).unlabelled_pass_setting == other


def test_the_run_setting_offers_exactly_the_pass_settings_a_method_resolves():
    from typing import get_args

    from semiseg.config import TrainConfig
    from semiseg.ssl.joint import PassSetting

    # config.py spells the values out (it imports no torch); this keeps them from drifting apart
    assert get_args(TrainConfig.model_fields["unlabelled_pass"].annotation) == ("auto", *get_args(PassSetting))


def test_separate_until_gate_resolves_by_whether_the_unlabelled_terms_act():
    ctx = _ctx()
    dual = available_methods()["dual_uncertainty"](ctx)
    on, off = Progress(3, 10), Progress(3, 10, unlabelled_on=False)  # the gate's state, as the engine passes it
    assert dual.unlabelled_pass_setting == "separate_until_gate"
    assert dual.unlabelled_pass(on) == "joint"  # no gate: the terms act from the start
    assert dual.unlabelled_pass(off) == "separate"
    ctx_until = MethodContext(**{**ctx.__dict__, "unlabelled_pass": "separate_until_gate"})
    assert available_methods()["mean_teacher"](ctx_until).unlabelled_pass(off) == "separate"
    assert available_methods()["dual_uncertainty"](ctx, {"unlabelled_pass": "joint"}).unlabelled_pass(off) == "joint"
    assert not hasattr(dual, "unlabelled_terms_on")  # nothing for the engine to write into


def test_the_run_setting_reaches_the_method():
    from semiseg.engine.assemble import method_context

    info = {"label_mode": "multiclass", "class_names": ["bg", "a"], "channels": 1}
    cfg = load_config(None, ["train.unlabelled_pass=joint"])
    assert method_context(cfg, info).unlabelled_pass == "joint"
    assert method_context(load_config(None, []), info).unlabelled_pass == "auto"


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
    with_unlabelled = {5, 8}  # 2 labelled with the 3 unlabelled images, or with their weak and strong views
    assert with_unlabelled & set(_batch_sizes(name, "joint"))
    separate = _batch_sizes(name, "separate")
    assert not with_unlabelled & set(separate) and 2 in separate and 3 in separate
