import math

import pytest
import torch
import torch.nn.functional as F

from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods
from semiseg.methods.must import (
    consistency_target,
    label_pyramid,
    multiscale_consistency,
    multiscale_supervised_loss,
    resolve_layers,
)
from semiseg.nets import UNet
from semiseg.ssl.joint import take_rows

K = 3


def _ctx(dims=2, label_mode="multiclass", loss="dice_ce"):
    return MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode=label_mode, num_classes=K, spatial_dims=dims, in_channels=1,
                         supervised_loss=supervised_loss(loss, label_mode, False))


def _method(name="must", options=None, **ctx):
    return available_methods()[name](_ctx(**ctx), options or {})


def _net(dims=2, widths=(4, 8, 16)):
    torch.manual_seed(0)
    return UNet(dims, 1, K, widths=widths, scale_heads=True)


def _batches(dims=2, size=16, n=2):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, *([size] * dims), generator=g)
    label = torch.randint(0, K, (n, *([size] * dims)), generator=g)
    unl = torch.randn(n, 1, *([size] * dims), generator=g)
    return Batch(image, label), Batch(unl)


def _label_4x4():
    return torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).view(1, 4, 4)


# -- Eq. 2: sharpening ------------------------------------------------------------------------


def test_eq2_sharpened_teacher_targets_by_hand():
    logits = torch.log(torch.tensor([0.6, 0.4])).view(1, 2, 1, 1)
    target = consistency_target(logits, "multiclass", 0.5).flatten()
    assert torch.allclose(target, torch.tensor([0.36 / 0.52, 0.16 / 0.52]))  # 0.6², 0.4² renormalised
    assert torch.allclose(consistency_target(logits, "multiclass", None).flatten(), torch.tensor([0.6, 0.4]))
    # multilabel: each channel against its complement, 0.8 → 0.8² / (0.8² + 0.2²)
    ml = consistency_target(torch.logit(torch.tensor([0.8])).view(1, 1, 1, 1), "multilabel", 0.5)
    assert math.isclose(float(ml), 0.64 / 0.68, rel_tol=1e-5)
    assert not consistency_target(logits.requires_grad_(), "multiclass", 0.5).requires_grad


# -- Eq. 3: multi-scale consistency -------------------------------------------------------------


def test_eq3_sum_over_layers_of_mse_by_hand():
    t0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    s0 = torch.tensor([[0.5, 0.2], [0.5, 0.8]]).view(1, 2, 1, 2)
    t1, s1 = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1), torch.tensor([0.4, 0.6]).view(1, 2, 1, 1)
    # layer 0: (0.25 + 0.04 + 0.25 + 0.04) / 4 = 0.145; layer 1: (0.04 + 0.04) / 2 = 0.04
    assert math.isclose(float(multiscale_consistency([t0, t1], [s0, s1])), 0.185, rel_tol=1e-6)


# -- Eq. 4: multi-scale supervision -------------------------------------------------------------


def test_eq4_label_pyramid_max_pooling_by_hand():
    pyramid = label_pyramid(_label_4x4(), 3, "multiclass", K, "max")
    assert pyramid[1].tolist() == [[[2, 0], [0, 1]]] and pyramid[2].tolist() == [[[2]]]
    assert pyramid[1].dtype == torch.long
    ml = label_pyramid(F.one_hot(_label_4x4(), K).movedim(-1, 1).float(), 3, "multilabel", K, "max")
    assert ml[1][0, 1].tolist() == [[0.0, 0.0], [0.0, 1.0]] and ml[2].flatten().tolist() == [1.0, 1.0, 1.0]


def test_eq4_label_pyramid_average_pooling_gives_class_fractions():
    pyramid = label_pyramid(_label_4x4(), 3, "multiclass", K, "avg")
    assert pyramid[1][0, :, 0, 0].tolist() == [0.75, 0.0, 0.25]
    assert torch.allclose(pyramid[2].flatten(), torch.tensor([0.6875, 0.25, 0.0625]))
    assert torch.allclose(pyramid[1].sum(1), torch.ones(1, 2, 2))


