"""Equations and behaviour of the teacher / co-training methods (issue 4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg.config import load_config
from semiseg.engine.networks import build_nets, update_ema_net
from semiseg.errors import ConfigError
from semiseg.losses import dice_loss, supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, available_methods

K = 3


def setup(name, options=None, dims=2, label_mode="multiclass", norm="instance"):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", f"model.norm={norm}"])
    ctx = MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode=label_mode, num_classes=K, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = available_methods()[name](ctx, options or {})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def batches(dims=2, n=2, size=16):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, *([size] * dims), generator=g)
    label = torch.randint(0, K, (n, *([size] * dims)), generator=g)
    unl = torch.randn(n, 1, *([size] * dims), generator=g)
    return Batch(image, label), Batch(unl)


def test_ema_update_warms_up_then_uses_the_decay():
    method, nets = setup("mean_teacher", {"ema_decay": 0.99})
    spec = method.networks()["teacher"]
    student, teacher = nets["student"], nets["teacher"]
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    update_ema_net(nets, "teacher", spec, step=3)  # decay = min(1 - 1/4, 0.99) = 0.75
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)
    update_ema_net(nets, "teacher", spec, step=10_000)  # decay = 0.99
    assert torch.allclose(next(teacher.parameters()), 0.99 * (0.75 * before[0] + 0.25 * next(student.parameters()))
                          + 0.01 * next(student.parameters()))


def test_mean_teacher_consistency_is_zero_for_identical_nets_without_noise():
    method, nets = setup("mean_teacher", {"noise_std": 0.0})
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(10, 10))
    assert out.losses["consistency"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.logs["consistency_weight"] == pytest.approx(0.1)


def test_mean_teacher_ramp_is_sigmoid_over_forty_percent():
    method, _ = setup("mean_teacher")
    assert method.cfg.weight_at(Progress(20, 100)) == pytest.approx(0.1 * math.exp(-5 * 0.25))


class CountingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x)


def test_ua_mt_runs_the_t_teacher_passes_as_one_batch_and_scales_threshold_with_ln_c():
    method, nets = setup("ua_mt", {"passes": 4})
    nets["teacher"] = CountingNet(nets["teacher"])
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(0, 100))
    assert nets["teacher"].batches == [4 * 2]
    expected = (0.75 + 0.25 * math.exp(-5)) * math.log(K)
    assert out.logs["uncertainty_threshold"] == pytest.approx(expected)
    _, ml_nets = setup("ua_mt", label_mode="multilabel")
    ml, _ = setup("ua_mt", label_mode="multilabel")
    lab_ml = Batch(lab.image, (torch.rand(2, K, 16, 16) > 0.5).float())
    out = ml.training_step(ml_nets, lab_ml, unl, Progress(100, 100))
    assert out.logs["uncertainty_threshold"] == pytest.approx(K * math.log(2))


def test_ua_mt_masks_uncertain_pixels():
    method, nets = setup("ua_mt", {"noise_std": 0.0, "threshold_start": 1e-6, "threshold_end": 1e-6})
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(0, 100))
    assert out.logs["certain_fraction"] == 0.0
    assert out.losses["consistency"].item() == 0.0


def test_cps_cross_loss_by_hand():
    method, nets = setup("cps")
    g = torch.Generator().manual_seed(1)
    l1, l2 = torch.randn(2, K, 4, 4, generator=g), torch.randn(2, K, 4, 4, generator=g)
    expected = F.cross_entropy(l1, l2.argmax(1)) + F.cross_entropy(l2, l1.argmax(1))
    assert method.cross_loss(l1, l2).item() == pytest.approx(expected.item(), rel=1e-5)
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(0, 10))
    assert out.logs["cps_weight"] == 1.5  # constant, as in the paper


def test_cps_nets_start_different():
    _, nets = setup("cps")
    assert not torch.equal(next(nets["net1"].parameters()), next(nets["net2"].parameters()))


def test_cutmix_mixes_images_and_teacher_outputs_with_the_same_box(monkeypatch):
    import semiseg.methods.cutmix as cutmix_module

    method, nets = setup("cutmix", {"noise_std": 0.0})
    lab, unl = batches()
    box = torch.zeros(2, 16, 16, dtype=torch.bool)
    box[:, 4:12, 2:10] = True
    monkeypatch.setattr(cutmix_module, "box_masks", lambda *a, **k: box)
    seen = []
    student = nets["student"]
    nets["student"] = lambda x: seen.append(x) or student(x)
    out = method.training_step(nets, lab, unl, Progress(10, 10))
    expected_x = torch.where(box.unsqueeze(1), unl.image.roll(1, dims=0), unl.image)
    assert torch.equal(seen[0][2:], expected_x)
    # the target is the teacher's outputs mixed by the same box
    with torch.no_grad():
        t = torch.softmax(nets["teacher"](unl.image), 1)
        target = torch.where(box.unsqueeze(1), t.roll(1, dims=0), t)
        s = torch.softmax(student(expected_x), 1)
    assert out.losses["consistency"].item() == pytest.approx(((s - target) ** 2).mean().item(), rel=1e-5)


def test_cmt_losses_follow_equations_3_to_7():
    method, nets = setup("cmt", {"weight": 2.0, "rampup": "none"})
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    x = torch.cat([lab.image, unl.image])
    s1, s2, t = (nets[n](x) for n in ("student1", "student2", "teacher"))
    dice = lambda logits, y: dice_loss(logits, y, include_background=False)  # noqa: E731
    sup = dice(s1[:2], lab.label) + dice(s2[:2], lab.label) + dice(t[:2], lab.label)
    p1, p2, p0 = s1[2:].argmax(1), s2[2:].argmax(1), t[2:].argmax(1)
    cps = dice(s1[2:], p2) + dice(s2[2:], p1)
    mts = dice(s1[2:], p0) + dice(s2[2:], p0)
    assert out.losses["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert out.losses["cps"].item() == pytest.approx(2.0 * cps.item(), rel=1e-5)
    assert out.losses["mts"].item() == pytest.approx(2.0 * mts.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["cmt", "ucmt"])
def test_cmt_supervised_loss_train_uses_the_runs_loss_on_labelled_terms_only(name):
    method, nets = setup(name, {"weight": 2.0, "rampup": "none", "supervised_loss": "train"})
    lab, unl = batches()
    out = method.core.step(nets, lab.image, lab.label, unl.image, 2.0, method.unlabelled_pass(Progress(5, 10)))
    x = torch.cat([lab.image, unl.image])
    s1, s2, t = (nets[n](x) for n in ("student1", "student2", "teacher"))
    run_loss = supervised_loss("dice_ce", "multiclass", False)  # the context's train.loss in setup()
    dice = lambda logits, y: dice_loss(logits, y, include_background=False)  # noqa: E731
    sup = sum(run_loss(out_l[:2], lab.label) for out_l in (s1, s2, t))
    cps = dice(s1[2:], s2[2:].argmax(1)) + dice(s2[2:], s1[2:].argmax(1))
    assert out.losses["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert out.losses["sup"].item() != pytest.approx(sum(dice(o[:2], lab.label) for o in (s1, s2, t)).item(), rel=1e-3)
    assert out.losses["cps"].item() == pytest.approx(2.0 * cps.item(), rel=1e-5)  # unlabelled terms keep Dice


def test_cmt_gaussian_ramp_over_the_whole_run():
    method, _ = setup("cmt")
    assert method.cfg.weight_at(Progress(30, 100)) == pytest.approx(math.exp(-5 * 0.7**2))


@pytest.mark.parametrize(("name", "options"), [("cmt", {"teacher_update": "paper", "predict_with": "teacher"}),
                                             ("ucmt", {"teacher_update": "paper", "predict_with": "teacher"})])
def test_teacher_is_the_ema_of_the_students_average_and_alone_predicts(name, options):
    method, nets = setup(name, options)
    spec = method.networks()["teacher"]
    assert spec.ema_weights == (0.5, 0.5) and spec.ema_decay == 0.999 and spec.trainable
    before = [p.clone() for p in nets["teacher"].parameters()]
    update_ema_net(nets, "teacher", spec, step=10**6)  # Eq. 6 with α = 0.999
    for b, t, a, c in zip(before, nets["teacher"].parameters(), nets["student1"].parameters(),
                          nets["student2"].parameters(), strict=True):
        assert torch.allclose(t, 0.999 * b + 0.001 * (a + c) / 2, atol=1e-7)
    x = torch.randn(1, 1, 16, 16)
    for net in nets.values():
        net.eval()
    expected = nets["teacher"](x)
    with torch.no_grad():
        for s in ("student1", "student2"):
            for p in nets[s].parameters():
                p.fill_(float("nan"))
    assert torch.equal(method.predict(nets, x), expected)


@pytest.mark.parametrize("name", ["cmt", "ucmt"])
def test_predict_with_students_is_the_mean_of_their_probabilities(name):
    method, nets = setup(name, {"predict_with": "students"})
    x = torch.randn(1, 1, 16, 16)
    for net in nets.values():
        net.eval()
    with torch.no_grad():
        p1, p2 = (F.softmax(nets[s](x), 1) for s in ("student1", "student2"))
        for p in nets["teacher"].parameters():
            p.fill_(float("nan"))  # the teacher takes no part
        predicted = method.predict(nets, x)
    assert torch.allclose(F.softmax(predicted, 1), (p1 + p2) / 2, atol=1e-5)
    assert not torch.allclose(p1, p2, atol=1e-3)  # so one student alone would not pass


def test_ucmt_predicts_with_its_students_by_default_and_cmt_with_its_teacher():
    assert setup("ucmt")[0].core.prediction_nets() == ["student1", "student2"]
    assert setup("cmt")[0].core.prediction_nets() == ["teacher"]
    assert setup("cmt", {"architecture": "ss", "mts": False})[0].core.prediction_nets() == ["student1"]


def test_a_checkpoint_keeps_the_prediction_it_was_trained_with():
    trained, _ = setup("ucmt")
    state = trained.state_dict()
    assert state == {"predict_with": "students"}
    old = setup("ucmt")[0]
    old.load_state_dict({})  # written before the option existed: its teacher predicted
    assert old.core.prediction_nets() == ["teacher"] and old.cfg.predict_with == "teacher"
    given = setup("ucmt", {"predict_with": "students"})[0]
    given.load_state_dict({})  # older, but the option was given: it predicted with it
    assert given.core.prediction_nets() == ["student1", "student2"]
    again = setup("ucmt", {"predict_with": "teacher"})[0]
    again.load_state_dict(state)
    assert again.core.prediction_nets() == ["student1", "student2"]


def test_finetuning_from_a_students_mean_starts_from_student_one():
    from semiseg.engine.finetune import source_prediction_net

    names = ["student1", "student2", "teacher"]
    assert source_prediction_net("ucmt", names, {"predict_with": "students"}) == "student1"
    assert source_prediction_net("ucmt", names, {"predict_with": "teacher"}) == "teacher"


def test_code_compatible_teacher_follows_student_one():
    method, _ = setup("cmt", {"teacher_update": "code", "teacher_supervised": False})
    spec = method.networks()["teacher"]
    assert spec.ema_weights == (0.99, 0.01) and not spec.trainable


@pytest.mark.parametrize("name", ["cmt", "ucmt"])
def test_the_teacher_follows_student_one_by_default(name):
    method, nets = setup(name)
    spec = method.networks()["teacher"]
    assert spec.ema_weights == (0.99, 0.01) and spec.trainable and spec.ema_decay == 0.999
    before = [p.clone() for p in nets["teacher"].parameters()]
    update_ema_net(nets, "teacher", spec, step=10**6)
    for b, t, a, c in zip(before, nets["teacher"].parameters(), nets["student1"].parameters(),
                          nets["student2"].parameters(), strict=True):
        assert torch.allclose(t, 0.999 * b + 0.001 * (0.99 * a + 0.01 * c), atol=1e-7)


@pytest.mark.parametrize(("options", "key"), [({"architecture": "ts"}, "method.cps"),
                                              ({"architecture": "ss"}, "method.mts"),
                                              ({"cps": False, "mts": False}, "method.cps")])
def test_cmt_ablation_flags_are_validated(options, key):
    with pytest.raises(ConfigError, match=key):
        setup("cmt", options)


@pytest.mark.parametrize(("architecture", "options", "nets_expected"), [
    ("ts", {"cps": False}, {"student1", "teacher"}),
    ("ss", {"mts": False}, {"student1", "student2"}),
])
def test_cmt_ablation_architectures(architecture, options, nets_expected):
    method, nets = setup("cmt", {"architecture": architecture, **options})
    assert set(nets) == nets_expected
    lab, unl = batches()
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    assert set(out.losses) == {"sup", "mts" if architecture == "ts" else "cps"}


def test_ucmt_second_update_trains_on_umix_samples(monkeypatch):
    import semiseg.methods.ucmt as ucmt_module

    method, nets = setup("ucmt", {"top_k": 1, "grid": 4})
    lab, unl = batches()
    calls = []
    real_umix = ucmt_module.umix

    def spy(tensors, u1, u2, **kw):
        mixed = real_umix(tensors, u1, u2, **kw)
        calls.append((tensors, mixed, kw))
        return mixed

    monkeypatch.setattr(ucmt_module, "umix", spy)
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    assert out.followup is not None and not calls
    second = out.followup()
    assert second.followup is None and set(second.losses) == {"sup", "cps", "mts"}
    (lab_in, lab_mixed, kw), (unl_in, unl_mixed, _) = calls
    assert kw == {"k": 1, "grid": [4, 4], "mode": "replace"}  # the paper's UMIX by default
    assert lab_in[0] is lab.image and lab_in[1] is lab.label and unl_in[0] is unl.image
    assert not torch.equal(lab_mixed[0], lab.image)  # uncertain 4×4 regions replaced in every image
    regions = lab_mixed[0].unfold(-2, 4, 4).unfold(-2, 4, 4).flatten(-2)  # (B, C, 4, 4, 16): the 16 regions
    originals = lab.image.unfold(-2, 4, 4).unfold(-2, 4, 4).flatten(-2)
    for b in range(regions.shape[0]):  # replacement copies regions of the input: each is one of them
        for i in range(4):
            for j in range(4):
                assert any(torch.equal(regions[b, :, i, j], originals[b, :, p, q]) for p in range(4) for q in range(4))


def test_ucmt_rejects_ablation_settings_and_too_large_k():
    with pytest.raises(ConfigError, match="ucmt"):
        setup("ucmt", {"architecture": "ts", "cps": False})
    method, nets = setup("ucmt", {"top_k": 5, "grid": 2})
    lab, unl = batches()
    with pytest.raises(ConfigError, match="method.top_k"):
        method.training_step(nets, lab, unl, Progress(5, 10)).followup()


def test_ucmt_3d_uses_per_axis_grid():
    method, nets = setup("ucmt", dims=3)
    assert method.grid((16, 16, 16)) == [8, 8, 8]
    assert method.grid((4, 16, 16)) == [4, 8, 8]


def test_cmt_students_share_their_body_and_differ_in_the_heads():
    _, nets = setup("cmt")
    s1, s2 = dict(nets["student1"].named_parameters()), dict(nets["student2"].named_parameters())
    for name in s1:
        same = torch.equal(s1[name], s2[name])
        assert same != name.startswith("heads."), name
    _, independent = setup("cmt", {"student_init": "independent"})
    assert not torch.equal(next(independent["student1"].parameters()), next(independent["student2"].parameters()))


def test_cmt_teacher_batchnorm_statistics_are_its_own():
    """The EMA moves only parameters; the running statistics come from the teacher's own passes."""
    method, nets = setup("ucmt", {}, norm="batch")
    spec = method.networks()["teacher"]
    assert spec.ema_buffers == "own"
    with torch.no_grad():
        for i, name in enumerate(("student1", "student2")):
            for m in nets[name].modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.fill_(float(i + 1))
    teacher_bn_layer = next(m for m in nets["teacher"].modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = teacher_bn_layer.running_mean.clone()
    student_param = next(nets["student1"].parameters()).clone()
    update_ema_net(nets, "teacher", spec, step=0)  # decay min(1 - 1/1, α) = 0: parameters = students' mix
    assert torch.equal(teacher_bn_layer.running_mean, before)
    mix = 0.5 * student_param + 0.5 * next(nets["student2"].parameters())
    assert torch.allclose(next(nets["teacher"].parameters()), mix)


def test_ema_update_rejects_an_unknown_buffer_rule():
    from semiseg.ssl.ema import ema_update

    net = torch.nn.BatchNorm1d(2)
    with pytest.raises(ValueError, match="buffers"):
        ema_update(net, [torch.nn.BatchNorm1d(2)], 0.5, buffers="median")
