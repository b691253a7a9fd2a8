"""RPG and RPG⁺: Eq. 8 by hand, the nearest-neighbour baseline, and reference pseudo labels inside SegPL."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.errors import ConfigError
from semiseg.losses import dice_loss, supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method
from semiseg.methods.rpg import RunningShares, agreeing, share_cap
from semiseg.nets.unet import NetOutput

# One labelled image of three pixels with features r0 = (1, 0), r1 = (0.8, 0.6), r2 = (0, 1) and classes 0, 1, 2;
# one unlabelled image with u_a = (1, 0), u_b = (0, 2), u_c = (0, −1). With k = 2:
#   u_a: D = (0, 0.2, 1), the two nearest are classes 0 and 1 → label 0, P ∝ (1, 0.8, 0), W = 0.37470
#   u_b: D = (1, 0.4, 0) → label 2, P ∝ (0, 0.6, 1), W = 0.39782
#   u_c: every D = 1 → label 0 (lowest class on a tie), W = 0
FEATURES = torch.tensor([[[1.0, 0.8, 0.0], [0.0, 0.6, 1.0]], [[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]]).unsqueeze(2)
LABEL = torch.tensor([[[0, 1, 2]]])
EXPECTED_LABELS = [0, 2, 0]
EXPECTED_W = [0.3747006, 0.3978192, 0.0]


class FixedNet(nn.Module):
    """A 'network' with given logits (trainable) and penultimate features."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.features = features

    def forward(self, x: torch.Tensor, return_features: bool = False):
        assert x.shape[0] == self.logits.shape[0]
        return NetOutput(self.logits, features=self.features) if return_features else self.logits


def _ctx(label_mode="multiclass", k=3, loss="ce", passes="joint"):
    return MethodContext(unlabelled_pass=passes,  # the hand computations assume one pass over both parts
        label_mode=label_mode,
        num_classes=k,
        spatial_dims=2,
        in_channels=1,
        supervised_loss=supervised_loss(loss, label_mode, False),
    )


def _batches(label=LABEL):
    return Batch(torch.zeros(1, 1, 1, 3), label), Batch(torch.zeros(1, 1, 1, 3))


def _logits(seed=0, channels=3):
    return torch.randn(2, channels, 1, 3, generator=torch.Generator().manual_seed(seed))


def test_eq8_by_hand():
    logits = _logits()
    method = get_method("rpg")(_ctx(), {"k": 2})
    out = method.training_step({"model": FixedNet(logits, FEATURES)}, *_batches(), Progress(0, 10))
    ce_u = F.cross_entropy(logits[1:], torch.tensor([[EXPECTED_LABELS]]), reduction="none").flatten()
    expected = sum(w * c for w, c in zip(EXPECTED_W, ce_u.tolist(), strict=True)) / 3  # E[CE · W]
    assert out.losses["rpg"].item() == pytest.approx(expected, abs=1e-5)
    assert out.losses["sup"].item() == pytest.approx(F.cross_entropy(logits[:1], LABEL).item(), abs=1e-5)
    assert out.logs["rpg_w_mean"] == pytest.approx(sum(EXPECTED_W) / 3, abs=1e-5)


def test_agreement_keeps_only_reference_labels_the_network_gives():
    # the network's own labels of the unlabelled pixels are (0, 1, 0); the references say (0, 2, 0), so the
    # middle pixel disagrees and drops out of Eq. 8 while the others keep their W
    logits = torch.zeros(2, 3, 1, 3)
    logits[1, 0, 0, [0, 2]] = 2.0
    logits[1, 1, 0, 1] = 2.0
    method = get_method("rpg")(_ctx(), {"k": 2, "agreement": True})
    out = method.training_step({"model": FixedNet(logits, FEATURES)}, *_batches(), Progress(0, 10))
    ce_u = F.cross_entropy(logits[1:], torch.tensor([[EXPECTED_LABELS]]), reduction="none").flatten().tolist()
    kept = [EXPECTED_W[0], 0.0, EXPECTED_W[2]]
    assert out.losses["rpg"].item() == pytest.approx(sum(w * c for w, c in zip(kept, ce_u, strict=True)) / 3,
                                                     abs=1e-5)
    assert out.masks["reference"].flatten().tolist() == pytest.approx(kept, abs=1e-5)
    assert out.logs["rpg_agree"] == pytest.approx(2 / 3)
    plain = get_method("rpg")(_ctx(), {"k": 2}).training_step({"model": FixedNet(logits, FEATURES)}, *_batches(),
                                                            Progress(0, 10))
    assert plain.losses["rpg"].item() > out.losses["rpg"].item() and "rpg_agree" not in plain.logs


