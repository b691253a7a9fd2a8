"""Hostile inputs through the console script: exit 2, one ``error:`` line naming the path or key, no traceback,
and nothing the user wrote changed (one parametrised line per mistake)."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile import cli as _cli
from hostile import sets as _sets
from hostile import snapshot as _snapshot
from hostile import tiny as _tiny

from semiseg.cli import main
from semiseg.engine.loop import Trainer

TINY, TINY_3D = _tiny(), _tiny(3, "[4, 8, 8, 8]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TINY, "--output", str(run)]) == 0
    return run


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.fixture
def world(tmp_path) -> Path:
    """A user's folder: a plain file, images to predict, a prediction folder, label folders to score."""
    (tmp_path / "afile").write_text("the user's notes\n")
    _nifti(tmp_path / "inputs" / "case1.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32))
    _nifti(tmp_path / "preds" / "case1.nii.gz", np.zeros((16, 16, 4), np.uint8))
    _nifti(tmp_path / "gt" / "case1.nii.gz", np.zeros((16, 16, 4), np.uint8))
    return tmp_path






PREDICT = ["predict", "--run", "{run}", "--input", "{tmp}/inputs"]
HOSTILE = [
    ("train_output_under_file", ["train", *TINY, "--output", "{tmp}/afile/run"], "afile"),
    ("train_output_is_file", ["train", *TINY, "--output", "{tmp}/afile"], "afile"),
    ("predict_output_under_file", [*PREDICT, "--output", "{tmp}/afile/preds"], "afile"),
    ("predict_output_is_file", [*PREDICT, "--output", "{tmp}/afile"], "afile"),
    ("predict_output_clash", [*PREDICT, "--output", "{tmp}/preds"], "case1"),
    ("predict_threads_zero", [*PREDICT, "--output", "{tmp}/out", "--threads", "0"], "--threads"),
    ("evaluate_threads_negative", ["evaluate", "--run", "{run}", "--threads", "-1"], "--threads"),
    ("evaluate_checkpoint_unknown", ["evaluate", "--run", "{run}", "--checkpoint", "first"], "--checkpoint"),
    ("threads_minus_one", ["train", *TINY, *_sets("train.threads=-1"), "--output", "{tmp}/r"], "train.threads"),
    ("threads_zero", ["train", *TINY, *_sets("train.threads=0"), "--output", "{tmp}/r"], "train.threads"),
    ("patch3d_not_multiple", ["train", *TINY_3D, *_sets("train.patch_size=[4, 4, 4]"), "--output", "{tmp}/r"],
     "train.patch_size"),
    ("patch3d_zero", ["train", *TINY_3D, *_sets("train.patch_size=[0, 0, 0]"), "--output", "{tmp}/r"],
     "smallest valid patch is [8, 8, 16]"),
    ("patch3d_one_voxel_deep", ["train", *TINY_3D, *_sets("train.patch_size=[8, 8, 8]"), "--output", "{tmp}/r"],
     "smallest valid patch is [8, 8, 16]"),
    ("csv_under_file", ["evaluate", "--pred", "{tmp}/preds", "--gt", "{tmp}/gt", "--csv", "{tmp}/afile/rows.csv"],
     "afile"),
    ("config_is_folder", ["train", "--config", "{tmp}/inputs", "--output", "{tmp}/r"], "inputs"),
]


@pytest.mark.parametrize(("argv", "names"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_input_gives_one_clean_error(argv, names, world, trained, capsys):
    argv = [arg.replace("{tmp}", str(world)).replace("{run}", str(trained)) for arg in argv]
    before = _snapshot(world, trained)
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and names in errors[0], err
    assert "Traceback" not in err
    assert _snapshot(world, trained) == before  # nothing changed, no run folder left behind


def test_output_without_write_permission(world, monkeypatch, capsys):
    monkeypatch.setattr("semiseg.paths.os.access", lambda *args: False)  # tests run as root: simulate it
    before = _snapshot(world)
    assert _cli(["train", *TINY, "--output", str(world / "locked" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot write into" in err and str(world) in err
    assert _snapshot(world) == before


def test_oserror_on_a_user_path_is_one_line(world, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(world / "out" / "case1.nii.gz"))

    monkeypatch.setattr("semiseg.api.predict", refuse)
    assert _cli(["predict", "--run", "r", "--input", "i", "--output", str(world / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Permission denied" in err and "Traceback" not in err


def test_internal_oserror_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError(2, "No such file", "/usr/lib/somewhere/internal.so")

    monkeypatch.setattr("semiseg.api.predict", broken)
    with pytest.raises(FileNotFoundError):
        main(["predict", "--run", "r", "--input", "i", "--output", "o"])


def _fail_first_step(self, *step):
    raise RuntimeError("a bug in the first step")


def test_failure_before_the_first_step_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", _fail_first_step)
    with pytest.raises(RuntimeError):
        main(["train", *TINY, "--output", str(tmp_path / "new" / "run")])
    assert not (tmp_path / "new").exists()


def test_failure_before_the_first_step_keeps_the_users_files(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    monkeypatch.setattr(Trainer, "train_step", _fail_first_step)
    with pytest.raises(RuntimeError):
        main(["train", *TINY, "--output", str(tmp_path / "run")])
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_run_folder_is_printed_first_and_named_on_ctrl_c(tmp_path, monkeypatch, capsys):
    def interrupt(self, on_step=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupt)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--output", str(run)]) == 130
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"run folder: {run}"
    assert f"semiseg train --resume {run}" in err and "<run folder>" not in err


@pytest.fixture
def without_best(trained, tmp_path) -> Path:
    """A run stopped before its first validation: last.pt but no best.pt."""
    run = tmp_path / "early"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "best.pt").unlink()
    return run


def _checkpoints_scored(run: Path) -> set[str]:
    with (run / "metrics" / "per_case.csv").open() as fh:
        return {row["checkpoint"] for row in csv.DictReader(fh)}


def test_predict_falls_back_to_last_without_best(without_best, world, capsys):
    assert main(["predict", "--run", str(without_best), "--input", str(world / "inputs"),
                 "--output", str(world / "new")]) == 0
    assert "using last.pt" in capsys.readouterr().err
    assert (world / "new" / "case1.nii.gz").is_file()


def test_evaluate_run_falls_back_to_last_without_best(without_best, capsys):
    assert main(["evaluate", "--run", str(without_best), "--checkpoint", "best", "--quiet"]) == 0
    assert "using last.pt" in capsys.readouterr().err
    assert _checkpoints_scored(without_best / "evaluations" / "last") == {"last"}


def test_evaluate_run_checkpoint_and_threads(trained, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    assert main(["evaluate", "--run", str(run), "--checkpoint", "last", "--threads", "1", "--quiet"]) == 0
    assert chosen == [1]
    assert _checkpoints_scored(run / "evaluations" / "last") == {"last"}


def test_predict_checks_the_output_before_loading_the_model(trained, world, monkeypatch, capsys):
    from semiseg.engine import predict

    monkeypatch.setattr(predict, "load_model", lambda *a, **k: pytest.fail("model loaded before check"))
    assert main(["predict", "--run", str(trained), "--input", str(world / "inputs"),
                 "--output", str(world / "preds")]) == 2
    assert "already holds predictions" in capsys.readouterr().err


def test_version_and_data_alone(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("semiseg ")
    assert main(["data"]) == 0
    assert "check" in capsys.readouterr().out


def test_every_option_has_help():
    from semiseg.cli import _parser

    def options(parser):
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                for sub in action.choices.values():
                    yield from options(sub)
            elif action.option_strings and action.dest not in ("help", "version"):
                yield parser.prog, action

    missing = [f"{prog} {action.option_strings[0]}" for prog, action in options(_parser()) if not action.help]
    assert missing == []


def test_methods_and_config_answer_without_torch():
    code = ("import sys; from semiseg.cli import main; main(['methods']); main(['config']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "supervised" in done.stdout and "method: supervised" in done.stdout
