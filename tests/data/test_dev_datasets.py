"""The generated development datasets: deterministic, valid, cached, and split as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiseg.data.sources import SOURCES, open_dataset
from semiseg.data.sources.heart_sites import HeartParams, site_of
from semiseg.data.sources.heart_sites import generate as heart_case
from semiseg.data.sources.liver_lesions import LiverParams
from semiseg.data.sources.liver_lesions import generate as liver_case
from semiseg.data.splits import make_split
from semiseg.errors import ConfigError

SMALL_HEART = {"n_subjects": 6, "n_sites": 2, "test_per_site": 1, "val_per_site": 1}
SMALL_LIVER = {"n_cases": 4, "n_test": 1, "n_val": 1, "size": 32}


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    return open_dataset("heart_sites", None, cache_dir=str(tmp_path_factory.mktemp("heart")), **SMALL_HEART)


@pytest.fixture(scope="module")
def liver(tmp_path_factory):
    return open_dataset("liver_lesions", None, cache_dir=str(tmp_path_factory.mktemp("liver")), **SMALL_LIVER)


def test_both_are_registered_sources():
    assert {"heart_sites", "liver_lesions"} <= set(SOURCES)


def test_heart_generation_is_a_function_of_seed_and_index():
    params = HeartParams(seed=3, **SMALL_HEART)
    image, label = heart_case(params, 1)
    again_image, again_label = heart_case(params, 1)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    other_image, _ = heart_case(HeartParams(seed=4, **SMALL_HEART), 1)
    assert not np.array_equal(image, other_image)


def test_liver_generation_is_a_function_of_seed_and_index():
    params = LiverParams(seed=3, **SMALL_LIVER)
    image, label = liver_case(params, 2)
    again_image, again_label = liver_case(params, 2)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    assert not np.array_equal(label, liver_case(LiverParams(seed=4, **SMALL_LIVER), 2)[1])


def test_heart_cases_have_valid_geometry_and_every_class(heart):
    assert heart.dim == 3 and heart.num_classes == 4 and len(heart.cases) == 6
    for ref in heart.cases:
        case = ref.load()
        assert case.image.shape == (1, 96, 96, 8) and case.image.dtype == np.float32
        assert np.isfinite(case.image).all()
        assert case.spacing == (2.0, 2.0, 8.0)
        assert set(np.unique(case.label)) == {0, 1, 2, 3}
        myocardium = case.label == 2
        assert 0.005 < myocardium.mean() < 0.1  # a structure, not the whole image


def test_heart_sites_look_different(heart):
    """The labelled site's blood pool is brighter relative to the myocardium than the low-contrast site's."""
    def contrast(case):
        image, label = case.image[0], case.label
        return (image[label == 3].mean() - image[label == 2].mean()) / image[label == 0].std()

    spec = open_dataset("heart_sites", None, cache_dir=heart.root.rsplit("/", 1)[0], **SMALL_HEART)
    by_site = {}
    for ref in spec.cases:
        case = ref.load()
        by_site.setdefault(case.meta["site"], []).append(contrast(case))
    assert np.mean(by_site[0]) > 1.3 * np.mean(by_site[1])


def test_liver_cases_have_a_liver_and_small_lesions(liver):
    assert liver.num_classes == 3
    for ref in liver.cases:
        case = ref.load()
        assert case.image.shape == (1, 32, 32, 32)
        assert case.spacing == pytest.approx((120 / 32,) * 3)
        assert set(np.unique(case.label)) <= {0, 1, 2}
        lesion, liver_share = (case.label == 2).mean(), (case.label == 1).mean()
        assert 0 < lesion < 0.03 < liver_share  # the imbalance the dataset exists for


def test_heart_split_labels_one_site_first_and_is_the_same_for_every_seed(heart):
    splits = [make_split(heart, labelled=1, val=2, test=6, seed=seed) for seed in (0, 1)]
    assert splits[0]["labelled"] == splits[1]["labelled"]
    assert splits[0]["test"] == splits[1]["test"] and splits[0]["val"] == splits[1]["val"]
    labelled = int(splits[0]["labelled"][0].split("_")[1])
    assert site_of(labelled, 2) == 0
    sites_unlabelled = {site_of(int(c.split("_")[1]), 2) for c in splits[0]["unlabelled"]}
    assert sites_unlabelled == {1}  # 6 subjects: each site keeps one for test, one for val, one for training
    full = make_split(heart, labelled="all", val=2, test=6, seed=0)
    assert len(full["labelled"]) == 2 and not full["unlabelled"]
    assert not set(full["labelled"]) & set(full["test"] + full["val"])
    assert {site_of(int(c.split("_")[1]), 2) for c in full["test"]} == {0, 1}


def test_liver_split_is_fixed_by_the_data_seed(liver):
    split = make_split(liver, labelled=1, val=3, test=3, seed=0)
    assert split == {**make_split(liver, labelled=1, val=3, test=3, seed=7), "seed": 0}
    assert len(split["test"]) == 1 and len(split["val"]) == 1 and len(split["unlabelled"]) == 1


def test_generated_files_are_reused_and_a_changed_knob_gets_its_own_folder(heart, tmp_path):
    files = sorted(Path(heart.root).iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    cache = heart.root.rsplit("/", 1)[0]
    again = open_dataset("heart_sites", None, cache_dir=cache, **SMALL_HEART)
    assert again.root == heart.root
    assert [f.stat().st_mtime_ns for f in files] == stamps
    milder = open_dataset("heart_sites", None, cache_dir=str(tmp_path), shift=0.5, **SMALL_HEART)
    assert milder.root.rsplit("/", 1)[1] != heart.root.rsplit("/", 1)[1]


@pytest.mark.parametrize(("source", "options", "message"), [
    ("heart_sites", {"n_subjects": 5, "n_sites": 2}, "too few"),
    ("heart_sites", {"labelled_site": 4}, "labelled_site"),
    ("liver_lesions", {"size": 16}, "size"),
    ("liver_lesions", {"n_cases": 5, "n_test": 4, "n_val": 1}, "n_cases"),
    ("liver_lesions", {"colour": 1}, "no option"),
    ("liver_lesions", {"n_cases": "many"}, "data.options.n_cases: Input should be a valid integer"),
    ("heart_sites", {"shift": "far"}, "data.options.shift: Input should be a valid number"),
])
def test_bad_options_name_the_option(source, options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        open_dataset(source, None, cache_dir=str(tmp_path), **options)
