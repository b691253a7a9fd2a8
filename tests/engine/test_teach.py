"""Diagnostics against held-out truth: what a method teaches, scored on labels it never sees."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.data.loaders import Augmentation, PatchSampler, StoredCase
from semiseg.engine.networks import build_nets
from semiseg.engine.teach import UnlabelledDice, column_names, score_prediction, score_step, scored_cases
from semiseg.errors import SemisegError
from semiseg.eval.report import _teach_keys, teaching_figure, write_report
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, Method, MethodContext, Progress, StepOut, available_methods, registry

K = 3
# Methods that train on nothing but labels, so there is nothing to score against held-out truth.
NO_TARGETS = {
    "supervised": "labelled data only",
    "ensemble": "M supervised members, labelled data only",
    "multiscale_supervised": "labelled data only (MuST's Eq. 4 baseline)",
}


def _truth(label_mode, shape=(2, 8, 8)):
    g = torch.Generator().manual_seed(1)
    if label_mode == "multiclass":
        return torch.randint(0, K, shape, generator=g)
    return (torch.rand((shape[0], K, *shape[1:]), generator=g) > 0.5).float()


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_truth_as_target_scores_one_and_wrong_targets_less(label_mode):
    truth = _truth(label_mode)
    probs = (torch.nn.functional.one_hot(truth, K).movedim(-1, 1).float() if label_mode == "multiclass"
             else truth.clone())
    row = score_step({"exact": truth, "probs": probs, "empty": torch.zeros_like(truth)}, {},
                     truth, label_mode=label_mode, num_classes=K)
    assert row["teach/exact_acc"] == row["teach/exact_dice"] == 1.0
    assert row["teach/probs_acc"] == row["teach/probs_dice"] == 1.0
    assert row["teach/empty_dice"] == 0.0 and row["teach/empty_acc"] < 1.0


def class_dice(targets, truth, *, label_mode, class_names):
    """The ``teach_class/*`` part of ``score_step``'s row."""
    row = score_step(targets, {}, truth, label_mode=label_mode, num_classes=len(class_names), class_names=class_names)
    return {k: v for k, v in row.items() if k.startswith("teach_class/")}


def test_each_class_is_scored_on_its_own_and_an_absent_one_is_left_out():
    truth = torch.tensor([[[0, 1, 1, 1], [1, 2, 2, 0]]])  # 4 pixels of class 1, 2 of class 2
    target = torch.tensor([[[0, 1, 1, 0], [1, 0, 0, 0]]])  # class 1: 3 of 4 found; class 2 all missed
    row = class_dice({"pseudo": target}, truth, label_mode="multiclass", class_names=["bg", "Liver", "lesion"])
    assert row == {"teach_class/pseudo_dice/liver": pytest.approx(2 * 3 / 7), "teach_class/pseudo_dice/lesion": 0.0}
    # the mean over classes hides the lost class behind the found one
    assert score_step({"pseudo": target}, {}, truth, label_mode="multiclass", num_classes=3)[
        "teach/pseudo_dice"] == pytest.approx((6 / 7 + 0.0) / 2)
    no_lesion = torch.tensor([[[0, 1, 1, 1], [1, 0, 0, 0]]])
    assert list(class_dice({"p": no_lesion}, no_lesion, label_mode="multiclass", class_names=["bg", "a", "b"])) == [
        "teach_class/p_dice/a"]
    assert class_dice({"p": target}, truth, label_mode="multiclass", class_names=["bg", "one"]) == {}
    multilabel = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # (B, K, H, W): region 0 one pixel, region 1 two
    row = class_dice({"p": multilabel}, multilabel, label_mode="multilabel", class_names=["wt", "tc"])
    assert row == {"teach_class/p_dice/wt": 1.0, "teach_class/p_dice/tc": 1.0}


def test_class_columns_are_plain_and_distinct():
    assert column_names(["Left ventricle", "RV", "rv"]) == ["left_ventricle", "rv_1", "rv_2"]
    assert column_names(["+++"]) == ["class"]


def test_masks_give_kept_share_and_accuracy_on_kept_pixels():
    truth = torch.tensor([[[0, 1], [1, 2]]])
    target = torch.tensor([[[0, 1], [0, 0]]])  # right on the first row only
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    row = score_step({"pseudo": target}, {"pseudo": mask}, truth, label_mode="multiclass", num_classes=K)
    assert row["teach/pseudo_kept"] == 0.5 and row["teach/pseudo_acc_kept"] == 1.0
    assert row["teach/pseudo_acc"] == 0.5


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_the_model_prediction_is_scored_like_a_target_from_its_logits(label_mode):
    truth = torch.tensor([[[0, 1], [1, 0]]])  # (B, H, W): two foreground pixels
    logits = torch.tensor([[[[2.0, -1.0], [-3.0, 1.0]], [[-2.0, 1.0], [-4.0, 0.0]]]])  # argmax [[0, 1], [0, 0]]
    num_classes = 2
    if label_mode == "multilabel":  # one channel; logit > 0 is foreground: [[0, 1], [0, 0]] again
        truth, logits, num_classes = truth.unsqueeze(1).float(), logits[:, 1:] - logits[:, :1], 1
    row = score_prediction(logits, truth, label_mode=label_mode, num_classes=num_classes)
    assert row["teach/prediction_acc"] == pytest.approx(3 / 4)
    assert row["teach/prediction_dice"] == pytest.approx(2 * 1 / (1 + 2))  # one hit, 1 predicted, 2 true


def test_a_target_on_another_geometry_is_refused():
    truth = _truth("multiclass")
    with pytest.raises(SemisegError, match="unlabelled batch as drawn"):
        score_step({"mixed": torch.zeros(2, 4, 4, dtype=torch.long)}, {}, truth, label_mode="multiclass",
                   num_classes=K, method="m")


def test_sampler_emits_truth_where_a_label_would_be_and_draws_the_same_batches():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 12, 10, 3)).astype(np.float32)
    label = rng.integers(0, K, size=(12, 10, 3))
    args = {"dim": 2, "patch_size": [8, 8], "batch_size": 3, "augment": Augmentation(), "seed": 5}
    labelled = PatchSampler([StoredCase("a", image, label, np.zeros((0, 3)))], **args).next_batch()
    hidden = PatchSampler([StoredCase("a", image, None, np.zeros((0, 3)), truth=label)], **args).next_batch()
    plain = PatchSampler([StoredCase("a", image, None, np.zeros((0, 3)))], **args).next_batch()
    assert hidden["label"] is None and np.array_equal(hidden["truth"], labelled["label"])
    assert np.array_equal(hidden["image"], plain["image"]) and plain["truth"] is None


CASES = [(name, {}) for name in sorted(available_methods())] + [("must", {"alternate": True})]


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_every_method_reports_what_it_teaches(name, options, label_mode):
    """Every method that learns from unlabelled images reports targets on the batch as drawn (or is listed)."""
    cfg = load_config(None, ["model.dim=2", "model.widths=[4, 8]", f"train.method={name}"])
    ctx = MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=2, in_channels=2,
                        supervised_loss=supervised_loss("dice_ce", label_mode, False))
    method = available_methods()[name](ctx, options)
    nets = build_nets(method, cfg, ctx, torch.device("cpu"))
    truth = _truth(label_mode)
    g = torch.Generator().manual_seed(0)
    labelled = Batch(torch.randn(2, 2, 8, 8, generator=g), _truth(label_mode))
    unlabelled = Batch(torch.randn(2, 2, 8, 8, generator=g))
    out = method.training_step(nets, labelled, unlabelled if method.uses_unlabelled else None, Progress(90, 100))
    targets, masks = {}, {}
    while out is not None:  # every update of the step is scored (UCMT and alternating MuST chain a second one)
        targets, masks = {**targets, **out.targets}, {**masks, **out.masks}
        out = out.followup() if out.followup is not None else None
    if name in NO_TARGETS:
        assert not method.uses_unlabelled and not targets
        return
    assert targets, f"{name} reports no targets; fill StepOut.targets or list it in NO_TARGETS with a reason"
    row = score_step(targets, masks, truth, label_mode=label_mode, num_classes=K, method=name)
    assert all(0.0 <= v <= 1.0 for v in row.values()), row
    for mask in masks.values():
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


@pytest.fixture
def oracle(monkeypatch):
    """A method whose pseudo labels are the truth, taken from a spy on the sampler that only this test plants.

    Inside the step it checks that the engine handed it no label: the Batch has none and no other field.
    """
    drawn = []
    original = PatchSampler.batch_at

    def spy(self, step, indices=None):
        raw = original(self, step, indices)
        if self.store[0].label is None:  # the unlabelled sampler's batches
            drawn.append(raw)
        return raw

    monkeypatch.setattr(PatchSampler, "batch_at", spy)

    class Oracle(Method):
        name = "oracle_test"
        summary = "Pseudo labels that are the held-out truth (test only)."
        uses_unlabelled = True

        def training_step(self, nets, labelled, unlabelled, progress):
            assert unlabelled.label is None
            assert {f.name for f in dataclasses.fields(unlabelled)} == {"image", "label", "case_ids"}
            assert "truth" in drawn[-1] and labelled.label is not None
            out = self.supervised_step(nets, labelled, progress)
            if drawn[-1]["truth"] is None:  # monitoring off: the store kept no truth
                return out
            truth = torch.from_numpy(drawn[-1]["truth"])
            return StepOut(out.losses, targets={"oracle": truth, "background": torch.zeros_like(truth)},
                           masks={"oracle": torch.ones(truth.shape)})

    registry.register(Oracle)
    yield
    registry._REGISTRY.pop("oracle_test", None)


def _cfg(tmp_path, *extra):
    return load_config(None, [
        "data.source=phantom", "data.options={n_cases: 7, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.dim=2", "model.widths=[4, 8]", "train.steps=4", "train.val_every=2",
        "train.log_every=1", "train.batch_size=2", "train.unlabelled_batch_size=2", "train.warmup_steps=1",
        "train.method=oracle_test", f"output.root={tmp_path}", "train.threads=1", "eval.report_cases=0", *extra,
    ])


def _rows(run_dir):
    with (run_dir / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_pseudo_labels_that_are_the_truth_score_one(oracle, tmp_path):
    run = api.train(_cfg(tmp_path, "output.name=monitored"), progress=False).run_dir
    rows = _rows(run)
    assert all(float(r["teach/oracle_dice"]) == 1.0 and float(r["teach/oracle_acc"]) == 1.0 for r in rows)
    assert all(float(r["teach/oracle_kept"]) == 1.0 for r in rows)
    assert all(float(r["teach/background_dice"]) == 0.0 for r in rows)
    per_class = [k for k in rows[0] if k.startswith("teach_class/oracle_dice/")]
    assert per_class == ["teach_class/oracle_dice/class_1", "teach_class/oracle_dice/class_2"]
    assert all(float(r[k]) == 1.0 for r in rows for k in per_class if r[k])
    assert any(k.startswith("teach_class/prediction_dice/") for k in rows[0])
    assert all(0.0 <= float(r["teach/prediction_acc"]) <= 1.0 for r in rows)
    val_rows = [r for r in rows if r["val_dice"]]
    assert val_rows and all(0.0 <= float(r["teach/unl_dice_model"]) <= 1.0 for r in val_rows)
    report = (run / "report.md").read_text()
    assert "## What the method teaches" in report and (run / "figures" / "teaching.png").exists()


def test_switched_off_or_without_truth_nothing_is_logged(oracle, tmp_path):
    run = api.train(_cfg(tmp_path, "output.name=unmonitored", "train.monitor_unlabelled=false"), progress=False,
                    evaluate=False).run_dir
    assert not any(k.startswith("teach/") for k in _rows(run)[0])
    assert not teaching_figure(run / "log.csv", tmp_path / "t.png")


def test_report_draws_the_figure_from_the_log(tmp_path):
    rows = [{"step": 10, "loss": 1.0, "val_dice": "", "teach/pseudo_dice": 0.5, "teach/pseudo_kept": 0.8,
             "teach/pseudo_acc_kept": 0.9},
            {"step": 20, "loss": 0.8, "val_dice": 0.6, "teach/pseudo_dice": 0.6, "teach/pseudo_kept": 0.9,
             "teach/pseudo_acc_kept": 0.95, "teach/unl_dice_student": 0.55, "teach/unl_dice_teacher": 0.6,
             "teach/prediction_dice": 0.7}]
    with (tmp_path / "log.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[1]))
        writer.writeheader()
        writer.writerows(rows)
    report = write_report(tmp_path, summary={}, info={"method": "m", "dataset": "d"}, examples=[],
                          label_mode="multiclass").read_text()
    assert "![teaching](figures/teaching.png)" in report and (tmp_path / "figures" / "teaching.png").exists()
    fields = list(rows[1])
    assert _teach_keys(fields, "_dice") == ["teach/pseudo_dice"]  # the model's own scores are not targets


def test_unlabelled_dice_rescores_a_net_only_when_its_weights_change():
    cases = [StoredCase(f"c{i}", np.zeros((1, 4, 4, 1), np.float32), None, np.zeros((0, 3)),
                        truth=np.ones((4, 4, 1), np.int64)) for i in range(3)]
    calls = []

    def probabilities(net, image):
        calls.append(net)
        return np.stack([np.zeros((4, 4, 1)), np.ones((4, 4, 1))])  # predicts class 1 everywhere

    def dice(pred, truth, label_mode, num_classes):
        return float((pred == truth).mean())

    nets = {"student": torch.nn.Linear(2, 2), "frozen": torch.nn.Linear(2, 2)}
    scorer = UnlabelledDice()
    kwargs = {"label_mode": "multiclass", "num_classes": 2, "dice": dice}
    assert scorer(nets, cases, probabilities, **kwargs) == {"teach/unl_dice_student": 1.0,
                                                            "teach/unl_dice_frozen": 1.0}
    assert len(calls) == 2 * 2  # two nets × two cases
    with torch.no_grad():
        nets["student"].weight.add_(1.0)
    scorer(nets, cases, probabilities, **kwargs)
    assert calls[4:] == [nets["student"]] * 2


def test_monitoring_does_not_change_what_training_computes(tmp_path):
    """The same run with and without diagnostics: every loss and validation Dice equal, to the bit."""
    logs = {}
    for monitor in ("true", "false"):
        cfg = _cfg(tmp_path, "train.method=fixmatch", f"output.name=fixmatch_{monitor}",
                   f"train.monitor_unlabelled={monitor}")
        logs[monitor] = _rows(api.train(cfg, progress=False, evaluate=False).run_dir)
    assert any(k.startswith("teach/") for k in logs["true"][0])
    for with_, without in zip(logs["true"], logs["false"], strict=True):
        assert all(with_[k] == without[k] for k in ("loss", "sup", "unsup", "val_dice")), (with_, without)


def test_scored_unlabelled_cases_spread_from_the_first_to_the_last():
    """Eleven stored cases, two of them without truth: the first and the last with truth, then evenly spaced."""
    cases = [StoredCase(f"c{i}", np.zeros((1, 2, 2, 1), np.float32), None, np.zeros((0, 3)),
                        truth=None if i in (0, 10) else np.zeros((2, 2, 1), np.int64)) for i in range(11)]
    assert [c.case_id for c in scored_cases(cases, 2)] == ["c1", "c9"]
    assert [c.case_id for c in scored_cases(cases, 3)] == ["c1", "c5", "c9"]
    assert [c.case_id for c in scored_cases(cases, 1)] == ["c1"]
    assert [c.case_id for c in scored_cases(cases[:2], 2)] == ["c1"]
