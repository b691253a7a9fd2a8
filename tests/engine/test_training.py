"""End-to-end runs of the one training loop on tiny phantoms."""

import csv
import json

import pytest
import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.errors import ConfigError, SemisegError
from semiseg.methods import available_methods


def _cfg(tmp_path, *extra, dim=2):
    options = f"{{n_cases: 8, dim: {dim}, seed: 0}}"
    return load_config(None, [
        "data.source=phantom", f"data.options={options}", "split.labelled=2", "split.val=1", "split.test=2",
        f"model.dim={dim}", "model.widths=[4, 8]", "train.steps=6", "train.val_every=3", "train.log_every=1",
        "train.batch_size=2", "train.warmup_steps=1", f"output.root={tmp_path}", "output.name=run",
        "eval.report_cases=1", *extra,
    ])


def test_run_folder_contents(tmp_path):
    result = api.train(_cfg(tmp_path), progress=False)
    run = result.run_dir
    for name in ("config.yaml", "split.json", "log.csv", "checkpoints/best.pt", "checkpoints/last.pt",
                 "metrics/per_case.csv", "summary.json", "report.md", "figures/overlays.png"):
        assert (run / name).exists(), name
    with (run / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6] and rows[2]["val_dice"] != ""
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) == {"best", "last"}
    with (run / "metrics" / "per_case.csv").open() as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 2 * 2 * 2  # checkpoints × test cases × foreground classes
    assert "![overlays]" in (run / "report.md").read_text()


def test_existing_run_is_not_overwritten(tmp_path):
    api.train(_cfg(tmp_path), progress=False, evaluate=False)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SemisegError, match="already holds a run"):
        api.train(_cfg(tmp_path), progress=False, evaluate=False)
    api.train(_cfg(tmp_path), progress=False, evaluate=False, overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_only_what_the_run_wrote(tmp_path):
    from semiseg.engine.manifest import record, recorded_files

    first = api.train(_cfg(tmp_path), progress=False).run_dir
    written = recorded_files(first)
    assert {"log.csv", "checkpoints/last.pt", "metrics/per_case.csv", "report.md"} <= written
    assert any(name.startswith("predictions/") for name in written)
    (first / "predictions" / "mine.nii.gz").write_text("a user's file")
    (first / "figures" / "keep").mkdir()
    stale = first / "metrics" / "stale.csv"  # a file of the old run that the new run does not write again
    stale.write_text("old")
    record(first, {"metrics/stale.csv"})
    api.train(_cfg(tmp_path, "eval.save_predictions=false"), progress=False, overwrite=True)
    assert (first / "predictions" / "mine.nii.gz").read_text() == "a user's file"
    assert (first / "figures" / "keep").is_dir() and not stale.exists()
    assert sorted(p.name for p in (first / "predictions").iterdir()) == ["mine.nii.gz"]


def _interrupt_at(step):
    def hook(current):
        if current == step:
            raise KeyboardInterrupt

    return hook


SPATIAL_AUGMENT = ("train.augment.rotate=1", "train.augment.scale=0.5", "train.augment.elastic=0.5")


@pytest.mark.parametrize(("dim", "workers", "augment"), [(2, 0, ()), (3, 0, ()), (2, 2, ()), (3, 0, SPATIAL_AUGMENT)])
def test_resume_continues_exactly(tmp_path, dim, workers, augment):
    """Interrupted and resumed (with loader workers, too) equals a straight in-process run, bit for bit."""
    straight = api.train(_cfg(tmp_path / "a", *augment, dim=dim), progress=False, evaluate=False)
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b", *augment, f"train.workers={workers}", dim=dim), progress=False, evaluate=False,
                  on_step=_interrupt_at(4))
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    assert resumed.fit["steps"] == 6
    a = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=False)["nets"]["model"]
    b = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=False)["nets"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)


def _log_without_time(run_dir):
    """Every row and column of log.csv except the wall-clock one."""
    with (run_dir / "log.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(fh)]


def _killed_at(step):
    """Stop like ``kill -9``: no Ctrl-C handler runs, so only what was already on disk stays."""
    def hook(current):
        if current == step:
            raise SystemExit("killed")

    return hook


@pytest.mark.parametrize("killed_at", [2, 5])  # before the first checkpoint (step 3), and after it
def test_resume_after_kill_gives_the_uninterrupted_log(tmp_path, killed_at, capsys):
    straight = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    with pytest.raises(SystemExit):
        api.train(_cfg(tmp_path / "b"), progress=False, evaluate=False, on_step=_killed_at(killed_at))
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)
    assert ("restarting it from step 0" in capsys.readouterr().err) == (killed_at < 3)
    api.resume(resumed.run_dir, progress=False, evaluate=False)  # a finished run: nothing to do, nothing lost
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)


def test_ctrl_c_during_validation_waits_for_the_log_row_and_checkpoint(tmp_path, monkeypatch):
    import os
    import signal

    from semiseg.engine.validation import ValidationHandler

    handler = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell
    straight = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    validate = ValidationHandler.validate

    def validate_then_ctrl_c(self, loop):
        score = validate(self, loop)
        if loop.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: must wait for the row and last.pt of step 3
        return score

    monkeypatch.setattr(ValidationHandler, "validate", validate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b"), progress=False, evaluate=False)
    monkeypatch.setattr(ValidationHandler, "validate", validate)
    assert torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)
    assert signal.getsignal(signal.SIGINT) is handler  # the run put back whatever handler it found


