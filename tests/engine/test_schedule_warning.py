"""A warm-up that fills half the run or more is announced before training."""

from semiseg.config import load_config
from semiseg.engine.run import print_schedule_warnings


def test_warm_up_of_half_the_run_warns_and_a_short_one_does_not(capsys) -> None:
    print_schedule_warnings(load_config(None, ["train.steps=100", "train.warmup_steps=50"]).train)
    err = capsys.readouterr().err
    assert "train.warmup_steps=50" in err and "e.g. 10" in err
    print_schedule_warnings(load_config(None, ["train.steps=101", "train.warmup_steps=50"]).train)
    assert capsys.readouterr().err == ""
