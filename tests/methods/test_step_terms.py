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
    assert first.unlabelled == moved, f"{name}: declares {sorted(first.unlabelled)}, the batch moves {sorted(moved)}"
    assert first.unlabelled or not available_methods()[name].uses_unlabelled
