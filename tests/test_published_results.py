"""Published tables are evidence anyone can rebuild: ``results/<name>/`` holds per-case scores, the tables rebuild
from them alone, and ``--publish`` stamps only a clean commit."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_compare import GRID, fake_grid

from semiseg.cli import main
from semiseg.errors import SemisegError
from semiseg.experiment.compare import PUBLISHED_FILES, publish, rebuild
from semiseg.experiment.provenance import require_clean_tree
from semiseg.experiment.scores import has_scores

RESULTS = Path(__file__).resolve().parents[1] / "results"
# published before per-case scores were kept, their run folders gone: readable, labelled archived, never rebuilt
ARCHIVED = {"converged", "converged_one_seed", "few_slices", "short", "short_warmup"}
REBUILDABLE = sorted(p.name for p in RESULTS.iterdir() if p.is_dir() and has_scores(p))


def test_every_table_published_since_the_archive_holds_its_per_case_scores():
    published = {p.parent.name for p in RESULTS.glob("*/compare.json")}
    assert published - set(REBUILDABLE) <= ARCHIVED


@pytest.mark.parametrize("name", REBUILDABLE)
def test_a_published_table_equals_the_one_rebuilt_from_its_per_case_scores(name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(RESULTS / name, copy)
    assert not rebuild(copy), f"results/{name}: rebuild with 'semiseg compare --from-results results/{name}'"


def _clean_stamp(monkeypatch):
    monkeypatch.setattr("semiseg.experiment.compare.stamp", lambda experiment, device: {
        "experiment": None, "commit": "0123abc", "machine": {"device": device}})


def test_publish_copies_the_scores_and_the_copy_rebuilds_without_run_folders(tmp_path, monkeypatch, capsys):
    fake_grid(tmp_path / "runs")
    _clean_stamp(monkeypatch)
    assert main([*GRID, "--set", f"output.root={tmp_path / 'runs'}"]) == 0
    target = publish(tmp_path / "runs" / "grid", tmp_path / "results" / "grid")
    shutil.rmtree(tmp_path / "runs")
    assert sorted(p.name for p in target.iterdir()) == sorted(PUBLISHED_FILES)
    published = (target / "compare.md").read_text()
    assert main(["compare", "--from-results", str(target)]) == 0
    assert "compare.md and compare.json unchanged" in capsys.readouterr().out
    assert (target / "compare.md").read_text() == published
    rows = json.loads((target / "compare.json").read_text())["rows"]
    with (target / "per_case.csv").open() as fh:  # mt's seed 1 collapses at the last checkpoint
        cases = list(csv.DictReader(fh))
    for row in (r for r in cases if (r["label"], r["seed"], r["checkpoint"]) == ("mt", "1", "last")):
        row["dice"] = "0.1"
    with (target / "per_case.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(cases[0]))
        writer.writeheader()
        writer.writerows(cases)
    assert rebuild(target)
    moved = json.loads((target / "compare.json").read_text())["rows"]
    assert [r["p_dice_vs_ref"] for r in moved] != [r["p_dice_vs_ref"] for r in rows]
    assert moved[3]["dice_min"] == pytest.approx(0.1) and rows[3]["dice_min"] > 0.7

def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_publish_refuses_a_dirty_tree_naming_the_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / "semiseg").mkdir(parents=True)
    (repo / "semiseg" / "code.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "x", "--allow-empty")
    _git(repo, "add", "semiseg/code.py")
    _git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "code")
    (repo / "notes.txt").write_text("untracked: not code the checkout runs\n")
    assert len(require_clean_tree(repo / "semiseg")) == 40
    (repo / "draft.yaml").write_text("methods: [supervised]\n")
    with pytest.raises(SemisegError, match=r"not committed as they are: .*draft.yaml \(not committed\); commit or"):
        require_clean_tree(repo / "semiseg", experiment=repo / "draft.yaml")
    (repo / "semiseg" / "new_method.py").write_text("x = 3\n")  # new code the package would run
    with pytest.raises(SemisegError, match=r"1 file\(s\) are not committed as they are: semiseg/new_method.py;"):
        require_clean_tree(repo / "semiseg")
    (repo / "semiseg" / "code.py").write_text("x = 2\n")
    with pytest.raises(SemisegError, match=r"semiseg/code.py, semiseg/new_method.py; commit or stash them"):
        require_clean_tree(repo / "semiseg")
    with pytest.raises(SemisegError, match="not in a git checkout"):
        require_clean_tree(tmp_path)


def test_publish_refuses_before_training_and_a_table_stamped_dirty(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("semiseg.engine.origin.git_state", lambda where=None: ("abc", ["semiseg/x.py"]))
    monkeypatch.chdir(tmp_path)
    assert main([*GRID, "--set", f"output.root={tmp_path / 'runs'}", "--publish"]) == 2
    err = capsys.readouterr().err
    assert "semiseg/x.py" in err and not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "compare.json").write_text(json.dumps({"stamp": {"commit": "abc+dirty"}}))
    with pytest.raises(SemisegError, match="not a clean commit"):
        publish(folder, tmp_path / "results" / "cmp")
    assert not (tmp_path / "results").exists()


def test_results_page_labels_archived_aggregates_and_rebuildable_tables(tmp_path):
    from semiseg.docs import generate

    (tmp_path / "experiments").mkdir()
    for name in ("old", "new"):
        shutil.copytree(RESULTS / "short", tmp_path / "results" / name, ignore=lambda *a: ["per_case.csv"])
    for name in ("per_case.csv", "runs.json"):
        (tmp_path / "results" / "new" / name).write_text("")
    page = generate(tmp_path)["results.md"]
    new, old = page.split("\n## new\n")[1].split("\n## old\n")
    assert "archived aggregates" in old
    assert "per-case scores: `results/new/per_case.csv` (rebuild: `semiseg compare --from-results results/new`)" in new
    assert "archived aggregates" not in new
