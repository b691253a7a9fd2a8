"""The report module has no import side effects: figures get their own Agg canvas where they are drawn."""

import subprocess
import sys


def test_importing_the_report_selects_no_matplotlib_backend():
    code = "import sys, semiseg.eval.report; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_overlay_names_classes_checkpoint_and_slice(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.figure import Figure

    from semiseg.eval.report import overlay_figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))
    label = np.zeros((8, 8, 6), np.int64)
    label[2:5, 2:5, 3] = 2
    example = {"case_id": "c1", "image": np.zeros((1, 8, 8, 6)), "gt": label, "pred": label, "dice": 1.0,
               "checkpoint": "last"}
    overlay_figure([example], "multiclass", tmp_path / "o.png", ["background", "liver", "tumour"])
    fig = drawn[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["liver", "tumour"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "c1: image, slice 3" and "last checkpoint" in titles[2]
