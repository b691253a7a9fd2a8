"""Strong augmentation for segmentation: labels follow geometric ops only, CutOut becomes background."""

import pytest
import torch

from semiseg.data.remap import random_remap
from semiseg.losses import segmentation_loss
from semiseg.methods.base import MethodContext
from semiseg.methods.fixmatch import FixMatchConfig
from semiseg.methods.rpg_plus import RPGPlus
from semiseg.methods.unimatch import UniMatchConfig
from semiseg.ssl.strong_augment import (
    AFFINE_OPS,
    INTENSITY_OPS,
    StrongAugment,
    grid_theta,
    intensity_op,
    intensity_view,
    strong_augment,
    strong_view,
    warp,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _blobs(dims, batch=3, classes=3, seed=0):
    """Multiclass label maps made of large blocks, so resampling has something to move."""
    g = _gen(seed)
    coarse = torch.randint(0, classes, (batch, *([4] * dims)), generator=g)
    return (
        coarse.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
        if dims == 2
        else (coarse.repeat_interleave(3, 1).repeat_interleave(3, 2).repeat_interleave(3, 3))
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_cutout_area_is_background_and_counts(dims):
    spatial = [16] * dims
    image = torch.randn(4, 2, *spatial, generator=_gen())
    target = torch.ones(4, *spatial, dtype=torch.long)
    mask = torch.zeros(4, *spatial)
    x, t, m = strong_augment(image, target, mask, StrongAugment(n_ops=0), _gen())
    box = (x != image).any(dim=1)
    assert box.any(dim=tuple(range(1, dims + 1))).all()  # one box per sample
    assert (t[box] == 0).all() and (m[box] == 1).all()
    assert (t[~box] == 1).all() and (m[~box] == 0).all()
    fill = image.mean(dim=tuple(range(2, dims + 2)))
    assert torch.allclose(x[0, :, box[0]], fill[0][:, None].expand(-1, int(box[0].sum())))


def test_cutout_multilabel_clears_every_channel():
    image = torch.randn(2, 1, 16, 12, generator=_gen())
    target, mask = torch.ones(2, 3, 16, 12), torch.zeros(2, 3, 16, 12)
    x, t, m = strong_augment(image, target, mask, StrongAugment(n_ops=0), _gen(1))
    box = (x != image).any(dim=1)
    assert (t.permute(1, 0, 2, 3)[:, box] == 0).all() and (m.permute(1, 0, 2, 3)[:, box] == 1).all()
    assert (t.permute(1, 0, 2, 3)[:, ~box] == 1).all()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("ops", [("flip", "rot90"), AFFINE_OPS])
def test_geometric_ops_move_image_and_label_alike(dims, ops):
    label = _blobs(dims)
    image = label[:, None].float() + 1.0  # the image *is* the label (+1, so the zero fill outside shows)
    settings = StrongAugment(n_ops=3, ops=ops, cutout=False, image_interpolation="nearest")
    x, t, m = strong_augment(image, label, torch.ones_like(label, dtype=torch.float), settings, _gen(2))
    inside = m > 0
    assert torch.equal(x[:, 0][inside], t[inside].float() + 1.0)
    assert (x[:, 0][~inside] == 0).all()  # entered from outside: no image, ignored in the loss
    assert not torch.equal(t, label)  # something moved
    if ops == ("flip", "rot90"):
        assert inside.all()  # exact ops lose nothing


def test_geometric_ops_multilabel_per_channel_mask():
    label = (torch.rand(2, 2, 16, 16, generator=_gen()) > 0.5).float()
    image = label.clone()
    mask = torch.ones_like(label)
    mask[:, 1] = 0  # channel 1 ignored everywhere: must stay ignored wherever it moves
    settings = StrongAugment(n_ops=2, ops=("rotate", "flip"), cutout=False, image_interpolation="nearest")
    x, t, m = strong_augment(image, label, mask, settings, _gen(3))
    assert torch.equal(x[m > 0], t[m > 0]) and (m[:, 1] == 0).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_ops_leave_labels_alone(dims):
    label = _blobs(dims)
    image = torch.randn(3, 1, *label.shape[1:], generator=_gen())
    mask = torch.rand(label.shape, generator=_gen()) > 0.3
    settings = StrongAugment(n_ops=3, ops=INTENSITY_OPS[1:], cutout=False)
    x, t, m = strong_augment(image, label, mask, settings, _gen(4))
    assert torch.equal(t, label) and torch.equal(m, mask) and m.dtype == torch.bool
    assert not torch.allclose(x, image) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", INTENSITY_OPS)
def test_each_intensity_op_keeps_the_range_and_shape(name):
    image = torch.rand(2, 10, 12, generator=_gen()) * 4 - 1
    out = intensity_op(name, image, _gen(5))
    assert out.shape == image.shape
    if name != "noise":
        assert out.min() >= image.min() - 1e-5 and out.max() <= image.max() + 1e-5


def test_seeded_generator_reproduces():
    image, label = torch.randn(2, 1, 16, 16), _blobs(2, batch=2)
    mask = torch.ones(2, 16, 16)
    first = strong_augment(image, label, mask, generator=_gen(7))
    second = strong_augment(image, label, mask, generator=_gen(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_affine_axis_convention_matches_rot90():
    """A 90° pixel-space rotation through ``grid_theta`` equals ``torch.rot90`` (clockwise), axes and all."""
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # output (r, c) reads input (−c, r)
    out = warp(x, grid_theta(quarter, (6, 6))[None], "nearest")
    assert torch.equal(out, torch.rot90(x, -1, dims=(2, 3)))
    shift = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # read 2 rows down, 1 column left
    moved = warp(torch.arange(48.0).reshape(1, 1, 6, 8), grid_theta(shift, (6, 8))[None], "nearest")
    assert moved[0, 0, 0, 1] == 2 * 8 + 0 and moved[0, 0, 3, 5] == 5 * 8 + 4


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown strong-augmentation ops"):
        StrongAugment(ops=("rotate", "mosaic"))


@pytest.mark.parametrize("dims", [2, 3])
def test_labels_made_after_the_view_follow_its_flips_rotations_and_cutout(dims):
    """A label computed from the unaugmented image, carried over later, is the label of the strong image."""
    image = _blobs(dims, batch=4, seed=5).float()[:, None] + 1.0  # classes 1..3: CutOut's mean fill is not one
    view = strong_view(image, StrongAugment(n_ops=3, ops=("flip", "rot90")), _gen(6))
    target, mask = view.carry(image[:, 0].long(), torch.zeros(image.shape[0], *image.shape[2:]))
    outside = ~view.box[:, 0]
    assert torch.equal(target[outside], view.image[:, 0][outside].long())
    assert (target[~outside] == 0).all() and (mask[~outside] == 1).all() and (mask[outside] == 0).all()
    assert not torch.equal(view.image, image)  # something moved


@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_view_draws_intensity_ops_only_so_labels_stay_put(dims):
    image = torch.rand(3, 1, *([8] * dims), generator=_gen(1))
    view = intensity_view(image, n_ops=2, generator=_gen(5))
    g = _gen(5)  # the same draws by hand: two ops per image from the intensity pool, each with its magnitude
    expected = []
    for b in range(3):
        x = image[b]
        for pick in torch.randint(len(INTENSITY_OPS), (2,), generator=g).tolist():
            x = intensity_op(INTENSITY_OPS[pick], x, g)
        expected.append(x)
    assert view.shape == image.shape and view.dtype == image.dtype
    assert torch.allclose(view, torch.stack(expected))


def test_intensity_view_draws_from_the_pool_it_is_given_and_refuses_unknown_ops():
    image = torch.rand(3, 1, 8, 8, generator=_gen(1))
    view = intensity_view(image, n_ops=1, generator=_gen(7), ops=("brightness",))
    g = _gen(7)  # one draw from a pool of one names brightness every time, then its factor
    expected = []
    for b in range(3):
        assert torch.randint(1, (1,), generator=g).tolist() == [0]
        expected.append(intensity_op("brightness", image[b], g))
    assert torch.allclose(view, torch.stack(expected))
    with pytest.raises(ValueError, match="rot90"):
        intensity_view(image, ops=("contrast", "rot90"))
    with pytest.raises(ValueError, match="no intensity ops"):
        intensity_view(image, ops=())


def test_a_remapped_intensity_view_remaps_each_image_before_its_ops():
    """remap=1: per image one U(0, 1) draw, the remap, then the view's ops, all from the one generator."""
    image = torch.randn(2, 1, 12, 12, generator=_gen(1))
    view = intensity_view(image, n_ops=1, generator=_gen(4), ops=("contrast",), remap=1.0)
    g = _gen(4)
    expected = []
    for b in range(2):
        assert float(torch.rand((), generator=g)) < 1.0
        x = random_remap(image[b], g)
        assert torch.randint(1, (1,), generator=g).tolist() == [0]
        expected.append(intensity_op("contrast", x, g))
    torch.testing.assert_close(view, torch.stack(expected))
    plain = intensity_view(image, n_ops=1, generator=_gen(4), ops=("contrast",))
    assert not torch.allclose(view, plain, atol=0.1)  # the remap changed the view


@pytest.mark.parametrize("dims", [2, 3])
def test_a_remapped_view_is_the_remap_of_each_sample_drawn_first_from_the_same_generator(dims):
    """remap=1 with no other op: sample b's view is ``random_remap`` of sample b after one U(0, 1) draw."""
    image = torch.randn(2, 1, *((12,) * dims), generator=torch.Generator().manual_seed(1))
    settings = StrongAugment(n_ops=0, cutout=False, remap=1.0)
    view = strong_view(image, settings, torch.Generator().manual_seed(3)).image
    again = torch.Generator().manual_seed(3)
    expected = []
    for b in range(2):
        assert float(torch.rand((), generator=again)) < 1.0
        expected.append(random_remap(image[b], again))
    torch.testing.assert_close(view, torch.stack(expected))
    assert not torch.allclose(view, image, atol=0.1)
    off = strong_view(image, StrongAugment(n_ops=0, cutout=False), torch.Generator().manual_seed(3)).image
    torch.testing.assert_close(off, image, atol=0, rtol=0)


def test_remap_is_a_probability_and_a_randaugment_option_reaches_the_view():
    with pytest.raises(ValueError, match="remap"):
        StrongAugment(remap=1.5)
    assert FixMatchConfig().augmentation().remap == 0.5  # FixMatch's default (chosen on validation)
    assert FixMatchConfig(strong_remap=0.0).augmentation().remap == 0.0
    assert FixMatchConfig(strong_remap=0.5, cutout=False).augmentation().cutout is False
    assert UniMatchConfig().strong_settings(cutout=False).remap == 0.0  # the shared option is off elsewhere


def test_rpg_plus_keeps_the_papers_strong_view_while_fixmatch_remaps_half():
    """RPG+ builds its FixMatch from FixMatchOptions, whose strong_remap stays 0: FixMatch's default is its own."""
    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=2, in_channels=1,
                        supervised_loss=segmentation_loss("dice_ce"))
    assert RPGPlus(ctx).fixmatch.cfg.augmentation().remap == 0.0
