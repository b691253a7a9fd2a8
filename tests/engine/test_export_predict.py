"""Export round trips (TorchScript, ONNX), prediction from an export, ensembles of runs, TTA at predict."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from semiseg import api
from semiseg.cli import main
from semiseg.config import load_config
from semiseg.engine.export import ExportedModel, example_input
from semiseg.engine.predict import Ensemble, mutual_information
from semiseg.errors import SemisegError
from semiseg.methods import available_methods

_AFFINE = np.diag([0.9, 1.1, 2.5, 1.0])


def _run(root, name: str, *extra: str):
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", "train.steps=3", "train.val_every=3", "train.batch_size=2",
        "eval.report_cases=0", f"output.root={root}", f"output.name={name}", *extra,
    ])
    return api.train(cfg, progress=False, evaluate=False).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return _run(root, "a"), _run(root, "b", "seed=1")


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("runs3d"), "c", "data.options={n_cases: 6, dim: 3, size: 16, seed: 0}",
                "model.dim=3", "train.patch_size=[8, 8, 8]", "eval.sw_batch_size=2")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two NIfTI volumes of different shapes (neither a multiple of the network's divisor)."""
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    for name, shape in (("s1", (19, 17, 3)), ("s2", (14, 22, 2))):
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), _AFFINE), str(folder / f"{name}.nii.gz"))
    return folder


