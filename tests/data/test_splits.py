import json

import numpy as np
import pytest

from semiseg.data.case import Case, CaseRef, DatasetSpec
from semiseg.data.splits import load_split, make_split, save_split
from semiseg.errors import DataError


def _spec(n_labelled=12, n_unlabelled=3, test_refs=0):
    def ref(i, lab):
        return CaseRef(f"c{i:02d}", lab, f"c{i}.nii", lambda: Case(f"c{i}", np.zeros((1, 2, 2)), None, (1.0, 1.0)))

    cases = [ref(i, True) for i in range(n_labelled)] + [ref(100 + i, False) for i in range(n_unlabelled)]
    tests = [ref(200 + i, True) for i in range(test_refs)]
    return DatasetSpec("toy", 2, 1, "multiclass", ["bg", "fg"], cases, tests)


def test_disjoint_and_complete():
    split = make_split(_spec(), labelled=2, val=2, test=3, seed=0)
    sets = [set(split[k]) for k in ("labelled", "unlabelled", "val", "test")]
    assert sum(map(len, sets)) == 15 and len(set.union(*sets)) == 15
    assert len(split["labelled"]) == 2 and len(split["test"]) == 3 and "c100" in split["unlabelled"]


def test_budgets_are_nested_and_test_fixed():
    small = make_split(_spec(), labelled=1, val=2, test=3, seed=4)
    large = make_split(_spec(), labelled="all", val=2, test=3, seed=4)
    assert set(small["labelled"]) < set(large["labelled"]) and small["test"] == large["test"]
    assert len(large["labelled"]) == 7 and large["unlabelled"] == ["c100", "c101", "c102"]


def test_seed_changes_split_fraction_budget():
    a = make_split(_spec(), labelled=0.5, val=1, test=1, seed=0)
    b = make_split(_spec(), labelled=0.5, val=1, test=1, seed=1)
    assert len(a["labelled"]) == 5 and a["test"] != b["test"]


def test_explicit_test_set_is_used():
    split = make_split(_spec(test_refs=2), labelled=1, val=1, test=5, seed=0)
    assert split["test"] == ["c200", "c201"]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (dict(labelled=20, val=2, test=3), "only 7 labelled cases remain"),
        (dict(labelled=1, val=2, test=0), "no test cases"),
        (dict(labelled=0, val=2, test=2), "at least one labelled"),
        (dict(labelled=1, val=6, test=6), "too few"),
    ],
)
def test_impossible_splits(cfg, match):
    with pytest.raises(DataError, match=match):
        make_split(_spec(), **cfg, seed=0)


def test_unlabelled_count_keeps_the_first_of_the_rest():
    split = make_split(_spec(), labelled=2, val=2, test=3, unlabelled=2, seed=0)
    assert split["unlabelled"] == make_split(_spec(), labelled=2, val=2, test=3, seed=0)["unlabelled"][:2]


def test_save_load_and_unknown_ids(tmp_path):
    spec = _spec()
    split = make_split(spec, labelled=2, val=1, test=1, seed=0)
    save_split(split, tmp_path / "s.json")
    assert load_split(tmp_path / "s.json", spec) == split
    split["test"].append("ghost")
    (tmp_path / "bad.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="ghost"):
        load_split(tmp_path / "bad.json", spec)


def test_no_label_at_all_names_the_true_cause():
    with pytest.raises(DataError, match="no labelled training case: 3 image") as info:
        make_split(_spec(n_labelled=0), labelled=1, val=1, test=1, seed=0)
    assert "lower split" not in str(info.value)
