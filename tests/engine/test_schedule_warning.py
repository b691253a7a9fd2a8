"""A warm-up as long as the run is announced before training; half the run is not (it measured better)."""

from semiseg.config import load_config
from semiseg.engine.checks import print_schedule_warnings


def test_warm_up_of_the_whole_run_warns_and_half_of_it_does_not(capsys) -> None:
    print_schedule_warnings(load_config(None, ["train.steps=50", "train.warmup_steps=50"]).train)
    err = capsys.readouterr().err
    assert "train.warmup_steps=50" in err and "never reaches" in err and "e.g. 25" in err
    print_schedule_warnings(load_config(None, ["train.steps=100", "train.warmup_steps=50"]).train)
    assert capsys.readouterr().err == ""
