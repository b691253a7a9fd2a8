"""Prediction files from one run, an ensemble of runs, or an export.

An ensemble averages its members' probabilities (seeds, methods, a deep ensemble): every member predicts the
whole case in its own run's geometry and normalisation, so members may differ in method, width or patch. Its
members must agree on what the probabilities mean (classes, label mode, input channels). Next to each
prediction it writes the members' disagreement, the mutual information between the prediction and the
member, ``H(mean) − mean H(member)`` in nats: zero where every member says the same, large where confident
members contradict each other (the entropy of the mean alone would also be large where all are unsure).
"""

from __future__ import annotations

import glob
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from semiseg.data.case import Case
from semiseg.engine.export import ExportedModel
from semiseg.engine.model import load_model
from semiseg.engine.run_folder import require_run
from semiseg.errors import SemisegError
from semiseg.eval.io import (
    input_case_ids,
    input_slices,
    read_inputs,
    write_label,
    write_probabilities,
    write_uncertainty_map,
)
from semiseg.eval.labels import probs_to_label
from semiseg.paths import check_writable_dir
from semiseg.ssl.uncertainty import mutual_information as ssl_mutual_information

_MUST_AGREE = ("class_names", "label_mode", "channels")
_LABEL_NAME = re.compile(r"[_-](label|labels|seg|segmentation|mask|gt)$", re.IGNORECASE)
_FEW_VALUES = 8  # an image has hundreds of intensities; a label map a handful of classes


class CasePredictor(Protocol):
    """What prediction needs of a model: what it predicts (``info``) and whole-case probabilities."""

    info: dict[str, Any]

    def probabilities(self, case: Case) -> np.ndarray: ...


@dataclass
class Ensemble:
    """Members' probabilities averaged; ``names`` say which run each member is in error messages."""

    members: Sequence[CasePredictor]
    names: Sequence[str]

    def __post_init__(self) -> None:
        if not self.members:
            raise SemisegError("an ensemble needs at least one run; pass --run RUN (repeatable)")
        first = self.members[0].info
        for name, member in zip(self.names[1:], self.members[1:], strict=True):
            for key in _MUST_AGREE:
                if member.info[key] != first[key]:
                    raise SemisegError(
                        f"runs {self.names[0]} and {name} disagree on {key} ({first[key]!r} vs {member.info[key]!r}); "
                        "an ensemble averages probabilities of the same classes, so give runs trained on one dataset"
                    )

    @property
    def info(self) -> dict[str, Any]:
        return self.members[0].info

    def member_probabilities(self, case: Case) -> np.ndarray:
        """``(M, K, *spatial)``: every member's whole-case probabilities."""
        return np.stack([member.probabilities(case) for member in self.members])

    def probabilities(self, case: Case) -> np.ndarray:
        return self.member_probabilities(case).mean(axis=0)


def mutual_information(member_probs: np.ndarray, label_mode: str) -> np.ndarray:
    """``(*spatial)`` disagreement map of ``(M, K, *spatial)`` member probabilities (``ssl.uncertainty``)."""
    return ssl_mutual_information(torch.from_numpy(np.ascontiguousarray(member_probs))[:, None], label_mode)[0].numpy()