def test_agreement_in_multilabel_mode_needs_every_channel():
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # (B=1, K=2, 1, 2): pixel 0 is (1, 0), pixel 1 (1, 1)
    logits = torch.tensor([[[[3.0, 3.0]], [[-3.0, -3.0]]]])  # the network says (1, 0) at both pixels
    assert agreeing(target, logits, "multilabel").flatten().tolist() == [1.0, 0.0]
    logits = torch.tensor([[[[0.0, 5.0]], [[0.0, 0.0]], [[5.0, 0.0]]]])  # (1, 3, 1, 2): classes 2, 0
    assert agreeing(torch.tensor([[[2, 1]]]), logits, "multiclass").tolist() == [[[1.0, 0.0]]]


def test_share_cap_scales_classes_handed_out_beyond_the_references_share():
    # references: one pixel each of classes 0, 1, 2 (share 1/3 each); the unlabelled labels (0, 2, 0) hand out
    # class 0 twice (2/3: scaled by 1/2) and class 2 once (1/3: kept), whatever their W
    logits = _logits(3)
    method = get_method("rpg")(_ctx(), {"k": 2, "share_cap": True})
    out = method.training_step({"model": FixedNet(logits, FEATURES)}, *_batches(), Progress(0, 10))
    capped = [w * f for w, f in zip(EXPECTED_W, [0.5, 1.0, 0.5], strict=True)]
    ce_u = F.cross_entropy(logits[1:], torch.tensor([[EXPECTED_LABELS]]), reduction="none").flatten().tolist()
    assert out.masks["reference"].flatten().tolist() == pytest.approx(capped, abs=1e-5)
    assert out.losses["rpg"].item() == pytest.approx(sum(w * c for w, c in zip(capped, ce_u, strict=True)) / 3,
                                                     abs=1e-5)
    assert out.logs["rpg_capped_w"] == pytest.approx(sum(capped) / 3, abs=1e-5)


def test_share_cap_leaves_a_batch_at_the_references_balance_alone():
    share = torch.tensor([0.5, 0.5])
    assert share_cap(torch.tensor([[0, 1, 1, 0]]), share).flatten().tolist() == [1.0, 1.0, 1.0, 1.0]
    over = share_cap(torch.tensor([[1, 1, 1, 0]]), share)  # class 1: 3/4 of the labels
    assert over.flatten().tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1.0])


def test_share_cap_with_a_half_life_compares_running_shares():
    # a balanced history (1/3 each); this step hands out (2/3, 0, 1/3) against references of 1/3 each. With a
    # half-life of one step (decay ½) the running u is (1/2, 1/6, 1/3): class 0 is scaled by (1/3)/(1/2) = 2/3,
    # not by the batch's own 1/2
    method = get_method("rpg")(_ctx(), {"k": 2, "share_cap": True, "share_half_life": 1})
    third = 1 / 3
    method.shares.shares = {(1, 0, 0): (third, third), (0, 1, 0): (third, third), (0, 0, 1): (third, third)}
    out = method.training_step({"model": FixedNet(_logits(3), FEATURES)}, *_batches(), Progress(0, 10))
    capped = [w * f for w, f in zip(EXPECTED_W, [2 / 3, 1.0, 2 / 3], strict=True)]
    assert out.masks["reference"].flatten().tolist() == pytest.approx(capped, abs=1e-5)
    assert method.shares.shares[(1, 0, 0)] == pytest.approx((third, 0.5))
    assert method.shares.shares[(0, 1, 0)] == pytest.approx((third, third / 2))


def test_running_shares_start_at_the_first_step_and_decay_absent_classes():
    running = RunningShares()
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # multilabel: background and channel 0
    r, u = running.update(table, torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]), decay=0.5)
    assert r.tolist() == [0.5, 0.5] and u.tolist() == [0.25, 0.75]  # no bias towards 0 at the first step
    # next step's pool holds background and channel 1 only: code 1 now means another class
    r, u = running.update(torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.tensor([0.75, 0.25]),
                          torch.tensor([0.5, 0.5]), decay=0.5)
    assert r.tolist() == [0.625, 0.25] and u.tolist() == [0.375, 0.5]
    assert running.shares[(1, 0)] == (0.25, 0.375)  # absent this step: counted as 0


