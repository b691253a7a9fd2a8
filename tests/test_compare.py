import json
import shutil

import pytest

from semiseg.cli import main
from semiseg.errors import ConfigError
from semiseg.experiment.plan import run_configs, split_statement
from semiseg.experiment.scores import last_teaching, log_rows
from semiseg.experiment.spec import Entry, parse_entry, split_entries


def test_parse_entry_splits_method_options_from_config_overrides():
    assert parse_entry("cps") == Entry("cps", "cps")
    entry = parse_entry("ucmt_code=ucmt:umix=copy:top_k=3:train.steps=300")
    assert entry == Entry("ucmt_code", "ucmt", {"umix": "copy", "top_k": 3}, ("train.steps=300",))
    assert entry.config_overrides() == ["train.method=ucmt", "method.umix=copy", "method.top_k=3", "train.steps=300"]
    with pytest.raises(ConfigError, match="key=value"):
        parse_entry("x=cps:oops")


def test_split_entries_keeps_bracketed_lists_whole():
    text = "supervised, l01=must:consistency_layers=[0,1,-1],mt=mean_teacher:weight=0.5"
    assert split_entries(text) == ["supervised", "l01=must:consistency_layers=[0,1,-1]", "mt=mean_teacher:weight=0.5"]
    assert parse_entry(split_entries(text)[1]).options == {"consistency_layers": [0, 1, -1]}
    with pytest.raises(ConfigError, match="unbalanced"):
        split_entries("must:consistency_layers=[0,1")


