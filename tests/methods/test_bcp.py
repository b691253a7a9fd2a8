"""BCP: the copy-paste box, the largest-component filter, and which pixels learn which labels at which weight."""

import torch

from semiseg.methods import Batch, MethodContext, Progress
from semiseg.methods.bcp import BCP, halves, largest_components, paste_box

K = 3


def test_the_box_is_two_thirds_of_each_side_inside_the_image_and_shared_by_the_batch():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        box = paste_box(3, (9, 12), 2 / 3, generator=g)
        assert box.shape == (3, 9, 12) and (box == box[0]).all()
        rows, cols = box[0].any(1).nonzero().flatten(), box[0].any(0).nonzero().flatten()
        assert len(rows) == 6 and len(cols) == 8 and int(box[0].sum()) == 48
        assert rows.max() - rows.min() == 5 and cols.max() - cols.min() == 7  # one contiguous box
    assert paste_box(1, (6, 6, 6), 2 / 3, generator=g).sum() == 4 * 4 * 4


def test_largest_component_keeps_each_class_largest_piece_with_diagonal_connectivity():
    labels = torch.tensor([[[1, 1, 0, 0, 1],
                            [0, 1, 0, 0, 0],
                            [0, 0, 1, 0, 2],
                            [2, 0, 0, 0, 2]]])
    # class 1: {(0,0),(0,1),(1,1),(2,2)} is one piece through the diagonal (1,1)-(2,2); (0,4) is cut
    # class 2: (3,0) alone against {(2,4),(3,4)}; the single pixel goes
    expected = torch.tensor([[[1, 1, 0, 0, 0],
                              [0, 1, 0, 0, 0],
                              [0, 0, 1, 0, 2],
                              [0, 0, 0, 0, 2]]])
    assert torch.equal(largest_components(labels, "multiclass"), expected)
    multilabel = torch.stack([labels == 1, labels == 2], dim=1).float()
    assert torch.equal(largest_components(multilabel, "multilabel"),
                       torch.stack([expected == 1, expected == 2], dim=1).float())


def test_halves_split_like_the_code_and_one_image_pairs_with_itself():
    assert halves(4) == (slice(0, 2), slice(2, 4))
    assert halves(3) == (slice(0, 1), slice(1, 2))
    assert halves(1) == (slice(0, 1), slice(0, 1))


class _Recorder(torch.nn.Module):
    """A 'network' whose logits copy the image into K channels and which records what it saw."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.scale * x.repeat(1, K, *([1] * (x.ndim - 2)))


class _Teacher(torch.nn.Module):
    """Logits whose argmax is class 2 everywhere."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], K, *x.shape[2:])
        logits[:, 2] = 5.0
        return logits


def _method(calls, options=None):
    def loss(logits, target, mask=None):
        calls.append((target.clone(), mask.clone()))
        return mask.float().sum()  # so each term is 0.5 × its region's area × its weight

    ctx = MethodContext(label_mode="multiclass", num_classes=K, spatial_dims=2, in_channels=1, supervised_loss=loss)
    return BCP(ctx, options or {})


def _batches():
    xl = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 6, 6).clone()
    xu = torch.tensor([10.0, 20.0]).view(2, 1, 1, 1).expand(2, 1, 6, 6).clone()
    yl = torch.stack([torch.zeros(6, 6, dtype=torch.long), torch.ones(6, 6, dtype=torch.long)])
    return Batch(xl, yl, ["a", "b"]), Batch(xu, None, ["c", "d"])


def test_self_training_pastes_both_ways_and_weights_pseudo_labelled_pixels_by_u_weight():
    calls = []
    method = _method(calls, {"u_weight": 0.5, "largest_component": False})
    student = _Recorder()
    labelled, unlabelled = _batches()
    out = method.training_step({"student": student, "teacher": _Teacher()}, labelled, unlabelled, Progress(5, 10))
    mixed_in, mixed_out = (x[0, 0] for x in student.seen)
    inside = mixed_in == 1.0  # labelled image a pasted into unlabelled image a
    assert int(inside.sum()) == 16 and set(mixed_in[~inside].tolist()) == {10.0}
    assert torch.equal(mixed_out == 20.0, inside) and set(mixed_out[~inside].tolist()) == {2.0}  # the same box
    (t1, m1), (t2, m2), (t3, m3), (t4, m4) = calls
    assert (t1 == 0).all() and torch.equal(m1[0], inside)  # labelled a's label on its pasted box
    assert (t2 == 1).all() and torch.equal(m2[0], ~inside)  # labelled b's label on its background
    assert (t3 == 2).all() and torch.equal(m3[0], ~inside)  # teacher labels on unlabelled a's background
    assert (t4 == 2).all() and torch.equal(m4[0], inside)  # teacher labels on unlabelled b's pasted box
    assert float(out.losses["sup"]) == 0.5 * 16 + 0.5 * 20
    assert float(out.losses["unsup"]) == 0.5 * (0.5 * 20 + 0.5 * 16)
    assert set(out.losses) == {"sup", "unsup"} and out.targets["teacher"].shape == (2, 6, 6)


def test_pretraining_pastes_labelled_pairs_only_and_returns_a_labelled_term():
    calls = []
    method = _method(calls, {"pretrain_fraction": 0.25})
    student = _Recorder()
    labelled, unlabelled = _batches()
    out = method.training_step({"student": student, "teacher": _Teacher()}, labelled, unlabelled, Progress(2, 10))
    (mixed,) = student.seen
    inside = mixed[0, 0] == 2.0  # labelled b in labelled a
    assert int(inside.sum()) == 16 and set(mixed[0, 0][~inside].tolist()) == {1.0}
    (t1, m1), (t2, m2) = calls
    assert (t1 == 0).all() and torch.equal(m1[0], ~inside) and (t2 == 1).all() and torch.equal(m2[0], inside)
    assert set(out.losses) == {"sup"} and float(out.losses["sup"]) == 0.5 * 20 + 0.5 * 16
    assert method.pretraining(Progress(249, 1000)) and not method.pretraining(Progress(250, 1000))