def test_rpg_plus_keeps_the_running_shares_in_its_checkpoint_state():
    method = get_method("rpg_plus")(_ctx(), {"share_half_life": 0.05})
    assert method.state_dict() == {}  # nothing kept before a step, or without a half-life
    method.rpg.shares.update(torch.eye(2), torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1]), decay=0.9)
    restored = get_method("rpg_plus")(_ctx(), {"share_half_life": 0.05})
    restored.load_state_dict(method.state_dict())
    assert restored.rpg.shares.shares == method.rpg.shares.shares
    with pytest.raises(ValueError, match="unknown"):
        restored.load_state_dict({"bank": 1})


def test_rpg_plus_passes_agreement_and_share_cap_to_its_rpg():
    assert get_method("rpg_plus")(_ctx(), {"agreement": True, "share_cap": True}).rpg.cfg.share_cap
    assert not get_method("rpg_plus")(_ctx(), {}).rpg.cfg.agreement
    assert get_method("rpg_plus")(_ctx(), {}).rpg.cfg.share_cap  # RPG⁺'s default (measured), not RPG's
    assert not get_method("rpg")(_ctx(), {}).cfg.share_cap
    assert not get_method("rpg_plus")(_ctx(), {"share_cap": False}).rpg.cfg.share_cap


def test_nearest_neighbour_baseline_has_no_weighting():
    logits = _logits(1)
    method = get_method("rpg")(_ctx(), {"k": 2, "weighting": False, "weight": 0.5})
    out = method.training_step({"model": FixedNet(logits, FEATURES)}, *_batches(), Progress(0, 10))
    ce = F.cross_entropy(logits[1:], torch.tensor([[EXPECTED_LABELS]]))  # Eq. 4's labels, W ≡ 1
    assert out.losses["rpg"].item() == pytest.approx(0.5 * ce.item(), abs=1e-5)


def test_multilabel_copies_the_nearest_vector():
    # the classes become vectors: 0 → (0, 0), 1 → (1, 0), 2 → (1, 1); three distinct vectors as before
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    label = vectors[LABEL[0, 0]].T.reshape(1, 2, 1, 3)
    logits = _logits(2, channels=2)
    method = get_method("rpg")(_ctx("multilabel", 2), {"k": 2})
    out = method.training_step({"model": FixedNet(logits, FEATURES)}, *_batches(label), Progress(0, 10))
    target = vectors[EXPECTED_LABELS].T.reshape(1, 2, 1, 3)
    bce = F.binary_cross_entropy_with_logits(logits[1:], target, reduction="none").mean(1).flatten()
    expected = sum(w * c for w, c in zip(EXPECTED_W, bce.tolist(), strict=True)) / 3
    assert out.losses["rpg"].item() == pytest.approx(expected, abs=1e-5)


def test_segpl_takes_pseudo_labels_from_the_reference_matcher():
    # the model's own argmax on the unlabelled pixels is class 1 everywhere, the references say (0, 2, 0)
    logits = torch.zeros(2, 3, 1, 3)
    logits[1, 1] = 3.0
    lab, unl = _batches()
    nets = {"model": FixedNet(logits, FEATURES)}
    options = {"pseudo_labels": "reference", "k": 2, "weight": 1.0, "unlabelled_pass": "joint",  # FixedNet: one pass
               "student_view": "clean"}
    method = get_method("segpl")(_ctx(loss="dice"), options)
    target, weight, _, logs = method.reference_e_step(FEATURES[:1], lab, FEATURES[1:], method.reference())
    assert target.flatten().tolist() == EXPECTED_LABELS
    assert weight.flatten().tolist() == pytest.approx(EXPECTED_W, abs=1e-5)
    out = method.training_step(nets, lab, unl, Progress(0, 10))
    expected = dice_loss(
        logits[1:], torch.tensor([[EXPECTED_LABELS]]), include_background=False, weight=torch.tensor([[EXPECTED_W]])
    )
    assert out.losses["unsup"].item() == pytest.approx(expected.item(), abs=1e-5)
    model_options = {"weight": 1.0, "unlabelled_pass": "joint", "student_view": "clean"}
    model_source = get_method("segpl")(_ctx(loss="dice"), model_options).training_step(nets, lab, unl, Progress(0, 10))
    assert model_source.losses["unsup"].item() != pytest.approx(out.losses["unsup"].item(), abs=1e-3)
    assert "reference_w_mean" in out.logs and get_method("segpl")(_ctx(), {}).reference() is None


