"""Hostile inputs at the newer edges (evaluate --run again, evaluate --pred/--gt, predict --model, suggest, the
demo's images): exit 2, one ``error:`` line naming the file, key or option, no traceback, nothing written (one
parametrised line per mistake); and what a re-evaluation writes beside the run's own results."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hostile import cli as _cli
from hostile import snapshot as _snapshot
from hostile import tiny as _tiny

from semiseg.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *_tiny(), "--output", str(run)]) == 0
    return run


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _label(shape=(12, 10, 6)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:8, 3:7, 1:5] = 1
    label[8:10, 3:7, 1:5] = 2
    return label


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "export"
    assert main(["export", "--run", str(trained), "--output", str(out)]) == 0
    return out


def _export_variant(source: Path, target: Path, change: dict | None = None, text: str | None = None,
                    model: bytes | None = None, model_name: str = "model.pt") -> None:
    """A copy of an export with its sidecar changed (keys, or the whole text) or its model file replaced."""
    shutil.copytree(source, target)
    sidecar = json.loads((target / "export.json").read_text()) | (change or {})
    (target / "export.json").write_text(text if text is not None else json.dumps(sidecar))
    if model is not None:
        (target / "model.pt").unlink()
        (target / model_name).write_bytes(model)


@pytest.fixture
def world(tmp_path, trained, exported) -> Path:
    """A user's folder: a copy of the trained run and its export (and damaged ones), images, label folders."""
    shutil.copytree(trained, tmp_path / "run")
    _nifti(tmp_path / "scans" / "s1.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32))
    _nifti(tmp_path / "flat" / "s1.nii.gz", np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    _png(tmp_path / "pngs" / "p1.png", np.random.default_rng(0).integers(0, 255, (16, 16)))
    _export_variant(exported, tmp_path / "export")
    _export_variant(exported, tmp_path / "bad_json", text="{not json")
    _export_variant(exported, tmp_path / "a_list", text="[1, 2]")
    _export_variant(exported, tmp_path / "dim_four", {"dim": 4})
    _export_variant(exported, tmp_path / "roi_short", {"dim": 3})
    _export_variant(exported, tmp_path / "export3d", {"dim": 3, "roi_size": [16, 16, 16]})
    whole = (exported / "model.pt").read_bytes()
    _export_variant(exported, tmp_path / "cut_pt", model=whole[: len(whole) // 2])
    _export_variant(exported, tmp_path / "cut_onnx", {"format": "onnx", "file": "model.onnx"}, model=b"\x08\x07junk",
                    model_name="model.onnx")
    for case in range(20):  # images a user keeps where the demo's test images would go
        _nifti(tmp_path / "demo_images" / f"phantom_{case:03d}.nii.gz", np.zeros((4, 4, 4), np.float32))
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    config["model"]["dim"] = 3
    shutil.copytree(tmp_path / "run", tmp_path / "run3d")
    (tmp_path / "run3d" / "config.yaml").write_text(yaml.safe_dump(config))
    with_255 = _label()
    with_255[0, 0, :] = 255
    _nifti(tmp_path / "gt" / "a.nii.gz", _label())
    _nifti(tmp_path / "pred" / "a.nii.gz", _label())
    _nifti(tmp_path / "gt255" / "a.nii.gz", with_255)
    _nifti(tmp_path / "pred255" / "a.nii.gz", with_255)
    three = _label()
    three[0:2, 0:2, 0:2] = 3
    _nifti(tmp_path / "pred_more" / "a.nii.gz", three)
    png = _label()[..., 2]
    png[0, :] = 255
    _png(tmp_path / "gt_png" / "a.png", png)
    _png(tmp_path / "pred_png" / "a.png", _label()[..., 2])
    (tmp_path / "run" / "evaluations" / "tta").mkdir(parents=True)
    (tmp_path / "run" / "evaluations" / "tta" / "summary.json").write_text("{}")  # an earlier --tta evaluation
    return tmp_path






EVAL_GT = ["evaluate", "--quiet", "--gt"]
PREDICT = ["predict", "--output", "{tmp}/out", "--input"]
HOSTILE = [
    ("evaluate_same_settings_twice", ["evaluate", "--run", "{tmp}/run", "--tta", "--quiet"], "evaluations/tta"),
    ("gt_holds_255", [*EVAL_GT, "{tmp}/gt255", "--pred", "{tmp}/pred"], "gt255/a.nii.gz|255|--ignore 255"),
    ("png_gt_holds_255", [*EVAL_GT, "{tmp}/gt_png", "--pred", "{tmp}/pred_png"], "gt_png/a.png|255|--ignore 255"),
    ("pred_holds_255", [*EVAL_GT, "{tmp}/gt", "--pred", "{tmp}/pred255"], "pred255/a.nii.gz|255"),
    ("pred_more_classes_than_gt", [*EVAL_GT, "{tmp}/gt", "--pred", "{tmp}/pred_more"], "pred_more/a.nii.gz|[3]"),
    ("csv_exists", [*EVAL_GT, "{tmp}/gt", "--pred", "{tmp}/pred", "--csv", "{tmp}/run/config.yaml"],
     "--csv|config.yaml|--overwrite"),
    ("ignore_negative", [*EVAL_GT, "{tmp}/gt", "--pred", "{tmp}/pred", "--ignore", "-1"], "--ignore"),
    ("ignore_multilabel", [*EVAL_GT, "{tmp}/gt", "--pred", "{tmp}/pred", "--ignore", "255", "--label-mode",
                           "multilabel"], "--ignore 255"),
    ("export_bad_json", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/bad_json"], "bad_json/export.json|JSON"),
    ("export_a_list", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/a_list"], "a_list/export.json|list"),
    ("export_dim_four", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/dim_four"], "dim_four/export.json|dim"),
    ("export_roi_short", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/roi_short"], "roi_short/export.json|roi_size"),
    ("export_truncated_pt", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/cut_pt"], "cut_pt/model.pt"),
    ("export_truncated_onnx", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/cut_onnx"], "cut_onnx/model.onnx"),
    ("png_into_3d_export", [*PREDICT, "{tmp}/pngs", "--model", "{tmp}/export3d"], "pngs/p1.png|export3d|3D"),
    ("flat_nifti_into_3d_export", [*PREDICT, "{tmp}/flat", "--model", "{tmp}/export3d"], "flat/s1.nii.gz|export3d"),
    ("png_into_3d_run", [*PREDICT, "{tmp}/pngs", "--run", "{tmp}/run3d"], "pngs/p1.png|run3d"),
    ("adapt_bn_with_an_export", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/export", "--adapt-bn"],
     "--adapt-bn|--run"),
    ("adapt_bn_with_robustness", ["evaluate", "--run", "{tmp}/run", "--adapt-bn", "--robustness", "--quiet"],
     "--adapt-bn|--robustness"),
    ("export_demo_into_a_file", ["data", "export-demo", "{tmp}/run/config.yaml"], "export-demo|config.yaml"),
    ("export_demo_over_images", ["data", "export-demo", "{tmp}/demo_images"], "demo_images/phantom_0"),
    ("suggest_top_zero", ["suggest", "--run", "{tmp}/run", "--top", "0"], "--top|!--diversity|!--samples"),
    ("suggest_top_negative", ["suggest", "--run", "{tmp}/run", "--top", "-1"], "--top|!--diversity|!--samples"),
    ("suggest_diversity_negative", ["suggest", "--run", "{tmp}/run", "--diversity", "-1"],
     "--diversity|!--top|!--samples"),
    ("export_other_checkpoint", [*PREDICT, "{tmp}/scans", "--model", "{tmp}/export", "--checkpoint", "last"],
     "--checkpoint last|best|export"),
]


@pytest.fixture(autouse=True)
def small_demo(monkeypatch):
    """``data export-demo`` on a phantom of 20 3D cases: the demo's default split, without building the demo."""
    from semiseg.data.sources import open_dataset

    monkeypatch.setattr("semiseg.engine.demo._demo_dataset",
                        lambda cfg: open_dataset("phantom", None, n_cases=20, dim=3, seed=0))


@pytest.mark.parametrize(("argv", "names"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_edge_gives_one_clean_error(argv, names, world, capsys):
    argv = [arg.replace("{tmp}", str(world)) for arg in argv]
    before = _snapshot(world)
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    wanted = names.split("|")  # '!x': x must not be named
    assert len(errors) == 1 and all((name[1:] not in errors[0]) if name.startswith("!") else (name in errors[0])
                                    for name in wanted), err
    assert "Traceback" not in err
    assert _snapshot(world) == before


RUN_OWN = ("summary.json", "report.md", "metrics/per_case.csv")


@pytest.mark.parametrize(("flags", "name", "checkpoints"), [
    (["--tta"], "tta", ["best", "last"]),
    (["--checkpoint", "best", "--tta"], "best-tta", ["best"]),
    (["--checkpoint", "last"], "last", ["last"]),
    (["--adapt-bn"], "adapt-bn", ["best", "last"]),
    (["--checkpoint", "best", "--tta", "--adapt-bn"], "best-tta-adapt-bn", ["best"]),
    ([], "default", ["best", "last"]),
])
def test_reevaluation_writes_beside_the_runs_own(world, capsys, flags, name, checkpoints):
    run = world / "run"
    shutil.rmtree(run / "evaluations")
    own = {file: (run / file).read_bytes() for file in RUN_OWN}
    assert main(["evaluate", "--run", str(run), *flags, "--quiet"]) == 0
    assert {file: (run / file).read_bytes() for file in RUN_OWN} == own
    folder = run / "evaluations" / name
    assert f"evaluation: {folder}" in capsys.readouterr().out
    for file in RUN_OWN:
        assert (folder / file).is_file(), file
    settings = json.loads((folder / "summary.json").read_text())["settings"]
    assert settings == {"name": name, "split": "test", "checkpoints": checkpoints, "tta": "--tta" in flags,
                        "adapt_bn": "--adapt-bn" in flags, "robustness": False, "uncertainty": False}
    assert json.loads((run / "summary.json").read_text())["settings"]["name"] == "default"


def test_reevaluation_overwrite_replaces_only_its_own(world):
    run = world / "run"
    assert main(["evaluate", "--run", str(run), "--tta", "--overwrite", "--quiet"]) == 0
    assert json.loads((run / "evaluations" / "tta" / "summary.json").read_text())["settings"]["tta"] is True


def test_ignore_leaves_the_label_out_of_every_metric(world, capsys):
    pred = _label()
    pred[0, 0, :] = 1  # a prediction inside the ignored voxels counts neither way
    _nifti(world / "pred_in_ignored" / "a.nii.gz", pred)
    assert main(["evaluate", "--gt", str(world / "gt255"), "--pred", str(world / "pred_in_ignored"),
                 "--ignore", "255", "--csv", str(world / "rows.csv")]) == 0
    out = capsys.readouterr().out
    assert "class_2" in out and "class_3" not in out  # three classes, not 256
    assert out.count("1.000 ± 0.000 | 1.000 ± 0.000 | 0.000 ± 0.000") == 3  # Dice 1 for both classes and mean


def test_classes_come_from_the_ground_truth(world, capsys):
    binary = np.zeros((12, 10, 6), np.uint8)
    _nifti(world / "gt_empty" / "a.nii.gz", binary)  # an all-background case is still a binary task
    binary[2:4, 2:4, 2:4] = 1
    _nifti(world / "pred_one" / "a.nii.gz", binary)
    assert main(["evaluate", "--gt", str(world / "gt_empty"), "--pred", str(world / "pred_one")]) == 0
    assert "class_1" in capsys.readouterr().out


def test_export_answers_for_the_checkpoint_it_holds(world):
    assert main(["predict", "--input", str(world / "scans"), "--output", str(world / "out"), "--model",
                 str(world / "export"), "--checkpoint", "best"]) == 0
    assert (world / "out" / "s1.nii.gz").is_file()


def test_a_2d_model_predicts_2d_images_and_volumes(world):
    for images in ("pngs", "flat", "scans"):
        assert main(["predict", "--input", str(world / images), "--output", str(world / f"out_{images}"),
                     "--run", str(world / "run")]) == 0


def test_export_demo_writes_the_test_images_only(tmp_path, capsys):
    assert main(["data", "export-demo", str(tmp_path / "demo")]) == 0
    files = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert len(files) == 6 and all(name.endswith(".nii.gz") for name in files)
    assert not any("label" in name for name in files)
    image = nib.load(str(tmp_path / "demo" / files[0])).get_fdata()
    assert image.ndim == 3 and len(np.unique(image)) > 8  # an image, not a label map
    assert "semiseg predict" in capsys.readouterr().out


def test_predict_warns_about_a_label_map(world, capsys):
    _nifti(world / "mixed" / "s1_label.nii.gz", _label().astype(np.float32))
    _nifti(world / "mixed" / "s2.nii.gz", _label().astype(np.float32))
    _nifti(world / "mixed" / "s3.nii.gz", np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32))
    assert main(["predict", "--run", str(world / "run"), "--input", str(world / "mixed"), "--output",
                 str(world / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "s1_label.nii.gz" in warnings[0] and "'_label'" in warnings[0]
    assert "s2.nii.gz" in warnings[1] and "[0, 1, 2]" in warnings[1]


def test_suggest_report_tells_close_scores_apart(tmp_path):
    from semiseg.eval.suggest import CaseSuggestion, write_suggestions

    pixels = np.zeros((8, 8))
    ranked = [CaseSuggestion(f"c{k}", score, 0, {"one": 1.0}, pixels, pixels.astype(np.int64), pixels)
              for k, score in enumerate([1.07834, 1.07812, 1.0779])]
    write_suggestions(ranked, tmp_path, score="entropy", region="volume", top=3, label_mode="multiclass",
                      class_names=["background", "one"], facts={})
    shown = [line.split("|")[3].strip() for line in (tmp_path / "suggest.md").read_text().splitlines()
             if line.startswith("| ") and "case" not in line]
    assert shown == ["1.0783", "1.0781", "1.0779"]
