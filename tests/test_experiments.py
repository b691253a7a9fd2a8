"""Every experiment file resolves to exactly the runs the old shell scripts trained."""

from pathlib import Path

import pytest

from semiseg.errors import ConfigError
from semiseg.experiment.plan import run_configs, with_job_threads
from semiseg.experiment.spec import load_experiment, parse_entry, split_entries

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _protocol(widths: str = "[8,16,32,64]") -> list[str]:
    """benchmarks/protocol.sh's --set list (its --jobs 2 is the JOBS below)."""
    return ["split.labelled=1", f"model.widths={widths}", "train.steps=600", "train.val_every=200",
            "train.batch_size=4", "train.unlabelled_batch_size=4",
            "train.unlabelled_gate=off", "train.unlabelled_pass=joint"]  # the defaults then, written out


REF = "reference_size=32:k_fraction=0.57"
REFERENCE = (f"supervised,pl080=fixmatch:strong_augment=false:tau=0.8,pl095=fixmatch:strong_augment=false:tau=0.95,"
             f"nearest=rpg:weighting=false:{REF},fixmatch,rpg=rpg:{REF},rpg_plus=rpg_plus:{REF}")
PHANTOMS = ["data.source=phantom", "data.options={label_mode: multilabel, num_classes: 4, n_cases: 40}"]
WIDE = "[16,32,64,128]"

# name → (seeds, --set overrides, --methods) of the `semiseg compare` calls in benchmarks/compare_*.sh; a default
# that changed since is written out as the value the old command ran with (CMT's teacher followed the students'
# average, "paper"). Options that only reproduced bugs (UCMT's umix exchange/copy, the ε-capped KL, teachers with
# the students' BN statistics) were retired: those archived tables reproduce from the commit their stamps record.
OLD_COMMANDS = {
    "teachers": ("0,1,2", _protocol(), "supervised,mean_teacher,ua_mt,cps,cutmix,"
                 "cmt=cmt:teacher_update=paper,"
                 "ucmt=ucmt:train.steps=300,"
                 "ucmt_code=ucmt:teacher_update=code:teacher_supervised=false:umix=code:ema_decay=0.99:"
                 "train.steps=300"),
    "pseudo_labels": ("0,1,2", _protocol(), "supervised,segpl=segpl:unlabelled_pass=joint,"
                      "segpl_vi=segpl_vi:threshold_mode=hard:unlabelled_pass=joint,segpl_vi_grad=segpl_vi:"
                      "threshold_mode=straight_through:kl_weight=0.01:unlabelled_pass=joint,self_training"),
    "dual_uncertainty": ("0,1,2", _protocol(), "supervised,st=dual_uncertainty:variant=st,"
                         "st_ss=dual_uncertainty:variant=st_ss,st_ss_unrc=dual_uncertainty,urpc"),
    "must_cct": ("0,1,2", _protocol(),
                 "supervised,multiscale_supervised,cct,must_no_sharpening=must:temperature=null,must"),
    "must_layers": ("0", _protocol(), "layer_0=must:consistency_layers=[0],layer_1=must:consistency_layers=[1],"
                    "layer_bottleneck=must:consistency_layers=[-1],"
                    "layers_0_1_bottleneck=must:consistency_layers=[0,1,-1],all=must"),
    "reference_multiclass": ("0,1,2", _protocol(), REFERENCE),
    "reference_multilabel": ("0,1,2", _protocol() + PHANTOMS, REFERENCE),
    "reference_wide_multiclass": ("0,1,2", _protocol(WIDE), REFERENCE),
    "reference_wide_multilabel": ("0,1,2", _protocol(WIDE) + PHANTOMS, REFERENCE),
    "reference_ablation_multiclass": ("0,1,2", _protocol(), "supervised,rpg_k10=rpg:reference_size=32:k_fraction=0.1,"
                                      f"rpg_plus_half=rpg_plus:{REF}:weight=0.5:fixmatch_weight=0.5"),
}
OLD_JOBS = 2


def _dumps(configs):
    return {key: cfg.model_dump() for key, cfg in configs.items()}


