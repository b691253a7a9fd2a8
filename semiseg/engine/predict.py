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
from semiseg.eval.io import input_case_ids, read_inputs, write_label, write_probabilities, write_uncertainty_map
from semiseg.eval.labels import probs_to_label
from semiseg.paths import check_writable_dir
from semiseg.ssl.uncertainty import mutual_information as ssl_mutual_information

_MUST_AGREE = ("class_names", "label_mode", "channels")


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


def predict_files(model: CasePredictor, input_path: str | Path, output: Path, *, save_probabilities: bool = False,
                  overwrite: bool = False) -> list[Path]:
    """Predict every image in ``input_path`` into ``output`` with the input's geometry.

    An ``Ensemble`` of more than one member also writes ``<case>_uncertainty`` (mutual information).
    """
    cases = read_inputs(input_path, model.info["channels"])
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
            model_dir: str | Path | None = None, checkpoint: str = "best", device: str = "auto", tta: bool = False,
            save_probabilities: bool = False, overwrite: bool = False, threads: int | None = None) -> list[Path]:
    """Predict with one run, an ensemble of runs (mean + disagreement map) or an export.

    Runs, output folder and name clashes are checked before any model or image is loaded.
    """
    if (model_dir is None) == (not runs):
        raise SemisegError("predict needs --run RUN (repeatable: an ensemble) or --model EXPORT_DIR, not both")
    output = Path(output_dir)
    for run in runs:
        require_run(Path(run))
    check_writable_dir(output, "--output")
    clashes = [cid for cid in input_case_ids(input_path) if any(output.glob(f"{glob.escape(cid)}.*"))]
    if clashes and not overwrite:
        raise SemisegError(
            f"{output} already holds predictions for {clashes[:3]}; pass --overwrite or another --output"
        )
    if model_dir is not None:
        model: CasePredictor = ExportedModel.load(model_dir, device, tta=tta)
    else:
        members = [load_model(r, checkpoint, device, threads).with_tta(tta) for r in runs]
        model = members[0] if len(members) == 1 else Ensemble(members, [str(r) for r in runs])
    return predict_files(model, input_path, output, save_probabilities=save_probabilities, overwrite=True)
