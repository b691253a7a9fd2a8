"""Reference-guided pseudo labels (RPG, Eqs. 1-7): values by hand, chunked = dense, pool covers every class."""

import pytest
import torch

from semiseg.ssl.reference import (
    ReferenceSettings,
    _Blocks,
    class_presence,
    class_probabilities,
    entropy_weight,
    label_codes,
    match,
    match_dense,
    reference_pseudo_labels,
    sample_pool,
    subsample,
    vote,
)

# Five references in 2D feature space with codes 0, 1, 2, 1, 0:
# r0 = (1, 0), r1 = (0.8, 0.6), r2 = (0, 1), r3 = (0.6, 0.8), r4 = (−1, 0).
REFS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
CODES = torch.tensor([0, 1, 2, 1, 0])
# u_a = (1, 0): D = [0, 0.2, 1, 0.4, 1]; u_b = (0, 2): D = [1, 0.4, 0, 0.2, 1] (not unit length on purpose);
# u_c = (0, −1): every cosine ≤ 0, so every D is 1 (nothing similar anywhere).
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -1.0]])
W_TWO_CLASSES = 0.3747006  # 1 + (5/9 ln 5/9 + 4/9 ln 4/9) / ln 3, P from closeness (1, 0.8) / 1.8


def _both(k, block_elements=2):
    return [match(QUERIES, REFS, CODES, 3, k, block_elements=block_elements), match_dense(QUERIES, REFS, CODES, 3, k)]


@pytest.mark.parametrize("block_elements", [1, 2, 3, 1 << 20])
def test_hand_made_labels_and_class_distances(block_elements):
    for nearest, delta in _both(2, block_elements):
        assert nearest.tolist() == [0, 2, 0]  # Eq. 4; u_c ties everywhere and goes to the lowest code
        # Eq. 5 with k = 2: u_a's two nearest are r0 (class 0) and r1 (class 1); class 2 is absent → 1
        expected = torch.tensor([[0.0, 0.2, 1.0], [1.0, 0.2, 0.0], [1.0, 1.0, 1.0]])
        assert torch.allclose(delta, expected, atol=1e-6)


def test_class_outside_the_k_nearest_gets_distance_one():
    for _, delta in _both(1):  # only r0 for u_a: class 1 at distance 0.2 is not among the k nearest
        assert torch.allclose(delta[0], torch.tensor([0.0, 1.0, 1.0]), atol=1e-6)
    for _, delta in _both(3):  # r0, r1, r3: class 1's closest is still 0.2
        assert torch.allclose(delta[0], torch.tensor([0.0, 0.2, 1.0]), atol=1e-6)


def test_probabilities_and_weight_by_hand():
    delta = torch.tensor([[0.0, 0.2, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.5, 0.5, 1.0]])
    probs = class_probabilities(delta)
    assert probs[0].tolist() == pytest.approx([1 / 1.8, 0.8 / 1.8, 0.0], abs=1e-6)  # Eq. 6
    assert probs[1].tolist() == pytest.approx([1 / 3] * 3)  # all absent: ε / 3ε
    weight = entropy_weight(probs, delta)
    assert weight[0].item() == pytest.approx(W_TWO_CLASSES, abs=1e-5)  # Eq. 7
    assert weight[1].item() == 0.0  # all classes absent: maximal entropy, the pixel is ignored
    assert weight[2].item() == pytest.approx(1.0, abs=1e-6)  # one certain class
    assert weight[3].item() == pytest.approx(1 + 0.5 * 2 * torch.log(torch.tensor(0.5)).item() / 1.0986123, abs=1e-5)


def test_weight_with_a_single_class():
    delta = torch.tensor([[0.3], [1.0]])
    assert entropy_weight(class_probabilities(delta), delta).tolist() == [1.0, 0.0]


def test_multilabel_vectors_are_the_classes():
    # the same references labelled with vectors: r0, r4 = (0, 0); r1, r3 = (1, 0); r2 = (1, 1)
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    codes, table = label_codes(vectors, "multilabel", 2)
    assert codes.tolist() == CODES.tolist() and table.tolist() == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    nearest, delta = match(QUERIES, REFS, codes, len(table), 2, block_elements=2)
    assert table[nearest].tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]  # the nearest vector, copied whole
    weight = entropy_weight(class_probabilities(delta), delta)
    assert weight.tolist() == pytest.approx([W_TWO_CLASSES, W_TWO_CLASSES, 0.0], abs=1e-5)


@pytest.mark.parametrize("block_elements", [5, 64, 1000, 1 << 20])
@pytest.mark.parametrize("k", [1, 7, 150, 299, 300, 5000])
def test_chunked_equals_dense(k, block_elements):
    """Blocks smaller than k, than a class, than one row; k beyond the references; a class without any."""
    g = torch.Generator().manual_seed(k)
    queries = torch.randn(97, 5, generator=g)
    refs = torch.randn(300, 5, generator=g)
    codes = torch.cat([torch.zeros(180, dtype=torch.long), torch.randint(1, 4, (120,), generator=g)])
    codes = codes[torch.randperm(300, generator=g)]
    nearest, delta = match(queries, refs, codes, 5, k, block_elements=block_elements)  # code 4 has no refs
    nearest_d, delta_d = match_dense(queries, refs, codes, 5, k)
    assert torch.equal(nearest, nearest_d)
    assert torch.allclose(delta, delta_d, atol=1e-5)
    assert (delta[:, 4] == 1).all()


