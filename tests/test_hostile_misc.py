"""Hostile inputs at the config, data-source and fine-tuning edges, through the console script: exit 2, one
``error:`` line naming the key, no traceback, nothing written (one parametrised line per mistake)."""

from pathlib import Path

import pytest
from hostile import cli as _cli
from hostile import snapshot as _snapshot

from semiseg.cli import main


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


TINY = ["--quiet", *_sets(
    "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "model.widths=[4, 8]", "split.labelled=2",
    "split.val=1", "split.test=1", "train.steps=2", "train.val_every=2", "train.batch_size=2",
    "train.warmup_steps=1", "eval.report_cases=1")]
TRAIN = ["train", *TINY, "--output", "{tmp}/r"]
TO_3D = _sets("model.dim=3", "model.widths=[4, 8, 8, 8]", "data.options={n_cases: 6, dim: 3, size: 16, seed: 0}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained 2D run to fine-tune from."""
    run = tmp_path_factory.mktemp("source") / "run"
    assert main(["train", *TINY, "--output", str(run)]) == 0
    return run






HOSTILE = [
    ("seed_negative", [*TRAIN, *_sets("seed=-5")], "'seed'"),
    ("split_seed_negative", [*TRAIN, *_sets("split.seed=-1")], "split.seed"),
    ("phantom_seed_negative", [*TRAIN, *_sets("data.options={seed: -1}")], "data.options.seed"),
    ("phantom_cases_negative", [*TRAIN, *_sets("data.options={n_cases: -1}")], "data.options.n_cases"),
    ("demo_seed_negative", [*TRAIN, *_sets("data.source=demo_brain", "data.options={seed: -3}")],
     "data.options.seed"),
    ("dataset_too_small_for_split", [*TRAIN, *_sets("data.options={n_cases: 2}", "split.test=auto",
                                                     "split.val=auto")], "split.test=auto (1 case)"),
    ("dry_run_dataset_too_small_for_split", ["train", "--dry-run", *_sets("data.source=phantom",
                                             "data.options={n_cases: 2}")], "split.test=auto (1 case)"),
    ("init_from_other_dim", [*TRAIN, *TO_3D, "--init-from", "{src}"], "model.dim=2 in the source, 3 here"),
    ("init_from_other_widths", [*TRAIN, *_sets("model.widths=[4, 16]"), "--init-from", "{src}"],
     "model.widths=[4, 8] in the source"),
]


@pytest.mark.parametrize(("argv", "names"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_input_gives_one_clean_error(argv, names, tmp_path, source, capsys):
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{src}", str(source)) for arg in argv]
    before = _snapshot(tmp_path) | _snapshot(source)
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and names in errors[0], err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) | _snapshot(source) == before
