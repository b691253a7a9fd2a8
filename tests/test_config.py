import pytest

from semiseg.config import Config, config_to_yaml, load_config, parse_override
from semiseg.errors import ConfigError


def test_defaults_run_the_demo():
    cfg = Config()
    assert cfg.data.source == "demo_brain" and cfg.train.method == "supervised" and cfg.model.dim == 2


def test_yaml_then_overrides(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  steps: 50\n  lr: 0.1\nmodel:\n  widths: [4, 8]\n")
    cfg = load_config(file, ["train.steps=7", "method.alpha=0.5", "model.dim=3"])
    assert cfg.train.steps == 7 and cfg.train.lr == 0.1 and cfg.model.widths == [4, 8]
    assert cfg.method == {"alpha": 0.5} and cfg.model.dim == 3


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'.*'train.steps'"):
        load_config(None, ["train.stpes=3"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=-1"])


def test_patch_size_must_match_dim():
    with pytest.raises(ConfigError, match="patch_size"):
        load_config(None, ["model.dim=3", "train.patch_size=[32, 32]"])


def test_labelled_slices_are_a_2d_budget():
    with pytest.raises(ConfigError, match="split.labelled_slices"):
        load_config(None, ["model.dim=3", "split.labelled_slices=3"])
    with pytest.raises(ConfigError, match="split.labelled_slices"):
        load_config(None, ["split.labelled_slices=0"])
    cfg = load_config(None, ["split.labelled=1", "split.labelled_slices=3"])
    assert cfg.split.labelled_budget() == "1 (3 slices each)" and Config().split.labelled_budget() == "2"


def test_override_parsing_and_errors(tmp_path):
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.steps")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.steps=11"])
    file = tmp_path / "r.yaml"
    file.write_text(config_to_yaml(cfg))
    assert load_config(file) == cfg


def test_auto_steps_follow_the_method_in_updates():
    from semiseg.methods.base import AUTO_UPDATES, AUTO_UPDATES_SUPERVISED

    assert AUTO_UPDATES > AUTO_UPDATES_SUPERVISED  # the rule: unlabelled terms need the longer run
    lengths = {m: load_config(None, [f"train.method={m}"]).train for m in ("supervised", "fixmatch", "ucmt")}
    assert lengths["supervised"].steps == AUTO_UPDATES_SUPERVISED
    assert lengths["fixmatch"].steps == AUTO_UPDATES
    assert lengths["ucmt"].steps == AUTO_UPDATES // 2  # two updates per step (UCMT's footnote 3)
    assert all(train.steps_were_auto for train in lengths.values())


def test_a_set_length_is_kept_and_saved_configs_hold_numbers():
    set_by_user = load_config(None, ["train.method=fixmatch", "train.steps=300"]).train
    assert set_by_user.steps == 300 and not set_by_user.steps_were_auto
    auto = load_config(None, ["train.method=must"])
    assert "steps: 2000" in config_to_yaml(auto)  # a run folder's config.yaml resumes at the same length
    assert load_config(None, ["train.steps=auto", "train.method=supervised"]).train.steps == 1000


@pytest.mark.parametrize("value", ["0", "lots", "2.5", "true"])
def test_a_bad_length_is_one_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"config key 'train.steps': expected a positive whole number of steps, "
                                          r"or auto"):
        load_config(None, [f"train.steps={value}"])


def test_auto_steps_with_an_unknown_method_names_the_method():
    with pytest.raises(ConfigError, match="unknown method 'fixmach'.*'fixmatch'"):
        load_config(None, ["train.method=fixmach"])
