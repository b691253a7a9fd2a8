"""Dual-uncertainty self-training: Eq. 1 and the ranking, the stages, Eq. 4 in a step, and resume mid-stage 3."""

import csv
import json
import math

import pytest
import torch
from _weights import nudge, same_weights

from semiseg import api
from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.errors import ConfigError
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, WholeCase, get_method
from semiseg.methods.dual_uncertainty import DualUncertainty, SampleSorting, rank_cases, sample_uncertainty
from semiseg.ssl.rectification import cross_entropy_map


def _setup(options=None, label_mode="multiclass"):
    cfg = load_config(None, ["model.widths=[4, 8]", "train.method=dual_uncertainty"])
    ctx = MethodContext(unlabelled_pass="joint",  # the hand computations assume one pass over both parts
        label_mode=label_mode,
        num_classes=3,
        spatial_dims=2,
        in_channels=1,
        supervised_loss=supervised_loss("dice_ce", label_mode, False),
    )
    method = get_method("dual_uncertainty")(ctx, options or {})
    return method, build_nets(method, cfg, ctx, torch.device("cpu"))


def _batches(label_mode="multiclass"):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    if label_mode == "multilabel":
        label = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    lab = Batch(torch.randn(2, 1, 8, 8, generator=g), label)
    return lab, Batch(torch.randn(2, 1, 8, 8, generator=g), case_ids=["u0", "u1"])


# -- Eq. 1 and the ranking ----------------------------------------------------------------------


def test_eq1_sample_uncertainty_by_hand():
    f1, f2, f3 = (torch.tensor(v).reshape(2, 1) for v in ([0.5, 0.5], [0.7, 0.3], [1.0, 0.0]))
    # mean[(F1 − F3)²] = 0.25, mean[(F2 − F3)²] = 0.09; averaged over the K − 1 = 2 pairs
    assert sample_uncertainty([f1, f2], f3) == pytest.approx(0.17)
    assert sample_uncertainty(iter([f3]), f3) == 0.0
    with pytest.raises(ValueError, match="two snapshots"):
        sample_uncertainty([], f3)


def test_rank_cases_sorts_ascending_and_splits():
    ranking = rank_cases({"c": 0.3, "a": 0.1, "d": 0.4, "b": 0.1, "e": 0.2}, 0.5)
    assert ranking["order"] == ["a", "b", "e", "c", "d"]  # ties broken by id
    assert ranking["reliable"] == ["a", "b", "e"] and ranking["unreliable"] == ["c", "d"]  # ⌈0.5 · 5⌉ = 3
    assert rank_cases({"a": 1.0, "b": 2.0}, 0.1)["reliable"] == ["a"]  # at least one case
    assert rank_cases({}, 0.5)["reliable"] == []


def _fake_case(case_id, probs_by_net):
    """A whole case whose prediction by each net is fixed, keyed by the net object."""
    return WholeCase(case_id, torch.zeros(1, 2, 2, 1), lambda net: probs_by_net[id(net)])


def test_ranking_puts_agreeing_snapshots_first():
    method, nets = _setup()
    snaps = [nets[name] for name in method.snapshot_names]
    confident, uniform = torch.tensor([0.9, 0.1]).reshape(2, 1, 1, 1), torch.full((2, 1, 1, 1), 0.5)
    agree = _fake_case("agree", {id(s): confident for s in snaps})
    disagree = _fake_case("disagree", {id(snaps[0]): uniform, id(snaps[1]): uniform, id(snaps[2]): confident})
    progress = Progress(40, 100)  # stage 3 starts at step 33
    curriculum = method.curriculum()
    assert curriculum.wants_cases(progress)
    curriculum.on_cases(nets, [disagree, agree], progress)
    assert method.ranking["order"] == ["agree", "disagree"]
    assert method.ranking["uncertainty"]["disagree"] == pytest.approx(0.16)  # (0.4² + 0.4²)/2 for both pairs
    assert method.ranking["reliable"] == ["agree"]
    assert not curriculum.wants_cases(progress)  # ranked once
    assert curriculum.subset(progress) == ["agree"]
    assert curriculum.subset(Progress(70, 100)) is None  # stage 4: every case
    assert curriculum.artifacts()["ranking"]["reliable"] == ["agree"]