@pytest.mark.parametrize("dims", [2, 3])
def test_eq4_sum_of_per_scale_cross_entropies_by_hand(dims):
    label = _label_4x4() if dims == 2 else _label_4x4().unsqueeze(-1).expand(1, 4, 4, 4).contiguous()
    scales = [torch.randn(1, K, *([4 // 2**k] * dims)) for k in range(3)]
    ce = supervised_loss("ce", "multiclass", False)
    coarse = [torch.tensor([[2, 0], [0, 1]]).view(1, 2, 2), torch.tensor([[2]]).view(1, 1, 1)]
    if dims == 3:
        coarse = [c.unsqueeze(-1).expand(*c.shape, c.shape[-1]) for c in coarse]
    expected = sum(F.cross_entropy(f, y) for f, y in zip(scales, [label, *coarse], strict=True))
    got = multiscale_supervised_loss(scales, label, ce, "multiclass", K, "max")
    assert torch.allclose(got, expected)
    method = _method("multiscale_supervised", loss="ce", dims=dims)
    assert torch.allclose(method.supervised(scales, label), expected)


def test_multiscale_supervised_baseline_uses_labelled_data_only():
    method = _method("multiscale_supervised")
    assert not method.uses_unlabelled
    assert method.networks()["model"].overrides == {"scale_heads": True}
    lab, _ = _batches()
    out = method.training_step({"model": _net()}, lab, None, Progress(0, 10))
    assert set(out.losses) == {"sup"} and torch.isfinite(out.losses["sup"])


# -- auxiliary outputs and layer selection ------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_teacher_and_student_outputs_of_every_layer(dims):
    net, method = _net(dims), _method(dims=dims)
    x = torch.randn(3, 1, *([16] * dims))
    teacher = net(x, return_scales=True)
    students = method.student_logits(net, take_rows(teacher, slice(1, None)), range(net.num_layers))
    assert sorted(students) == [0, 1, 2]
    for k in range(3):
        assert teacher.scales[k].shape == (3, K, *([16 // 2**k] * dims))
        assert students[k].shape == (2, K, *([16 // 2**k] * dims))
        assert not torch.allclose(students[k], teacher.scales[k][1:])


def test_layer_indices_and_their_errors():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0, 1], 4) == [0, 1, 3]
    with pytest.raises(ConfigError, match=r"method\.consistency_layers: layer 4 is out of range.*0\.\.3"):
        resolve_layers([0, 4], 4)
    with pytest.raises(ConfigError, match="names a layer twice"):
        resolve_layers([3, -1], 4)


def test_single_layer_option_from_the_command_line():
    from semiseg.config import load_config

    cfg = load_config(None, ["train.method=must", "method.consistency_layers=-1", "method.temperature=null"])
    method = _method(options=cfg.method)
    assert method.cfg.consistency_layers == [-1] and method.cfg.temperature is None
    assert _method(options={"consistency_layers": "all"}).cfg.consistency_layers == "all"


def test_out_of_range_layer_is_reported_at_the_first_step():
    method = _method(options={"consistency_layers": [0, 5]})
    lab, unl = _batches()
    with pytest.raises(ConfigError, match=r"method\.consistency_layers: layer 5 .* 0\.\.2"):
        method.training_step({"model": _net()}, lab, unl, Progress(5, 10))


@pytest.mark.parametrize(("options", "key"), [
    ({"consistency_layers": []}, "consistency_layers"),
    ({"consistency_layers": [0, 0]}, "consistency_layers"),
    ({"perturbations": ["uniform_noise", "blur"]}, "perturbations"),
    ({"unsupervised_lr_scale": 0.5}, "unsupervised_lr_scale"),
    ({"rampup": "step"}, "rampup"),
    ({"weight": -1}, "weight"),
    ({"temperature": 0}, "temperature"),
])
def test_bad_options_name_their_key(options, key):
    with pytest.raises(ConfigError, match=rf"method\.{key}"):
        _method(options=options)


def test_only_the_selected_layers_get_a_student(monkeypatch):
    net, calls = _net(), []
    monkeypatch.setattr(net, "bottleneck", lambda z: calls.append(z) or UNet.bottleneck(net, z))
    lab, unl = _batches()
    _method(options={"consistency_layers": [0, 1]}).training_step({"model": net}, lab, unl, Progress(5, 10))
    assert calls == []
    _method(options={"consistency_layers": [-1]}).training_step({"model": net}, lab, unl, Progress(5, 10))
    assert len(calls) == 1 and calls[0].shape[0] == 2  # the unlabelled rows only


# -- the training step --------------------------------------------------------------------------


@pytest.mark.parametrize("student_norm", ["running", "batch"])
def test_joint_step_reaches_the_encoder_and_keeps_clean_norm_statistics(student_norm):
    net, method = _net(), _method(options={"student_norm": student_norm})
    lab, unl = _batches()
    reference = _net()
    reference.train()(torch.cat([lab.image, unl.image]))  # the teacher pass alone
    out = method.training_step({"model": net}, lab, unl, Progress(5, 10))
    assert set(out.losses) == {"sup", "consistency"} and out.logs["consistency_weight"] == pytest.approx(10.0)
    first_conv = net.encoder[0][0].weight
    assert torch.autograd.grad(out.losses["consistency"], first_conv)[0].abs().sum() > 0
    for key, value in reference.state_dict().items():
        if "running" in key:
            assert torch.allclose(net.state_dict()[key], value), key


def test_running_teacher_norm_makes_the_targets_the_eval_answer_and_leaves_statistics_to_labelled_images():
    net, method = _net(), _method(options={"teacher_norm": "running"})
    lab, unl = _batches()
    reference = _net()
    reference.train()(lab.image)  # only the labelled training pass moves the running statistics
    with torch.no_grad():
        expected = _net().eval()(unl.image)  # the eval-mode answer with the statistics the step started with
    out = method.training_step({"model": net}, lab, unl, Progress(5, 10))
    assert torch.allclose(out.targets["teacher"], expected, atol=1e-6)
    first_conv = net.encoder[0][0].weight
    assert torch.autograd.grad(out.losses["consistency"], first_conv)[0].abs().sum() > 0
    for key, value in reference.state_dict().items():
        if "running" in key:
            assert torch.allclose(net.state_dict()[key], value), key


def test_rampup_weight_is_linear_and_zero_at_start():
    cfg = _method().cfg
    assert cfg.weight_at(Progress(0, 100)) == 0.0
    assert cfg.weight_at(Progress(25, 100)) == pytest.approx(5.0)
    assert cfg.weight_at(Progress(80, 100)) == pytest.approx(10.0)
    method = _method()
    lab, unl = _batches()
    out = method.training_step({"model": _net()}, lab, unl, Progress(0, 100))
    assert set(out.losses) == {"sup"} and out.losses["sup"] > 0  # no consistency term before the ramp starts


def test_zero_weight_is_multiscale_supervised_and_ignores_unlabelled_data():
    method = _method(options={"weight": 0})
    lab, unl = _batches()
    unl.image.fill_(float("nan"))
    out = method.training_step({"model": _net()}, lab, unl, Progress(5, 10))
    assert set(out.losses) == {"sup"} and torch.isfinite(out.losses["sup"])


def test_alternating_updates_and_unsupervised_learning_rate_scale():
    lab, unl = _batches()
    method = _method(options={"alternate": True})
    unl.image.fill_(float("nan"))  # the supervised update must not touch the unlabelled batch
    first = method.training_step({"model": _net()}, lab, unl, Progress(5, 10))
    assert set(first.losses) == {"sup"} and torch.isfinite(first.losses["sup"]) and first.followup is not None
    _, unl = _batches()
    torch.manual_seed(3)
    second = method.training_step({"model": _net()}, lab, unl, Progress(5, 10)).followup()
    assert set(second.losses) == {"consistency"} and second.losses["consistency"] > 0
    assert second.followup is None and second.logs["consistency_weight"] == pytest.approx(10.0)
    scaled = _method(options={"alternate": True, "unsupervised_lr_scale": 0.5})
    torch.manual_seed(3)
    half = scaled.training_step({"model": _net()}, lab, unl, Progress(5, 10)).followup()
    assert torch.allclose(half.losses["consistency"], 0.5 * second.losses["consistency"])


def test_without_unlabelled_batch_only_the_supervised_term_counts():
    lab, _ = _batches()
    out = _method().supervised_step({"model": _net()}, lab, Progress(5, 10))
    assert set(out.losses) == {"sup"} and out.losses["sup"] > 0


def test_intensity_student_view_perturbs_the_views_features_against_the_clean_targets(monkeypatch):
    import semiseg.methods._options as options
    from semiseg.nets.unet import running_norm_stats

    monkeypatch.setattr(options, "intensity_view", lambda image, n_ops, ops, remap: image * 2.0 + 1.0)  # a known view
    net, method = _net(), _method(options={"student_view": "intensity"})
    lab, unl = _batches()
    reference = _net()
    torch.manual_seed(3)  # the perturbation module's draws, replayed below
    out = method.training_step({"model": net}, lab, unl, Progress(5, 10))
    with torch.no_grad():
        teacher = take_rows(reference.train()(torch.cat([lab.image, unl.image]), return_scales=True),
                            slice(2, None))
        with running_norm_stats(reference):
            view = reference(unl.image * 2.0 + 1.0, return_scales=True)
        torch.manual_seed(3)
        students = method.student_logits(reference, view, range(reference.num_layers))
        expected = multiscale_consistency([consistency_target(t, "multiclass", 0.5) for t in teacher.scales],
                                          [s.softmax(1) for _, s in sorted(students.items())])
    assert out.losses["consistency"].item() == pytest.approx(10.0 * expected.item(), rel=1e-5)
    clean = _method().consistency(reference, teacher)  # the paper's students read the teacher's features
    assert not math.isclose(clean.item(), expected.item(), rel_tol=1e-3)
