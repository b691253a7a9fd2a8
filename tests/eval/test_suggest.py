"""semiseg suggest: scores against hand-computed values, the diverse ranking, the report and its errors."""

import csv
import math

import numpy as np
import pytest
import torch

from semiseg import api
from semiseg.cli import main
from semiseg.config import load_config
from semiseg.errors import ConfigError, SemisegError
from semiseg.eval import suggest as sg
from semiseg.methods.dual_uncertainty import sample_uncertainty


def test_entropy_mutual_information_and_variance_by_hand():
    half = np.full((2, 1, 1), 0.5)
    assert sg.entropy_map(half, "multiclass")[0, 0] == pytest.approx(math.log(2), abs=1e-6)
    certain_but_split = np.array([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])  # two samples, (S, K, 1, 1)
    assert sg.mutual_information_map(certain_but_split, "multiclass")[0, 0] == pytest.approx(math.log(2), abs=1e-5)
    assert sg.variance_map(certain_but_split)[0, 0] == pytest.approx(0.5)  # 0.25 per class
    agreeing = np.stack([half, half])
    assert sg.mutual_information_map(agreeing, "multiclass")[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_disagreement_by_hand_and_equal_to_eq1_of_dual_uncertainty():
    member = np.array([0.2, 0.8]).reshape(1, 2, 1, 1)
    reference = np.array([0.6, 0.4]).reshape(2, 1, 1)
    assert sg.disagreement_map(member, reference)[0, 0] == pytest.approx(0.16)
    rng = np.random.default_rng(0)
    snaps = rng.dirichlet([1, 1, 1], size=(3, 4, 5)).transpose(0, 3, 1, 2)  # (K=3 snapshots, 3 classes, 4, 5)
    eq1 = sample_uncertainty((torch.from_numpy(s) for s in snaps[:-1]), torch.from_numpy(snaps[-1]))
    assert sg.disagreement_map(snaps[:-1], snaps[-1]).mean() == pytest.approx(eq1)


def test_aggregate_over_volume_or_foreground_and_empty_foreground_falls_back():
    probs = np.zeros((2, 2, 2))
    probs[0], probs[1, 0, 0], probs[0, 0, 0] = 1.0, 1.0, 0.0  # one foreground voxel
    score_map = np.array([[4.0, 0.0], [0.0, 0.0]])
    assert sg.aggregate(score_map, probs, "multiclass", "volume") == 1.0
    assert sg.aggregate(score_map, probs, "multiclass", "foreground") == 4.0
    background = np.stack([np.ones((2, 2)), np.zeros((2, 2))])
    assert sg.aggregate(score_map, background, "multiclass", "foreground") == 1.0


def test_class_volumes_use_the_spacing_and_the_slice_is_the_most_uncertain():
    probs = np.zeros((3, 2, 2, 2))
    probs[0] = 1.0
    probs[:, 0, 0, 0] = [0, 1, 0]
    probs[:, 1, 1, :] = [[0, 0], [0, 0], [1, 1]]
    probs[0, 1, 1, :] = 0
    volumes = sg.class_volumes(probs, "multiclass", ["bg", "a", "b"], (2.0, 1.0, 0.5))
    assert volumes == {"a": 1.0, "b": 2.0}
    score_map = np.zeros((2, 2, 3))
    score_map[..., 2] = 1.0
    assert sg.most_uncertain_slice(score_map) == 2 and sg.most_uncertain_slice(score_map[..., 0]) == -1


def test_diversity_moves_a_near_duplicate_down():
    scores = [1.0, 0.99, 0.5]
    base = np.array([1.0, 0.0, 0.0])
    descriptors = np.stack([base, base + [0, 0.01, 0], np.array([0.0, 1.0, 0.0])])
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    assert sg.select_diverse(scores, descriptors, 0.0) == [0, 1, 2]
    assert sg.select_diverse(scores, descriptors, 1.0) == [0, 2, 1]


def _train(tmp_path, name, *extra):
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 3, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.dim=2", "model.widths=[4, 8]", "train.steps=2", "train.val_every=2",
        "train.batch_size=2", "train.unlabelled_batch_size=2", "train.warmup_steps=1", f"output.root={tmp_path}",
        f"output.name={name}", "eval.report_cases=1", *extra])
    return api.train(cfg, progress=False, evaluate=False).run_dir


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("sup"), "sup")


@pytest.fixture(scope="module")
def cps_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cps"), "cps", "train.method=cps", "model.dropout=0.3")