def test_compare_trains_tabulates_and_reuses_runs(tmp_path, capsys):
    args = ["compare", "--name", "tiny", "--seeds", "0,1", "--quiet",
            "--methods", "supervised,mt=mean_teacher:weight=0.5",
            "--set", f"output.root={tmp_path}", "--set", "data.source=phantom", "--set", "split.test=2",
            "--set", "train.steps=3", "--set", "train.val_every=3", "--set", "model.widths=[4,8]",
            "--set", "eval.save_predictions=false"]
    assert main(args) == 0
    root = tmp_path / "tiny"
    rows = json.loads((root / "compare.json").read_text())["rows"]
    assert [(r["label"], r["checkpoint"]) for r in rows] == [
        ("supervised", "best"), ("supervised", "last"), ("mt", "best"), ("mt", "last")]
    assert all(0 <= r["dice_mean"] <= 1 for r in rows)
    assert "| mt |" in (root / "compare.md").read_text()
    assert "split fixed (seed 0); seeds vary initialisation and sampling" in (root / "compare.md").read_text()
    assert json.loads((root / "compare.json").read_text())["split"].startswith("split fixed (seed 0)")
    assert (root / "mt-s1" / "config.yaml").read_text().count("weight: 0.5") == 1
    teaching = json.loads((root / "compare.json").read_text())["teaching"]
    assert "teach/unl_dice_teacher" in teaching["mt"]
    assert not any(k.startswith("teach/") for k in teaching["supervised"])
    assert "| mt |" in (root / "compare.md").read_text().split("What the methods teach")[1]
    stamp = (root / "mt-s1" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0  # a second call reuses the finished runs
    assert (root / "mt-s1" / "summary.json").stat().st_mtime_ns == stamp


def test_compare_rejects_bad_method_options_before_training(tmp_path, capsys):
    code = main(["compare", "--name", "bad", "--seeds", "0", "--methods", "mean_teacher:wieght=1",
                 "--set", f"output.root={tmp_path}", "--set", "data.source=phantom"])
    assert code == 2
    assert "wieght" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_markdown_shows_std_and_spread_only_with_several_seeds():
    from semiseg.eval.metrics import METRIC_COLUMNS
    from semiseg.experiment.tables import format_markdown

    def row(label, seeds):
        return {"label": label, "checkpoint": "best", "seeds": seeds, "p_dice_vs_ref": float("nan"),
                "train_time_ratio": 1.0, **{f"{m}_{s}": 0.5 for m in METRIC_COLUMNS for s in ("mean", "std")},
                **{f"{m}_{s}": v for m in METRIC_COLUMNS for s, v in (("median", 0.6), ("min", 0.1), ("max", 0.9))}}

    text = format_markdown([row("three", 3), row("one", 1)], "three")
    assert "| three | — | 0.500 ± 0.500 | 0.600 (0.100–0.900) | 0.500 ± 0.500 |" in text  # no validation logged
    assert "| one | — | 0.500 | — | 0.500 |" in text


def _tiny(tmp_path, *extra):
    return ["compare", "--name", "part", "--seeds", "0", "--quiet", "--set", f"output.root={tmp_path}",
            "--set", "data.source=phantom", "--set", "split.test=2", "--set", "train.steps=2",
            "--set", "train.val_every=2", "--set", "model.widths=[4,8]", "--set", "eval.save_predictions=false",
            *extra]


def test_compare_tabulates_what_finished_marks_the_rest_and_says_how_to_finish(tmp_path, capsys):
    args = _tiny(tmp_path, "--methods", "supervised,bad=supervised:split.labelled=50")
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "supervised seed 0: trained in" in out and "bad seed 0: failed: split.labelled=50" in out
    text = (tmp_path / "part" / "compare.md").read_text()
    assert "| supervised |" in text and "| bad |" not in text
    assert "no row for bad" in text and "- bad seed 0: split.labelled=50" in text
    assert "Finish them with `semiseg compare --methods" in text and "did not finish" in err
    assert json.loads((tmp_path / "part" / "compare.json").read_text())["missing"][0]["label"] == "bad"
    assert main(args) == 1  # the finished run is reused, and says so
    assert "supervised seed 0: reused" in capsys.readouterr().out


def test_compare_data_option_names_the_dataset_folder(tmp_path, capsys):
    assert main(_tiny(tmp_path, "--methods", "supervised", "--data", str(tmp_path / "my_dataset"))) == 1
    text = (tmp_path / "part" / "compare.md").read_text()
    assert "data: my_dataset (auto)" in text
    assert "my_dataset: path does not exist" in text and "--data" in text


def test_the_split_is_fixed_across_seeds_unless_varied_or_set():
    entries, phantom = [Entry("supervised", "supervised")], ["data.source=phantom"]

    def split_seeds(overrides=(), **kwargs):
        configs = run_configs(None, [*phantom, *overrides], entries, [0, 1, 2], "g", **kwargs)
        return [cfg.split.seed for cfg in configs.values()], split_statement(configs)

    assert split_seeds() == ([0, 0, 0], "split fixed (seed 0); seeds vary initialisation and sampling")
    assert split_seeds(split_seed=5)[0] == [5, 5, 5]
    assert split_seeds(vary_split=True) == ([None] * 3, "split varies with the seed; ± is over splits")
    assert split_seeds(["split.seed=3"], vary_split=True)[0] == [3, 3, 3]  # an explicit split seed is kept
    mixed = run_configs(None, phantom, [*entries, Entry("other", "supervised", overrides=("split.seed=4",))], [0],
                        "g")
    assert "split seeds differ between runs (0, 4)" in split_statement(mixed)


def test_ray_backend_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray raises ImportError
    assert main(_tiny(tmp_path, "--methods", "supervised", "--backend", "ray")) == 2
    assert 'pip install "semiseg[cluster]"' in capsys.readouterr().err
    assert main(_tiny(tmp_path, "--methods", "supervised", "--address", "head:6379")) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert not (tmp_path / "part").exists()


def test_split_flags_reach_the_printed_runs(tmp_path, capsys):
    args = ["compare", "--name", "v", "--seeds", "0,1", "--methods", "supervised", "--set", "data.source=phantom",
            "--print-commands"]
    assert main([*args, "--vary-split"]) == 0
    assert "split.seed" not in capsys.readouterr().out
    assert main([*args, "--split-seed", "2"]) == 0
    assert capsys.readouterr().out.count("--set split.seed=2 ") == 2


def test_teaching_summary_averages_the_last_fifth_of_training(tmp_path):
    run = tmp_path / "mt-s0"
    run.mkdir()
    (run / "log.csv").write_text("step,val_dice,teach/pseudo_dice\n10,0.1,0.0\n80,,0.5\n90,0.6,0.7\n100,0.8,\n")
    assert last_teaching(log_rows(run)) == pytest.approx({"val_dice": 0.7, "teach/pseudo_dice": 0.6})


# ------------------------------------------------------------------------------------------------
# Hand-made run folders: compare reuses a run with a summary.json, so these tabulate without training.

GRID = ["compare", "--name", "grid", "--seeds", "0,1", "--quiet", "--methods", "supervised,mt=mean_teacher",
        "--set", "data.source=phantom"]


def fake_run(folder, dice, checkpoints=("best", "last")):
    """A finished run: summary.json, per-case rows (two cases, two classes) and a training log."""
    (folder / "metrics").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    rows = [f"{ck},case{c},class_{k},{dice + 0.01 * c + 0.002 * k},{dice / 2},{3.0 + c},{1.0 + k},,,," for ck in
            checkpoints for c in range(2) for k in (1, 2)]
    (folder / "metrics" / "per_case.csv").write_text(
        "checkpoint,case_id,class,dice,jaccard,hd95,asd,brier,ece,gt_empty,pred_empty\n" + "\n".join(rows) + "\n")
    (folder / "log.csv").write_text(f"step,elapsed_s,val_dice\n10,{2.0 + dice},0.5\n")


def fake_grid(root, offset=0.0):
    for i, (label, seed) in enumerate([("supervised", 0), ("supervised", 1), ("mt", 0), ("mt", 1)]):
        fake_run(root / "grid" / f"{label}-s{seed}", 0.5 + 0.1 * i + offset)


def test_compare_reads_the_training_time_evaluation_unless_told_and_says_which(tmp_path, capsys):
    fake_grid(tmp_path)
    for run in (tmp_path / "grid").iterdir():  # a TTA re-evaluation beside the training-time one
        fake_run(run / "evaluations" / "tta", 0.9)
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    plain = json.loads((tmp_path / "grid" / "compare.json").read_text())
    assert plain["evaluation"] is None and plain["rows"][0]["dice_mean"] == pytest.approx(0.558)
    assert "evaluation: the one made at the end of training" in (tmp_path / "grid" / "compare.md").read_text()
    assert main([*GRID, "--set", f"output.root={tmp_path}", "--evaluation", "tta"]) == 0
    tta = json.loads((tmp_path / "grid" / "compare.json").read_text())
    assert tta["evaluation"] == "tta" and tta["rows"][0]["dice_mean"] == pytest.approx(0.908)
    assert "evaluation: `tta` (each run folder's evaluations/tta/)" in (tmp_path / "grid" / "compare.md").read_text()


def test_a_validation_evaluation_never_fills_a_tables_test_columns(tmp_path, capsys):
    fake_grid(tmp_path)
    for run in (tmp_path / "grid").iterdir():  # evaluate --split val
        fake_run(run / "evaluations" / "val", 0.9)
        (run / "evaluations" / "val" / "summary.json").write_text(json.dumps({"settings": {"split": "val"}}))
    assert main([*GRID, "--set", f"output.root={tmp_path}", "--evaluation", "val"]) == 2
    err = capsys.readouterr().err
    assert "scores the validation cases" in err and "Traceback" not in err


def test_a_run_without_last_checkpoint_scores_is_one_clear_error(tmp_path, capsys):
    fake_grid(tmp_path)
    run = tmp_path / "grid" / "mt-s1"
    shutil.rmtree(run)
    fake_run(run, 0.7, checkpoints=("best",))  # re-evaluated with --checkpoint best over the training-time one
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "mt-s1/metrics/per_case.csv: no 'last' checkpoint scores" in err and "semiseg evaluate --run" in err
    assert "KeyError" not in err and not (tmp_path / "grid" / "compare.md").exists()


def test_tables_report_median_and_range_over_seeds_of_best_and_last(tmp_path, capsys):
    fake_grid(tmp_path)
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "grid" / "compare.json").read_text())["rows"]
    sup_last = next(r for r in rows if r["label"] == "supervised" and r["checkpoint"] == "last")
    assert (sup_last["dice_min"], sup_last["dice_max"]) == pytest.approx((0.508, 0.608))
    assert sup_last["dice_median"] == pytest.approx(0.558)
    text = (tmp_path / "grid" / "compare.md").read_text()
    assert text.count("| supervised | 0.500 | 0.558 ± 0.050 | 0.558 (0.508–0.608) |") == 2  # best and last tables