def test_ctrl_c_with_loader_workers_stops_them_and_resumes_exactly(tmp_path, monkeypatch):
    """A terminal's Ctrl-C reaches the workers too: the step still ends cleanly and no worker outlives the run."""
    import os
    import signal

    from semiseg.engine.validation import ValidationHandler

    straight = api.train(_cfg(tmp_path / "a"), progress=False, evaluate=False)
    validate, workers = ValidationHandler.validate, []

    def validate_then_ctrl_c(self, loop):
        score = validate(self, loop)
        if loop.step == 3:
            workers.extend(loop.stream._iterator._workers)
            for pid in (os.getpid(), *(w.pid for w in workers)):
                os.kill(pid, signal.SIGINT)
        return score

    monkeypatch.setattr(ValidationHandler, "validate", validate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path / "b", "train.workers=2"), progress=False, evaluate=False)
    monkeypatch.setattr(ValidationHandler, "validate", validate)
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)
    assert torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
    resumed = api.resume(tmp_path / "b" / "run", progress=False, evaluate=False)
    assert _log_without_time(resumed.run_dir) == _log_without_time(straight.run_dir)


def test_predict_writes_input_geometry(tmp_path):
    import nibabel as nib
    import numpy as np

    result = api.train(_cfg(tmp_path, dim=3), progress=False, evaluate=False)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [10, -4, 7]
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 18, 12)).astype(np.float32), affine),
             str(inputs / "scan.nii.gz"))
    written = api.predict(result.run_dir, inputs, tmp_path / "out", save_probabilities=True)
    out = nib.load(str(written[0]))
    assert out.shape == (20, 18, 12) and np.allclose(out.affine, affine)
    assert nib.load(str(written[1])).shape == (20, 18, 12, 3)
    with pytest.raises(SemisegError, match="already holds predictions"):
        api.predict(result.run_dir, inputs, tmp_path / "out")


def test_png_folder_train_predict_and_folder_evaluation(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    for i in range(6):
        mask = np.zeros((20, 28), np.uint8)
        mask[4 + i : 12 + i, 6:18] = 1
        image = (mask * 150 + rng.integers(0, 60, mask.shape)).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "ds" / "images" / f"img{i}.png")
        Image.fromarray(mask * 255).save(tmp_path / "ds" / "masks" / f"img{i}.png")
    cfg = load_config(None, [
        "data.source=auto", f"data.path={tmp_path / 'ds'}", "split.labelled=2", "split.val=1", "split.test=2",
        "model.widths=[4, 8]", "train.steps=3", "train.val_every=3", "train.batch_size=2",
        f"output.root={tmp_path}", "output.name=run",
    ])
    result = api.train(cfg, progress=False)
    written = api.predict(result.run_dir, tmp_path / "ds" / "images", tmp_path / "pred")
    assert len(written) == 6 and all(Image.open(p).size == (28, 20) for p in written)
    rows, summary = api.evaluate_folders(tmp_path / "pred", tmp_path / "ds" / "masks",
                                         class_names=["background", "object"])
    assert len(rows) == 6 and set(summary) == {"given"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows)


def test_csv_log_keeps_counting_elapsed_time_across_a_resume(tmp_path):
    from semiseg.engine.csvlog import CsvLog

    path = tmp_path / "log.csv"
    log = CsvLog(path)
    for step, elapsed in [(10, 1.5), (20, 3.0), (30, 4.5)]:
        log.append({"step": step, "loss": 1.0, "elapsed_s": elapsed})
    resumed = CsvLog(path, keep_through_step=25)
    assert resumed.elapsed_before == 3.0
    assert [line.split(",")[0] for line in path.read_text().splitlines()[1:]] == ["10", "20"]
    assert CsvLog(tmp_path / "new.csv", keep_through_step=5).elapsed_before == 0.0


def test_csv_log_keeps_a_key_first_reported_late_and_resumes(tmp_path):
    from semiseg.engine.csvlog import CsvLog

    path = tmp_path / "log.csv"
    log = CsvLog(path)
    for step in range(10, 130, 10):
        log.append({"step": step, "loss": 1.0, **({"late": step / 10} if step >= 100 else {})})
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["late"] for r in rows] == [""] * 9 + ["10.0", "11.0", "12.0"]
    resumed = CsvLog(path, keep_through_step=100)  # rows through the checkpoint's step, late key included
    resumed.append({"step": 110, "loss": 2.0, "later": 1.0})
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(10, 120, 10))
    assert rows[-2]["late"] == "10.0" and rows[-1]["later"] == "1.0" and rows[0]["later"] == ""


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_no_unlabelled_batch_trains_or_is_a_config_error(tmp_path, name):
    """train.unlabelled_batch_size=0: the engine runs the method's supervised step, or refuses before training."""
    cfg = _cfg(tmp_path, f"train.method={name}", "train.unlabelled_batch_size=0", "train.steps=3")
    try:
        result = api.train(cfg, progress=False, evaluate=False)
    except ConfigError as exc:
        assert available_methods()[name].needs_unlabelled_batch
        assert "train.unlabelled_batch_size" in str(exc)
        return
    assert not available_methods()[name].needs_unlabelled_batch and result.fit["steps"] == 3
    with (result.run_dir / "log.csv").open() as fh:
        assert all(float(r["loss"]) > 0 for r in csv.DictReader(fh))


def test_old_run_folder_with_removed_augment_keys_resumes(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        api.train(_cfg(tmp_path), progress=False, evaluate=False, on_step=_interrupt_at(2))
    config = tmp_path / "run" / "config.yaml"
    old_keys = "  augment:\n    strong_noise: 0.1\n    strong_gamma: 0.3\n"  # written before the strong view went
    config.write_text(config.read_text().replace("  augment:\n", old_keys))
    assert "strong_gamma" in config.read_text()
    with pytest.warns(FutureWarning, match="train.augment.strong_noise"):
        resumed = api.resume(tmp_path / "run", progress=False, evaluate=False)
    assert resumed.fit["steps"] == 6
