"""``semiseg suggest``: run a trained model over unlabelled cases and rank them by what a label would teach it.

Which scores a run supports follows from what its method has: every run has the entropy of its prediction;
Monte-Carlo samples (``Method.predict_samples``: SegPL-VI's thresholds, ensemble members, or MC dropout when
``model.dropout > 0``) give ``mutual_info`` and ``threshold_variance``; several predicting networks (co-training
nets, CMT/UCMT students and teacher, AD-MT's and BCP's student and teachers, ensemble members, dual-uncertainty's
snapshots once taken) give
``disagreement``. Inference goes through the run's ``Inferer`` (2D slice-wise, 3D sliding window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from semiseg.data.case import Case
from semiseg.engine.model import LoadedModel, load_model
from semiseg.engine.run import Run
from semiseg.engine.run_folder import require_run
from semiseg.errors import ConfigError, SemisegError
from semiseg.eval import suggest as scoring
from semiseg.eval.io import read_inputs
from semiseg.eval.labels import probs_to_label
from semiseg.methods import Method
from semiseg.ssl.pseudo_labels import probabilities


@dataclass(frozen=True)
class SuggestOptions:
    score: str = "entropy"
    top: int = 5
    region: str = "volume"
    diversity: float = 0.0
    samples: int = 8  # Monte-Carlo draws where the method samples (ensembles give their M members)

    def check(self) -> None:
        if self.score not in scoring.SCORES:
            raise ConfigError(f"--score {self.score!r} is not a score; choose one of {', '.join(scoring.SCORES)}")
        if self.region not in scoring.REGIONS:
            raise ConfigError(f"--region {self.region!r}: choose one of {', '.join(scoring.REGIONS)}")
        for flag, value, smallest in (("--top", self.top, 1), ("--samples", self.samples, 2),
                                      ("--diversity", self.diversity, 0)):
            if value < smallest:
                raise ConfigError(f"{flag} must be >= {smallest}, got {value:g}")


# ----------------------------------------------------------------------------------------------
# what the method has


def members(method: Method) -> tuple[list[str], str | None] | None:
    """The predicting networks whose disagreement is a score, and the reference among them (None: their mean)."""
    name = method.name
    if name == "ensemble":
        return list(method.member_names), None  # type: ignore[attr-defined]
    if name == "cps":
        return ["net1", "net2"], method.cfg.predict_with  # type: ignore[attr-defined]
    if name in ("cmt", "ucmt"):
        core = method.core  # type: ignore[attr-defined]
        predicting = core.prediction_nets()
        if len(predicting) > 1:  # the students' mean predicts: their disagreement
            return predicting, None
        nets = list(core.students) + (["teacher"] if core.has_teacher else [])
        return (nets, predicting[0]) if len(nets) > 1 else None
    if name in ("ad_mt", "bcp"):  # the student and its mean teacher(s); AD-MT's two teachers are made to differ
        return list(method.networks()), method.cfg.predict_with  # type: ignore[attr-defined]
    if name == "dual_uncertainty":
        snapshots = list(getattr(method, "snapshot_names", []))
        if snapshots and method.snapshots_taken == len(snapshots):  # type: ignore[attr-defined]
            return snapshots, snapshots[-1]  # Eq. 1: earlier snapshots against the last one
    return None


def has_samples(method: Method) -> bool:
    return type(method).predict_samples is not Method.predict_samples


def has_dropout(nets: dict[str, nn.Module]) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for net in nets.values() for m in net.modules())


def supported_scores(model: LoadedModel) -> dict[str, str]:
    """Score → where it comes from, for this run."""
    out = {"entropy": "the run's prediction"}
    sampled = ("Method.predict_samples" if has_samples(model.method)
               else "MC dropout" if has_dropout(model.nets) else None)
    if sampled:
        out |= {"mutual_info": sampled, "threshold_variance": sampled}
    found = members(model.method)
    if found:
        out["disagreement"] = f"nets {', '.join(found[0])}" + (f" against {found[1]}" if found[1] else "")
    return out


def _require(model: LoadedModel, score: str) -> str:
    supported = supported_scores(model)
    if score not in supported:
        needs = ("several predicting nets (cps, cmt, ucmt, ad_mt, bcp, ensemble, dual_uncertainty after its snapshots)"
                 if score == "disagreement" else
                 "Monte-Carlo samples (segpl_vi, ensemble, or a run trained with model.dropout > 0)")
        raise SemisegError(f"score {score!r} needs {needs}, which this {model.method.name!r} run does not have; "
                           f"it supports: {', '.join(supported)}")
    return supported[score]


# ----------------------------------------------------------------------------------------------
# samplers: images → (S, B, K, *spatial) probabilities


def _dropout_sampler(model: LoadedModel, n: int) -> Callable[[Tensor], Tensor]:
    """``n`` predictions with the dropout layers active (MC dropout); batch norm stays in eval mode."""
    dropouts = [m for net in model.nets.values() for m in net.modules() if isinstance(m, nn.Dropout)]

    def run(x: Tensor) -> Tensor:
        for layer in dropouts:
            layer.train()
        try:
            mode = model.info["label_mode"]
            return torch.stack([probabilities(model.method.predict(model.nets, x), mode) for _ in range(n)])
        finally:
            for layer in dropouts:
                layer.eval()

    return run


def _members_sampler(model: LoadedModel, names: list[str]) -> Callable[[Tensor], Tensor]:
    mode = model.info["label_mode"]
    return lambda x: torch.stack([probabilities(model.nets[name](x), mode) for name in names])


def score_map(model: LoadedModel, image: np.ndarray, probs: np.ndarray, options: SuggestOptions) -> np.ndarray:
    """The per-voxel map of ``options.score`` for one normalised image."""
    mode, k = model.info["label_mode"], len(model.info["class_names"])
    if options.score == "entropy":
        return scoring.entropy_map(probs, mode)
    if options.score == "disagreement":
        names, reference = members(model.method)  # type: ignore[misc]
        stacked = model.inferer.samples(_members_sampler(model, names), image, k)
        if reference is None:
            return scoring.disagreement_map(stacked)
        ref = names.index(reference)
        return scoring.disagreement_map(np.delete(stacked, ref, axis=0), stacked[ref])
    if has_samples(model.method):
        samples = model.sample_probabilities(image, options.samples)
    else:
        torch.manual_seed(0)  # the same dropout masks on every call: rankings are reproducible
        samples = model.inferer.samples(_dropout_sampler(model, options.samples), image, k)
    if options.score == "mutual_info":
        return scoring.mutual_information_map(samples, mode)
    return scoring.variance_map(samples)


# ----------------------------------------------------------------------------------------------
# a run's cases


def score_case(model: LoadedModel, case: Case, options: SuggestOptions) -> tuple[scoring.CaseSuggestion, np.ndarray]:
    """One case's suggestion (score, volumes, picture slices) and its diversity descriptor."""
    image = model.normalized(case)
    probs = model.predict_normalized(image)
    mode = model.info["label_mode"]
    smap = score_map(model, image, probs, options)
    index = scoring.most_uncertain_slice(smap)
    picture = scoring.case_slices(image, probs_to_label(probs, mode), smap, index)
    suggestion = scoring.CaseSuggestion(
        case_id=case.case_id, score=scoring.aggregate(smap, probs, mode, options.region), slice_index=index,
        volumes=scoring.class_volumes(probs, mode, list(model.info["class_names"]), case.spacing),
        image=picture[0], label=picture[1], score_map=picture[2])
    return suggestion, scoring.descriptor(image)