def test_validation_dice_stands_beside_test_dice_for_each_checkpoint(tmp_path, capsys):
    fake_grid(tmp_path)
    for i, run in enumerate(sorted((tmp_path / "grid").glob("supervised-s*"))):  # best val 0.7 / 0.8, last 0.6 / 0.7
        (run / "log.csv").write_text(f"step,elapsed_s,val_dice\n10,1.0,0.5\n20,2.0,{0.7 + 0.1 * i}\n"
                                     f"30,3.0,{0.6 + 0.1 * i}\n40,4.0,\n")
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "grid" / "compare.json").read_text())["rows"]
    sup = {r["checkpoint"]: r for r in rows if r["label"] == "supervised"}
    assert sup["best"]["val_dice_mean"] == pytest.approx(0.75) and sup["last"]["val_dice_mean"] == pytest.approx(0.65)
    table = (tmp_path / "grid" / "compare.md").read_text()
    assert "| method | val Dice | Dice |" in table
    assert "| supervised | 0.750 | " in table and "| supervised | 0.650 | " in table


def test_a_comparison_at_auto_length_gives_every_method_the_longest_in_updates():
    entries = [Entry("supervised", "supervised"), Entry("fixmatch", "fixmatch"), Entry("ucmt", "ucmt"),
               Entry("short", "fixmatch", overrides=("train.steps=30",))]
    configs = run_configs(None, ["data.source=phantom"], entries, [0], "g")
    steps = {label: cfg.train.steps for (label, _), cfg in configs.items()}
    assert steps == {"supervised": 2000, "fixmatch": 2000, "ucmt": 1000, "short": 30}
    alone = run_configs(None, ["data.source=phantom"], entries[:1], [0], "g")
    assert alone[("supervised", 0)].train.steps == 1000  # nothing longer beside it
    fixed = run_configs(None, ["data.source=phantom", "train.steps=50"], entries[:3], [0], "g")
    assert {cfg.train.steps for cfg in fixed.values()} == {50}  # a protocol's length is everybody's