# Experiments written after the shell scripts: no old command, but they must resolve (fixed split, one thread).
NEW_EXPERIMENTS = {"converged", "converged_one_seed", "few_slices", "short", "short_warmup", "strong_few_slices",
                   "strong_methods", "strong_methods_dice", "dev_heart_sites", "dev_gate_demo",
                   "headline_heart_sites", "dev_heart_sites_long", "dev_demo_length",
                   "dev_augment_heart", "dev_augment_demo",
                   "dev_strong_baseline_heart", "dev_strong_baseline_demo",
                   "dev_dual_aux_heart", "dev_layout_heart", "dev_student_view_heart", "dev_student_view_demo",
                   "dev_rpg_k_demo", "dev_rpg_k_heart", "dev_must_view_heart", "dev_must_view_demo",
                   "dev_dual_labeller_heart", "dev_dual_snapshots_heart", "dev_ucmt_teacher_heart",
                   "dev_ucmt_teacher_demo", "dev_must_weight_heart", "dev_must_weight_demo",
                   "dev_dual_schedule_heart", "headline_must_heart", "dev_liver_lesions",
                   "headline_main_heart", "dev_dual_best_heart", "dev_dual_best_demo",
                   "dev_ucmt_loss_heart", "dev_ucmt_predict_heart", "dev_ucmt_predict_demo",
                   "dev_liver_ucmt", "headline_rpg_heart", "dev_liver_rpg", "dev_rpg_agree_heart",
                   "dev_rpg_drift_demo", "dev_rpg_cap_heart",
                   "dev_rpg_cap_liver", "dev_liver_views",
                   "dev_rpg_running_cap_heart", "dev_rpg_running_cap_demo",
                   "dev_warmup_heart", "dev_warmup_demo", "dev_rpg_cap_window_heart",
                   "dev_gate_ramp_heart", "dev_gate_ramp_demo", "dev_gate_ramp_liver",
                   "dev_strong_gate_demo", "dev_bcp_gate_heart", "dev_gate_smoothing_heart",
                   "dev_gate_smoothing_demo", "dev_rpg_layout_heart", "dev_layout_baselines_heart",
                   "dev_ua_mt_layout_heart", "dev_rpg_plain_layout_heart", "dev_ucmt_layout_heart",
                   "dev_gate_patience_heart", "dev_ucmt_until_gate_demo",
                   "dev_rpg_plain_cap_heart", "headline_defaults_heart", "dev_defaults_demo",
                   "dev_defaults_liver", "dev_heart3d_views", "dev_liver_segpl_view",
                   "dev_view_pool_heart", "dev_view_pool_demo", "dev_segpl_liver_seeds", "dev_segpl_demo_seeds",
                   "dev_segpl_confidence_liver", "dev_segpl_norm_stats_liver", "dev_segpl_norm_stats_demo",
                   "dev_segpl_norm_stats_heart", "dev_length_demo", "dev_length_heart",
                   "dev_cmt_teacher_heart", "dev_length_liver", "dev_average_demo",
                   "dev_average_heart", "dev_remap_demo", "dev_remap_heart",
                   "dev_remap_view_demo", "dev_remap_view_heart", "dev_remap_liver",
                   "dev_remap_methods_heart", "dev_remap_view_liver",
                   "dev_view_remap_heart", "dev_view_remap_demo", "dev_view_remap_liver",
                   "dev_must_remap_view_heart"}


def test_every_experiment_file_has_its_old_command():
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == sorted({*OLD_COMMANDS, *NEW_EXPERIMENTS})


@pytest.mark.parametrize("name", sorted(NEW_EXPERIMENTS))
def test_new_experiments_hold_the_split_and_one_thread(name):
    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    configs = with_job_threads(run_configs(None, exp.protocol, exp.entries, exp.seeds, exp.name,
                                           vary_split=exp.vary_split, split_seed=exp.split_seed), exp.jobs)
    assert not exp.vary_split and len(configs) == len(exp.entries) * len(exp.seeds)
    assert {cfg.split.seed for cfg in configs.values()} == {exp.split_seed}
    assert all(cfg.train.threads == 1 for cfg in configs.values())


@pytest.mark.parametrize("name", sorted(OLD_COMMANDS))
def test_experiment_resolves_to_the_old_scripts_runs(name, monkeypatch):
    seeds, overrides, methods = OLD_COMMANDS[name]
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the 2-core machine the old scripts ran on
    old = with_job_threads(run_configs(None, overrides, [parse_entry(t) for t in split_entries(methods)],
                                       [int(s) for s in seeds.split(",")], name, vary_split=True), OLD_JOBS)
    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    assert (exp.name, exp.jobs, list(exp.seeds)) == (name, OLD_JOBS, [int(s) for s in seeds.split(",")])
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # the explicit train.threads: 1 holds on any machine
    new = with_job_threads(run_configs(None, exp.protocol, exp.entries, exp.seeds, exp.name,
                                       vary_split=exp.vary_split, split_seed=exp.split_seed), exp.jobs)
    assert list(new) == list(old)
    assert _dumps(new) == _dumps(old)
    assert all(cfg.train.threads == 1 for cfg in new.values())
    # the archived tables were made with the split following the run seed, and the files say so
    assert exp.vary_split and all(cfg.split.seed is None for cfg in new.values())


def test_without_vary_split_every_seed_shares_the_split(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("methods: [supervised, cps]\nseeds: [0, 1, 2]\nsplit_seed: 7\n")
    exp = load_experiment(bare)
    assert (exp.vary_split, exp.split_seed) == (False, 7)
    configs = run_configs(None, exp.protocol, exp.entries, exp.seeds, exp.name, split_seed=exp.split_seed)
    assert {cfg.split.seed for cfg in configs.values()} == {7}
    assert {cfg.seed for cfg in configs.values()} == {0, 1, 2}


def test_experiment_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [supervised]\nseed: [0]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'seed'; did you mean 'seeds'\?"):
        load_experiment(bad)
    bad.write_text("methods: [{label: x, method: cps, option: {}}]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'methods\[0\].option'; did you mean 'options'\?"):
        load_experiment(bad)
    bad.write_text("methods: [cps]\nseeds: 0\n")
    with pytest.raises(ConfigError, match="bad.yaml: 'seeds': Input should be a valid list"):
        load_experiment(bad)
    bad.write_text("methods: [cps]\nvary_split: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: 'vary_split': Input should be a valid boolean"):
        load_experiment(bad)
