"""The on-disk case cache: memory-mapped stores, hits, misses on changed files or settings, races, bad folders."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from semiseg import api
from semiseg.config import load_config
from semiseg.data.cache import CaseCache, resolve_cache_dir
from semiseg.data.loaders import load_store
from semiseg.data.sources.nnunet import open_nnunet
from semiseg.errors import DataError

SHAPE = (32, 32, 8)


def _nnunet(root: Path, n: int = 3) -> Path:
    """A one-channel nnU-Net v2 folder with ``n`` labelled cases, more than 4096 foreground voxels in the first."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "ct"}, "labels": {"background": 0, "a": 1},
                                                   "file_ending": ".nii.gz", "name": "toy"}))
    for i in range(n):
        rng = np.random.default_rng(i)
        label = (rng.random(SHAPE) < (0.9 if i == 0 else 0.3)).astype(np.uint8)
        image = (rng.normal(size=SHAPE) * 50 + 100 * label).astype(np.float32)
        for folder, name, array in (("imagesTr", f"c{i}_0000", image), ("labelsTr", f"c{i}", label)):
            (root / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(root / folder / f"{name}.nii.gz"))
    return root


def _counting(refs, counts):
    """The refs, each counting its reads in ``counts[case_id]``."""
    def wrap(ref):
        def load():
            counts[ref.case_id] = counts.get(ref.case_id, 0) + 1
            return ref.load()
        return dataclasses.replace(ref, load=load)
    return [wrap(r) for r in refs]


def _store(refs, cache, normalize="zscore", with_labels=True):
    return load_store(refs, normalize=normalize, label_mode="multiclass", with_labels=with_labels, desc="",
                      progress=False, cache=cache)


def _cache(root, **settings):
    return CaseCache(root, {"normalize": "zscore", **settings})


def test_cached_store_is_memory_mapped_and_equals_the_in_memory_store(tmp_path):
    refs = open_nnunet(_nnunet(tmp_path / "data")).cases
    plain = _store(refs, None)
    first = _store(refs, _cache(tmp_path / "cache"))
    again = _store(refs, _cache(tmp_path / "cache"))
    for a, b, c in zip(plain, first, again, strict=True):
        assert isinstance(c.image, np.memmap) and isinstance(c.label, np.memmap)
        assert np.array_equal(a.image, c.image) and np.array_equal(a.label, c.label)
        assert np.array_equal(a.fg_points, b.fg_points) and np.array_equal(a.fg_points, c.fg_points)
    assert len(plain[0].fg_points) == 4096  # subsampled with the store's generator, as without a cache
    unlabelled = _store(refs, _cache(tmp_path / "cache"), with_labels=False)
    assert unlabelled[0].label is None and len(unlabelled[0].fg_points) == 0


def test_second_load_reads_no_file_and_a_changed_file_or_setting_misses(tmp_path):
    refs = open_nnunet(_nnunet(tmp_path / "data")).cases
    counts: dict[str, int] = {}
    _store(_counting(refs, counts), _cache(tmp_path / "cache"))
    _store(_counting(refs, counts), _cache(tmp_path / "cache"))
    assert counts == {"c0": 1, "c1": 1, "c2": 1}
    image = tmp_path / "data" / "imagesTr" / "c1_0000.nii.gz"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the old entry is stale
    _store(_counting(refs, counts), _cache(tmp_path / "cache"))
    assert counts == {"c0": 1, "c1": 2, "c2": 1}
    minmax = _store(_counting(refs, counts), _cache(tmp_path / "cache", normalize="minmax"), normalize="minmax")
    assert counts == {"c0": 2, "c1": 3, "c2": 2} and float(minmax[0].image.max()) == 1.0
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 3 + 1 + 3


def test_a_damaged_entry_is_made_again(tmp_path):
    refs = open_nnunet(_nnunet(tmp_path / "data", n=1)).cases
    cache = _cache(tmp_path / "cache")
    [first] = _store(refs, cache)
    damaged = cache.entry_dir(refs[0]) / "image.npy"
    damaged.unlink()  # a new file: truncating the one ``first`` maps in place would be a bus error here
    damaged.write_bytes(b"truncated")
    [again] = _store(refs, cache)
    assert np.array_equal(first.image, again.image) and isinstance(again.image, np.memmap)


def test_a_file_changed_while_read_is_not_stored(tmp_path):
    ref = open_nnunet(_nnunet(tmp_path / "data", n=1)).cases[0]
    image = Path(ref.files[0])

    def load():
        case = ref.load()
        os.utime(image, ns=(0, image.stat().st_mtime_ns + 10**9))
        return case

    _store([dataclasses.replace(ref, load=load)], _cache(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_two_processes_filling_one_entry_both_get_it(tmp_path):
    """The loser of the rename keeps the winner's complete entry and raises nothing."""
    ref = open_nnunet(_nnunet(tmp_path / "data", n=1)).cases[0]
    cache = _cache(tmp_path / "cache")

    def load():  # the other process finishes the same entry while this one is still reading
        _store([ref], _cache(tmp_path / "cache"))
        return ref.load()

    [case] = _store([dataclasses.replace(ref, load=load)], cache)
    assert isinstance(case.image, np.memmap)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.entry_dir(ref).name]


def test_cases_without_files_are_not_cached(tmp_path):
    from semiseg.data.sources.phantom import make_phantoms

    refs = make_phantoms(n_cases=2, dim=2).cases
    stored = _store(refs, _cache(tmp_path / "cache"))
    assert not isinstance(stored[0].image, np.memmap) and not (tmp_path / "cache").exists()


def test_an_unwritable_cache_folder_is_named(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"file/cache cannot be written.*data.cache"):
        resolve_cache_dir(str(blocker / "cache"))
    monkeypatch.setenv("SEMISEG_CACHE", str(blocker / "cache"))
    assert resolve_cache_dir("auto") is None and "cases are held in memory" in capsys.readouterr().err
    assert resolve_cache_dir("off") is None


def test_training_from_the_cache_gives_the_same_weights(tmp_path):
    data = _nnunet(tmp_path / "data", n=5)

    def train(name, cache):
        cfg = load_config(None, [
            "data.source=nnunet", f"data.path={data}", f"data.cache={cache}", "split.labelled=2", "split.val=1",
            "split.test=1", "model.widths=[4, 8]", "train.steps=3", "train.val_every=3", "train.batch_size=2",
            "train.warmup_steps=1", f"output.root={tmp_path}", f"output.name={name}",
        ])
        run = api.train(cfg, progress=False, evaluate=False).run_dir
        return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["nets"]["model"]

    off = train("in_memory", "off")
    filled, reused = train("fill", tmp_path / "cache"), train("reuse", tmp_path / "cache")
    assert all(torch.equal(off[k], filled[k]) and torch.equal(off[k], reused[k]) for k in off)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # labelled and validation cases