def _origin(run, cpu_capability, commit="a" * 40):
    start = {"step": 0, "commit": commit,
             "machine": {"cpu": "AMD EPYC", "cpu_capability": cpu_capability, "torch": "2.13.0", "device": "cpu"}}
    (run / "origin.json").write_text(json.dumps([start]))


def test_a_table_says_when_its_runs_come_from_two_machines_and_which_runs(tmp_path, capsys):
    fake_grid(tmp_path)
    grid = tmp_path / "grid"
    for run in grid.iterdir():
        _origin(run, "AVX2")
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    text = (grid / "compare.md").read_text()
    assert "trained on one machine (AMD EPYC, AVX2, torch 2.13.0, cpu); commits (runs): `aaaaaaa` (4)" in text
    _origin(grid / "mt-s1", "AVX512", commit="b" * 40 + "+dirty")
    (grid / "mt-s0" / "origin.json").unlink()  # a run trained before runs recorded their machine
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    text = (grid / "compare.md").read_text()
    assert "**trained on 2 machines**" in text and "`aaaaaaa` (2), `bbbbbbb+dirty` (1)" in text
    assert "- AMD EPYC, AVX2, torch 2.13.0, cpu: supervised-s0, supervised-s1\n" in text
    assert "- AMD EPYC, AVX512, torch 2.13.0, cpu: mt-s1\n" in text
    assert "1 run(s) recorded no machine (trained before runs recorded one): mt-s0" in text
    assert json.loads((grid / "compare.json").read_text())["origins"]["unrecorded"] == ["mt-s0"]
    (grid / "compare.md").write_text("stale")
    assert main(["compare", "--from-results", str(grid)]) == 0  # the per-case scores alone rebuild the statement
    assert (grid / "compare.md").read_text() == text


