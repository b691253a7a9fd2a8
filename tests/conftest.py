"""Test-wide settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_case_cache(tmp_path_factory):
    """Runs cache prepared cases (and the demo) in a throwaway folder, never in the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SEMISEG_CACHE", str(tmp_path_factory.mktemp("case-cache")))
    yield
    patch.undo()


@pytest.fixture
def tiny_heart_run(tmp_path):
    """A two-step supervised run on a small heart_sites (one validation subject per site), for the scripts in
    ``benchmarks/`` that score a run's checkpoint."""
    from semiseg import api
    from semiseg.config import load_config

    cfg = load_config(None, [
        "data.source=heart_sites", "data.options={n_subjects: 12, test_per_site: 1}",
        "split.labelled=1", "model.widths=[4, 8]", "train.steps=2", "train.val_every=2",
        "train.batch_size=2", "train.unlabelled_batch_size=2", "train.warmup_steps=1", "train.method=supervised",
        f"output.root={tmp_path}", "output.name=tiny-s0", "train.threads=1", "eval.report_cases=0",
    ])
    return api.train(cfg, progress=False, evaluate=False).run_dir
