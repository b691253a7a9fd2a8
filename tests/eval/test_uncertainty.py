"""Uncertainty: Brier/ECE against direct formulas, Monte-Carlo whole-case prediction, maps and their files."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.data.case import Case
from semiseg.engine.inferer import Inferer
from semiseg.eval.metrics import brier_score, expected_calibration_error
from semiseg.eval.uncertainty import (
    brier_foreground,
    case_uncertainty,
    format_uncertainty_table,
    summarize_uncertainty,
    uncertainty_maps,
    write_uncertainty_maps,
)


def _softmax(rng, k, shape):
    z = rng.normal(size=(k, *shape))
    e = np.exp(z)
    return e / e.sum(0)


def test_brier_scores_match_direct_formulas_and_the_papers_eq1():
    rng = np.random.default_rng(0)
    probs = _softmax(rng, 3, (5, 4))
    onehot = np.eye(3)[rng.integers(0, 3, (5, 4))].transpose(2, 0, 1)
    loop = np.mean([sum((probs[k, i, j] - onehot[k, i, j]) ** 2 for k in range(3)) for i in range(5) for j in range(4)])
    assert brier_score(probs, onehot) == pytest.approx(loop)
    fg = np.mean([(probs[k, i, j] - onehot[k, i, j]) ** 2 for k in (1, 2) for i in range(5) for j in range(4)])
    assert brier_foreground(probs, onehot, "multiclass") == pytest.approx(fg)
    # binary: appendix Eq. 1, (1/HW) Σ (p_ij − y_ij)² with p the foreground probability
    p, y = rng.random((6, 7)), rng.integers(0, 2, (6, 7))
    eq1 = sum((p[i, j] - y[i, j]) ** 2 for i in range(6) for j in range(7)) / 42
    assert brier_score(p[None], y[None]) == pytest.approx(eq1)  # one sigmoid channel: the same score
    assert brier_foreground(p[None], y[None], "multilabel") == pytest.approx(eq1)
    two_class = np.stack([1 - p, p]), np.stack([1 - y, y])
    assert brier_foreground(*two_class, "multiclass") == pytest.approx(eq1)
    assert brier_score(*two_class) == pytest.approx(2 * eq1)  # the classic sum over classes counts both


def _ece_loop(confidence, correct, n_bins):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            acc = np.mean([correct[i] for i in members])
            conf = np.mean([confidence[i] for i in members])
            total += len(members) / len(confidence) * abs(acc - conf)
    return total


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_ece_matches_the_binned_definition(label_mode):
    rng = np.random.default_rng(1)
    if label_mode == "multiclass":
        probs = _softmax(rng, 3, (9, 8))
        onehot = np.eye(3)[rng.integers(0, 3, (9, 8))].transpose(2, 0, 1)
        confidence = probs.max(0).ravel()
        correct = (probs.argmax(0) == onehot.argmax(0)).ravel()
    else:
        probs, onehot = rng.random((2, 9, 8)), rng.integers(0, 2, (2, 9, 8))
        confidence = np.maximum(probs, 1 - probs).ravel()
        correct = ((probs >= 0.5) == (onehot >= 0.5)).ravel()
    expected = _ece_loop(confidence, correct, 10)
    assert expected_calibration_error(probs, onehot, n_bins=10, label_mode=label_mode) == pytest.approx(expected)


def test_maps_mean_entropy_variance_by_hand():
    samples = np.array([[[0.9]], [[0.5]], [[0.1]]], dtype=np.float32)[:, :, :, None]  # S=3, K=1, 1×1 image
    maps = uncertainty_maps(samples[0], samples, "multilabel")
    assert maps["mean"].ravel() == pytest.approx([0.5])
    assert maps["entropy"].ravel() == pytest.approx([math.log(2)], rel=1e-5)
    assert maps["variance"].ravel() == pytest.approx([np.var([0.9, 0.5, 0.1])], rel=1e-5)
    deterministic = uncertainty_maps(samples[0], None, "multilabel")
    assert set(deterministic) == {"mean", "entropy"} and deterministic["mean"].ravel() == pytest.approx([0.9])


def _sampler(s):
    """S samples that are simple functions of the input: sigmoid(x + k) for k = 0 … S−1, K = 2 channels."""

    def sampler(x):
        return torch.stack([torch.sigmoid(torch.cat([x, -x], 1)[:, :2] + k) for k in range(s)])

    return sampler


@pytest.mark.parametrize("model_dim", [2, 3])
def test_monte_carlo_prediction_of_a_whole_case(model_dim):
    image = np.random.default_rng(0).normal(size=(1, 12, 10, 8)).astype(np.float32)
    inferer = Inferer(dim=model_dim, label_mode="multiclass", device=torch.device("cpu"), divisor=4,
                      roi_size=(8, 8, 8), batch_size=3, overlap=0.25)
    samples = inferer.samples(_sampler(3), image, num_classes=2)
    assert samples.shape == (3, 2, 12, 10, 8)
    x = torch.from_numpy(image)
    expected = torch.stack([torch.sigmoid(torch.cat([x, -x])[:2] + k) for k in range(3)]).numpy()
    assert np.allclose(samples, expected, atol=1e-4)
    assert inferer.samples(lambda x: None, image, num_classes=2) is None


def test_maps_are_written_with_the_case_geometry(tmp_path):
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    volume = Case("vol", np.zeros((1, 4, 5, 3), np.float32), np.zeros((4, 5, 3), np.int64), (1.5, 2.0, 2.5), affine)
    rng = np.random.default_rng(0)
    samples = np.stack([_softmax(rng, 2, (4, 5, 3)) for _ in range(4)]).astype(np.float32)
    onehot = np.eye(2)[volume.label].transpose(3, 0, 1, 2)
    row, maps = case_uncertainty(volume, samples[0], samples, onehot, label_mode="multiclass", out_dir=tmp_path)
    assert row["source"] == "monte_carlo" and row["samples"] == 4
    assert row["brier"] == pytest.approx(brier_score(samples.mean(0), onehot))
    variance = nib.load(str(tmp_path / "vol_variance.nii.gz"))
    assert np.allclose(variance.affine, affine) and np.allclose(variance.get_fdata(), maps["variance"], atol=1e-6)
    assert nib.load(str(tmp_path / "vol_mean.nii.gz")).shape == (4, 5, 3, 2)  # classes on the last axis
    flat = Case("img", np.zeros((1, 6, 7), np.float32), np.zeros((6, 7), np.int64), (1.0, 1.0), meta={"format": "png"})
    probs = _softmax(rng, 2, (6, 7)).astype(np.float32)
    case_uncertainty(flat, probs, None, np.eye(2)[flat.label].transpose(2, 0, 1), label_mode="multiclass",
                     out_dir=tmp_path)
    png = np.asarray(Image.open(tmp_path / "img_entropy.png"))
    expected = np.rint(uncertainty_maps(probs, None, "multiclass")["entropy"] / math.log(2) * 255)
    assert png.shape == (6, 7) and np.abs(png.astype(float) - expected).max() <= 1
    assert not (tmp_path / "img_variance.png").exists() and (tmp_path / "img_mean.npy").exists()


def test_summary_and_table():
    rows = [{"brier": 0.1, "brier_fg": 0.05, "ece": 0.02, "entropy": 0.3, "variance": 0.01},
            {"brier": 0.3, "brier_fg": 0.15, "ece": 0.04, "entropy": 0.5, "variance": 0.03}]
    summary = summarize_uncertainty(rows)
    assert summary["brier"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.1)}
    table = format_uncertainty_table(summary, "monte_carlo", 5)
    assert "| monte_carlo, S = 5 | 0.2000 ± 0.1000 | 0.1000 ± 0.0500 |" in table


def test_written_files_round_trip(tmp_path):
    case = Case("c", np.zeros((1, 3, 3, 2), np.float32), None, (1.0, 1.0, 1.0))
    maps = {"mean": np.full((2, 3, 3, 2), 0.5, np.float32), "entropy": np.ones((3, 3, 2), np.float32)}
    written = write_uncertainty_maps(case, maps, tmp_path, "multiclass")
    assert sorted(p.name for p in written) == ["c_entropy.nii.gz", "c_mean.nii.gz"]


def test_deterministic_prediction_row_and_table(tmp_path):
    probs = np.stack([np.full((3, 3), 0.2), np.full((3, 3), 0.8)]).astype(np.float32)
    onehot = np.stack([np.zeros((3, 3)), np.ones((3, 3))])
    case = Case("d", np.zeros((1, 3, 3), np.float32), np.ones((3, 3), np.int64), (1.0, 1.0), meta={"format": "png"})
    row, _ = case_uncertainty(case, probs, None, onehot, label_mode="multiclass", out_dir=tmp_path)
    assert row["source"] == "deterministic" and row["samples"] == 1 and math.isnan(row["variance"])
    assert row["brier"] == pytest.approx(2 * 0.04) and row["brier_fg"] == pytest.approx(0.04)
    table = format_uncertainty_table(summarize_uncertainty([row]), row["source"], row["samples"])
    assert table.splitlines()[-1].startswith("| deterministic | 0.0800 ± 0.0000") and table.endswith("| – |")
