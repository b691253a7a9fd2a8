import numpy as np
import pytest

from semiseg.data.loaders import (
    Augmentation,
    PatchSampler,
    StoredCase,
    _window,
    default_patch_size,
    keep_labelled_slices,
    normalize_image,
)


def _store():
    rng = np.random.default_rng(0)
    label = np.zeros((20, 24, 6), dtype=np.uint8)
    label[5:10, 5:12, 2:4] = 1
    image = rng.normal(size=(1, 20, 24, 6)).astype(np.float32)
    return [StoredCase("a", image, label, np.argwhere(label > 0))]


def test_normalize_modes():
    image = np.arange(8, dtype=np.float32).reshape(1, 2, 4) * 3 + 5
    z = normalize_image(image, "zscore")
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    m = normalize_image(image, "minmax")
    assert m.min() == 0 and m.max() == 1
    assert np.array_equal(normalize_image(image, "none"), image)


def test_window_pads_outside():
    a = np.arange(16).reshape(4, 4)
    w = _window(a, [-1, 2], [3, 3])
    assert w.tolist() == [[0, 0, 0], [2, 3, 0], [6, 7, 0]]


@pytest.mark.parametrize("dim", [2, 3])
def test_batches_shapes_and_determinism(dim):
    patch = [16, 16] if dim == 2 else [8, 8, 4]
    kw = dict(dim=dim, patch_size=patch, batch_size=3, augment=Augmentation(), seed=1)
    a, b = PatchSampler(_store(), **kw), PatchSampler(_store(), **kw)
    ba, bb = a.next_batch(), b.next_batch()
    assert ba["image"].shape == (3, 1, *patch) and ba["label"].shape == (3, *patch)
    assert set(ba) == {"image", "label", "case_ids"}
    assert np.array_equal(ba["image"], bb["image"])
    state = a.state_dict()
    nxt = a.next_batch()
    b.load_state_dict(state)
    assert np.array_equal(b.next_batch()["image"], nxt["image"])


def test_foreground_sampling_hits_foreground():
    s = PatchSampler(_store(), dim=2, patch_size=[8, 8], batch_size=16, augment=Augmentation(flip=False),
                     foreground_fraction=1.0, seed=0)
    labels = s.next_batch()["label"]
    assert all(lab.any() for lab in labels)


def test_default_patch_size():
    store = _store()
    assert default_patch_size([store], 2, 8) == [24, 24]
    assert default_patch_size([store], 3, 4) == [20, 24, 8]


def test_restrict_draws_from_the_subset_only():
    base = _store()[0]
    store = [StoredCase(cid, base.image, None, base.fg_points[:0]) for cid in ("a", "b", "c")]
    s = PatchSampler(store, dim=2, patch_size=[8, 8], batch_size=32, augment=Augmentation(), seed=0)
    s.restrict(["c", "a"])
    assert set(s.next_batch()["case_ids"]) == {"a", "c"}
    s.restrict(None)
    assert set(s.next_batch()["case_ids"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="none of the cases"):
        s.restrict(["z"])


@pytest.mark.parametrize("dim", [2, 3])
def test_a_batch_split_over_processes_is_the_same_batch(dim):
    """Any split of a step's indices (DDP ranks, loader workers) reassembles the whole batch, in any order."""
    patch = [16, 16] if dim == 2 else [8, 8, 4]
    s = PatchSampler(_store(), dim=dim, patch_size=patch, batch_size=4, augment=Augmentation(), seed=3,
                     foreground_fraction=0.5)
    whole = s.batch_at(7)
    halves = [s.batch_at(7, [2, 3]), s.batch_at(7, [0, 1])]
    assert np.array_equal(np.concatenate([halves[1]["image"], halves[0]["image"]]), whole["image"])
    assert np.array_equal(np.concatenate([halves[1]["label"], halves[0]["label"]]), whole["label"])
    assert not np.array_equal(s.batch_at(8)["image"], whole["image"])


def test_batches_depend_on_the_step_not_on_the_history():
    s = PatchSampler(_store(), dim=2, patch_size=[16, 16], batch_size=2, augment=Augmentation(), seed=0)
    later = s.batch_at(5)["image"]
    for step in range(5):
        s.batch_at(step)
    assert np.array_equal(s.batch_at(5)["image"], later)


def _slice_numbered_case(foreground_slices: list[int], depth: int = 10) -> StoredCase:
    """Every voxel of slice z holds the value z, so a drawn 2D image says which slice it came from."""
    image = np.broadcast_to(np.arange(depth, dtype=np.float32), (1, 8, 8, depth)).copy()
    label = np.zeros((8, 8, depth), dtype=np.uint8)
    label[2:5, 2:5, foreground_slices] = 1
    return StoredCase("a", image, label, np.argwhere(label > 0))


def test_keep_labelled_slices_spaces_them_over_the_foreground():
    case = _slice_numbered_case(list(range(1, 9)))
    # foreground slices 1..8; positions linspace(0, 7, 3) = 0, 3.5, 7 rounded (half to even) to 0, 4, 7
    (kept,) = keep_labelled_slices([case], 3)
    assert kept.slices.tolist() == [1, 5, 8]
    assert set(kept.fg_points[:, 2].tolist()) == {1, 5, 8}
    assert keep_labelled_slices([case], 20)[0].slices.tolist() == list(range(1, 9))
    empty = StoredCase("b", case.image, np.zeros_like(case.label), case.fg_points[:0])
    assert keep_labelled_slices([empty], 2)[0].slices.tolist() == [0, 9]
    assert case.slices is None  # the input store is left as it was


@pytest.mark.parametrize("foreground_fraction", [0.0, 1.0])
def test_a_sampler_draws_only_the_kept_slices(foreground_fraction):
    store = keep_labelled_slices([_slice_numbered_case(list(range(1, 9)))], 3)
    sampler = PatchSampler(store, dim=2, patch_size=[8, 8], batch_size=64,
                           augment=Augmentation(flip=False, intensity=False), foreground_fraction=foreground_fraction)
    drawn = {float(image[0, 0, 0]) for image in sampler.next_batch()["image"]}
    assert drawn == {1.0, 5.0, 8.0}
