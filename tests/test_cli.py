"""The console script: clear one-line errors, never a traceback, for user mistakes."""

import hashlib
import json
import runpy
import sys

import nibabel as nib
import numpy as np
import pytest

from semiseg.cli import main


def test_methods_lists_supervised(capsys):
    assert main(["methods"]) == 0
    assert "supervised" in capsys.readouterr().out


def test_python_dash_m_runs_the_console_script(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["semiseg", "methods"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("semiseg", run_name="__main__")
    assert done.value.code == 0
    assert "rpg_plus" in capsys.readouterr().out


def test_config_prints_defaults(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "method: supervised" in out
    assert "  steps: auto\n" in out  # a file made from it follows its method's default length


def test_a_config_file_made_from_the_defaults_loads_back(tmp_path, capsys):
    from semiseg.config import load_config

    assert main(["config"]) == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    assert load_config(tmp_path / "c.yaml", ["train.method=must"]).train.steps == 2000


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--set", "train.stpes=3"], "did you mean 'train.steps'"),
        (["train", "--method", "supervized"], "Did you mean 'supervised'"),
        (["train", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
        (["evaluate"], "--pred"),
        (["predict", "--run", "/nonexistent/run", "--input", "x", "--output", "y"], "not a semiseg run folder"),
    ],
)
def test_user_errors_are_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.startswith("error: ")


def _hostile_nnunet(root):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "T1"}, "labels": {"background": 0, "a": 1}, "numTraining": 3, '
        '"file_ending": ".nii.gz"}'
    )
    image = np.zeros((8, 8, 4), np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / "good_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(root / "labelsTr" / "good.nii.gz"))
    nan = image.copy()
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(root / "imagesTr" / "nanimg_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), 5, np.uint8), np.eye(4)), str(root / "labelsTr" / "nanimg.nii.gz"))
    (root / "imagesTr" / "broken_0000.nii.gz").write_bytes(b"not a nifti at all")
    nib.save(nib.Nifti1Image(np.zeros((6, 8, 4), np.uint8), np.eye(4)), str(root / "labelsTr" / "broken.nii.gz"))


def test_data_check_reports_every_problem(tmp_path, capsys):
    _hostile_nnunet(tmp_path)
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "nanimg" in out and "broken_0000.nii.gz" in out


def test_train_on_hostile_folder_fails_cleanly(tmp_path, capsys):
    _hostile_nnunet(tmp_path / "ds")
    argv = ["train", "--data", str(tmp_path / "ds"), "--output", str(tmp_path / "run"), "--quiet",
            "--set", "split.test=1", "--set", "split.val=1", "--set", "split.labelled=1", "--set", "train.steps=2",
            "--set", "train.warmup_steps=0"]  # no warning about a warm-up longer than the run comes first
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def _tiny_segpl_vi_run(root):
    from semiseg import api
    from semiseg.config import load_config

    cfg = load_config(None, [
        "train.method=segpl_vi", "data.source=phantom", "data.options={n_cases: 7, dim: 2, seed: 0}",
        "split.labelled=2", "split.val=1", "split.test=2", "model.widths=[4, 8]", "train.steps=4",
        "train.val_every=4", "train.log_every=1", "train.batch_size=2", "train.unlabelled_batch_size=2",
        "method.threshold_mode=straight_through", "eval.report_cases=1", f"output.root={root}", "output.name=run",
    ])
    return api.train(cfg, progress=False, evaluate=False).run_dir


def test_evaluate_with_robustness_and_uncertainty(tmp_path, capsys):
    run = _tiny_segpl_vi_run(tmp_path)
    argv = ["evaluate", "--run", str(run), "--robustness", "--uncertainty", "--gammas", "0,1", "--epsilons", "0,0.1",
            "--samples", "3", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| OOD mix-up γ | 1 |" in out and "| FGSM ε | 0.1 |" in out and "monte_carlo, S = 3" in out
    folder = run / "evaluations" / "robust-uncertainty"
    for name in ("metrics/robustness.csv", "metrics/uncertainty.csv", "figures/robustness.png",
                 "figures/uncertainty.png", "figures/threshold.png"):
        assert (folder / name).exists(), name
    assert len(list((folder / "uncertainty").glob("*_variance.png"))) == 2  # 2D test images: PNG maps
    report = (folder / "report.md").read_text()
    assert "## Robustness" in report and "## Uncertainty" in report and "## Learnt threshold" in report


def test_evaluate_on_the_validation_cases_goes_beside_and_names_them(tmp_path, capsys):
    import csv

    run = _tiny_segpl_vi_run(tmp_path)
    assert main(["evaluate", "--run", str(run), "--split", "val", "--quiet"]) == 0
    folder = run / "evaluations" / "val"
    with (folder / "metrics" / "per_case.csv").open() as fh:
        cases = {row["case_id"] for row in csv.DictReader(fh)}
    split = json.loads((run / "split.json").read_text())
    assert cases == set(split["val"]) and not cases & set(split["test"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["val_cases"] == 1 and summary["settings"]["split"] == "val"
    assert "## Validation metrics" in (folder / "report.md").read_text()
    assert not (run / "summary.json").exists()  # the run's own (test) evaluation is untouched: here, never made


def test_evaluating_the_validation_cases_of_a_run_without_them_is_one_clear_error(tmp_path, capsys):
    from semiseg import api
    from semiseg.config import load_config

    cfg = load_config(None, ["data.source=phantom", "data.options={n_cases: 5, dim: 2, seed: 0}", "split.labelled=2",
                             "split.val=0", "split.test=1", "model.widths=[4, 8]", "train.steps=2",
                             "train.warmup_steps=0", f"output.root={tmp_path}", "output.name=run"])
    run = api.train(cfg, progress=False, evaluate=False).run_dir
    assert main(["evaluate", "--run", str(run), "--split", "val", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no val cases" in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "value", "match"), [("--gammas", "0,x", "--gammas must be comma-separated"),
                                                       ("--gammas", "0,1.5", "gammas: levels must lie in [0, 1.0]"),
                                                       ("--samples", "0", "samples")])
def test_evaluate_grid_errors_are_one_line(tmp_path, capsys, flag, value, match):
    (tmp_path / "config.yaml").write_text("{}")
    assert main(["evaluate", "--run", str(tmp_path), "--robustness", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err


def test_compare_runs_an_experiment_file_stamps_and_publishes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("semiseg.engine.origin.git_state", lambda where=None: ("c0ffee", []))  # clean tree
    monkeypatch.setattr("semiseg.experiment.provenance._tracked", lambda file: True)  # and the file committed
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(
        "name: tiny\nseeds: [0, 1]\njobs: 1\n"
        "protocol: {data.source: phantom, split.test: 2, train.steps: 2, train.val_every: 2, model.widths: [4, 8],"
        " eval.save_predictions: false, train.threads: 1}\n"
        "methods: [supervised, {label: mt, method: mean_teacher, options: {weight: 0.5}}]\n")
    assert main(["compare", str(experiment), "--seeds", "1", "--quiet", "--publish"]) == 0
    result = json.loads((tmp_path / "runs" / "tiny" / "compare.json").read_text())
    assert result["seeds"] == [1]  # the command line overrides the file's seeds
    assert result["stamp"]["experiment"] == {"path": str(experiment),
                                             "sha256": hashlib.sha256(experiment.read_bytes()).hexdigest()}
    assert result["stamp"]["machine"]["device"] == "cpu" and result["stamp"]["commit"] == "c0ffee"
    assert (tmp_path / "runs" / "tiny" / "mt-s1" / "config.yaml").read_text().count("weight: 0.5") == 1
    assert (tmp_path / "results" / "tiny" / "compare.md").read_text() == (
        tmp_path / "runs" / "tiny" / "compare.md").read_text()
    assert main(["compare", str(experiment), "--methods", "cps"]) == 2
    assert "not both" in capsys.readouterr().err
