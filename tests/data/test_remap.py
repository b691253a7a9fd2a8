"""The random intensity remap of the labelled batch (GIN-IPA): each piece by hand, then the sampler switch."""

from __future__ import annotations

import numpy as np
import pytest
import sampling_cases
import torch

from semiseg.config import load_config
from semiseg.data.loaders import Augmentation
from semiseg.data.remap import RemapSettings, blend_mask, gin, like, random_network, random_remap, remap_sample
from semiseg.errors import ConfigError

AFFINE = RemapSettings(layers=1, kernels=(1,))  # one 1x1 convolution: w * x + b


def _image(dim: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    shape = (channels, 20, 18) if dim == 2 else (channels, 12, 10, 8)
    return torch.from_numpy(np.random.default_rng(seed).normal(2.0, 3.0, size=shape).astype(np.float32))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_like_takes_the_references_mean_and_spread_per_channel():
    image = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    reference = torch.tensor([[8.0, 10.0, 10.0, 12.0], [1.0, 2.0, 3.0, 4.0]])
    out = like(image, reference).numpy()
    # channel 0: (x - 1.5) / sqrt(1.25) * sqrt(2) + 10; channel 1 is constant, so the reference is kept
    np.testing.assert_allclose(out[0], (np.arange(4.0) - 1.5) / np.sqrt(1.25) * np.sqrt(2.0) + 10.0, rtol=1e-6)
    np.testing.assert_array_equal(out[1], [1.0, 2.0, 3.0, 4.0])


def test_a_one_layer_one_by_one_network_is_w_x_plus_b_drawn_from_the_generator():
    image = _image(2)
    out = random_network(image, AFFINE, _gen(5))
    again = _gen(5)
    assert int(torch.randint(1, (), generator=again)) == 0
    w, b = torch.randn((1, 1, 1, 1), generator=again), torch.randn(1, generator=again)
    torch.testing.assert_close(out, w[0, 0, 0, 0] * image + b[0])


@pytest.mark.parametrize("seed", range(12))
def test_an_affine_remap_can_only_keep_or_mirror_the_contrast(seed):
    """alpha * (+-x) + (1 - alpha) * x is +-x again once rescaled, so a 1x1 one-layer GIN gives x or 2m - x."""
    image = _image(2)
    out = gin(image, AFFINE, _gen(seed))
    mirror = 2 * image.mean() - image
    assert torch.allclose(out, image, atol=1e-4) or torch.allclose(out, mirror, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 3])
def test_the_blend_mask_is_smooth_in_zero_one_and_meets_its_control_values_at_the_corners(dim):
    spatial = (20, 18) if dim == 2 else (12, 10, 8)
    mask = blend_mask(spatial, 4, _gen(3), torch.zeros(1))
    coarse = torch.rand((4,) * dim, generator=_gen(3))
    assert tuple(mask.shape) == spatial and mask.min() >= 0 and mask.max() <= 1
    torch.testing.assert_close(mask[(0,) * dim], coarse[(0,) * dim])
    torch.testing.assert_close(mask[(-1,) * dim], coarse[(-1,) * dim])
    assert mask.diff(dim=0).abs().max() < 0.5  # interpolated, not noise


@pytest.mark.parametrize("dim", [2, 3])
def test_a_remap_keeps_shape_mean_and_spread_changes_the_look_and_is_a_function_of_the_generator(dim):
    image = _image(dim, channels=2)
    out = random_remap(image, _gen(7))
    assert out.shape == image.shape and out.dtype == torch.float32 and out.isfinite().all()
    axes = tuple(range(1, dim + 1))
    torch.testing.assert_close(out.mean(dim=axes), image.mean(dim=axes), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=axes), image.std(dim=axes), rtol=1e-4, atol=0)
    assert not torch.allclose(out, image, atol=0.1)
    torch.testing.assert_close(out, random_remap(image, _gen(7)), atol=0, rtol=0)
    assert not torch.equal(out, random_remap(image, _gen(8)))


def test_a_loader_sample_is_remapped_by_a_generator_seeded_from_its_own():
    sample = _image(2).numpy()
    out = remap_sample(sample, np.random.default_rng(4))
    seed = int(np.random.default_rng(4).integers(2**63))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, random_remap(torch.from_numpy(sample), _gen(seed)).numpy())


def test_a_remap_rejects_a_sample_without_a_channel_axis():
    with pytest.raises(ValueError, match="C, \\*spatial"):
        random_remap(torch.zeros(4, 4), _gen(0))


# ----------------------------------------------------------------------------------------------
# the sampler switch


_batch = sampling_cases.batch


@pytest.mark.parametrize("dim", [2, 3])
def test_remap_off_draws_nothing_and_on_changes_images_but_not_labels(dim):
    basic = _batch(dim, Augmentation())
    off = _batch(dim, Augmentation(remap=0.0))
    np.testing.assert_array_equal(basic["image"], off["image"])
    on = _batch(dim, Augmentation(remap=1.0))
    np.testing.assert_array_equal(on["label"], basic["label"])
    changed = [not np.allclose(a, b) for a, b in zip(on["image"], basic["image"], strict=True)]
    assert all(changed)
    half = _batch(dim, Augmentation(remap=0.5))
    np.testing.assert_array_equal(half["label"], basic["label"])


def test_the_unlabelled_batch_is_never_remapped_and_the_config_checks_the_probability(tmp_path):
    assert Augmentation(remap=0.5, preset="nnunet").for_unlabelled() == Augmentation()
    assert load_config().train.augment.remap == 0.0
    assert load_config(overrides=["train.augment.remap=0.5"]).train.augment.remap == 0.5
    with pytest.raises(ConfigError, match="remap"):
        load_config(overrides=["train.augment.remap=1.5"])

    from semiseg.engine.run import Run

    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", "train.steps=2", "train.batch_size=2", "train.method=mean_teacher",
        "train.augment.remap=0.5", f"output.root={tmp_path}", "output.name=run",
    ])
    data = Run.build(cfg, progress=False).trainer.data
    assert data.labelled.augment.remap == 0.5 and data.unlabelled.augment.remap == 0.0