def test_blocks_bound_the_similarity_memory():
    refs, codes = torch.randn(10_000, 4), torch.randint(0, 3, (10_000,))
    for budget in (1, 100, 5000, 1 << 16):
        blocks = _Blocks(refs, codes, 3, budget)
        assert blocks.rows * blocks.width <= max(budget, 1) and blocks.buffer.numel() <= budget


@pytest.mark.parametrize("block_elements", [1, 5, 1 << 20])
def test_vote_is_the_neighbourhoods_majority_and_a_tie_goes_to_the_nearest(block_elements):
    # by similarity, u_a's references have codes 0, 1, 1, 2, 0 and u_b's 2, 1, 1, then 0 twice
    def votes(n):
        return vote(QUERIES[:2], REFS, CODES, 3, n, block_elements=block_elements).tolist()

    assert votes(1) == [0, 2]  # Eq. 4: the nearest reference
    assert votes(2) == [0, 2]  # one vote each: the nearest reference's class wins the tie
    assert votes(3) == [1, 1]  # two of three for class 1 outvote the nearest reference
    # all five vote, two for class 0, two for class 1, one for class 2: u_a's nearest is class 0, which breaks the
    # tie; u_b's nearest is class 2, which has too few votes, so 0 and 1 stay tied and the lowest code wins
    assert votes(99) == [0, 0]


def test_votes_replace_only_the_label_not_w():
    g = torch.Generator().manual_seed(3)
    features_l, features_u = torch.randn(2, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)

    def labelled(**options):
        return reference_pseudo_labels(features_l, labels, features_u, label_mode="multiclass", num_classes=3,
                                       settings=ReferenceSettings(pool_size=2, k=10, **options),
                                       generator=torch.Generator().manual_seed(0))

    plain, one, many = labelled(), labelled(votes=1), labelled(votes=15)
    assert torch.equal(one.target, plain.target) and torch.equal(many.weight, plain.weight)
    assert not torch.equal(many.target, plain.target)


def test_nearest_only_skips_distances():
    nearest, delta = match(QUERIES, REFS, CODES, 3, 2, distances=False)
    assert nearest.tolist() == [0, 2, 0] and delta is None


def test_pool_covers_every_class():
    # classes 1, 2, 3 each live in one image; class 4 nowhere
    presence = torch.zeros(6, 5, dtype=torch.bool)
    presence[:, 0] = True
    presence[0, 1] = presence[2, 2] = presence[4, 3] = True
    for seed in range(20):
        pool = sample_pool(presence, 3, torch.Generator().manual_seed(seed))
        assert sorted(pool.tolist()) == [0, 2, 4]
    grown = sample_pool(presence, 2, torch.Generator().manual_seed(0))  # no 2 images cover classes 1-3
    assert sorted(grown.tolist()) == [0, 2, 4]
    assert sorted(sample_pool(presence[:2], 3).tolist()) == [0, 1]  # fewer images than p: all of them


def test_pool_is_random_when_any_images_cover():
    presence = torch.ones(6, 3, dtype=torch.bool)
    pools = {tuple(sorted(sample_pool(presence, 3, torch.Generator().manual_seed(s)).tolist())) for s in range(30)}
    assert len(pools) > 5 and all(len(p) == 3 for p in pools)


def test_class_presence_both_modes():
    labels = torch.tensor([[[0, 2], [2, 0]], [[1, 1], [1, 1]]])
    assert class_presence(labels, "multiclass", 3).tolist() == [[True, False, True], [False, True, False]]
    multi = torch.zeros(2, 2, 2, 2)
    multi[0, 1, 0, 0] = 1
    assert class_presence(multi, "multilabel", 2).tolist() == [[False, True], [False, False]]


def test_subsample_nearest_and_never_upsamples():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    labels = torch.arange(16).reshape(1, 4, 4)
    feats, labs = subsample(features, labels, 2)
    assert feats.flatten().tolist() == [0.0, 2.0, 8.0, 10.0] and labs.flatten().tolist() == [0, 2, 8, 10]
    assert labs.dtype == torch.long
    same, _ = subsample(features, labels, 64)
    assert same.shape == features.shape
    vol, vol_labels = subsample(torch.randn(2, 3, 8, 8, 8), torch.rand(2, 4, 8, 8, 8), 4)
    assert vol.shape == (2, 3, 4, 4, 4) and vol_labels.shape == (2, 4, 4, 4, 4)


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_end_to_end_copies_labels_of_identical_features(label_mode):
    """Unlabelled features equal to a labelled image's get exactly its labels, with high W."""
    g = torch.Generator().manual_seed(0)
    if label_mode == "multiclass":
        labels = torch.randint(0, 3, (2, 6, 6), generator=g)
        onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    else:
        labels = (torch.rand(2, 2, 6, 6, generator=g) > 0.5).float()
        onehot = torch.cat([labels, 1 - labels], dim=1)
    features = onehot + 0.01 * torch.rand(onehot.shape, generator=g)
    out = reference_pseudo_labels(
        features,
        labels,
        features[:1],
        label_mode=label_mode,
        num_classes=3 - (label_mode == "multilabel"),
        settings=ReferenceSettings(pool_size=2, k=10),
        generator=g,
    )
    assert torch.equal(out.target, labels[:1])
    assert out.weight.shape == (1, 6, 6) and out.weight.min() > 0.5
    plain = reference_pseudo_labels(
        features,
        labels,
        features[:1],
        label_mode=label_mode,
        num_classes=3 - (label_mode == "multilabel"),
        settings=ReferenceSettings(pool_size=2, weighting=False),
        generator=g,
    )
    assert torch.equal(plain.target, labels[:1]) and (plain.weight == 1).all() and plain.delta is None
