"""The contract's explicit term split: ``StepOut.unlabelled`` names exactly the terms that read unlabelled data."""

from __future__ import annotations

import copy

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, StepOut, available_methods

K = 3
# Options that make every unlabelled term non-zero on an untrained net (its confidence is far below τ = 0.95).
CONFIDENT = {"unimatch": {"tau": 0.01}, "ad_mt": {"tau": 0.01}}
# Copy-paste methods compute their labelled terms on images that mix labelled and unlabelled pixels: there the
# unlabelled batch moves the labelled terms too, as context, without making them unlabelled terms.
MIXED_INTO_LABELLED = {"bcp"}


def test_an_unlabelled_name_that_is_not_a_loss_term_is_an_error() -> None:
    with pytest.raises(ValueError, match="consistency"):
        StepOut(losses={"sup": torch.tensor(1.0)}, unlabelled=frozenset({"consistency"}))


def _steps(name: str, unlabelled_images: list[torch.Tensor]) -> list[StepOut]:
    """The first update of one step per unlabelled batch, from the same nets, labelled batch and random state."""
    cfg = load_config(None, ["model.widths=[4, 8]", f"train.method={name}"])
    ctx = MethodContext(label_mode="multiclass", num_classes=K, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False), unlabelled_pass="separate")
    cls = available_methods()[name]
    options = {"unlabelled_pass": "separate"} if "unlabelled_pass" in cls.Config.model_fields else {}
    options |= CONFIDENT.get(name, {})
    torch.manual_seed(0)
    nets = build_nets(cls(ctx, options), cfg, ctx, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    lab = Batch(torch.randn(2, 1, 16, 16, generator=g), torch.randint(0, K, (2, 16, 16), generator=g), ["a", "b"])
    outs = []
    for image in unlabelled_images:
        method = cls(ctx, options)
        torch.manual_seed(2)
        unl = Batch(image, None, ["c", "d"]) if method.uses_unlabelled else None
        outs.append(method.training_step(copy.deepcopy(nets), lab, unl, Progress(9, 10)))  # late: past any stage
    return outs


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_the_declared_unlabelled_terms_are_the_ones_the_unlabelled_batch_moves(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    first, second = _steps(name, [torch.randn(2, 1, 16, 16, generator=g) for _ in range(2)])
    moved = {k for k in first.losses if not torch.allclose(first.losses[k], second.losses[k])}
    message = f"{name}: declares {sorted(first.unlabelled)}, the batch moves {sorted(moved)}"
    if name in MIXED_INTO_LABELLED:
        assert first.unlabelled <= moved and moved - first.unlabelled <= {"sup"}, message
    else:
        assert first.unlabelled == moved, message
    assert first.unlabelled or not available_methods()[name].uses_unlabelled
