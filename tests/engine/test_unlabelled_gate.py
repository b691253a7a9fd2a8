"""train.unlabelled_gate in a real (tiny) run: closed, the unlabelled term is zero; open, it acts; logged."""

from __future__ import annotations

import csv

import pytest

from semiseg import api
from semiseg.config import load_config


def train(tmp_path, *overrides: str) -> list[dict[str, str]]:
    cfg = load_config(None, [
        "data.source=phantom", "data.options={n_cases: 6, n_unlabelled: 2}", "model.widths=[4, 8]",
        "train.method=mean_teacher", "train.steps=10", "train.val_every=10", "train.log_every=1",
        "train.batch_size=2", "train.unlabelled_batch_size=2", "split.labelled=2", "split.val=1", "split.test=1",
        "method.rampup=none", f"output.root={tmp_path}", "output.name=run", "train.threads=1", *overrides,
    ])
    api.train(cfg, progress=False, evaluate=False)
    with open(tmp_path / "run" / "log.csv") as f:
        return list(csv.DictReader(f))


def test_closed_gate_zeroes_the_unlabelled_term_and_says_so(tmp_path, capsys) -> None:
    rows = train(tmp_path, "train.unlabelled_gate_threshold=1.0")  # the gate is on by default
    assert all(float(r["unlabelled_gate"]) == 0.0 and float(r["consistency"]) == 0.0 for r in rows)
    measured = [r["step"] for r in rows if r["labelled_dice"]]
    assert measured == ["5", "10"] and 0 <= float(rows[4]["labelled_dice_smoothed"]) <= 1  # every 5 steps
    assert all(float(r["sup"]) > 0 for r in rows)
    note = capsys.readouterr().err
    assert "never switched on" in note and "train.unlabelled_gate_threshold=1" in note


def test_an_opened_gate_leaves_no_note(tmp_path, capsys) -> None:
    train(tmp_path, "train.unlabelled_gate_threshold=0")
    assert "never switched on" not in capsys.readouterr().err


def test_gate_opens_once_the_labelled_dice_is_reached(tmp_path) -> None:
    rows = train(tmp_path, "train.unlabelled_gate=labelled_dice", "train.unlabelled_gate_threshold=0",
                 "train.unlabelled_gate_ramp=0")
    gates = [float(r["unlabelled_gate"]) for r in rows]
    assert gates == [0.0] * 5 + [1.0] * 5  # first measurement after step 5 opens it
    assert float(rows[-1]["consistency"]) > 0


@pytest.mark.parametrize("method", ["supervised", "mean_teacher"])
def test_off_logs_no_gate(tmp_path, method) -> None:
    rows = train(tmp_path, f"train.method={method}", "method={}", "train.unlabelled_gate=off")
    assert "unlabelled_gate" not in rows[0]


def test_supervised_training_has_no_gate_to_log(tmp_path) -> None:
    assert "unlabelled_gate" not in train(tmp_path, "train.method=supervised", "method={}")[0]


def test_bare_yaml_off_means_the_word_and_a_bad_value_names_the_key() -> None:
    from semiseg.errors import ConfigError

    assert load_config(None, ["train.unlabelled_gate=off"]).train.unlabelled_gate == "off"  # YAML reads False
    with pytest.raises(ConfigError, match="unlabelled_gate"):
        load_config(None, ["train.unlabelled_gate=validation"])


def gate_of(method: str, *overrides: str):
    """The gate ``make_gate`` builds for ``method`` (a 2D, 3-class context) under the config ``overrides``."""
    from semiseg.engine.reliability import make_gate
    from semiseg.losses import supervised_loss
    from semiseg.methods import MethodContext, get_method

    ctx = MethodContext(label_mode="multiclass", num_classes=3, spatial_dims=2, in_channels=1,
                        supervised_loss=supervised_loss("ce", "multiclass", False))
    return make_gate(load_config(None, list(overrides)), get_method(method)(ctx))


@pytest.mark.parametrize(("method", "setting", "gated"), [
    ("mean_teacher", "auto", True), ("fixmatch", "auto", False), ("fixmatch_mix", "auto", True),
    ("fixmatch", "labelled_dice", True), ("mean_teacher", "off", False), ("supervised", "labelled_dice", False)])
def test_auto_is_the_methods_own_choice_and_an_explicit_setting_wins(method, setting, gated) -> None:
    assert (gate_of(method, f"train.unlabelled_gate={setting}") is not None) == gated


def record_passes(monkeypatch) -> list[str]:
    """The pass of every ``joint_forward`` call mean_teacher makes from now on, filled in as the run goes."""
    import semiseg.methods.mean_teacher as mean_teacher
    from semiseg.ssl.joint import joint_forward

    passes: list[str] = []

    def recording(forward, labelled, unlabelled, mode):
        passes.append(mode)
        return joint_forward(forward, labelled, unlabelled, mode)

    monkeypatch.setattr(mean_teacher, "joint_forward", recording)
    return passes


def test_separate_until_gate_passes_separately_while_closed_and_jointly_once_open(tmp_path, monkeypatch) -> None:
    passes = record_passes(monkeypatch)
    train(tmp_path, "train.unlabelled_pass=separate_until_gate", "train.unlabelled_gate=labelled_dice",
          "train.unlabelled_gate_threshold=0", "train.unlabelled_gate_ramp=0")
    assert passes == ["separate"] * 5 + ["joint"] * 5  # the gate opens at the first measurement, after step 5


def test_separate_until_gate_without_a_gate_is_the_joint_pass(tmp_path, monkeypatch) -> None:
    passes = record_passes(monkeypatch)
    train(tmp_path, "train.unlabelled_pass=separate_until_gate", "train.unlabelled_gate=off")
    assert passes == ["joint"] * 10


@pytest.mark.parametrize("setting", ["labelled_dice", "labelled_dice_plateau"])
def test_the_configured_smoothing_reaches_either_gate_and_weighs_the_previous_estimate(setting) -> None:
    gate = gate_of("mean_teacher", f"train.unlabelled_gate={setting}", "train.unlabelled_gate_smoothing=0.8")
    gate.observe(5, 0.5)
    gate.observe(10, 1.0)
    assert gate.reliability == pytest.approx(0.8 * 0.5 + 0.2 * 1.0)


def test_smoothing_of_one_is_refused_since_the_estimate_would_never_move() -> None:
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match="unlabelled_gate_smoothing"):
        load_config(None, ["train.unlabelled_gate_smoothing=1"])
