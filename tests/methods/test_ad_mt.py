"""AD-MT: the alternation of the teachers, the entropy fusion, the conflict resolution and the diverse views."""

import math

import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.engine.run import Run
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress
from semiseg.methods.ad_mt import ADMT, Alternation, as_two_class, fuse_teachers, student_resolves

K = 3


def test_turns_last_one_to_period_steps_start_with_the_first_teacher_and_never_overlap():
    schedule = Alternation(period=5, seed=3)
    turns = [schedule.first_teachers_turn(step) for step in range(400)]
    assert turns[0]
    lengths, run = [], 1
    for previous, current in zip(turns, turns[1:], strict=False):
        if current == previous:
            run += 1
        else:
            lengths.append(run)
            run = 1
    assert min(lengths) >= 1 and max(lengths) <= 5 and len(set(lengths)) > 1
    for step in range(400):
        assert schedule.updates("teacher1", step) != schedule.updates("teacher2", step)
    again = Alternation(period=5, seed=3)  # a pure function of the step, whatever order it is asked in
    assert [again.first_teachers_turn(step) for step in reversed(range(400))] == turns[::-1]
    assert [Alternation(1).first_teachers_turn(step) for step in range(6)] == [True, False] * 3


def test_entropy_fusion_of_two_teachers_by_hand():
    p1 = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    p2 = torch.tensor([0.4, 0.6]).view(1, 2, 1, 1)
    labels, confidence, conflict = fuse_teachers(p1, p2)
    # H1 = 0.468996 bits, H2 = 0.970951 bits; w1 = 1 / (1 + e^-(H2 - H1)) = 0.622920
    w1 = 1 / (1 + math.exp(-(0.970951 - 0.468996)))
    assert abs(w1 - 0.622920) < 1e-5
    assert labels.item() == 0 and abs(confidence.item() - (0.9 * w1 + 0.4 * (1 - w1))) < 1e-5
    assert abs(confidence.item() - 0.711460) < 1e-5 and conflict.item()
    labels, confidence, conflict = fuse_teachers(p1, p1)
    assert labels.item() == 0 and abs(confidence.item() - 0.9) < 1e-6 and not conflict.item()


def test_multilabel_channels_are_two_class_problems():
    probs = torch.tensor([0.2, 0.7]).view(1, 2, 1, 1)  # two channels of one pixel
    two = as_two_class(probs, "multilabel")
    assert two.shape == (1, 2, 2, 1, 1)
    assert torch.allclose(two[0, :, :, 0, 0], torch.tensor([[0.8, 0.3], [0.2, 0.7]]))
    labels, confidence, _ = fuse_teachers(two, two)
    assert labels.flatten().tolist() == [0, 1] and torch.allclose(confidence.flatten(), torch.tensor([0.8, 0.7]))


def test_the_student_wins_only_where_teachers_conflict_it_disagrees_and_it_is_more_confident():
    labels = torch.tensor([0, 0, 0, 0, 1])
    confidence = torch.tensor([0.6, 0.6, 0.6, 0.6, 0.9])
    conflict = torch.tensor([True, True, False, True, True])
    student = torch.tensor([2, 2, 2, 0, 1])
    student_confidence = torch.tensor([0.7, 0.5, 0.9, 0.9, 0.95])
    new_labels, new_confidence = student_resolves(labels, confidence, conflict, student, student_confidence)
    assert new_labels.tolist() == [2, 0, 0, 0, 1]
    assert torch.allclose(new_confidence, torch.tensor([0.7, 0.6, 0.6, 0.6, 0.9]))


def _method(options=None, label_mode="multiclass"):
    ctx = MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = ADMT(ctx, options or {})
    cfg = load_config(None, ["model.widths=[4, 8]", "train.method=ad_mt"])
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def test_the_first_teachers_turn_sees_a_strong_view_the_second_a_cutmix_of_weak_images():
    torch.manual_seed(0)
    method, nets = _method({"period": 1, "n_ops": 1, "ops": ["brightness"], "tau": 0.34})
    seen = []
    nets["student"].encoder[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    ramp = torch.arange(256.0).view(16, 16) / 256
    x_u = torch.stack([100 * i + ramp for i in range(3)]).unsqueeze(1)  # disjoint value ranges per image
    lab = Batch(torch.randn(2, 1, 16, 16), torch.randint(0, K, (2, 16, 16)))
    out = method.training_step(nets, lab, Batch(x_u), Progress(0, 10))  # T1's turn
    augmented = seen[-1][5:]
    assert out.logs["teacher1_turn"] == 1.0 and not torch.equal(augmented, x_u)
    for i in range(3):  # brightness changes values but never brings in another image
        assert augmented[i].min() >= 100 * i - 1e-4 and augmented[i].max() <= 100 * i + 1
    out = method.training_step(nets, lab, Batch(x_u), Progress(1, 10))  # T2's turn
    mixed = seen[-1][5:]
    assert out.logs["teacher1_turn"] == 0.0
    for i in range(3):  # each pixel its own weak image's or its partner's, both present
        own, partner = mixed[i] == x_u[i], mixed[i] == x_u[(i - 1) % 3]
        assert (own | partner).all() and own.any() and partner.any()
    assert set(out.targets) == {"pseudo", "student"} and out.targets["pseudo"].shape == (3, 16, 16)


def test_split_loss_weights_conflicting_pixels():
    method, _ = _method({"conflict_weight": 0.5, "loss": "ce", "tau": 0.5})
    logits = torch.zeros(1, K, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    confidence = torch.tensor([[[0.9, 0.9]]])
    conflict = torch.tensor([[[False, True]]])
    # uniform logits: CE = ln 3 at every pixel; agreeing pixel ln 3, conflicting one 0.5 ln 3
    assert abs(float(method.unlabelled_loss(logits, labels, confidence, conflict)) - 1.5 * math.log(3)) < 1e-6
    method, _ = _method({"loss": "ce", "tau": 0.5})
    assert abs(float(method.unlabelled_loss(logits, labels, confidence, conflict)) - math.log(3)) < 1e-6


def test_the_engine_moves_only_the_teacher_on_duty(tmp_path):
    options = "{n_cases: 8, dim: 2, seed: 0}"
    cfg = load_config(None, [
        "data.source=phantom", f"data.options={options}", "split.labelled=2", "split.val=1", "split.test=2",
        "model.dim=2", "model.widths=[4, 8]", "train.steps=1", "train.val_every=1", "train.batch_size=2",
        "train.warmup_steps=1", "train.method=ad_mt", "method.period=1", f"output.root={tmp_path}", "output.name=r",
    ])
    run = Run.build(cfg, progress=False)
    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in run.trainer.nets.items()}
    run.fit()
    after = {n: list(net.parameters()) for n, net in run.trainer.nets.items()}
    moved = {n: any(not torch.equal(a, b) for a, b in zip(before[n], after[n], strict=True)) for n in before}
    assert moved == {"student": True, "teacher1": True, "teacher2": False}
    # the engine's warm-up decay after the first update is 1 − 1/2: half the teacher's start, half the student
    assert all(torch.allclose(t, 0.5 * b + 0.5 * s)
               for t, b, s in zip(after["teacher1"], before["teacher1"], after["student"], strict=True))
