"""The learning-rate schedule: warm-up then decay, and the restarts a phased method asks for."""

import pytest
import torch

from semiseg.config import load_config
from semiseg.engine.optim import make_scheduler


def _factors(restarts=(), schedule="poly", steps=100, warmup=5):
    cfg = load_config(None, [f"train.steps={steps}", f"train.warmup_steps={warmup}", f"train.schedule={schedule}"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = make_scheduler(cfg, optimizer, restarts).lr_lambdas[0]
    return [factor(step) for step in range(steps)]


def test_warmup_then_poly_by_hand():
    f = _factors()
    assert f[0] == pytest.approx(1 / 5) and f[4] == pytest.approx(1.0)
    assert f[5] == pytest.approx(1.0) and f[50] == pytest.approx((1 - 45 / 95) ** 0.9)


def test_each_segment_gets_the_whole_schedule():
    f = _factors(restarts=[40, 70])
    assert f[:40] == _factors(steps=40)  # the first segment is a 40-step run
    assert f[40:70] == _factors(steps=30)  # then warm-up and decay again
    assert f[70:] == _factors(steps=30)
    assert f[39] < 0.05 and f[40] == pytest.approx(1 / 5) and f[45] == pytest.approx(1.0)


def test_restarts_outside_the_run_change_nothing():
    assert _factors(restarts=[0, 100, 250]) == _factors()
    assert _factors(restarts=[60], schedule="constant")[60:66] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]


def test_the_dry_run_says_where_the_schedule_starts_again():
    from semiseg.engine.plan import dry_run

    base = ["data.source=phantom", "model.widths=[4, 8]", "train.method=dual_uncertainty", "train.steps=300"]
    assert "started again at steps 100, 200;" in dry_run(None, [*base, "method.stage_schedule=per_stage"])
    assert "started again" not in dry_run(None, base)