def suggest_cases(model: LoadedModel, cases: Iterable[Case], out_dir: Path, options: SuggestOptions,
                  facts: dict[str, Any]) -> list[scoring.CaseSuggestion]:
    """Score, rank (with the diversity term) and report ``cases``; returns them in ranked order."""
    options.check()
    source = _require(model, options.score)
    scored = [score_case(model, case, options) for case in cases]
    if not scored:
        raise SemisegError("no cases to rank: the run's split has no unlabelled cases; pass --input FOLDER")
    order = scoring.select_diverse([s.score for s, _ in scored], np.stack([d for _, d in scored]), options.diversity)
    ranked = [scored[i][0] for i in order]
    facts = {**facts, "source of the score": source, "cases ranked": len(ranked), "diversity weight": options.diversity}
    scoring.write_suggestions(ranked, out_dir, score=options.score, region=options.region, top=options.top,
                              label_mode=model.info["label_mode"], class_names=list(model.info["class_names"]),
                              facts=facts)
    return ranked


def suggest_run(run_dir: Path, *, input_path: str | Path | None = None, output: str | Path | None = None,
                checkpoint: str = "best", device: str = "auto", overwrite: bool = False, progress: bool = True,
                data: str | Path | None = None, **options: Any) -> list[scoring.CaseSuggestion]:
    """Rank the run's unlabelled cases (or the images in ``input_path``) with ``SuggestOptions(**options)``;
    report into ``output`` (default ``<run>/suggest/``). The run's own cases need its data (``data``: where it
    is now, when it moved); ``input_path`` needs only the weights."""
    require_run(Path(run_dir))
    opts = SuggestOptions(**options)
    opts.check()
    out_dir = Path(output) if output else Path(run_dir) / "suggest"
    if (out_dir / "suggest.csv").exists() and not overwrite:
        raise SemisegError(f"{out_dir} already holds suggest.csv; pass --overwrite or another --output")
    if input_path is None:
        run = Run.open(run_dir, progress=progress, data=data)
        ids = list(run.split["unlabelled"])
        if not ids:
            raise SemisegError(f"{run_dir}/split.json has no unlabelled cases to rank; pass --input FOLDER of images")
        refs = {ref.case_id: ref for ref in run.dataset.all_refs()}
        model = load_model(run_dir, checkpoint, device)
        cases: Iterable[Case] = (refs[i].load() for i in ids)
        where = f"{len(ids)} unlabelled cases of the run's split"
    else:
        model = load_model(run_dir, checkpoint, device)
        cases = read_inputs(input_path, model.info["channels"])
        where = str(input_path)
    _require(model, opts.score)  # before any inference
    facts = {"run": str(run_dir), "checkpoint": checkpoint, "method": model.method.name, "cases": where}
    return suggest_cases(model, cases, out_dir, opts, facts)
