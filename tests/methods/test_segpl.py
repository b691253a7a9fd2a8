"""SegPL and SegPL-VI: Eqs. 1, 3 and 8 by hand, α warm-up, and where the threshold head gets its gradient."""

import math

import pytest
import torch
from torch import nn

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method
from semiseg.nets.unet import frozen_norm_stats
from semiseg.ssl.strong_augment import INTENSITY_OPS


class FixedLogits(nn.Module):
    """A 'network' whose output is a given logit tensor, so losses can be checked by hand.

    One pass over every row returns them all; separate passes (labelled, then unlabelled) take the next rows.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.next_row = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, total = x.shape[0], self.logits.shape[0]
        if n == total:
            return self.logits
        rows = self.logits[self.next_row : self.next_row + n]
        self.next_row = (self.next_row + n) % total
        return rows


def _ctx(label_mode, k, dims=2, loss="dice"):
    return MethodContext(label_mode=label_mode, num_classes=k, spatial_dims=dims, in_channels=1,
                         supervised_loss=supervised_loss(loss, label_mode, False))


def _logit(p):
    p = torch.tensor(p)
    return torch.log(p / (1 - p))


def test_eq1_pseudo_labels_by_hand():
    probs_ml = torch.tensor([0.9, 0.6, 0.3, 0.1]).reshape(1, 1, 4, 1)
    segpl = get_method("segpl")(_ctx("multilabel", 1), {"threshold": 0.5})
    target, mask, _, _ = segpl.e_step({}, probs_ml)
    assert target.flatten().tolist() == [1.0, 1.0, 0.0, 0.0] and mask is None
    target, _, _, _ = get_method("segpl")(_ctx("multilabel", 1), {"threshold": 0.65}).e_step({}, probs_ml)
    assert target.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    probs_mc = torch.tensor([[0.7, 0.2], [0.2, 0.45], [0.1, 0.35]]).reshape(1, 3, 2, 1)
    confident = get_method("segpl")(_ctx("multiclass", 3), {"confidence": 0.6})
    target, mask, _, _ = confident.e_step({}, probs_mc)
    assert target.flatten().tolist() == [0, 1] and mask.flatten().tolist() == [1.0, 0.0]


def test_eq3_loss_by_hand_multilabel():  # the paper: one image for E- and M-step (student_view=clean)
    # labelled image (1 pixel row of 4): prediction p = [0.8, 0.8, 0.2, 0.2] against y = [1, 0, 1, 0];
    # unlabelled: p = [0.9, 0.6, 0.3, 0.1] gives y' = [1, 1, 0, 0] (Eq. 1 with T = 0.5).
    p_l, p_u = [0.8, 0.8, 0.2, 0.2], [0.9, 0.6, 0.3, 0.1]
    logits = torch.stack([_logit(p_l), _logit(p_u)]).reshape(2, 1, 4, 1)
    method = get_method("segpl")(_ctx("multilabel", 1), {"weight": 0.1, "student_view": "clean"})
    label = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 4, 1)
    lab = Batch(torch.zeros(1, 1, 4, 1), label)
    unl = Batch(torch.zeros(1, 1, 4, 1))
    out = method.training_step({"model": FixedLogits(logits)}, lab, unl, Progress(5, 10))
    sup = 1 - 2 * (0.8 + 0.2) / (2.0 + 2)  # 1 − 2Σpy / (Σp + Σy)
    unsup = 1 - 2 * (0.9 + 0.6) / (1.9 + 2)
    assert out.losses["sup"].item() == pytest.approx(sup, abs=1e-5)
    assert out.losses["unsup"].item() == pytest.approx(0.1 * unsup, abs=1e-5)


def test_eq3_loss_by_hand_multiclass_foreground_dice():
    # unlabelled 2 pixels, 2 classes: p(class 1) = [0.8, 0.3] → argmax y' = [1, 0]; Dice on class 1 only.
    logits = torch.zeros(2, 2, 2, 1)
    logits[1, 1, :, 0] = _logit([0.8, 0.3])  # softmax over (0, z) gives sigmoid(z) for class 1
    method = get_method("segpl")(_ctx("multiclass", 2), {"weight": 1.0, "student_view": "clean"})
    lab = Batch(torch.zeros(1, 1, 2, 1), torch.tensor([[[1], [0]]]))
    out = method.training_step({"model": FixedLogits(logits)}, lab, Batch(torch.zeros(1, 1, 2, 1)), Progress(0, 10))
    assert out.losses["unsup"].item() == pytest.approx(1 - 2 * 0.8 / (1.1 + 1), abs=1e-5)
    assert out.losses["sup"].item() == pytest.approx(1 - 2 * 0.5 / (1.0 + 1), abs=1e-5)


def test_alpha_linear_warmup():
    method = get_method("segpl")(_ctx("multiclass", 2), {"weight": 0.2, "rampup_fraction": 0.5})
    assert [method.cfg.weight_at(Progress(s, 100)) for s in (0, 25, 50, 90)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert get_method("segpl")(_ctx("multiclass", 2), {}).cfg.weight_at(Progress(0, 100)) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("segpl", {"weight": -1}, "method.weight"),
        ("segpl", {"loss": "focal"}, "method.loss"),
        ("segpl", {"threshold": 1.5}, "method.threshold"),
        ("segpl", {"prior_mean": 0.4}, "unknown key 'method.prior_mean'"),
        ("segpl_vi", {"threshold_mode": "fuzzy"}, "method.threshold_mode"),
        ("segpl_vi", {"prior_std": 0}, "method.prior_std"),
    ],
)
def test_bad_options_name_the_key(name, options, match):
    with pytest.raises(ConfigError, match=match):
        get_method(name)(_ctx("multiclass", 2), options)


def _vi(label_mode, mode, dims=2):
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]", "train.method=segpl_vi"])
    ctx = MethodContext(label_mode=label_mode, num_classes=3, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = get_method("segpl_vi")(ctx, {"threshold_mode": mode, "temperature": 0.2})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def _batches(label_mode, dims=2):
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, *([8] * dims))
    label = (torch.randint(0, 3, (2, *([8] * dims)), generator=g) if label_mode == "multiclass"
             else (torch.rand(2, 3, *([8] * dims), generator=g) > 0.5).float())
    return Batch(torch.randn(shape, generator=g), label), Batch(torch.randn(shape, generator=g))


def _head_grad(method, nets, term, label_mode):
    lab, unl = _batches(label_mode)
    torch.manual_seed(0)
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    params = list(nets["threshold"].parameters())
    grads = torch.autograd.grad(out.losses[term], params, allow_unused=True, retain_graph=True)
    return sum(0.0 if g is None else g.abs().sum().item() for g in grads)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_threshold_head_learns_from_pseudo_labels_only_with_a_differentiable_threshold(label_mode):
    hard, hard_nets = _vi(label_mode, "hard")
    assert _head_grad(hard, hard_nets, "unsup", label_mode) == 0.0  # the paper: φ sees the KL only
    assert _head_grad(hard, hard_nets, "kl", label_mode) > 0.0
    for mode in ("straight_through", "soft"):
        method, nets = _vi(label_mode, mode)
        assert _head_grad(method, nets, "unsup", label_mode) > 0.0, mode


def test_vi_kl_term_is_eq8_of_the_heads_posterior_and_logs_the_threshold():
    method, nets = _vi("multilabel", "hard")
    lab, unl = _batches("multilabel")
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    with torch.no_grad():
        probs = torch.sigmoid(nets["model"](unl.image))  # the unlabelled images' own pass (unlabelled_pass)
        mu, log_sigma = nets["threshold"](probs)
    sigma = log_sigma.exp()
    expected = (math.log(0.1) - log_sigma + (sigma**2 + (mu - 0.5) ** 2) / (2 * 0.1**2) - 0.5).mean()
    assert out.losses["kl"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert out.logs["threshold_mu"] == pytest.approx(mu.mean().item(), rel=1e-4)
    assert out.logs["threshold_sigma"] == pytest.approx(sigma.mean().item(), rel=1e-4)
    assert set(out.losses) == {"sup", "unsup", "kl"}


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("dims", [2, 3])
def test_vi_monte_carlo_prediction(label_mode, dims):
    method, nets = _vi(label_mode, "hard", dims)
    for net in nets.values():
        net.eval()
    x = torch.randn(2, 1, *([8] * dims))
    samples = method.predict_samples(nets, x, 5)
    assert samples.shape == (5, 2, 3, *([8] * dims))
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, method.predict_samples(nets, x, 5))  # reproducible draws
    assert samples.var(0).sum() > 0  # the draws disagree somewhere
    assert get_method("segpl")(method.ctx, {}).predict_samples(nets, x, 5) is None


def test_without_unlabelled_batch_only_the_supervised_term():
    method, nets = _vi("multiclass", "hard")
    lab, _ = _batches("multiclass")
    assert set(method.supervised_step(nets, lab, Progress(0, 10)).losses) == {"sup"}


def test_intensity_student_view_labels_the_clean_image_and_trains_on_the_view(monkeypatch):
    """E-step on the clean batch (its own pass, which sets the running statistics), M-step on the view (whose
    pass sets none: ``running_stats: clean``)."""
    import semiseg.methods._options as options

    monkeypatch.setattr(options, "intensity_view", lambda image, n_ops, ops, remap: image * 2.0 + 1.0)  # a known view
    cfg = load_config(None, ["model.widths=[4, 8]", "train.method=segpl"])
    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False), unlabelled_pass="separate")
    method = get_method("segpl")(ctx, {"student_view": "intensity", "weight": 1.0})
    nets = build_nets(method, cfg, ctx, torch.device("cpu"))
    lab, unl = _batches("multiclass")
    model = nets["model"]
    reference = build_nets(method, cfg, ctx, torch.device("cpu"))["model"]
    reference.load_state_dict(model.state_dict())
    out = method.training_step(nets, lab, unl, Progress(5, 10))
    with torch.no_grad():
        reference.train()
        reference(lab.image)
        with frozen_norm_stats(reference):  # the view's pass normalises with batch statistics, updates none
            view_logits = reference(unl.image * 2.0 + 1.0)
        clean = reference(unl.image).argmax(1)
    assert torch.equal(out.targets["pseudo"], clean)
    expected = method.ctx.loss("dice")(view_logits, clean)
    assert out.losses["unsup"].item() == pytest.approx(expected.item(), rel=1e-5)
    running = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert running and all(torch.allclose(v, reference.state_dict()[k]) for k, v in running.items())
    assert not torch.equal(out.targets["pseudo"], view_logits.argmax(1))  # the view would have labelled otherwise


def test_the_student_trains_on_an_intensity_view_by_default():
    assert get_method("segpl")(_ctx("multiclass", 2), {}).cfg.student_view == "intensity"
    assert get_method("segpl_vi")(_ctx("multiclass", 2), {}).cfg.student_view == "intensity"
    assert get_method("segpl")(_ctx("multiclass", 2), {}).cfg.view_remap == 0.5  # chosen on validation
    assert get_method("segpl_vi")(_ctx("multiclass", 2), {}).cfg.view_remap == 0.5  # by analogy
    assert get_method("must")(_ctx("multiclass", 2), {}).cfg.view_remap == 0.0  # the paper's clean student


def test_the_student_view_draws_from_the_configured_pool(monkeypatch):
    import semiseg.methods._options as options

    seen = []
    monkeypatch.setattr(options, "intensity_view",
                        lambda image, n_ops, ops, remap: seen.append((n_ops, ops, remap)) or image)
    default = get_method("segpl")(_ctx("multiclass", 2), {}).cfg
    assert default.view_pool == [op for op in INTENSITY_OPS if op not in ("brightness", "gamma")]
    assert get_method("segpl_vi")(_ctx("multiclass", 2), {}).cfg.view_pool == default.view_pool
    assert get_method("dual_uncertainty")(_ctx("multiclass", 2), {}).cfg.view_pool == list(INTENSITY_OPS)
    narrowed = get_method("segpl")(_ctx("multiclass", 2), {"view_pool": ["contrast", "noise"], "view_ops": 1}).cfg
    narrowed.student_image(torch.zeros(1, 1, 4, 4))
    assert seen == [(1, ("contrast", "noise"), 0.5)]  # half the views remapped by default
    unremapped = get_method("segpl")(_ctx("multiclass", 2), {"view_remap": 0.0}).cfg
    unremapped.student_image(torch.zeros(1, 1, 4, 4))
    assert seen[-1][2] == 0.0
    with pytest.raises(ConfigError, match="rot90"):
        get_method("segpl")(_ctx("multiclass", 2), {"view_pool": ["rot90"]})


@pytest.mark.parametrize("method_name", ["segpl", "dual_uncertainty", "must"])
def test_a_remap_of_a_clean_student_is_refused_not_ignored(method_name):
    with pytest.raises(ConfigError, match="view_remap"):
        get_method(method_name)(_ctx("multiclass", 2), {"student_view": "clean", "view_remap": 0.5})
    with pytest.raises(ConfigError, match="view_remap"):
        get_method(method_name)(_ctx("multiclass", 2), {"student_view": "intensity", "view_remap": 1.5})
    clean = get_method(method_name)(_ctx("multiclass", 2), {"student_view": "clean"}).cfg  # a default remap goes along
    image = torch.rand(1, 1, 4, 4)
    assert clean.student_image(image) is image


@pytest.mark.parametrize("method_name", ["segpl", "segpl_vi"])
def test_running_statistics_from_the_clean_passes_alone(monkeypatch, method_name):
    """``running_stats: clean``: the labelled pass and the E-step's clean pass set the running statistics, the
    view's pass normalises with its own batch statistics and moves none; ``every_pass``: the labelled pass and the
    view's (the E-step's pass moves none)."""
    import semiseg.methods._options as options

    monkeypatch.setattr(options, "intensity_view", lambda image, n_ops, ops, remap: image * 2.0 + 1.0)
    cfg = load_config(None, ["model.widths=[4, 8]", f"train.method={method_name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False), unlabelled_pass="separate")
    lab, unl = _batches("multiclass")
    view = unl.image * 2.0 + 1.0
    for setting, stats_from in (("clean", unl.image), ("every_pass", view)):
        method = get_method(method_name)(ctx, {"running_stats": setting, "weight": 1.0})
        nets = build_nets(method, cfg, ctx, torch.device("cpu"))
        reference = build_nets(method, cfg, ctx, torch.device("cpu"))["model"]
        reference.load_state_dict(nets["model"].state_dict())
        out = method.training_step(nets, lab, unl, Progress(5, 10))
        with torch.no_grad():
            reference.train()
            reference(lab.image)
            with frozen_norm_stats(reference):
                view_logits = reference(view)
            reference(stats_from)
        if method_name == "segpl":  # the view's loss is the same either way: its own batch statistics
            expected = method.ctx.loss("dice")(view_logits, out.targets["pseudo"])
            assert out.losses["unsup"].item() == pytest.approx(expected.item(), rel=1e-5)
        trained = {k: v for k, v in nets["model"].state_dict().items() if "running" in k}
        assert trained and all(torch.allclose(v, reference.state_dict()[k]) for k, v in trained.items()), setting
    assert get_method("segpl")(_ctx("multiclass", 2), {}).cfg.running_stats == "clean"
    assert get_method("segpl_vi")(_ctx("multiclass", 2), {}).cfg.running_stats == "clean"