def test_a_table_whose_runs_recorded_no_machine_states_none(tmp_path, capsys):
    fake_grid(tmp_path)
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    assert "machine" not in (tmp_path / "grid" / "compare.md").read_text()
    assert "origins" not in json.loads((tmp_path / "grid" / "compare.json").read_text())


def test_per_class_diagnostics_get_a_table_of_their_own(tmp_path, capsys):
    fake_grid(tmp_path)
    for seed, lesion in ((0, 0.2), (1, 0.4)):  # mt's lesion targets, present in one logged batch of the last fifth
        (tmp_path / "grid" / f"mt-s{seed}" / "log.csv").write_text(
            "step,elapsed_s,val_dice,teach/pseudo_dice,teach_class/pseudo_dice/liver,teach_class/pseudo_dice/lesion,"
            f"teach_class/prediction_dice/lesion\n90,1.0,,0.5,0.9,,0.5\n100,2.0,0.6,0.6,0.8,{lesion},0.3\n")
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    text = (tmp_path / "grid" / "compare.md").read_text()
    per_class = text.split("**Per class**")[1]
    assert "| method | lesion | liver |" in per_class
    assert "| mt | pseudo 0.300, prediction 0.400 | pseudo 0.850 |" in per_class
    assert "| supervised |" not in per_class  # nothing to score without targets
    teaching = json.loads((tmp_path / "grid" / "compare.json").read_text())["teaching"]["mt"]
    assert teaching["teach_class/pseudo_dice/lesion"] == pytest.approx(0.3)


def test_validation_per_class_reads_the_best_and_last_checkpoints_rows(tmp_path, capsys):
    fake_grid(tmp_path)
    for seed, lesion in ((0, 0.1), (1, 0.3)):  # best at step 20 (val 0.7), last at step 30
        (tmp_path / "grid" / f"supervised-s{seed}" / "log.csv").write_text(
            "step,elapsed_s,val_dice,val_class/liver,val_class/lesion\n10,1.0,,,\n"
            f"20,2.0,0.7,0.9,{lesion}\n25,2.5,0.7,0.8,0.6\n30,3.0,0.5,0.8,{lesion / 2}\n")
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    grid = tmp_path / "grid"
    text = (grid / "compare.md").read_text()
    per_class = text.split("**Validation per class**")[1].split("**What the methods teach**")[0]
    assert "| method | lesion | liver |" in per_class
    assert "| supervised | 0.100 (0.200) | 0.800 (0.900) |" in per_class  # the first of equal scores is the best
    assert "| mt |" not in per_class  # its runs logged no class
    classes = json.loads((grid / "compare.json").read_text())["validation_classes"]
    assert classes["supervised"]["best"] == pytest.approx({"lesion": 0.2, "liver": 0.9})
    (grid / "compare.md").write_text("stale")
    assert main(["compare", "--from-results", str(grid)]) == 0
    assert (grid / "compare.md").read_text() == text


def test_a_table_without_per_class_validation_has_no_such_section(tmp_path, capsys):
    fake_grid(tmp_path)
    assert main([*GRID, "--set", f"output.root={tmp_path}"]) == 0
    assert "Validation per class" not in (tmp_path / "grid" / "compare.md").read_text()
    assert "validation_classes" not in json.loads((tmp_path / "grid" / "compare.json").read_text())
