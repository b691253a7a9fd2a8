"""docs/adding-a-method.md's example runs as written: as one saved file or as a plugin package, it is listed
(without torch), trains, and passes the method contract."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import semiseg
from semiseg.config import load_config
from semiseg.engine.networks import build_nets, trainable_parameters
from semiseg.losses import supervised_loss
from semiseg.method_catalog import ENTRY_POINT_GROUP, method_catalog
from semiseg.methods import Batch, MethodContext, Progress, registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
METHODS_DIR = Path(semiseg.__file__).parent / "methods"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page should hold exactly one Python example"
    return blocks[0]


@pytest.fixture
def example_method():
    """Execute the page's code block and register its class, then take it out of the registry again."""
    namespace: dict = {}
    exec(compile(_example(), str(DOC), "exec"), namespace)  # noqa: S102 — our own documentation
    try:
        yield registry.register(namespace["EntropyMin"])
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
    assert out.unlabelled == {"entropy"}
    params = trainable_parameters(nets, method.networks())
    grads = torch.autograd.grad(out.losses["entropy"], params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _train(tmp_path: Path, method: str, unlabelled: int = 2) -> str:
    from semiseg import api

    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, n_unlabelled: 2}", "model.widths=[4, 8]",
        f"train.method={method}", "train.steps=2", "train.val_every=2", "train.batch_size=2",
        f"train.unlabelled_batch_size={unlabelled}", "split.labelled=2", "split.val=1", "split.test=1",
        f"output.root={tmp_path}", f"output.name={method}-u{unlabelled}", "train.threads=1",
    ])
    return (api.train(cfg, progress=False, evaluate=False).run_dir / "log.csv").read_text()


def test_example_trains_with_and_without_unlabelled_batches(example_method, tmp_path):
    for unlabelled in (2, 0):
        assert ("entropy" in _train(tmp_path, "entropy_min", unlabelled)) == (unlabelled > 0)


def _listed_without_torch(extra_path: Path | None = None) -> str:
    """``semiseg methods`` in a fresh interpreter; fails if listing imported torch."""
    code = ("import sys; from semiseg.cli import main\ntry:\n    main(['methods'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'listing methods imported torch'")
    paths = [str(Path(semiseg.__file__).parents[1]), *([str(extra_path)] if extra_path else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _forget(name: str, module: str) -> None:
    registry._REGISTRY.pop(name, None)
    sys.modules.pop(module, None)


def test_the_example_saved_alone_as_one_file_is_listed_and_trains(tmp_path):
    path = METHODS_DIR / "entropy_min.py"
    if path.exists():
        pytest.skip(f"{path} exists already")
    path.write_text(_example())
    try:
        assert "entropy_min" in method_catalog()
        assert re.search(r"^entropy_min +Entropy minimisation", _listed_without_torch(), flags=re.M)
        assert "entropy" in _train(tmp_path, "entropy_min")
    finally:
        path.unlink()
        _forget("entropy_min", "semiseg.methods.entropy_min")
    assert "entropy_min" not in method_catalog()


def _install_plugin(site: Path) -> None:
    """A tiny installed distribution: the example as package ``entropy_plugin``, one entry point (no pip needed)."""
    package = site / "entropy_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(_example().replace('name = "entropy_min"', 'name = "entropy_plugin"'))
    info = site / "entropy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: entropy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        entropy_plugin = entropy_plugin:EntropyMin
        """))


def test_a_method_of_an_installed_package_registers_through_its_entry_point(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    assert "entropy_plugin" not in method_catalog()
    monkeypatch.syspath_prepend(str(site))
    try:
        entry = method_catalog()["entropy_plugin"]
        assert entry.is_plugin and entry.provider == "entropy-plugin" and entry.module == "entropy_plugin"
        assert "entropy_plugin" not in sys.modules  # listed from its source, not imported
        assert re.search(r"^entropy_plugin +Entropy minimisation.*\[entropy-plugin\]$", _listed_without_torch(site),
                         flags=re.M)
        assert "entropy" in _train(tmp_path, "entropy_plugin")
    finally:
        _forget("entropy_plugin", "entropy_plugin")


def test_a_plugin_named_unlike_its_class_or_clashing_with_a_builtin_is_one_clear_error(tmp_path, monkeypatch):
    from semiseg.errors import SemisegError

    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    entry_points = site / "entropy_plugin-0.1.dist-info" / "entry_points.txt"
    monkeypatch.syspath_prepend(str(site))
    entry_points.write_text(f"[{ENTRY_POINT_GROUP}]\nsomething_else = entropy_plugin:EntropyMin\n")
    with pytest.raises(SemisegError, match="the class is named 'entropy_plugin'; name the entry point as the method"):
        method_catalog()
    (site / "entropy_plugin" / "__init__.py").write_text(_example().replace('"entropy_min"', '"fixmatch"'))
    entry_points.write_text(f"[{ENTRY_POINT_GROUP}]\nfixmatch = entropy_plugin:EntropyMin\n")
    with pytest.raises(SemisegError, match="entropy-plugin registers method 'fixmatch'.*built-in method's name"):
        method_catalog()
