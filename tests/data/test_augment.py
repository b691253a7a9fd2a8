"""Spatial augmentation: labels follow the image, nothing moves at probability 0, samples are keyed by the step."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semiseg.config import load_config
from semiseg.data.augment import SpatialAugmentation, Warp, bilinear_sample, draw_warp, nearest_sample, source_box
from semiseg.data.loaders import Augmentation, PatchSampler, StoredCase, _window
from semiseg.errors import ConfigError

EVERYTHING = Augmentation(flip=False, intensity=False, rotate=1.0, scale=1.0, elastic=1.0, elastic_magnitude=(2, 4),
                          elastic_spacing=6)


def _label(shape: tuple[int, ...]) -> np.ndarray:
    """Two nested boxes (classes 1 and 2) off-centre, so rotations and zooms visibly move them."""
    label = np.zeros(shape, dtype=np.int64)
    label[tuple(slice(s // 5, 3 * s // 5) for s in shape)] = 1
    label[tuple(slice(s // 4, s // 2) for s in shape)] = 2
    return label


def _case(shape: tuple[int, ...], *, image: np.ndarray | None = None, label: np.ndarray | None = None) -> StoredCase:
    label = _label(shape) if label is None else label
    if image is None:
        image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    mask = label > 0 if label.ndim == len(shape) else label.any(axis=0)
    return StoredCase("a", image, label, np.argwhere(mask))


def _sampler(case: StoredCase, dim: int, patch: list[int], augment: Augmentation, seed: int = 0) -> PatchSampler:
    return PatchSampler([case], dim=dim, patch_size=patch, batch_size=4, augment=augment, foreground_fraction=0.5,
                        seed=seed)


@pytest.mark.parametrize(("dim", "shape", "patch"), [(2, (30, 34, 5), [24, 24]), (3, (24, 28, 20), [16, 16, 12])])
def test_the_label_is_the_nearest_neighbour_of_a_label_valued_image(dim, shape, patch):
    """Where the bilinear image of a label-valued image is a class value, the warped label holds that class."""
    label = _label(shape) * 5  # classes 0, 5, 10: a blend of two classes is never a class value
    case = _case(shape, image=label[None].astype(np.float32), label=label)
    batch = _sampler(case, dim, patch, EVERYTHING).batch_at(3)
    image, warped = batch["image"][:, 0], batch["label"]
    exact = np.isclose(image, np.rint(image), atol=1e-4) & np.isin(np.rint(image), [0, 5, 10])
    assert exact.mean() > 0.8 and (warped > 0).any()
    assert np.array_equal(warped[exact], np.rint(image[exact]).astype(np.int64))
    assert not np.array_equal(warped, _sampler(case, dim, patch, Augmentation(flip=False, intensity=False))
                              .batch_at(3)["label"])


@pytest.mark.parametrize("dim", [2, 3])
def test_the_label_is_torchs_nearest_resampling_of_the_label_valued_image(dim):
    """Checked against ``grid_sample(mode="nearest")`` of the whole label-valued image, an independent reading."""
    shape = (20, 22, 18)[:dim]
    label = _label(shape)
    warp = draw_warp(EVERYTHING, [12] * dim, np.random.default_rng(4))
    coords = warp.coordinates([3] * dim)
    sizes = np.asarray(shape, dtype=np.float32).reshape((-1,) + (1,) * dim)
    grid = torch.from_numpy(2 * coords / (sizes - 1) - 1).flip(0).permute(*range(1, dim + 1), 0)[None]
    image = torch.from_numpy(label.astype(np.float32))[None, None]
    reference = F.grid_sample(image, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    assert np.array_equal(nearest_sample(label, coords), reference.numpy().astype(np.int64))


def test_probability_zero_draws_nothing_and_crops_as_before():
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    assert draw_warp(SpatialAugmentation(rotate_degrees=90, scale_range=(0.5, 2)), [8, 8], rng) is None
    assert rng.bit_generator.state == before
    case = _case((30, 34, 5))
    plain = _sampler(case, 2, [24, 24], Augmentation(flip=False, intensity=False)).batch_at(2)
    label = plain["label"][0]
    windows = [_window(case.label[..., z], [x, y], [24, 24]) for z in range(5) for x in range(-3, 10)
               for y in range(-3, 14)]
    assert any(np.array_equal(label, w) for w in windows)  # an unmoved crop of the case


@pytest.mark.parametrize("dim", [2, 3])
def test_identity_and_quarter_turn_warps_read_where_they_should(dim):
    """Axis conventions: a unit warp is the plain window, a 90° turn in 2D is ``np.rot90`` of it."""
    image = np.random.default_rng(1).normal(size=(2, *(15, 17, 13)[:dim])).astype(np.float32)
    patch, starts = (8,) * dim, [3] * dim
    coords = Warp(patch, np.eye(dim), None).coordinates(starts)
    low, size = source_box(coords)
    np.testing.assert_allclose(bilinear_sample(_window(image, low, size), coords, low),
                               _window(image, starts, list(patch)), atol=1e-5)
    if dim == 2:
        turn = Warp(patch, np.array([[0.0, -1.0], [1.0, 0.0]]), None).coordinates(starts)
        low, size = source_box(turn)
        turned = bilinear_sample(_window(image, low, size), turn, low)
        window = _window(image, starts, list(patch))
        assert any(np.allclose(turned, np.rot90(window, k, axes=(1, 2)), atol=1e-5) for k in (1, 3))


def test_samples_are_a_function_of_seed_step_and_index():
    case = _case((24, 28, 20))
    a, b = _sampler(case, 3, [16, 16, 12], EVERYTHING, 7), _sampler(case, 3, [16, 16, 12], EVERYTHING, 7)
    whole = a.batch_at(5)
    for step in range(3):
        b.batch_at(step)
    one = b.batch_at(5, [2])
    assert np.array_equal(one["image"][0], whole["image"][2]) and np.array_equal(one["label"][0], whole["label"][2])
    assert not np.array_equal(_sampler(case, 3, [16, 16, 12], EVERYTHING, 8).batch_at(5)["image"], whole["image"])
    assert not np.array_equal(a.batch_at(6)["image"], whole["image"])


def test_3d_multilabel_channels_move_together_and_keep_their_values():
    shape, patch = (24, 28, 20), [16, 16, 12]
    multiclass = _case(shape)
    channels = np.stack([multiclass.label >= 1, multiclass.label == 2]).astype(np.uint8)
    multilabel = StoredCase("a", multiclass.image, channels, multiclass.fg_points)
    one = _sampler(multiclass, 3, patch, EVERYTHING).batch_at(1)
    many = _sampler(multilabel, 3, patch, EVERYTHING).batch_at(1)
    assert one["image"].shape == (4, 1, *patch) and one["label"].shape == (4, *patch)
    assert many["label"].shape == (4, 2, *patch) and many["label"].dtype == np.uint8
    assert np.array_equal(many["image"], one["image"])
    assert np.array_equal(many["label"][:, 0], one["label"] >= 1) and np.array_equal(many["label"][:, 1],
                                                                                   one["label"] == 2)


def test_config_ranges_are_checked():
    with pytest.raises(ConfigError, match="train.augment.scale_range"):
        load_config(None, ["train.augment.scale_range=[0, 2]"])
    with pytest.raises(ConfigError, match="train.augment.elastic_magnitude"):
        load_config(None, ["train.augment.elastic_magnitude=[4, 1]"])
    assert load_config(None, ["train.augment.rotate=1"]).train.augment.rotate == 1
    default = load_config().train.augment
    assert (default.rotate, default.scale, default.elastic) == (0, 0, 0)  # off: old runs and tables unchanged
