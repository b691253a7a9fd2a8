"""nnU-Net's augmentation of the labelled batch: each transform on hand-made arrays, then the sampler switch."""

from __future__ import annotations

import numpy as np
import pytest
import sampling_cases

from semiseg.config import load_config
from semiseg.data.augment import (
    NNUNET_INTENSITY,
    IntensityChain,
    around_one,
    brightness,
    contrast,
    gamma,
    gaussian_blur,
    gaussian_noise,
    intensity_chain,
    low_resolution,
)
from semiseg.data.loaders import Augmentation
from semiseg.errors import ConfigError

OFF = IntensityChain(noise=0, blur=0, brightness=0, contrast=0, lowres=0, gamma_inverted=0, gamma=0)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ramp(dim: int, channels: int = 2) -> np.ndarray:
    """A smooth positive image with structure along every axis."""
    axes = np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 10, 8)[:dim]), indexing="ij")
    base = 1 + sum((i + 1) * a for i, a in enumerate(axes))
    return np.stack([base * (c + 1) for c in range(channels)]).astype(np.float32)


def _checker(dim: int) -> np.ndarray:
    index = np.indices((16,) * dim).sum(axis=0)
    return (index % 2).astype(np.float32)[None]


def test_around_one_draws_both_sides_of_one_within_the_range():
    draws = np.array([around_one(_rng(i), 0.75, 1.25) for i in range(200)])
    assert draws.min() >= 0.75 and draws.max() <= 1.25
    assert 0.3 < (draws < 1).mean() < 0.7


@pytest.mark.parametrize("dim", [2, 3])
def test_noise_adds_zero_mean_noise_of_the_drawn_variance(dim):
    image = np.zeros((1,) + (32,) * dim, dtype=np.float32)
    noisy = gaussian_noise(image, (0.04, 0.04), _rng())
    assert noisy.shape == image.shape and noisy.dtype == np.float32
    assert abs(noisy.std() - 0.2) < 0.02 and abs(noisy.mean()) < 0.02


@pytest.mark.parametrize("dim", [2, 3])
def test_blur_smooths_and_keeps_constants(dim):
    checker = _checker(dim)
    assert gaussian_blur(checker, (0.5, 1.0), 1.0, _rng()).std() < 0.5 * checker.std()
    constant = np.full((2,) + (8,) * dim, 3.0, dtype=np.float32)
    np.testing.assert_allclose(gaussian_blur(constant, (0.5, 1.0), 1.0, _rng()), constant, rtol=1e-6)
    np.testing.assert_array_equal(gaussian_blur(checker, (0.5, 1.0), 0.0, _rng()), checker)  # no channel chosen


def test_brightness_scales_each_channel_by_a_factor_in_range():
    image = _ramp(3)
    out = brightness(image, (0.75, 1.25), _rng(2))
    ratios = (out / image).reshape(2, -1)
    assert np.allclose(ratios, ratios[:, :1]) and ((ratios >= 0.75) & (ratios <= 1.25)).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_contrast_keeps_each_channels_range_and_order(dim):
    image = _ramp(dim)
    out = contrast(image, (0.75, 1.25), _rng(1))
    for c in range(2):
        assert out[c].min() >= image[c].min() - 1e-5 and out[c].max() <= image[c].max() + 1e-5
        order = np.argsort(image[c].ravel(), kind="stable")
        assert (np.diff(out[c].ravel()[order]) >= -1e-5).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_low_resolution_loses_detail_but_not_shape(dim):
    checker = _checker(dim)
    out = low_resolution(checker, (0.5, 0.5), 1.0, _rng())
    assert out.shape == checker.shape and out.std() < 0.8 * checker.std()
    constant = np.full((1,) + (9,) * dim, 2.0, dtype=np.float32)
    np.testing.assert_allclose(low_resolution(constant, (0.5, 1.0), 1.0, _rng()), constant, rtol=1e-6)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_keeps_mean_std_and_voxel_order(invert):
    image = _ramp(2) ** 2
    out = gamma(image, (0.7, 1.5), invert, _rng(3))
    assert not np.allclose(out, image)
    for c in range(2):
        assert out[c].mean() == pytest.approx(image[c].mean(), rel=1e-4)
        assert out[c].std() == pytest.approx(image[c].std(), rel=1e-4)
        order = np.argsort(image[c].ravel(), kind="stable")
        assert (np.diff(out[c].ravel()[order]) >= -1e-4).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_the_chain_is_a_function_of_the_generator_and_nothing_when_off(dim):
    image = _ramp(dim)
    np.testing.assert_array_equal(intensity_chain(image, OFF, _rng()), image)
    every = IntensityChain(noise=1, blur=1, brightness=1, contrast=1, lowres=1, gamma_inverted=1, gamma=1)
    first, second = intensity_chain(image, every, _rng(5)), intensity_chain(image, every, _rng(5))
    np.testing.assert_array_equal(first, second)
    assert first.shape == image.shape and first.dtype == np.float32 and np.isfinite(first).all()
    assert not np.allclose(first, image)


