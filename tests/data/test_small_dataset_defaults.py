"""Default split sizes fit small datasets and leave the brain demo's split as it was; every source's
``data.options`` are checked by one model that matches the source's function."""

import inspect
import json

import numpy as np
import pytest

from semiseg.config import SplitConfig, load_config
from semiseg.data.case import Case, CaseRef, DatasetSpec
from semiseg.data.sources import _DISPATCH, _function, open_dataset
from semiseg.data.sources.options import OPTIONS, DemoBrainOptions
from semiseg.data.splits import make_split
from semiseg.engine.run import Run
from semiseg.errors import ConfigError, DataError


def _spec(n_labelled: int) -> DatasetSpec:
    def ref(i: int) -> CaseRef:
        return CaseRef(f"c{i:02d}", True, f"c{i}.nii", lambda: Case(f"c{i}", np.zeros((1, 2, 2)), None, (1.0, 1.0)))

    return DatasetSpec("toy", 2, 1, "multiclass", ["bg", "fg"], [ref(i) for i in range(n_labelled)])


@pytest.mark.parametrize("n_cases", [DemoBrainOptions.model_fields["n_subjects"].default, 40, 300])
def test_default_sizes_keep_six_test_and_two_val_cases_on_the_demo_and_larger(n_cases):
    """The demo (20 subjects) and the 40-phantom experiments drew 6 test and 2 validation cases before."""
    default = SplitConfig()
    for seed in range(5):
        for labelled in (1, 2, "all"):
            old = make_split(_spec(n_cases), labelled=labelled, val=2, test=6, seed=seed)
            assert make_split(_spec(n_cases), labelled=labelled, val=default.val, test=default.test, seed=seed) == old


@pytest.mark.parametrize(("n_cases", "test", "val"), [(8, 2, 1), (5, 2, 1), (4, 1, 1), (12, 4, 1), (16, 5, 2)])
def test_default_sizes_shrink_on_small_datasets(n_cases, test, val):
    split = make_split(_spec(n_cases), labelled=1, val="auto", test="auto", seed=0)
    assert (len(split["test"]), len(split["val"])) == (test, val)


def test_too_small_for_auto_names_what_auto_came_to():
    with pytest.raises(DataError, match=r"split.test=auto \(1 case\)"):
        make_split(_spec(2), labelled=1, val="auto", test="auto", seed=0)


def test_phantom_trains_with_the_default_split(tmp_path):
    cfg = load_config(None, ["data.source=phantom", "model.widths=[4, 8]", "train.steps=1", "train.val_every=1",
                             "train.batch_size=2", "train.warmup_steps=0", "eval.report_cases=0",
                             f"output.root={tmp_path}", "output.name=r"])
    Run.build(cfg, progress=False).fit()
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert (len(split["test"]), len(split["val"]), len(split["labelled"])) == (2, 1, 2)


@pytest.mark.parametrize("source", sorted(_DISPATCH))
def test_every_source_has_an_options_model_matching_its_function(source):
    """The model is what the docs show and what checks data.options: it must not drift from the function."""
    fn, needs_path = _function(source)
    params = list(inspect.signature(fn).parameters.values())[int(needs_path):]
    model = OPTIONS[source]
    assert list(model.model_fields) == [p.name for p in params]
    for p in params:
        default = model.model_fields[p.name].default
        assert default == p.default or list(default) == list(p.default), p.name


@pytest.mark.parametrize(("options", "key"), [({"seed": -1}, "data.options.seed"),
                                              ({"n_cases": -2}, "data.options.n_cases"),
                                              ({"dim": 4}, "data.options.dim")])
def test_phantom_options_are_checked_by_name(options, key):
    with pytest.raises(ConfigError, match=key):
        open_dataset("phantom", **options)


def test_valid_options_reach_the_source_unchanged():
    spec = open_dataset("phantom", n_cases=3, size=[16, 16], seed=2)
    assert len(spec.cases) == 3 and spec.cases[0].load().image.shape[1:] == (16, 16)


def test_the_dry_run_shows_the_split_in_cases():
    from semiseg.engine.plan import dry_run

    plan = dry_run(None, ["data.source=phantom", "model.widths=[4, 8]"])
    assert "split into 2 labelled, 3 unlabelled, 1 val, 2 test" in plan
