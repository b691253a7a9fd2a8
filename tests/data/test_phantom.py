"""Synthetic phantoms: layouts, determinism, learnable contrast, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from semiseg.data.sources.phantom import make_phantoms
from semiseg.errors import ConfigError


def test_default_2d_multiclass_shapes_and_types() -> None:
    spec = make_phantoms()
    assert (spec.dim, spec.channels, spec.label_mode, spec.num_classes) == (2, 1, "multiclass", 3)
    assert len(spec.cases) == 8 and all(r.has_label for r in spec.cases)
    case = spec.cases[0].load()
    assert case.image.shape == (1, 64, 64) and case.image.dtype == np.float32
    assert case.label.shape == (64, 64) and case.label.dtype == np.int16
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert case.spacing == (1.0, 1.0)


def test_3d_multichannel_and_unlabelled() -> None:
    spec = make_phantoms(n_cases=2, dim=3, channels=2, num_classes=4, n_unlabelled=3)
    assert [r.has_label for r in spec.cases] == [True, True, False, False, False]
    assert len({r.case_id for r in spec.cases}) == 5
    case = spec.cases[0].load()
    assert case.image.shape == (2, 32, 32, 32) and case.label.shape == (32, 32, 32)
    assert case.affine.shape == (4, 4)
    assert spec.cases[-1].load().label is None


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_phantoms(seed=3).cases[2].load()
    b = make_phantoms(seed=3).cases[2].load()
    c = make_phantoms(seed=4).cases[2].load()
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


def test_class_intensities_are_separable_across_cases() -> None:
    """What makes the phantom learnable: each class keeps its own intensity in every case."""
    means = np.array([[r.load().image[0][r.load().label == k].mean() for k in range(3)]
                      for r in make_phantoms(n_cases=4).cases])
    assert np.all(means.std(axis=0) < 0.1)
    gaps = np.diff(np.sort(means.mean(axis=0)))
    assert np.all(gaps > 0.2)


def test_multilabel_channels_nest_and_cross() -> None:
    spec = make_phantoms(n_cases=32, label_mode="multilabel", num_classes=4)
    assert spec.class_names == ["region_0", "region_1", "region_2", "region_3"]
    for ref in spec.cases:
        label = ref.load().label
        assert label.shape == (4, 64, 64) and label.dtype == np.uint8
        assert label.reshape(4, -1).sum(axis=1).min() > 0
        assert np.all(label[1] <= label[0]) and np.all(label[2] <= label[1])  # nested like BraTS
        assert (label[3] & label[0]).any() and (label[3] & (1 - label[0])).any()  # crosses channel 0


def test_eight_small_cases_are_fast() -> None:
    make_phantoms().cases[0].load()  # warm-up
    start = time.perf_counter()
    for ref in make_phantoms().cases:
        ref.load()
    assert time.perf_counter() - start < 0.25  # ~20 ms in practice; generous for loaded CI machines


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 4}, {"size": (32, 32, 32)}, {"label_mode": "soft"}, {"num_classes": 1}, {"channels": 0}],
)
def test_bad_arguments_raise_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_phantoms(**kwargs)