def test_the_chains_numbers_are_nnunets():
    c = NNUNET_INTENSITY
    assert (c.noise, c.blur, c.brightness, c.contrast, c.lowres, c.gamma_inverted, c.gamma) == (
        0.1, 0.2, 0.15, 0.15, 0.25, 0.1, 0.3)
    assert c.noise_variance == (0, 0.1) and c.blur_sigma == (0.5, 1) and c.lowres_zoom == (0.5, 1)
    assert c.gamma_range == (0.7, 1.5) and c.brightness_range == c.contrast_range == (0.75, 1.25)


# ----------------------------------------------------------------------------------------------
# the sampler switch


_batch = sampling_cases.batch


@pytest.mark.parametrize("dim", [2, 3])
def test_nnunet_changes_images_only_labels_follow_the_same_spatial_draws(dim):
    """Same seed: nnunet's labels equal basic's with the same rotation and zoom probabilities (the intensity chain
    draws after every spatial choice, and never touches a label); its images differ."""
    nnunet = _batch(dim, Augmentation(preset="nnunet"))
    spatial_only = _batch(dim, Augmentation(intensity=False, rotate=0.2, scale=0.2))
    np.testing.assert_array_equal(nnunet["label"], spatial_only["label"])
    assert set(np.unique(nnunet["label"])) <= {0, 1, 2}
    assert not np.allclose(nnunet["image"], spatial_only["image"])


@pytest.mark.parametrize("dim", [2, 3])
def test_nnunet_batches_are_a_function_of_seed_and_step(dim):
    first, again = _batch(dim, Augmentation(preset="nnunet")), _batch(dim, Augmentation(preset="nnunet"))
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["label"], again["label"])
    assert not np.array_equal(first["image"], _batch(dim, Augmentation(preset="nnunet"), step=4)["image"])


def test_nnunet_turns_rotation_and_zoom_on_where_off_and_the_unlabelled_batch_stays_basic():
    resolved = Augmentation(preset="nnunet").resolved()
    assert (resolved.rotate, resolved.scale, resolved.elastic) == (0.2, 0.2, 0.0)
    assert Augmentation(preset="nnunet", rotate=0.5).resolved().rotate == 0.5
    unlabelled = Augmentation(preset="nnunet").for_unlabelled().resolved()
    assert unlabelled == Augmentation()
    assert Augmentation().resolved() is not None and Augmentation().resolved() == Augmentation()
    with pytest.raises(ValueError, match="preset"):
        Augmentation(preset="strong").resolved()


@pytest.mark.parametrize("dim", [2, 3])
def test_nnunet_intensity_is_nnunets_chain_without_its_rotation_and_zoom(dim):
    """Same seed: the intensity-only preset leaves labels as basic does (no spatial draw) and its images equal
    basic's flips through nnU-Net's intensity chain, not basic's scale and shift."""
    assert Augmentation(preset="nnunet_intensity").resolved() == Augmentation(preset="nnunet_intensity")
    intensity_only = _batch(dim, Augmentation(preset="nnunet_intensity"))
    flips_only = _batch(dim, Augmentation(intensity=False))
    np.testing.assert_array_equal(intensity_only["label"], flips_only["label"])
    assert not np.allclose(intensity_only["image"], flips_only["image"])
    assert not np.allclose(intensity_only["image"], _batch(dim, Augmentation())["image"])


def test_the_config_switch_and_its_shorthand():
    assert load_config().train.augment.preset == "basic"
    assert load_config(overrides=["train.augment=nnunet"]).train.augment.preset == "nnunet"
    assert load_config(overrides=["train.augment.preset=nnunet"]).train.augment.flip is True
    assert load_config(overrides=["train.augment=nnunet_intensity"]).train.augment.preset == "nnunet_intensity"
    with pytest.raises(ConfigError, match="preset"):
        load_config(overrides=["train.augment=strong"])


def test_a_run_gives_the_preset_to_its_labelled_sampler_only(tmp_path):
    from semiseg.engine.run import Run

    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", "train.steps=2", "train.batch_size=2", "train.method=mean_teacher",
        "train.augment=nnunet", f"output.root={tmp_path}", "output.name=run",
    ])
    data = Run.build(cfg, progress=False).trainer.data
    assert data.labelled.augment.preset == "nnunet" and data.labelled.augment.rotate == 0.2
    assert data.unlabelled.augment == Augmentation()
