"""One confidence mask, one logits → probabilities, one one-hot: every method shares them."""

from __future__ import annotations

import torch

from semiseg.losses import one_hot, probabilities
from semiseg.methods.fixmatch import weak_targets
from semiseg.ssl.pseudo_labels import confidence_mask


def test_a_pixel_exactly_at_tau_is_kept_as_fixmatch_writes_it() -> None:
    """Sohn et al. 2020, Eq. 4: 1(max(q_b) ≥ τ); 0.75 and 0.25 are exact in binary, so the tie is a real one."""
    probs = torch.tensor([0.75, 0.25]).reshape(1, 2, 1, 1)
    assert confidence_mask(probs, "multiclass", 0.75).item()
    _, mask = weak_targets(probs, "multiclass", 0.75)
    assert mask.item() == 1.0
    binary = torch.tensor([0.75, 0.25, 0.625]).reshape(1, 3, 1, 1)  # τ = 0.75: |p − 0.5| ≥ 0.25 on two channels
    assert confidence_mask(binary, "multilabel", 0.75, per_channel=True).flatten().tolist() == [True, True, False]
    assert not confidence_mask(binary, "multilabel", 0.75).item()  # pixel mask: every channel confident
    assert weak_targets(binary, "multilabel", 0.75)[1].flatten().tolist() == [1.0, 1.0, 0.0]


def test_probabilities_are_float32_in_both_label_modes_and_one_hot_is_channels_first() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).T.reshape(1, 2, 2, 1).to(torch.bfloat16)
    multiclass = probabilities(logits, "multiclass")
    assert multiclass.dtype == torch.float32 and torch.allclose(multiclass.sum(1), torch.ones(1, 2, 1))
    assert torch.allclose(probabilities(logits, "multilabel"), torch.sigmoid(logits.float()))
    assert one_hot(torch.tensor([[2, 0]]), 3)[0].tolist() == [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
