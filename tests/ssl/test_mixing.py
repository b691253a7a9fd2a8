import pytest
import torch

from semiseg.ssl.mixing import (
    apply_region_map,
    box_masks,
    from_regions,
    mix,
    region_scores,
    to_regions,
    umix,
    umix_source_map,
)


def test_regions_round_trip_with_untouched_border():
    x = torch.randn(2, 3, 9, 10, 7)
    regions = to_regions(x, [2, 3, 3])
    assert regions.shape == (2, 18, 3, 4, 3, 2)
    assert torch.equal(from_regions(regions, x, [2, 3, 3]), x)


def test_region_order_is_row_major():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    first_pixels = to_regions(x, [2, 2])[0, :, 0, 0, 0]
    assert first_pixels.tolist() == [0.0, 2.0, 8.0, 10.0]


def _hand_made_2d():
    """A 4×4 image of 2×2 regions labelled 0..3 (row-major) and two uncertainty maps.

    U¹ region means: [0.9, 0.1, 0.5, 0.2] → most uncertain region 0, most certain region 1.
    U² region means: [0.3, 0.2, 0.8, 0.05] → most uncertain region 2, most certain region 3.
    """
    image = torch.zeros(1, 1, 4, 4)
    for region, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        image[0, 0, r:r + 2, c:c + 2] = region
    u1 = torch.zeros(1, 4, 4)
    u2 = torch.zeros(1, 4, 4)
    for (r, c), a, b in zip([(0, 0), (0, 2), (2, 0), (2, 2)], [0.9, 0.1, 0.5, 0.2], [0.3, 0.2, 0.8, 0.05],
                            strict=True):
        u1[0, r:r + 2, c:c + 2] = a
        u2[0, r:r + 2, c:c + 2] = b
    return image, u1, u2


def _region_values(x):
    return to_regions(x, [2, 2])[0, :, 0, 0, 0].tolist()


def test_umix_replace_copies_certain_regions_over_uncertain_ones():
    image, u1, u2 = _hand_made_2d()
    (mixed,) = umix([image], u1, u2, k=1, grid=[2, 2], mode="replace")
    # region 0 (uncertain by U¹) ← region 3 (certain by U²), region 2 ← region 1; 1 and 3 stay in place too.
    assert _region_values(mixed) == [3.0, 1.0, 1.0, 3.0]


def test_umix_second_pair_wins_when_both_maps_pick_one_region():
    scores1 = torch.tensor([[0.9, 0.1, 0.5, 0.6]])  # uncertain 0, certain 1
    scores2 = torch.tensor([[0.9, 0.5, 0.6, 0.1]])  # uncertain 0, certain 3
    # region 0 ← 3 (U¹'s pair), then region 0 ← 1 (U²'s pair, written last); 1 and 3 stay in place
    assert umix_source_map(scores1, scores2, 1, "replace").tolist() == [[1, 1, 2, 3]]


def test_umix_moves_labels_with_images_and_keeps_label_layout():
    image, u1, u2 = _hand_made_2d()
    label = image[:, 0].long()  # (B, H, W) multiclass map equal to the region ids
    onehot = torch.nn.functional.one_hot(label, 4).movedim(-1, 1).float()
    mixed_image, mixed_label, mixed_onehot = umix([image, label, onehot], u1, u2, k=1, grid=[2, 2], mode="replace")
    assert mixed_label.shape == label.shape and mixed_label.dtype == torch.long
    assert torch.equal(mixed_label, mixed_image[:, 0].long())
    assert torch.equal(mixed_onehot.argmax(1), mixed_label)


def test_umix_3d_hand_made():
    # 2×2×2 grid of 1-voxel regions; region id = voxel value.
    image = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    u1 = torch.tensor([0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0]).reshape(1, 2, 2, 2)  # uncertain 0, certain 7
    u2 = torch.tensor([0.5, 0.1, 0.2, 0.3, 0.4, 0.9, 0.6, 0.7]).reshape(1, 2, 2, 2)  # uncertain 5, certain 1
    (mixed,) = umix([image], u1, u2, k=1, grid=[2, 2, 2], mode="replace")
    # region 0 ← 1 (U¹'s uncertain ← U²'s certain), region 5 ← 7 (U²'s uncertain ← U¹'s certain)
    assert mixed.flatten().tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 7.0, 6.0, 7.0]


def test_umix_per_sample_and_k2():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.5, 0.6], [0.1, 0.2, 0.9, 0.8, 0.5, 0.6]])
    source = umix_source_map(scores, scores.flip(0), 2, "replace")
    # sample 0: U¹ uncertain [0, 1] ← U² certain [0, 1] (from sample 1's row);
    # U² uncertain [2, 3] ← U¹ certain [2, 3]: identity
    assert source[0].tolist() == [0, 1, 2, 3, 4, 5]
    # different maps per sample: U¹ = row, U² = the other row
    other = umix_source_map(scores, torch.tensor([[0.5, 0.6, 0.9, 0.8, 0.1, 0.2]] * 2), 2, "replace")
    # sample 0: U¹ uncertain [0,1] ← U² certain [4,5]; U² uncertain [2,3] ← U¹ certain [2,3]
    assert other[0].tolist() == [4, 5, 2, 3, 4, 5]