# -- stages -----------------------------------------------------------------------------------


def test_stage_and_snapshot_steps():
    method, _ = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 0.75, 1.0]})
    assert method.stage_starts(100) == (30, 60)
    assert method.snapshot_steps(100) == [15, 22, 30]
    assert [method.stage_at(Progress(s, 100)) for s in (0, 29, 30, 59, 60, 99)] == [1, 1, 3, 3, 4, 4]


def test_stages_snapshots_and_teacher():
    method, nets = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 1.0]})
    lab, unl = _batches()
    out = method.training_step(nets, lab, unl, Progress(10, 100))
    assert "unsup" not in out.losses and out.logs["stage"] == 1.0 and method.snapshots_taken == 0
    method.training_step(nets, lab, unl, Progress(15, 100))
    assert method.snapshots_taken == 1 and same_weights(nets["snapshot0"], nets["model"])
    nudge(nets["model"])
    out = method.training_step(nets, lab, unl, Progress(30, 100))
    assert method.stage == 3 and out.logs["stage"] == 3.0 and out.losses["unsup"].item() > 0
    assert same_weights(nets["snapshot1"], nets["model"]) and same_weights(nets["teacher"], nets["model"])
    assert not same_weights(nets["snapshot0"], nets["model"])
    nudge(nets["model"])
    method.training_step(nets, lab, unl, Progress(45, 100))  # within stage 3 the labeller stays
    assert not same_weights(nets["teacher"], nets["model"])
    method.training_step(nets, lab, unl, Progress(60, 100))  # stage 4: labels refreshed from the student
    assert method.stage == 4 and same_weights(nets["teacher"], nets["model"])



def test_average_labeller_is_frozen_from_the_ema_not_the_network():
    method, nets = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 1.0], "labeller": "average"})
    spec = method.networks()["average"]
    assert spec.ema_of == ("model",) and not spec.trainable and spec.ema_half_life == 0.05
    lab, unl = _batches()
    nudge(nets["average"])  # the average now differs from the network
    method.training_step(nets, lab, unl, Progress(30, 100))
    assert same_weights(nets["teacher"], nets["average"]) and not same_weights(nets["teacher"], nets["model"])
    nudge(nets["average"])
    method.training_step(nets, lab, unl, Progress(45, 100))  # frozen within stage 3
    assert not same_weights(nets["teacher"], nets["average"])
    method.training_step(nets, lab, unl, Progress(60, 100))  # refreshed from the average at stage 4
    assert same_weights(nets["teacher"], nets["average"])
    assert "average" not in _setup()[1]  # the paper's labeller builds no average

def test_snapshots_labeller_is_the_mean_of_the_snapshots_in_stage_3_only():
    method, nets = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 1.0], "labeller": "snapshots"})
    lab, unl = _batches()
    method.training_step(nets, lab, unl, Progress(15, 100))
    nudge(nets["model"])  # the two snapshots now differ
    method.training_step(nets, lab, unl, Progress(30, 100))
    assert method.stage == 3 and not same_weights(nets["snapshot0"], nets["snapshot1"])
    probs = [torch.softmax(nets[n].eval()(unl.image), 1) for n in ("snapshot0", "snapshot1")]
    mean_labels = ((probs[0] + probs[1]) / 2).argmax(1)
    assert torch.equal(method._pseudo_labels(method._labellers(nets), unl.image), mean_labels)
    assert [id(n) for n in method._labellers(nets)] == [id(nets["snapshot0"]), id(nets["snapshot1"])]
    method.training_step(nets, lab, unl, Progress(60, 100))  # stage 4: the refreshed copy alone, as the paper
    assert method._labellers(nets) == [nets["teacher"]] and same_weights(nets["teacher"], nets["model"])


