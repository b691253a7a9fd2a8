"""Weight helpers shared by the method tests that check which network a step changed."""

import torch


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same parameters (BN statistics aside: train-mode passes move them)."""
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@torch.no_grad()
def nudge(net: torch.nn.Module) -> None:
    """Move every parameter, so a copy that stays frozen can be told apart from one that follows."""
    for p in net.parameters():
        p.add_(0.1)
