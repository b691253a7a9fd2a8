"""Hostile inputs to ``semiseg compare`` and experiment files: exit 2, one ``error:`` line naming the key, seed,
address or file, no traceback, nothing written (one parametrised line per mistake). The grids are hand-made run
folders, so nothing trains."""

import shutil
import socket
import time
from pathlib import Path

import pytest
from hostile import cli as _cli
from hostile import snapshot as _snapshot
from test_compare import fake_grid, fake_run

from semiseg.cli import main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_FILES = {
    "negative_seed.yaml": "methods: [supervised]\nseeds: [0, -1]\n",
    "misspelt.yaml": "methods: [supervised]\nseed: [0]\n",
    "entry_misspelt.yaml": "methods: [{method: cps, option: {}}]\n",
    "bool_split_seed.yaml": "methods: [supervised]\nsplit_seed: true\n",
    "no_methods.yaml": "seeds: [0]\n",
    "jobs_zero.yaml": "methods: [supervised]\njobs: 0\n",
    "evaluation_path.yaml": "methods: [supervised]\nevaluation: ../../elsewhere\n",
}


@pytest.fixture
def world(tmp_path) -> Path:
    """Finished grids (one re-evaluated with --checkpoint best only) and experiment files with one mistake each."""
    fake_grid(tmp_path / "runs")
    fake_grid(tmp_path / "nolast")
    shutil.rmtree(tmp_path / "nolast" / "grid" / "mt-s1")
    fake_run(tmp_path / "nolast" / "grid" / "mt-s1", 0.7, checkpoints=("best",))
    for name, text in EXPERIMENT_FILES.items():
        (tmp_path / name).write_text(text)
    assert main([*GRID, "--set", f"output.root={tmp_path / 'runs'}"]) == 0  # its tables and scores
    for name, (file, text) in BROKEN.items():
        shutil.copytree(tmp_path / "runs" / "grid", tmp_path / name, ignore=lambda folder, names: [
            n for n in names if n.endswith("-s0") or n.endswith("-s1")])
        (tmp_path / name / file).write_text(text)
    return tmp_path






BROKEN = {"bad_json": ("compare.json", "{not json"), "json_list": ("compare.json", "[1, 2]"),
          "json_partial": ("compare.json", '{"name": "grid"}'),
          "csv_truncated": ("per_case.csv", "label,seed,checkpoint\nsupervised,0,best\n"),
          "runs_not_json": ("runs.json", "{")}
SUP = ["compare", "--methods", "supervised", "--name", "g", "--set", "output.root={tmp}/runs", "--set",
       "data.source=phantom", "--quiet"]
GRID = ["compare", "--methods", "supervised,mt=mean_teacher", "--name", "grid", "--seeds", "0,1", "--set",
        "data.source=phantom", "--quiet"]
HOSTILE = [
    ("seeds_negative", [*SUP, "--seeds", "-1"], "seeds are non-negative integers, got -1"),
    ("seeds_negative_vary_split", [*SUP, "--seeds", "-1", "--vary-split"], "seeds are non-negative"),
    ("seeds_one_negative", [*SUP, "--seeds", "0,-2"], "got -2"),
    ("seeds_none", [*SUP, "--seeds", ","], "at least one seed"),
    ("seeds_not_numbers", [*SUP, "--seeds", "0,one"], "--seeds"),
    ("split_seed_negative", [*SUP, "--seeds", "0", "--split-seed", "-1"], "--split-seed"),
    ("jobs_zero", [*SUP, "--jobs", "0"], "--jobs"),
    ("file_negative_seed", ["compare", "{tmp}/negative_seed.yaml"], "negative_seed.yaml: 'seeds': seeds are non-neg"),
    ("file_misspelt_key", ["compare", "{tmp}/misspelt.yaml"], "unknown key 'seed'; did you mean 'seeds'?"),
    ("file_entry_misspelt", ["compare", "{tmp}/entry_misspelt.yaml"], "'methods[0].option'; did you mean 'options'"),
    ("file_bool_split_seed", ["compare", "{tmp}/bool_split_seed.yaml"], "'split_seed'"),
    ("file_no_methods", ["compare", "{tmp}/no_methods.yaml"], "'methods' is required"),
    ("file_jobs_zero", ["compare", "{tmp}/jobs_zero.yaml"], "'jobs'"),
    ("file_evaluation_path", ["compare", "{tmp}/evaluation_path.yaml"], "not a folder name under <run>/evaluations/"),
    ("file_missing", ["compare", "{tmp}/absent.yaml"], "absent.yaml"),
    ("evaluation_path", [*SUP, "--evaluation", "../x"], "--evaluation: '../x' is not a folder name"),
    ("ray_closed_port", [*SUP, "--backend", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray"),
    ("ray_address_without_port", [*SUP, "--backend", "ray", "--address", "headnode"], "expected HOST:PORT"),
    ("address_without_ray", [*SUP, "--address", "127.0.0.1:1"], "use it with --backend ray"),
    ("run_without_last", [*GRID, "--set", "output.root={tmp}/nolast"], "mt-s1/metrics/per_case.csv: no 'last'"),
    ("evaluation_not_made", [*GRID, "--set", "output.root={tmp}/runs", "--evaluation", "tta"],
     "reports evaluation 'tta' but"),
    ("from_results_archived", ["compare", "--from-results", str(REPO / "results" / "short")], "archived"),
    ("from_results_absent", ["compare", "--from-results", "{tmp}/nothing"], "nothing: no compare.json"),
    ("from_results_bad_json", ["compare", "--from-results", "{tmp}/bad_json"], "bad_json/compare.json: not a"),
    ("from_results_json_list", ["compare", "--from-results", "{tmp}/json_list"], "json_list/compare.json: not a"),
    ("from_results_json_partial", ["compare", "--from-results", "{tmp}/json_partial"], "lacks seeds"),
    ("from_results_csv_truncated", ["compare", "--from-results", "{tmp}/csv_truncated"], "per_case.csv or runs.json"),
    ("from_results_runs_not_json", ["compare", "--from-results", "{tmp}/runs_not_json"], "per_case.csv or runs"),
    ("from_results_and_methods", ["compare", "--from-results", "{tmp}/runs", "--methods", "supervised"],
     "--from-results rebuilds"),
]


@pytest.mark.parametrize(("argv", "names"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_compare_gives_one_clean_error(argv, names, world, capsys):
    argv = [arg.replace("{tmp}", str(world)) for arg in argv]
    before = _snapshot(world)
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and names in errors[0], err
    assert "Traceback" not in err and "KeyError" not in err
    assert _snapshot(world) == before  # nothing written, no comparison folder left behind


def test_a_ray_address_nobody_answers_fails_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port that was just free: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    assert main(["compare", "--methods", "supervised", "--name", "g", "--seeds", "0", "--backend", "ray",
                 "--address", f"127.0.0.1:{port}", "--set", f"output.root={tmp_path}"]) == 2
    assert time.perf_counter() - start < 30
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_a_ray_address_where_something_else_listens_fails_within_bounded_time(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.setattr("semiseg.experiment.ray_backend.JOIN_SECONDS", 4.0)
    with socket.socket() as server:  # accepts connections and never speaks Ray (a dashboard port, say)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        start = time.perf_counter()
        assert main(["compare", "--methods", "supervised", "--name", "g", "--seeds", "0", "--backend", "ray",
                     "--address", address, "--set", f"output.root={tmp_path}"]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert f"--address {address}: something listens there but no Ray cluster answered within 4 s" in err
    assert not (tmp_path / "g").exists()