def test_suggest_ranks_the_unlabelled_cases_and_writes_its_report(supervised_run):
    ranked = api.suggest(supervised_run, top=1, progress=False)
    out = supervised_run / "suggest"
    rows = list(csv.DictReader((out / "suggest.csv").open()))
    assert [r["case_id"] for r in rows] == [c.case_id for c in ranked] and len(rows) == 2
    class_names = api.load_model(supervised_run).info["class_names"]
    assert list(rows[0]) == ["rank", "case_id", "score", "slice", *[f"volume_mm3_{c}" for c in class_names[1:]]]
    assert all(float(r[f"volume_mm3_{c}"]) >= 0 for r in rows for c in class_names[1:])
    assert float(rows[0]["score"]) >= float(rows[1]["score"]) > 0
    assert (out / "figures" / f"{ranked[0].case_id}.png").is_file()
    assert f"figures/{ranked[0].case_id}.png" in (out / "suggest.md").read_text()
    with pytest.raises(SemisegError, match="--overwrite"):
        api.suggest(supervised_run, progress=False)


def test_cotraining_and_dropout_give_disagreement_and_mutual_information(cps_run, tmp_path):
    for score in ("disagreement", "mutual_info", "threshold_variance"):
        ranked = api.suggest(cps_run, score=score, output=tmp_path / score, progress=False)
        assert all(np.isfinite(c.score) and c.score >= 0 for c in ranked)
    assert (tmp_path / "disagreement" / "suggest.md").read_text().count("net1, net2 against net1") == 1


def test_errors_unknown_score_unsupported_score_and_nothing_to_rank(supervised_run, tmp_path):
    with pytest.raises(ConfigError, match="choose one of entropy"):
        api.suggest(supervised_run, score="bald", output=tmp_path / "a", progress=False)
    with pytest.raises(SemisegError, match="it supports: entropy"):
        api.suggest(supervised_run, score="mutual_info", output=tmp_path / "b", progress=False)
    no_unlabelled = _train(tmp_path, "nounl", "split.unlabelled=0")
    with pytest.raises(SemisegError, match="pass --input"):
        api.suggest(no_unlabelled, progress=False)
    assert main(["suggest", "--run", str(supervised_run), "--score", "disagreement", "--quiet"]) == 2


def test_a_folder_of_images_with_a_near_copy_is_ranked_and_diversity_moves_the_copy_down(supervised_run, tmp_path):
    nib = pytest.importorskip("nibabel")
    from semiseg.data.sources import open_dataset

    refs = open_dataset("phantom", None, n_cases=6, dim=3, seed=0).cases
    folder = tmp_path / "images"
    folder.mkdir()
    first = refs[0].load().image[0]
    for name, image in [("a", first), ("a_copy", first + 1e-3), ("b", refs[1].load().image[0]),
                        ("c", refs[2].load().image[0])]:
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(folder / f"{name}.nii.gz"))
    plain = [c.case_id for c in api.suggest(supervised_run, input_path=folder, output=tmp_path / "p", progress=False)]
    assert sorted(plain) == ["a", "a_copy", "b", "c"] and abs(plain.index("a") - plain.index("a_copy")) == 1
    diverse = [c.case_id for c in api.suggest(supervised_run, input_path=folder, output=tmp_path / "d",
                                              diversity=10.0, progress=False)]
    assert diverse[-1] in ("a", "a_copy") and diverse != plain


def test_which_methods_have_disagreement():
    from semiseg.engine.assemble import method_context
    from semiseg.engine.suggest import members
    from semiseg.methods import get_method

    cfg = load_config(None, ["data.source=phantom"])
    ctx = method_context(cfg, {"label_mode": "multiclass", "class_names": ["bg", "a"], "channels": 1})

    def make(name, **options):
        return get_method(name)(ctx, options)

    assert members(make("supervised")) is None
    assert members(make("ensemble", members=3)) == (["member0", "member1", "member2"], None)
    assert members(make("cmt", predict_with="teacher")) == (["student1", "student2", "teacher"], "teacher")
    assert members(make("ucmt", predict_with="students")) == (["student1", "student2"], None)  # their mean predicts
    dual = make("dual_uncertainty")
    assert members(dual) is None  # no snapshots yet
    dual.snapshots_taken = len(dual.snapshot_names)
    assert members(dual) == (dual.snapshot_names, dual.snapshot_names[-1])