def test_rpg_plus_composes_rpg_and_fixmatch():
    method = get_method("rpg_plus")(_ctx(passes="auto"), {"k": 2, "tau": 0.8, "fixmatch_weight": 0.5, "n_ops": 1})
    assert method.rpg.cfg.k == 2 and method.fixmatch.cfg.tau == 0.8 and method.fixmatch.cfg.n_ops == 1
    net = nn.Conv2d(1, 3, 1)
    calls = []

    def model(x, return_features=False):
        calls.append(x.shape[0])
        logits = net(x)
        return NetOutput(logits, features=torch.cat([logits, x], 1)) if return_features else logits

    lab = Batch(torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    out = method.training_step({"model": model}, lab, Batch(torch.randn(2, 1, 8, 8)), Progress(0, 10))
    assert set(out.losses) == {"sup", "rpg", "fixmatch"} and calls == [6]  # labelled, weak, strong: one pass
    assert all(torch.isfinite(v) for v in out.losses.values())
    calls.clear()
    separate = get_method("rpg_plus")(_ctx(), {"unlabelled_pass": "separate"})
    separate.training_step({"model": model}, lab, Batch(torch.randn(2, 1, 8, 8)), Progress(0, 10))
    assert calls == [2, 2, 2]
    calls.clear()
    closed = Progress(0, 10, unlabelled_on=False)  # the default, separate_until_gate, before the gate opens
    method.training_step({"model": model}, lab, Batch(torch.randn(2, 1, 8, 8)), closed)
    assert method.unlabelled_pass_setting == "separate_until_gate" and calls == [2, 2, 2]
    plain = get_method("rpg_plus")(_ctx(), {"strong_augment": False})
    calls.clear()
    out = plain.training_step({"model": model}, lab, Batch(torch.randn(2, 1, 8, 8)), Progress(0, 10))
    assert set(out.losses) == {"sup", "rpg", "fixmatch"} and calls == [4]  # the weak view's own pass


def test_rpg_plus_fixmatch_term_trains_the_strong_rows_on_the_carried_weak_labels():
    """Eq. 11's FixMatch term from one pass over [labelled; weak; strong], recomputed by hand."""
    from semiseg.methods.fixmatch import masked_ce, weak_targets

    method = get_method("rpg_plus")(_ctx(), {"tau": 0.4, "n_ops": 2, "weight": 1.0})
    net = nn.Conv2d(1, 3, 1)
    with torch.no_grad():  # logits (x, 0, -x): confident where |x| is large, ignored near 0
        net.weight.copy_(torch.tensor([1.0, 0.0, -1.0]).view(3, 1, 1, 1))
        net.bias.zero_()

    def model(x, return_features=False):
        logits = net(x)
        return NetOutput(logits, features=torch.cat([logits, x], 1)) if return_features else logits

    g = torch.Generator().manual_seed(3)
    lab = Batch(torch.randn(2, 1, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g))
    weak = torch.randn(2, 1, 8, 8, generator=g)
    torch.manual_seed(11)
    out = method.training_step({"model": model}, lab, Batch(weak), Progress(0, 10))
    torch.manual_seed(11)
    strong = method.fixmatch.strong_image(weak)
    with torch.no_grad():
        target, mask = weak_targets(net(weak).softmax(1), "multiclass", 0.4)
        expected = masked_ce(net(strong.image), *strong.carry(target, mask), "multiclass")
    assert 0 < mask.mean() < 1 and not torch.equal(strong.image, weak)
    assert float(out.losses["fixmatch"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.equal(out.targets["fixmatch"], target)


def test_rpg_options_are_validated():
    with pytest.raises(ConfigError, match="k_fraction"):
        get_method("rpg")(_ctx(), {"k_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown key"):
        get_method("rpg")(_ctx(), {"pool": 3})
    settings = get_method("rpg")(_ctx(), {"k_fraction": 0.5, "reference_size": 32}).cfg.reference_settings()
    assert settings.k_for(12288) == 6144 and settings.size_for(2) == 32
    assert get_method("rpg")(_ctx(), {}).cfg.reference_settings().size_for(3) == 16
    assert get_method("rpg")(_ctx(), {"votes": 25}).cfg.reference_settings().votes == 25
    with pytest.raises(ConfigError, match="votes"):
        get_method("rpg")(_ctx(), {"votes": 0})


def test_weight_formula_constants():
    """The by-hand W values above, from Eq. 7."""
    for closeness, expected in zip(((1.0, 0.8), (0.6, 1.0)), EXPECTED_W, strict=False):
        p = [c / sum(closeness) for c in closeness]
        assert 1 + sum(q * math.log(q) for q in p) / math.log(3) == pytest.approx(expected, abs=1e-6)