def test_best_labeller_freezes_the_stage_best_on_validation_and_starts_the_student_from_it():
    method, nets = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 1.0], "labeller": "best"})
    lab, unl = _batches()
    method.on_validation(nets, 10, 0.5)  # the best so far: kept
    best_then = {k: v.clone() for k, v in nets["model"].state_dict().items()}
    nudge(nets["model"])
    method.on_validation(nets, 20, 0.4)  # worse: not kept
    method.on_validation(nets, 25, float("nan"))  # no validation set: ignored
    assert method.best_dice == 0.5 and all(torch.equal(best_then[k], v) for k, v in method.best_weights.items())
    method.training_step(nets, lab, unl, Progress(30, 100))  # stage 3: T = the best, S initialised with T
    assert all(torch.equal(best_then[k], v) for k, v in nets["teacher"].state_dict().items())
    assert same_weights(nets["model"], nets["teacher"])
    assert method.best_dice is None and method.best_weights is None  # stage 3 tracks its own best
    nudge(nets["model"])
    method.on_validation(nets, 40, 0.3)  # lower than stage 1's best, still stage 3's best
    stage3_best = {k: v.clone() for k, v in nets["model"].state_dict().items()}
    nudge(nets["model"])
    method.training_step(nets, lab, unl, Progress(60, 100))  # stage 4: labels from stage 3's best; S goes on
    assert all(torch.equal(stage3_best[k], v) for k, v in nets["teacher"].state_dict().items())
    assert not same_weights(nets["model"], nets["teacher"])
    method.on_validation(nets, 70, 0.9)  # nothing left to label: stage 4 keeps no copy
    assert method.best_dice is None
    fresh, fresh_nets = _setup({"stage_starts": [0.3, 0.6], "snapshots": [0.5, 1.0], "labeller": "best"})
    fresh.training_step(fresh_nets, lab, unl, Progress(30, 100))  # never validated: the boundary's network
    assert same_weights(fresh_nets["teacher"], fresh_nets["model"])
    older = _setup()[0]  # a checkpoint from before the best labeller: no copy, and it still loads
    older.load_state_dict({"stage": 3, "snapshots_taken": 3, "ranking": None})
    assert older.stage == 3 and older.best_weights is None
    snapshot, _ = _setup({"labeller": "snapshot"})
    snapshot.on_validation(nets, 10, 0.5)
    assert snapshot.best_weights is None  # only the best labeller keeps a copy


def test_variants_build_what_they_need():
    st, st_nets = _setup({"variant": "st"})
    assert set(st_nets) == {"model", "teacher"} and st.curriculum() is None  # no sample sorting
    ss, ss_nets = _setup({"variant": "st_ss"})
    assert set(ss_nets) == {"model", "teacher", "snapshot0", "snapshot1", "snapshot2"}
    assert ss_nets["model"].num_decoders == 1
    full, full_nets = _setup()
    assert full_nets["model"].num_decoders == 2 and full_nets["snapshot0"].num_decoders == 2
    assert full_nets["model"].decoders[1].levels[0].mode == "interp"
    lab, unl = _batches()
    assert set(ss.training_step(ss_nets, lab, unl, Progress(40, 100)).losses) == {"sup", "unsup"}
    assert set(full.training_step(full_nets, lab, unl, Progress(40, 100)).losses) == {"sup", "sup_aux", "unsup"}


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_unsupervised_term_is_eq4(label_mode):
    method, nets = _setup({"student_view": "clean"}, label_mode=label_mode)  # the paper: one image for both
    lab, unl = _batches(label_mode)
    nudge(nets["teacher"])
    out = method.training_step(nets, lab, unl, Progress(40, 100))
    model, teacher = nets["model"], nets["teacher"]
    teacher.eval()
    with torch.no_grad():
        t = teacher(unl.image)
        target = t.argmax(1) if label_mode == "multiclass" else (t.sigmoid() > 0.5).float()
        model.train()
        x = torch.cat([lab.image, unl.image])
        main, aux = model(x)[2:], model(x, decoder=1)[2:]
        act = (lambda z: z.softmax(1)) if label_mode == "multiclass" else torch.sigmoid
        p, q = act(main), act(aux)
        if label_mode == "multiclass":
            d = (p * (p.log() - q.log())).sum(1)
        else:
            d = (p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())).sum(1)
        ce = cross_entropy_map(main, target, label_mode)
    expected = (torch.exp(-d) * ce + d).mean()
    assert out.losses["unsup"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert out.logs["pixel_uncertainty"] == pytest.approx(d.mean().item(), rel=1e-3)


def test_state_round_trip_keeps_the_curriculum():
    method, nets = _setup()
    snaps = [nets[name] for name in method.snapshot_names]
    probs = torch.full((2, 1, 1, 1), 0.5)
    method.curriculum().on_cases(nets, [_fake_case("u0", {id(s): probs for s in snaps})], Progress(40, 100))
    restored, _ = _setup()
    restored.load_state_dict(method.state_dict())
    assert restored.stage == 3 and restored.snapshots_taken == 3 and restored.ranking == method.ranking
    assert not restored.curriculum().wants_cases(Progress(41, 100))
    with pytest.raises(ValueError, match="stage"):
        restored.load_state_dict({"round": 1})


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match="method.stage_starts"):
        _setup({"stage_starts": [0.6, 0.3]})
    with pytest.raises(ConfigError, match="method.snapshots"):
        _setup({"snapshots": [1.0]})
    with pytest.raises(ConfigError, match="method.variant"):
        _setup({"variant": "unrc"})
    with pytest.raises(ConfigError, match="labeller=snapshots"):
        _setup({"variant": "st", "labeller": "snapshots"})


