import math

import pytest

from semiseg.ssl.ramps import RAMPS, cosine_rampup, gaussian_rampup, linear_rampup, rampup


def test_linear_values():
    assert linear_rampup(0, 100) == 0.0
    assert linear_rampup(25, 100) == 0.25
    assert linear_rampup(100, 100) == 1.0
    assert linear_rampup(500, 100) == 1.0


def test_gaussian_matches_ucmt_formula():
    # λ(t) = λ_m exp[-5 (1 - t/t_m)^2]; t = 30, t_m = 100 -> exp(-5 * 0.49)
    assert gaussian_rampup(30, 100) == pytest.approx(math.exp(-2.45))
    assert gaussian_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(100, 100) == 1.0


def test_cosine():
    assert cosine_rampup(50, 100) == pytest.approx(0.5)
    assert cosine_rampup(0, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("kind", sorted(RAMPS))
def test_every_ramp_is_monotone_and_ends_at_one(kind):
    values = [rampup(kind, t, 50) for t in range(0, 60)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 1.0
    assert rampup(kind, 3, 0) == 1.0  # zero-length ramp


def test_unknown_ramp_is_an_error():
    with pytest.raises(ValueError, match="unknown ramp"):
        rampup("quadratic", 1, 2)
