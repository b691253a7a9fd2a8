"""docs/adding-a-method.md's example runs as written: it registers, trains, and passes the method contract."""

import re
from pathlib import Path

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.networks import build_nets, trainable_parameters
from semiseg.losses import supervised_loss
from semiseg.methods import Batch, MethodContext, Progress, registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


@pytest.fixture
def example_method():
    """Execute the page's code block, then take the method out of the registry again."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page should hold exactly one Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 — our own documentation
    try:
        yield registry.get_method("entropy_min")
    finally:
        registry._REGISTRY.pop("entropy_min", None)


@pytest.mark.parametrize("dims", [2, 3])
def test_example_losses_reach_the_network(example_method, dims):
    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=dims, in_channels=1,
                        supervised_loss=supervised_loss("dice_ce", "multiclass", False))
    method = example_method(ctx, {"weight": 0.5, "rampup_fraction": 0.0})
    cfg = load_config(None, [f"model.dim={dims}", "model.widths=[4, 8]"])
    nets = build_nets(method, cfg, ctx, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, *([8] * dims), generator=g)
    labelled = Batch(image, torch.randint(0, 3, (2, *([8] * dims)), generator=g))
    out = method.training_step(nets, labelled, Batch(image.flip(-1)), Progress(5, 10))
    assert set(out.losses) == {"sup", "entropy"} and out.logs == {"entropy_weight": 0.5}
    params = trainable_parameters(nets, method.networks())
    grads = torch.autograd.grad(out.losses["entropy"], params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_example_trains_with_and_without_unlabelled_batches(example_method, tmp_path):
    from semiseg import api

    for unlabelled in (2, 0):
        cfg = load_config(None, [
            "data.source=phantom", "data.options={n_cases: 6, n_unlabelled: 2}", "model.widths=[4, 8]",
            "train.method=entropy_min", "train.steps=2", "train.val_every=2", "train.batch_size=2",
            f"train.unlabelled_batch_size={unlabelled}", "split.labelled=2", "split.val=1", "split.test=1",
            f"output.root={tmp_path}", f"output.name=u{unlabelled}", "train.threads=1",
        ])
        result = api.train(cfg, progress=False, evaluate=False)
        log = (result.run_dir / "log.csv").read_text()
        assert ("entropy" in log) == (unlabelled > 0)