def label_map_hint(case: Case) -> str | None:
    """Why ``case`` looks like a label map rather than an image (its name, or few integer values); else None."""
    if _LABEL_NAME.search(case.case_id):
        return f"its name ends in {_LABEL_NAME.search(case.case_id)[0]!r}"
    image = case.image
    sample = image.ravel()[:: max(1, image.size // 100_000)]  # an image shows many values in any sample
    if image.size and np.unique(sample).size <= _FEW_VALUES and np.array_equal(image, np.round(image)):
        values = np.unique(image)
        if values.size <= _FEW_VALUES:
            return f"it holds only the {values.size} integer value(s) {values.astype(np.int64).tolist()}"
    return None


def _warn_label_maps(cases: Sequence[Case]) -> None:
    for case in cases:
        hint = label_map_hint(case)
        if hint is not None:
            source = case.meta.get("files", [case.case_id])[0]
            print(f"warning: {source} looks like a label map, not an image ({hint}); predicting it anyway, but "
                  "give predict images only (e.g. 'semiseg data export-demo DIR' for the demo's)", file=sys.stderr)


def check_input_dims(input_path: str | Path, model_dim: int, model: str) -> None:
    """Refuse 2D images (a PNG, a 2D or one-slice volume) for a 3D network, which would see a window of one slice.

    A 2D network predicts a volume slice by slice, so it takes both; checked from the file headers only.
    """
    if model_dim != 3:
        return
    flat = [file for file, slices in input_slices(input_path) if slices < 2]
    if flat:
        raise SemisegError(f"{flat[0]} is a 2D image but {model} is a 3D model (model.dim 3), which predicts "
                           f"volumes of several slices{f' ({len(flat)} such files)' if len(flat) > 1 else ''}; "
                           "predict 2D images with a 2D model (model.dim=2)")


def check_export_checkpoint(sidecar: dict[str, Any], model_dir: str | Path, checkpoint: str | None) -> None:
    """An export holds the one checkpoint it was made from: refuse ``--checkpoint`` asking for another one."""
    held = sidecar.get("checkpoint")
    if checkpoint is not None and checkpoint != held:
        raise SemisegError(f"--checkpoint {checkpoint}: the export {model_dir} holds the {held} checkpoint only "
                           f"(export.json); drop --checkpoint, or export that one with 'semiseg export --checkpoint "
                           f"{checkpoint}'")


def check_models_and_inputs(runs: Sequence[str | Path], model_dir: str | Path | None, checkpoint: str | None,
                            input_path: str | Path) -> None:
    """What ``predict`` can refuse before loading a model: an export asked for another checkpoint than the one it
    holds, 2D images for a 3D model (read from ``config.yaml`` / ``export.json`` and the images' headers)."""
    for model, dim in _model_dims(runs, model_dir, checkpoint):
        check_input_dims(input_path, dim, model)


def _model_dims(runs: Sequence[str | Path], model_dir: str | Path | None,
                checkpoint: str | None) -> list[tuple[str, int]]:
    from semiseg.config import read_yaml, validate_config
    from semiseg.engine.export import read_sidecar

    if model_dir is not None:
        sidecar = read_sidecar(Path(model_dir))
        check_export_checkpoint(sidecar, model_dir, checkpoint)
        return [(f"the export {model_dir}", sidecar["dim"])]
    return [(f"run {run}", validate_config(read_yaml(Path(run) / "config.yaml")).model.dim) for run in runs]


def predict_files(model: CasePredictor, input_path: str | Path, output: Path, *, save_probabilities: bool = False,
                  overwrite: bool = False) -> list[Path]:
    """Predict every image in ``input_path`` into ``output`` with the input's geometry.

    An ``Ensemble`` of more than one member also writes ``<case>_uncertainty`` (mutual information).
    """
    cases = read_inputs(input_path, model.info["channels"])
    _warn_label_maps(cases)
    clashes = [c.case_id for c in cases if any(output.glob(f"{c.case_id}.*"))]
    if clashes and not overwrite:
        raise SemisegError(
            f"{output} already holds predictions for {clashes[:3]}; pass --overwrite or another --output"
        )
    label_mode, written = model.info["label_mode"], []
    disagreement = isinstance(model, Ensemble) and len(model.members) > 1
    for case in cases:
        members = model.member_probabilities(case) if disagreement else None
        probs = members.mean(axis=0) if members is not None else model.probabilities(case)
        written.append(write_label(case, probs_to_label(probs, label_mode), output))
        if save_probabilities:
            written.append(write_probabilities(case, probs, output))
        if members is not None:
            written.append(write_uncertainty_map(case, mutual_information(members, label_mode), output))
    return written


def predict_runs(runs: Sequence[str | Path], input_path: str | Path, output_dir: str | Path, *,
                 model_dir: str | Path | None = None, checkpoint: str | None = None, device: str = "auto",
                 tta: bool = False, adapt_bn: bool = False, save_probabilities: bool = False,
                 overwrite: bool = False, threads: int | None = None) -> list[Path]:
    """Predict with one run, an ensemble of runs (mean + disagreement map) or an export.

    Runs, output folder, name clashes, ``checkpoint`` (default best; an export's own) and the inputs'
    dimension are checked before any model or image is loaded.
    """
    if (model_dir is None) == (not runs):
        raise SemisegError("predict needs --run RUN (repeatable: an ensemble) or --model EXPORT_DIR, not both")
    if adapt_bn and model_dir is not None:
        raise SemisegError("--adapt-bn re-estimates BatchNorm statistics of a run's networks; an export's are fixed "
                           "in its file: predict with --run RUN instead of --model")
    output = Path(output_dir)
    for run in runs:
        require_run(Path(run))
    check_writable_dir(output, "--output")
    clashes = [cid for cid in input_case_ids(input_path) if any(output.glob(f"{glob.escape(cid)}.*"))]
    if clashes and not overwrite:
        raise SemisegError(
            f"{output} already holds predictions for {clashes[:3]}; pass --overwrite or another --output"
        )
    check_models_and_inputs(runs, model_dir, checkpoint, input_path)
    if model_dir is not None:
        model: CasePredictor = ExportedModel.load(model_dir, device, tta=tta)
    else:
        members = [load_model(r, checkpoint or "best", device, threads).with_tta(tta).with_case_norm(adapt_bn)
                   for r in runs]
        model = members[0] if len(members) == 1 else Ensemble(members, [str(r) for r in runs])
    return predict_files(model, input_path, output, save_probabilities=save_probabilities, overwrite=True)
