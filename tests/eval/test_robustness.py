"""Robustness: the OOD mix-up and FGSM perturbations, whole-case input gradients, and curves on a trained model."""

import numpy as np
import pytest
import torch

from semiseg.engine.inferer import Inferer
from semiseg.errors import ConfigError
from semiseg.eval.robustness import (
    OODShift,
    case_rng,
    check_grid,
    fgsm,
    format_robustness_table,
    mix,
    ood_view,
    robustness_rows,
    summarize_robustness,
)
from semiseg.losses import ce_loss


def _image(shape=(1, 12, 10, 4)):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def test_mix_is_linear_between_the_image_and_its_shifted_version():
    x, shifted = _image(), _image() * 3 + 1
    assert np.allclose(mix(x, shifted, 0.0), x)
    assert np.allclose(mix(x, shifted, 1.0), shifted)
    assert np.allclose(mix(x, shifted, 0.25), 0.75 * x + 0.25 * shifted)


def test_ood_view_depends_on_the_case_id_only():
    x = _image()
    a, b = ood_view(x, case_rng("case_a")), ood_view(x, case_rng("case_a"))
    assert np.array_equal(a, b) and a.shape == x.shape and a.dtype == np.float32
    assert not np.allclose(a, ood_view(x, case_rng("case_b")))
    assert not np.allclose(a, x)
    assert np.allclose(ood_view(x, case_rng("c"), OODShift(log_gamma=0.0, noise=0.0)), x, atol=1e-5)


def test_ood_noise_scales_with_the_image():
    x = _image((1, 64, 64))
    residual = ood_view(10 * x, case_rng("c"), OODShift(log_gamma=0.0, noise=0.5)) - 10 * x
    assert residual.std() == pytest.approx(0.5 * (10 * x).std(), rel=0.05)


def test_fgsm_is_an_epsilon_step_along_the_gradient_sign():
    x = _image((1, 4, 4))
    grad = np.zeros_like(x)
    grad[0, 0, 0], grad[0, 1, 1] = 3.0, -0.2
    assert np.array_equal(fgsm(x, grad, 0.0), x)
    out = fgsm(x, grad, 0.1)
    assert out[0, 0, 0] == pytest.approx(x[0, 0, 0] + 0.1) and out[0, 1, 1] == pytest.approx(x[0, 1, 1] - 0.1)
    assert np.array_equal(np.delete(out.ravel(), [0, 5]), np.delete(x.ravel(), [0, 5]))


@pytest.mark.parametrize(
    ("values", "upper", "match"),
    [((), None, "at least one"), ((0.0, -0.1), None, "epsilons"), ((0.5, 1.5), 1.0, "1.0")],
)
def test_bad_grids_name_the_option(values, upper, match):
    with pytest.raises(ConfigError, match=match):
        check_grid(values, "epsilons", upper)
    assert check_grid((0.4, 0.0), "gammas", 1.0) == (0.0, 0.4)


def _pointwise_net(dims):
    torch.manual_seed(0)
    return (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 3, 1)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("model_dim", [2, 3])
def test_input_gradient_matches_direct_autograd_in_sign(model_dim, label_mode):
    net = _pointwise_net(model_dim)
    image = _image((1, 12, 10, 8))
    rng = np.random.default_rng(1)
    onehot = (np.eye(3)[rng.integers(0, 3, (12, 10, 8))].transpose(3, 0, 1, 2) if label_mode == "multiclass"
              else rng.integers(0, 2, (3, 12, 10, 8)))
    inferer = Inferer(dim=model_dim, label_mode=label_mode, device=torch.device("cpu"), divisor=2, roi_size=(8, 8, 8),
                      batch_size=3, overlap=0.5)
    grad = inferer.input_gradient(net, image, onehot)
    # direct: every voxel is independent under a 1×1 conv, so the whole-volume gradient has the same signs
    x = torch.from_numpy(image)[None].requires_grad_(True)
    conv3d = torch.nn.Conv3d(1, 3, 1)
    conv3d.weight.data, conv3d.bias.data = net.weight.data.reshape(3, 1, 1, 1, 1), net.bias.data
    loss = ce_loss(conv3d(x), torch.from_numpy(onehot)[None].float(), label_mode=label_mode)
    direct = torch.autograd.grad(loss, x)[0][0].numpy()
    assert grad.shape == image.shape
    assert np.array_equal(np.sign(grad), np.sign(direct))
    attacked = torch.from_numpy(fgsm(image, grad, 0.1))[None]
    assert ce_loss(conv3d(attacked), torch.from_numpy(onehot)[None].float(), label_mode=label_mode) > loss


