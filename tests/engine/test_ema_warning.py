"""A teacher whose EMA looks back over more updates than the run has gets a warning before training."""

import pytest

from semiseg import api
from semiseg.config import load_config


@pytest.mark.parametrize(("decay", "steps", "warned"), [(0.999, 2, True), (0.5, 2, False)])
def test_ema_longer_than_the_run_is_named(tmp_path, capsys, decay, steps, warned):
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, n_unlabelled: 2}", "model.widths=[4, 8]",
        "train.method=mean_teacher", f"method.ema_decay={decay}", f"train.steps={steps}", "train.val_every=2",
        "train.batch_size=2", "train.unlabelled_batch_size=2", "split.labelled=2", "split.val=1", "split.test=1",
        f"output.root={tmp_path}", "output.name=run", "train.threads=1",
    ])
    api.train(cfg, progress=False, evaluate=False)
    err = capsys.readouterr().err
    assert ("warning: net 'teacher' of 'mean_teacher' is an EMA with decay 0.999" in err) == warned
    if warned:
        assert "averages over ~1000 updates" in err and "train.steps is 2" in err
