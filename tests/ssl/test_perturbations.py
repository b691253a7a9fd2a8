from collections import Counter
from typing import get_args

import pytest
import torch

from semiseg.ssl.perturbations import (
    PERTURBATIONS,
    PerturbationName,
    StochasticPerturbation,
    feature_dropout,
    fixed_hook,
    gaussian_noise,
    perturbation,
    spatial_dropout,
    uniform_noise,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _features(dims: int, b: int = 2, c: int = 4, size: int = 8) -> torch.Tensor:
    return torch.rand((b, c, *([size] * dims)), generator=_gen(1)) + 0.1


def test_registry_matches_the_config_names():
    assert set(PERTURBATIONS) == set(get_args(PerturbationName))
    with pytest.raises(ValueError, match="unknown feature perturbation 'blur'"):
        perturbation("blur")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_shape_dtype_kept_values_changed_and_seeded(name, dims):
    x = _features(dims)
    fn = PERTURBATIONS[name]
    y = fn(x, generator=_gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert torch.equal(y, fn(x, generator=_gen()))
    assert fn(x).shape == x.shape  # global RNG path


def test_uniform_noise_is_relative_and_bounded():
    x = _features(2)
    rel = (uniform_noise(x, magnitude=0.3, generator=_gen()) - x) / x
    assert rel.abs().max() <= 0.3 + 1e-6 and rel.abs().max() > 0.25
    assert abs(float(rel.mean())) < 0.02  # U(−r, r) is centred


def test_gaussian_noise_scales_with_feature_spread_and_moves_zeros():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :8] = torch.randn(2, 3, 8, 16, generator=_gen(2))
    noise = gaussian_noise(x, std=0.3, generator=_gen()) - x
    spread = x.flatten(1).std(dim=1, unbiased=False)
    ratio = noise.flatten(1).std(dim=1) / spread
    assert torch.allclose(ratio, torch.full_like(ratio, 0.3), atol=0.03)
    assert noise[:, :, 8:].abs().sum() > 0  # additive: zero activations move too
    assert torch.allclose(gaussian_noise(10 * x, generator=_gen()), 10 * gaussian_noise(x, generator=_gen()),
                          atol=1e-5)


def test_feature_dropout_drops_the_most_active_region_only():
    x = torch.ones(1, 2, 4, 4)
    x[0, :, 0, 0] = 10.0  # the peak: above 0.9·max, always dropped
    x[0, :, 1, 1] = 8.5  # 0.85·max: dropped for some γ, kept for others
    outs = [feature_dropout(x, generator=_gen(s)) for s in range(40)]
    assert all(o[0, :, 0, 0].eq(0).all() for o in outs)
    assert all(torch.equal(o[0, :, 2:], x[0, :, 2:]) for o in outs)  # ≤ 0.7·max: always kept
    kept = {bool(o[0, 0, 1, 1] != 0) for o in outs}
    assert kept == {True, False}


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_dropout_drops_whole_channels(dims):
    x = _features(dims, b=8, c=16)
    y = spatial_dropout(x, p=0.5, generator=_gen())
    dropped = y.flatten(2).eq(0).all(dim=2)
    kept = torch.isclose(y, 2 * x).flatten(2).all(dim=2)
    assert torch.all(dropped ^ kept)
    assert 0.35 < float(dropped.float().mean()) < 0.65
    with pytest.raises(ValueError, match="probability"):
        spatial_dropout(x, p=1.0)


def test_module_draws_each_of_its_four_functions_uniformly():
    spm = StochasticPerturbation(generator=_gen())
    counts = Counter(spm.names[spm.draw()] for _ in range(4000))
    assert set(counts) == set(get_args(PerturbationName))
    assert all(850 < n < 1150 for n in counts.values()), counts


def test_module_applies_the_function_it_draws():
    x = _features(3)
    spm, twin = StochasticPerturbation(generator=_gen(5)), _gen(5)
    for _ in range(12):  # twin replays the module's draws: first the choice, then the function's noise
        choice = int(torch.randint(4, (1,), generator=twin))
        expected = PERTURBATIONS[spm.names[choice]](x, generator=twin)
        assert torch.equal(spm(0, x, "skip"), expected)


def test_module_with_a_subset_and_bad_names():
    spm = StochasticPerturbation(["spatial_dropout"], generator=_gen())
    assert {spm.draw() for _ in range(20)} == {0}
    with pytest.raises(ValueError, match="at least one"):
        StochasticPerturbation([])
    with pytest.raises(ValueError, match="unknown feature perturbation"):
        StochasticPerturbation(["noise"])


def test_fixed_hook_perturbs_only_the_given_roles():
    x = _features(2)
    hook = fixed_hook("uniform_noise", roles=("skip", "bottleneck"))
    assert torch.equal(hook(1, x, "up"), x)
    assert not torch.equal(hook(1, x, "skip"), x) and not torch.equal(hook(2, x, "bottleneck"), x)
    assert torch.equal(fixed_hook("spatial_dropout", roles=("bottleneck",))(0, x, "skip"), x)
