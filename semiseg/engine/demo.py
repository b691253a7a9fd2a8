"""The built-in demo's test images as a folder to try ``semiseg predict`` on (``semiseg data export-demo``).

The demo's cache keeps each subject's image and label side by side, so pointing ``predict`` at it would
segment the label maps too. This writes the test subjects of the default configuration's split, images only,
so a model trained by ``semiseg train`` (default seed) predicts subjects it never trained on.
"""

from __future__ import annotations

from pathlib import Path

from semiseg.config import Config
from semiseg.data.case import DatasetSpec
from semiseg.data.sources import open_dataset
from semiseg.data.splits import make_split, refs_by_id
from semiseg.errors import SemisegError
from semiseg.eval.io import write_image
from semiseg.paths import check_writable_dir


def _demo_dataset(cfg: Config) -> DatasetSpec:
    return open_dataset(cfg.data.source, cfg.data.path, **cfg.data.options)


def export_demo_images(out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``<case>.nii.gz`` (image, affine) for each test case of the default split; returns the files.

    Files already there under those names are refused unless ``overwrite``; nothing is written then.
    """
    check_writable_dir(out, "data export-demo")
    cfg = Config()
    spec = _demo_dataset(cfg)
    split = make_split(spec, labelled=cfg.split.labelled, val=cfg.split.val, test=cfg.split.test,
                       unlabelled=cfg.split.unlabelled, seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed)
    targets = {case_id: out / f"{case_id}.nii.gz" for case_id in split["test"]}
    clashes = [str(path) for path in targets.values() if path.exists()]
    if clashes and not overwrite:
        raise SemisegError(f"{clashes[0]} already exists ({len(clashes)} of the demo's {len(targets)} test images "
                           "are there); pass --overwrite or choose another folder")
    refs = refs_by_id(spec)
    return [write_image(refs[case_id].load(), path) for case_id, path in targets.items()]