def test_input_gradient_of_a_2d_case():
    net = _pointwise_net(2)
    image, onehot = _image((1, 8, 6)), np.eye(3)[np.zeros((8, 6), int)].transpose(2, 0, 1)
    inferer = Inferer(dim=2, label_mode="multiclass", device=torch.device("cpu"), divisor=4, roi_size=(8, 8),
                      batch_size=2, overlap=0.5)
    grad = inferer.input_gradient(net, image, onehot)
    assert grad.shape == (1, 8, 6) and np.abs(grad).sum() > 0


def _threshold_predict(image):
    """'Model': foreground probability rises with the intensity of channel 0 (two classes)."""
    fg = 1.0 / (1.0 + np.exp(-4.0 * image[0]))
    return np.stack([1.0 - fg, fg])


def test_rows_summary_and_table():
    image = _image((1, 16, 16))
    gt = (image[0] > 0).astype(np.int64)
    calls = []

    def gradient(img, onehot):
        calls.append(onehot.shape)
        return -(2.0 * onehot[1] - 1.0)[None] * np.ones_like(img)  # pushes every pixel towards the wrong class

    rows = robustness_rows("case", image, gt, predict=_threshold_predict, gradient=gradient, label_mode="multiclass",
                           num_classes=2, gammas=(0.0, 1.0), epsilons=(0.0, 0.5, 5.0))
    assert calls == [(2, 16, 16)]
    assert [(r["attack"], r["level"]) for r in rows] == [("ood", 0.0), ("ood", 1.0), ("fgsm", 0.0), ("fgsm", 0.5),
                                                         ("fgsm", 5.0)]
    dice = {(r["attack"], r["level"]): r["dice"] for r in rows}
    assert dice[("ood", 0.0)] == dice[("fgsm", 0.0)] == 1.0
    assert dice[("fgsm", 5.0)] == 0.0 and dice[("fgsm", 0.5)] < 1.0
    summary = summarize_robustness(rows + [{**rows[1], "case_id": "other", "dice": 0.0}])
    assert summary["ood"][1] == {"level": 1.0, "mean": pytest.approx(dice[("ood", 1.0)] / 2),
                                 "std": pytest.approx(dice[("ood", 1.0)] / 2), "n": 2}
    table = format_robustness_table(summary)
    assert "| FGSM ε | 5 | 0.000 ± 0.000 |" in table and "OOD mix-up γ" in table


@pytest.mark.slow
def test_curves_fall_with_gamma_and_epsilon_on_a_trained_model(tmp_path):
    import json

    from semiseg import api
    from semiseg.config import load_config

    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 12, dim: 2, seed: 0}", "split.labelled=4", "split.val=1",
        "split.test=4", "model.widths=[8, 16, 32]", "train.steps=150", "train.val_every=150", "train.batch_size=4",
        "train.unlabelled_batch_size=4", "train.method=segpl", "train.lr=0.01", f"output.root={tmp_path}",
        "output.name=run", "eval.report_cases=1",
    ])
    api.train(cfg, progress=False, evaluate=False)
    api.evaluate_run(tmp_path / "run", checkpoints=("last",), progress=False, robustness=True,
                     gammas=(0.0, 0.25, 0.5, 0.75, 1.0), epsilons=(0.0, 0.1, 0.25, 0.5, 1.0))
    curves = json.loads((tmp_path / "run" / "evaluations" / "last-robust" / "summary.json").read_text())["robustness"]
    for attack in ("ood", "fgsm"):
        dice = [p["mean"] for p in curves[attack]]
        assert dice[0] > 0.7, (attack, dice)  # the model did learn
        assert all(b <= a + 0.02 for a, b in zip(dice, dice[1:], strict=False)), (attack, dice)
        assert dice[-1] < dice[0] - 0.1, (attack, dice)
