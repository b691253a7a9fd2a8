"""The progress bar shows no validation Dice before the first validation (not 'nan')."""

from semiseg.config import load_config
from semiseg.engine import progress
from semiseg.engine.run import Run


def test_progress_bar_shows_a_dash_before_the_first_validation(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(progress.tqdm, "set_postfix", lambda bar, **fields: shown.append(fields["val_dice"]))
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, dim: 2, seed: 0}", "split.labelled=2", "split.val=1",
        "split.test=1", "model.widths=[4, 8]", "train.steps=2", "train.val_every=2", "train.batch_size=2",
        "train.warmup_steps=1", f"output.root={tmp_path}", "output.name=run",
    ])
    Run.build(cfg, progress=True).fit()
    assert shown[0] == "–" and shown[1] != "–" and "nan" not in shown
