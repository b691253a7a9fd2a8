"""FixMatch with CutMix-ed strong views: what the network sees and the loss, against a pixel-by-pixel reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, get_method

K, TAU = 3, 0.6


def _ctx(label_mode):
    return MethodContext(label_mode=label_mode, num_classes=K, spatial_dims=2, in_channels=1,
                         supervised_loss=supervised_loss("ce", label_mode, False))


def _pixelwise_net() -> nn.Conv2d:
    """Logits (2x, 0, −2x): confident class 0 for large x, class 2 for very negative x, unsure near 0."""
    net = nn.Conv2d(1, K, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([2.0, 0.0, -2.0]).reshape(K, 1, 1, 1))
        net.bias.zero_()
    return net


def _reference_loss(net, images, box, label_mode):
    """Mean loss over kept pixels, each read from its source image: i − 1 inside image i's box, else i."""
    total, count = 0.0, 0
    n, _, h, w = images.shape
    for i in range(n):
        for r in range(h):
            for c in range(w):
                source = (i - 1) % n if box[i, r, c] else i
                logits = net(images[source:source + 1, :, r:r + 1, c:c + 1]).flatten()
                if label_mode == "multiclass":
                    p = logits.softmax(0)
                    if p.max() > TAU:
                        total += F.cross_entropy(logits[None], p.argmax()[None]).item()
                        count += 1
                else:
                    for p, z in zip(logits.sigmoid(), logits, strict=True):
                        if abs(p - 0.5) > abs(0.5 - TAU):
                            total += F.binary_cross_entropy_with_logits(z, (p > 0.5).float()).item()
                            count += 1
    return total / count


@pytest.mark.parametrize("label_mode", ["multiclass", "multilabel"])
def test_mixed_strong_views_train_on_mixed_pseudo_labels(label_mode, monkeypatch):
    import semiseg.methods.fixmatch_mix as module

    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 1, 4, 4, generator=g)
    box = torch.zeros(3, 4, 4, dtype=torch.bool)
    box[:, 1:3, 0:3] = True
    box[2] = False  # the third image keeps its own content
    monkeypatch.setattr(module, "box_masks", lambda *a, **k: box)
    net = _pixelwise_net()
    seen = []

    def model(x):
        seen.append(x)
        return net(x)

    label = torch.zeros(1, 4, 4, dtype=torch.long) if label_mode == "multiclass" else torch.zeros(1, K, 4, 4)
    # no RandAugment operation, no remap and no CutOut: the strong view is the weak one, so only the mix acts
    method = get_method("fixmatch_mix")(_ctx(label_mode), {"n_ops": 0, "strong_remap": 0, "cutout": False,
                                                            "tau": TAU})
    out = method.training_step({"model": model}, Batch(torch.zeros(1, 1, 4, 4), label), Batch(images), Progress(0, 9))

    expected_images = torch.where(box.unsqueeze(1), images.roll(1, dims=0), images)
    assert torch.equal(seen[-1][-3:], expected_images)  # the training pass (its own, or after the labelled rows)
    with torch.no_grad():
        assert out.losses["unsup"].item() == pytest.approx(_reference_loss(net, images, box, label_mode), rel=1e-5)
    assert out.logs["mixed_fraction"] == pytest.approx(box.float().mean().item())
    assert out.targets["pseudo"].shape[0] == 3  # what it teaches, as drawn (before the mix)


def test_pseudo_labels_come_from_the_unmixed_weak_view():
    """The weak pass sees the unlabelled images as drawn; the mix happens to its labels, not before it."""
    net = _pixelwise_net()
    seen = []
    method = get_method("fixmatch_mix")(_ctx("multiclass"), {"tau": TAU})
    images = torch.randn(2, 1, 8, 8)
    lab = Batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    out = method.training_step({"model": lambda x: seen.append(x) or net(x)}, lab, Batch(images), Progress(0, 9))
    assert torch.equal(seen[0], images) and sum(x.shape[0] for x in seen[1:]) == 4  # then labelled + mixed
    assert torch.equal(out.targets["pseudo"], net(images).argmax(1))
    assert torch.isfinite(out.losses["unsup"])