# -- end to end: every stage through the engine, and resume mid-stage 3 ----------------------


def _cfg(root, dim=2, steps=9):
    return load_config(
        None,
        [
            "data.source=phantom",
            f"data.options={{n_cases: 8, dim: {dim}, seed: 0}}",
            "split.labelled=2",
            "split.val=1",
            "split.test=2",
            f"model.dim={dim}",
            "model.widths=[4, 8]",
            f"train.steps={steps}",
            "train.val_every=3",
            "train.log_every=1",
            "train.batch_size=2",
            "train.unlabelled_batch_size=2",
            "train.warmup_steps=1",
            "train.method=dual_uncertainty",
            f"output.root={root}",
            "output.name=run",
        ],
    )


@pytest.fixture
def recorder(monkeypatch):
    """Counts ranking passes and records the case ids of every unlabelled batch."""
    calls = {"rankings": 0, "unlabelled": []}
    rank, step = SampleSorting.on_cases, DualUncertainty.training_step

    def on_cases(self, nets, cases, progress):
        calls["rankings"] += 1
        return rank(self, nets, cases, progress)

    def training_step(self, nets, labelled, unlabelled, progress):
        calls["unlabelled"].append((progress.step, list(unlabelled.case_ids)))
        return step(self, nets, labelled, unlabelled, progress)

    monkeypatch.setattr(SampleSorting, "on_cases", on_cases)
    monkeypatch.setattr(DualUncertainty, "training_step", training_step)
    return calls