def _read(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_torchscript_export_predicts_as_the_run(runs, scans, tmp_path):
    out = api.export(runs[0], "torchscript")
    sidecar = json.loads((out / "export.json").read_text())
    assert out == runs[0] / "export" / "torchscript" and (out / "model.pt").is_file()
    assert sidecar["channels"] == 1 and sidecar["class_names"][0] == "background"
    assert sidecar["label_mode"] == "multiclass" and sidecar["normalize"] == "zscore" and sidecar["dim"] == 2
    assert sidecar["divisor"] == 2 and len(sidecar["spacing"]) == 2 and sidecar["method"] == "supervised"
    api.predict(runs[0], scans, tmp_path / "run", save_probabilities=True)
    api.predict(None, scans, tmp_path / "exp", save_probabilities=True, model_dir=out)
    for case in ("s1", "s2"):
        (want, affine), (got, got_affine) = _read(tmp_path / "run" / f"{case}.nii.gz"), _read(
            tmp_path / "exp" / f"{case}.nii.gz")
        assert np.array_equal(want, got) and np.allclose(affine, got_affine)
        probs_run, probs_exp = _read(tmp_path / "run" / f"{case}_probs.nii.gz")[0], _read(
            tmp_path / "exp" / f"{case}_probs.nii.gz")[0]
        np.testing.assert_allclose(probs_exp, probs_run, atol=1e-6)


def test_onnxruntime_agrees_with_pytorch(runs, scans, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = api.export(runs[0], "onnx", output_dir=tmp_path / "onnx")
    model = api.load_model(runs[0], device="cpu")
    onnx_model = ExportedModel.load(out)
    x = torch.randn(3, 1, 14, 22)  # another batch and size than the traced example: dynamic axes
    with torch.no_grad():
        expected = model.method.predict(model.nets, x)
    got = onnx_model.predictor(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)  # float32 kernels differ slightly
    api.predict(runs[0], scans, tmp_path / "run")
    assert main(["predict", "--model", str(out), "--input", str(scans), "--output", str(tmp_path / "exp")]) == 0
    for case in ("s1", "s2"):
        want, got = (_read(tmp_path / d / f"{case}.nii.gz")[0] for d in ("run", "exp"))
        assert np.array_equal(want, got)


def test_3d_export_uses_the_run_sliding_window(run_3d, scans, tmp_path):
    out = api.export(run_3d, "torchscript", output_dir=tmp_path / "ts")
    sidecar = json.loads((out / "export.json").read_text())
    assert sidecar["dim"] == 3 and sidecar["roi_size"] == [8, 8, 8] and sidecar["sw_batch_size"] == 2
    assert tuple(example_input(sidecar).shape) == (1, 1, 8, 8, 8)
    model, exported = api.load_model(run_3d, device="cpu"), ExportedModel.load(out)
    image = np.random.default_rng(1).normal(size=(1, 13, 11, 9)).astype(np.float32)
    np.testing.assert_allclose(exported.inferer.probabilities(exported.predictor, image),
                               model.predict_normalized(image), atol=1e-6)


def test_export_refuses_to_overwrite_and_bad_folders(runs, tmp_path):
    out = api.export(runs[0], "torchscript", output_dir=tmp_path / "e")
    with pytest.raises(SemisegError, match="already holds an export"):
        api.export(runs[0], "torchscript", output_dir=out)
    with pytest.raises(SemisegError, match="not a semiseg export"):
        ExportedModel.load(tmp_path)


def test_an_export_of_a_run_without_best_names_the_checkpoint_it_holds(tmp_path, capsys):
    run = _run(tmp_path, "early")
    (run / "checkpoints" / "best.pt").unlink()  # as a run stopped before its first validation: last.pt only
    out = api.export(run, "torchscript", checkpoint="best", output_dir=tmp_path / "e")
    assert json.loads((out / "export.json").read_text())["checkpoint"] == "last"
    assert "using last.pt" in capsys.readouterr().err


def test_an_ensemble_of_one_run_is_the_run(runs, scans):
    model = api.load_model(runs[0], device="cpu")
    case = _case(scans)
    np.testing.assert_array_equal(Ensemble([model], ["a"]).probabilities(case), model.probabilities(case))


def _case(scans):
    from semiseg.eval.io import read_inputs

    return read_inputs(scans / "s1.nii.gz", 1)[0]


def test_an_ensemble_averages_and_writes_its_disagreement(runs, scans, tmp_path):
    assert main(["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--input", str(scans),
                 "--output", str(tmp_path / "ens"), "--probabilities"]) == 0
    members = [api.load_model(r, device="cpu").probabilities(_case(scans)) for r in runs]
    probs, affine = _read(tmp_path / "ens" / "s1_probs.nii.gz")
    np.testing.assert_allclose(np.moveaxis(probs, -1, 0), np.mean(members, axis=0), atol=1e-6)
    uncertainty, u_affine = _read(tmp_path / "ens" / "s1_uncertainty.nii.gz")
    assert uncertainty.shape == (19, 17, 3) and np.allclose(u_affine, _AFFINE) and np.allclose(affine, _AFFINE)
    np.testing.assert_allclose(uncertainty, mutual_information(np.stack(members), "multiclass"), atol=1e-6)
    assert uncertainty.min() >= 0 and uncertainty.max() > 0  # two seeds disagree somewhere


def test_mutual_information_is_zero_when_members_agree():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1)
    assert np.allclose(mutual_information(np.stack([p, p]), "multiclass"), 0.0, atol=1e-6)
    assert mutual_information(np.stack([p, p[::-1]]), "multiclass").max() > 0.01


class _Member:
    def __init__(self, **info):
        self.info = {"class_names": ["background", "a"], "label_mode": "multiclass", "channels": 1, **info}


@pytest.mark.parametrize("key, value", [("class_names", ["background", "b"]), ("label_mode", "multilabel"),
                                        ("channels", 2)])
def test_an_ensemble_of_incompatible_runs_is_refused(key, value):
    with pytest.raises(SemisegError, match=f"disagree on {key}"):
        Ensemble([_Member(), _Member(**{key: value})], ["r1", "r2"])


def test_predict_with_tta_keeps_the_geometry(runs, scans, tmp_path):
    assert main(["predict", "--run", str(runs[0]), "--input", str(scans), "--output", str(tmp_path), "--tta"]) == 0
    label, affine = _read(tmp_path / "s2.nii.gz")
    assert label.shape == (14, 22, 2) and np.allclose(affine, _AFFINE)


@pytest.mark.parametrize("argv, match", [
    (["predict", "--input", "x", "--output", "y"], "--run RUN"),
    (["predict", "--run", "r", "--model", "m", "--input", "x", "--output", "y"], "not both"),
    (["export", "--run", "nowhere"], "not a semiseg run folder"),
])
def test_predict_and_export_errors_are_one_line(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_traces_to_a_module_that_predicts_other_sizes(name):
    """The exported module is ``method.predict`` traced: it must hold for teachers, ensembles, extra heads."""
    from semiseg.engine.assemble import method_context
    from semiseg.engine.export import PredictingNetwork
    from semiseg.engine.networks import build_nets
    from semiseg.methods import get_method

    info = {"label_mode": "multiclass", "class_names": ["background", "a", "b"], "channels": 1}
    cfg = load_config(None, ["model.widths=[4, 8, 16]", f"train.method={name}"])
    method = get_method(name)(method_context(cfg, info), cfg.method)
    nets = {k: net.eval() for k, net in build_nets(method, cfg, method.ctx, torch.device("cpu")).items()}
    with torch.no_grad():
        traced = torch.jit.trace(PredictingNetwork(method.predict, nets).eval(), torch.randn(1, 1, 32, 32),
                                 check_trace=False)
        x = torch.randn(3, 1, 20, 28)
        np.testing.assert_allclose(traced(x).numpy(), method.predict(nets, x).numpy(), atol=1e-6)


def test_only_predicts_with_one_network_of_the_checkpoint(tmp_path, scans):
    run = _run(tmp_path, "mt", "train.method=mean_teacher", "train.unlabelled_gate=off")
    model = api.load_model(run, "last", threads=1)
    torch.nn.init.constant_(next(model.nets["teacher"].parameters()), 0.3)  # the teacher now differs
    image = np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32)
    x = torch.from_numpy(image)[None]
    for net in ("student", "teacher"):
        with torch.no_grad():
            expected = torch.softmax(model.nets[net](x), 1)[0].numpy()
        assert np.allclose(model.only(net).predict_normalized(image), expected, atol=1e-5)
    assert not np.allclose(model.only("student").predict_normalized(image),
                           model.only("teacher").predict_normalized(image))
    assert np.allclose(model.predict_normalized(image), model.only("teacher").predict_normalized(image))  # MT's rule
    with pytest.raises(ValueError, match="no network 'nope'.*student"):
        model.only("nope")


def test_adapt_bn_predicts_with_each_cases_statistics_and_leaves_the_model_as_trained(runs, scans, tmp_path):
    model = api.load_model(runs[0], "last", "cpu", 1)
    image = _read(scans / "s1.nii.gz")[0].astype(np.float32)[None]
    plain = model.predict_normalized(image)
    adapted = model.with_case_norm().predict_normalized(image)
    assert adapted.shape == plain.shape and not np.allclose(adapted, plain, atol=1e-3)
    assert np.array_equal(model.predict_normalized(image), plain)  # the trained statistics are back
    # the first BatchNorm's statistics follow the case, so a case three times as bright is predicted the same
    # (the trained statistics do not follow it)
    assert np.allclose(model.with_case_norm().predict_normalized(image * 3.0), adapted, atol=1e-3)
    assert not np.allclose(model.predict_normalized(image * 3.0), plain, atol=1e-3)
    assert main(["predict", "--run", str(runs[0]), "--input", str(scans), "--output", str(tmp_path),
                 "--adapt-bn"]) == 0
    label, affine = _read(tmp_path / "s2.nii.gz")
    assert label.shape == (14, 22, 2) and np.allclose(affine, _AFFINE)


def test_adapt_bn_is_refused_for_networks_without_batchnorm(tmp_path):
    run = _run(tmp_path, "inst", "model.norm=instance")
    with pytest.raises(SemisegError, match="model.norm=instance"):
        api.load_model(run, "last", "cpu", 1).with_case_norm()
