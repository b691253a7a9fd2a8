"""Run: assembled once, trained and evaluated in memory; api.py only asks it."""

import ast
import json
from pathlib import Path

import pytest

import semiseg
from semiseg.config import load_config
from semiseg.data import sources
from semiseg.engine import run as run_module
from semiseg.engine.run import Run


def _cfg(tmp_path, dim=2):
    return load_config(None, [
        "data.source=phantom", f"data.options={{n_cases: 6, dim: {dim}, seed: 0}}", "split.labelled=2",
        "split.val=1", "split.test=1", f"model.dim={dim}", "model.widths=[4, 8]", "train.steps=2",
        "train.val_every=2", "train.batch_size=2", "train.warmup_steps=1", f"output.root={tmp_path}",
        "output.name=run", "eval.report_cases=1",
    ])


def _refuse(*args, **kwargs):
    raise AssertionError("evaluation after training must not re-read the config, dataset or split")


def test_fit_then_evaluate_does_not_reopen_the_dataset(tmp_path, monkeypatch):
    run = Run.build(_cfg(tmp_path), progress=False)
    for module, name in [(sources, "open_dataset"), (run_module, "open_configured_dataset"),
                         (run_module, "load_split"), (run_module, "read_yaml")]:
        monkeypatch.setattr(module, name, _refuse)
    fit = run.fit()
    summary = run.evaluate()
    assert fit["steps"] == 2 and set(summary) == {"best", "last"}
    written = json.loads((run.run_dir / "summary.json").read_text())
    assert written["best_step"] == run.best["step"] == fit["best"]["step"] == 2


def test_the_inferer_takes_the_network_divisor_and_the_training_patch(tmp_path):
    run = Run.build(_cfg(tmp_path, dim=3), progress=False)
    inferer, net = run.trainer.inferer, run.trainer.nets["model"]
    assert inferer.divisor == net.divisor == 2
    assert list(inferer.roi_size) == run.trainer.data.labelled.patch


def test_an_opened_run_cannot_train(tmp_path):
    run = Run.build(_cfg(tmp_path), progress=False)
    run.fit()
    with pytest.raises(semiseg.errors.SemisegError, match="opened for evaluation"):
        Run.open(run.run_dir, progress=False).fit()


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


# What the face may ask of the engine: a Run, or a plain function over a run folder or a config file.
_ENTRY_POINTS = {"semiseg.engine.run", "semiseg.engine.demo",
                 "semiseg.engine.model", "semiseg.engine.predict", "semiseg.engine.export",
                 "semiseg.engine.suggest", "semiseg.engine.plan", "semiseg.engine.handlers"}


def test_the_face_never_assembles_a_run():
    """api.py and cli.py ask the engine's entry points; the parts a run is assembled from stay behind them."""
    package = Path(semiseg.__file__).parent
    for face in ("api.py", "cli.py"):
        engine = {m for m in _imported_modules(package / face) if m.startswith("semiseg.engine")}
        assert engine <= _ENTRY_POINTS, (face, engine - _ENTRY_POINTS)
    api_modules = _imported_modules(package / "api.py")
    assert not [m for m in api_modules if m.startswith(("semiseg.data", "semiseg.methods"))]


def test_build_prints_the_sources_warnings_before_training(tmp_path, monkeypatch, capsys):
    spec = run_module.open_configured_dataset(_cfg(tmp_path))
    spec.warnings.append("2 image(s) in imagesTr have no label and are used as unlabelled: c7, c8")
    monkeypatch.setattr(run_module, "open_configured_dataset", lambda cfg: spec)
    Run.build(_cfg(tmp_path), progress=False)
    assert "warning: 2 image(s) in imagesTr have no label and are used as unlabelled: c7, c8" in capsys.readouterr().err


def test_a_slice_budget_reaches_the_labelled_sampler_only(tmp_path):
    cfg = _cfg(tmp_path, dim=3).model_copy(deep=True)
    cfg.model.dim, cfg.split.labelled_slices, cfg.train.patch_size = 2, 2, None
    run = Run.build(cfg, progress=False)
    data = run.trainer.data
    assert [len(case.slices) for case in data.labelled.store] == [2, 2]
    assert all(case.slices is None for case in data.val)
    assert "labelled_slices: 2" in (run.run_dir / "config.yaml").read_text()