def test_umix_rejects_bad_k():
    with pytest.raises(ValueError, match="top-k"):
        umix_source_map(torch.rand(1, 4), torch.rand(1, 4), 3)


def test_region_scores_are_region_means():
    _, u1, _ = _hand_made_2d()
    assert region_scores(u1, [2, 2])[0].tolist() == pytest.approx([0.9, 0.1, 0.5, 0.2])


def test_apply_region_map_identity():
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(apply_region_map(x, torch.arange(16).repeat(2, 1), [4, 4]), x)


def test_box_masks_area_and_mix():
    g = torch.Generator().manual_seed(0)
    masks = box_masks(64, (40, 50), area=(0.25, 0.5), generator=g)
    fractions = masks.float().mean(dim=(1, 2))
    assert fractions.min() > 0.15 and fractions.max() < 0.6
    masks3 = box_masks(4, (16, 16, 16), area=(0.3, 0.3), generator=g)
    assert masks3.shape == (4, 16, 16, 16)
    a, b = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, :2] = True
    assert mix(a, b, m)[0, :, :2].eq(1).all() and mix(a, b, m)[0, :, 2:].eq(0).all()


# -- the paper's replacement and the authors' code: every read sees the unmixed image -----------------------


def test_umix_replace_is_the_default_and_keeps_certain_regions_in_place():
    image, u1, u2 = _hand_made_2d()
    (mixed,) = umix([image], u1, u2, k=1, grid=[2, 2])
    # U¹'s most uncertain region 0 ← U²'s most certain region 3; U²'s most uncertain region 2 ← U¹'s most
    # certain region 1; regions 1 and 3 also stay where they are.
    assert _region_values(mixed) == [3.0, 1.0, 1.0, 3.0]


def test_umix_replace_reads_the_unmixed_image_when_a_region_is_uncertain_and_certain():
    # Region 3 is U¹'s second most uncertain AND U²'s most certain; region 2 is U¹'s second most certain AND
    # U²'s most uncertain; region 0 is the most uncertain of both. U¹ uncertain [0, 3] take U² certain [3, 1]
    # (i-th with i-th); U² uncertain [2, 0] take U¹ certain [1, 2]; U²'s pairs are written last.
    scores1 = torch.tensor([[0.9, 0.0, 0.2, 0.8, 0.3, 0.4]])  # uncertain 0, 3 · certain 1, 2
    scores2 = torch.tensor([[0.8, 0.2, 0.9, 0.0, 0.5, 0.4]])  # uncertain 2, 0 · certain 3, 1
    # U¹ pairs: 0 ← 3, 3 ← 1. U² pairs (written last): 2 ← 1, 0 ← 2 — region 2 is read before it is overwritten.
    assert umix_source_map(scores1, scores2, 2, "replace").tolist() == [[2, 1, 1, 1, 4, 5]]


def test_umix_code_pairs_the_ith_most_uncertain_with_the_k_minus_i_plus_first_most_certain():
    scores1 = torch.tensor([[0.9, 0.0, 0.2, 0.8, 0.3, 0.4]])  # descending: 0, 3, 5, 4, 2, 1
    scores2 = torch.tensor([[0.8, 0.2, 0.9, 0.0, 0.5, 0.4]])  # descending: 2, 0, 4, 5, 1, 3
    # The code: img[x1[:2]] = img[x2[-2:]] → regions 0, 3 ← 1, 3; then img[x2[:2]] = img[x1[-2:]] → 2, 0 ← 2, 1.
    # The second assignment reads regions 2 and 1, which the first did not write: the unmixed image.
    assert umix_source_map(scores1, scores2, 2, "code").tolist() == [[1, 1, 2, 3, 4, 5]]


def test_umix_code_equals_an_independent_transcription_of_the_authors_assignments():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        scores1, scores2 = torch.rand(3, 16, generator=g), torch.rand(3, 16, generator=g)
        image = torch.rand(3, 2, 16, generator=g)  # (B, C, L): regions as the last axis, like nn.Unfold
        expected = image.clone()
        _, x1 = torch.sort(scores1, dim=1, descending=True)
        _, x2 = torch.sort(scores2, dim=1, descending=True)
        for i in range(3):  # the authors' loop, k = 3
            expected[i, :, x1[i, :3]] = expected[i, :, x2[i, -3:]]
            expected[i, :, x2[i, :3]] = expected[i, :, x1[i, -3:]]
        source = umix_source_map(scores1, scores2, 3, "code")
        assert torch.equal(image.gather(2, source[:, None, :].expand(-1, 2, -1)), expected)


def test_umix_rejects_unknown_mode():
    with pytest.raises(ValueError, match="replace, code"):
        umix_source_map(torch.rand(1, 4), torch.rand(1, 4), 1, "swap")