@pytest.mark.parametrize("dim", [2, 3])
def test_all_stages_end_to_end(tmp_path, recorder, dim):
    run = api.train(_cfg(tmp_path, dim), progress=False, evaluate=False).run_dir
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["stage"]) for r in rows] == [1, 1, 1, 3, 3, 3, 4, 4, 4]
    # logged from stage 3 on: a key first reported late still gets its column
    assert [r["pixel_uncertainty"] != "" for r in rows] == [False] * 3 + [True] * 6
    ranking = json.loads((run / "artifacts" / "ranking.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert sorted(ranking["order"]) == sorted(split["unlabelled"]) and len(ranking["reliable"]) == 2  # ⌈3/2⌉
    assert recorder["rankings"] == 1
    stage3 = {c for s, ids in recorder["unlabelled"] if 3 <= s < 6 for c in ids}
    assert stage3 <= set(ranking["reliable"])


def test_best_labeller_end_to_end_resumes_with_its_copy(tmp_path):
    """The engine hands the method its validation Dice; the stage's best copy travels in the checkpoint."""
    def cfg(root):
        config = _cfg(root, steps=12)  # stage 3 from step 4, stage 4 from step 8; validation at 3, 6, 9, 12
        config.method = {"labeller": "best"}
        return config

    def stop(step):
        if step == 7:  # stage 3, after the validation at step 6 chose its best copy
            raise KeyboardInterrupt

    straight = api.train(cfg(tmp_path / "a"), progress=False, evaluate=False)
    with pytest.raises(KeyboardInterrupt):
        api.train(cfg(tmp_path / "b"), progress=False, evaluate=False, on_step=stop)
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert a["method_state"] == b["method_state"] and a["method_state"]["stage"] == 4
    assert set(a["method_state"]) >= {"best_dice", "best_weights"}
    for net in a["nets"]:
        assert all(torch.equal(a["nets"][net][k], b["nets"][net][k]) for k in a["nets"][net]), net


def test_resume_mid_stage_3_continues_the_same_curriculum(tmp_path, recorder):
    straight = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    assert recorder["rankings"] == 1

    def stop(step):
        if step == 5:  # steps 3 and 4 of stage 3 done, step 5 still to come
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b"), progress=False, evaluate=False, on_step=stop)
    assert recorder["rankings"] == 2
    seen = len(recorder["unlabelled"])
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    assert recorder["rankings"] == 2  # no re-ranking after resume
    assert recorder["unlabelled"][seen:] == recorder["unlabelled"][5:9]  # the same batches as the straight run
    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert a["method_state"] == b["method_state"] and a["method_state"]["stage"] == 4
    for net in a["nets"]:
        assert all(torch.equal(a["nets"][net][k], b["nets"][net][k]) for k in a["nets"][net]), net
    assert math.isfinite(float(b["best"]["score"]))


def test_loader_workers_never_draw_from_a_stale_pool(tmp_path, recorder):
    """Workers draw ahead; stage 3 restricts the pool and stage 4 lifts it: the batches stay the in-process ones."""
    inline = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    expected = list(recorder["unlabelled"])
    recorder["unlabelled"].clear()
    cfg = _cfg(tmp_path / "b")
    cfg.train.workers = 2
    with_workers = api.train(cfg, progress=False, evaluate=False)
    assert recorder["unlabelled"] == expected
    a = torch.load(inline.run_dir / "checkpoints" / "last.pt", weights_only=False)["nets"]
    b = torch.load(with_workers.run_dir / "checkpoints" / "last.pt", weights_only=False)["nets"]
    assert all(torch.equal(a[net][k], b[net][k]) for net in a for k in a[net])


def test_intensity_student_view_trains_the_student_on_the_view_against_clean_labels(monkeypatch):
    import semiseg.methods._options as options

    monkeypatch.setattr(options, "intensity_view", lambda image, n_ops, ops, remap: image * 2.0 + 1.0)  # a known view
    method, nets = _setup({"student_view": "intensity"})
    lab, unl = _batches()
    nudge(nets["teacher"])
    out = method.training_step(nets, lab, unl, Progress(40, 100))
    teacher, model = nets["teacher"], nets["model"]
    teacher.eval()
    with torch.no_grad():
        target = teacher(unl.image).argmax(1)  # the frozen copy labels the clean images
        model.train()
        x = torch.cat([lab.image, unl.image * 2.0 + 1.0])  # one joint pass: labelled images and the view
        p, q = model(x)[2:].softmax(1), model(x, decoder=1)[2:].softmax(1)
        d = (p * (p.log() - q.log())).sum(1)
        ce = cross_entropy_map(model(x)[2:], target, "multiclass")
    assert torch.equal(out.targets["pseudo"], target)
    assert out.losses["unsup"].item() == pytest.approx((torch.exp(-d) * ce + d).mean().item(), rel=1e-4)
    with pytest.raises(ConfigError, match="method.student_view"):
        _setup({"student_view": "strong"})
    assert _setup()[0].cfg.student_view == "intensity"  # the default since dev_student_view_heart/_demo


def test_per_stage_schedule_restarts_at_the_stage_boundaries():
    method, _ = _setup({"stage_starts": [0.3, 0.6], "stage_schedule": "per_stage"})
    assert method.schedule_restarts(100) == [30, 60]
    assert _setup()[0].schedule_restarts(100) == []  # the default: one schedule over the run
