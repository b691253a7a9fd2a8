"""The console script: clear one-line errors, never a traceback, for user mistakes."""

import nibabel as nib
import numpy as np
import pytest

from semiseg.cli import main


def test_methods_lists_supervised(capsys):
    assert main(["methods"]) == 0
    assert "supervised" in capsys.readouterr().out


def test_config_prints_defaults(capsys):
    assert main(["config"]) == 0
    assert "method: supervised" in capsys.readouterr().out


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
            "--set", "split.test=1", "--set", "split.val=1", "--set", "split.labelled=1", "--set", "train.steps=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
