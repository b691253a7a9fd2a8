"""A trained model: one checkpoint of a run folder, ready to predict; needs neither the dataset nor config.yaml.

A checkpoint describes itself (method, resolved config, dataset description, patch), so ``load_model`` works
on a run folder copied to another machine without its training data, from any working directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from semiseg.config import Config, validate_config
from semiseg.data.case import Case
from semiseg.data.loaders import normalize_image
from semiseg.engine.assemble import make_inferer, method_context, set_threads
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.device import resolve_device
from semiseg.engine.inferer import Inferer
from semiseg.engine.networks import build_nets
from semiseg.engine.run_folder import checkpoint_to_use, require_run
from semiseg.errors import SemisegError
from semiseg.methods import Method, get_method
from semiseg.methods.base import Nets
from semiseg.nets.unet import case_norm_stats


@dataclass
class LoadedModel:
    """A trained method ready to predict: nets in eval mode, the run's Inferer and its normalisation."""

    cfg: Config
    method: Method
    nets: Nets
    info: dict[str, Any]
    patch_size: list[int]
    inferer: Inferer
    # predict with this network alone instead of the method's rule (``only``); None: the method's ``predict``
    net: str | None = None
    # BatchNorm statistics re-estimated on each case before it is predicted (``with_case_norm``)
    case_norm: bool = False

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], device: torch.device) -> LoadedModel:
        """Method, nets and Inferer of a loaded checkpoint (its config and dataset description travel with it)."""
        cfg, info = validate_config(state["config"]), state["dataset"]
        method = get_method(state["method"])(method_context(cfg, info), cfg.method)
        method.load_state_dict(state["method_state"])
        nets = build_nets(method, cfg, method.ctx, device)
        for name, net in nets.items():
            net.load_state_dict(state["nets"][name])
            net.eval()
        inferer = make_inferer(cfg, info["label_mode"], device, nets, state["patch_size"])
        return cls(cfg, method, nets, info, state["patch_size"], inferer)

    def with_tta(self, tta: bool = True) -> LoadedModel:
        """The same model predicting with (or without) flip test-time augmentation."""
        return dataclasses.replace(self, inferer=dataclasses.replace(self.inferer, tta=tta))

    def with_case_norm(self, case_norm: bool = True) -> LoadedModel:
        """The same model normalising each case with BatchNorm statistics of that case (AdaBN): for cases from a
        scanner whose intensities the training statistics do not describe. Measured in ``docs/protocol.md``
        ("Normalising each case with its own statistics"): a gain on the multi-site 2D data, a loss in 3D."""
        if case_norm and self.cfg.model.norm != "batch":
            raise SemisegError(f"--adapt-bn re-estimates BatchNorm statistics, and this run's networks normalise with "
                               f"model.norm={self.cfg.model.norm}, which has no running statistics: leave it out")
        return dataclasses.replace(self, case_norm=case_norm)

    def only(self, net: str) -> LoadedModel:
        """The same checkpoint predicting with network ``net`` alone (a teacher, a student, a frozen labeller):
        which of a method's networks segments is a diagnostic a mean Dice cannot give."""
        if net not in self.nets:
            raise ValueError(f"the checkpoint has no network {net!r}; it has {sorted(self.nets)}")
        return dataclasses.replace(self, net=net)

    @property
    def divisor(self) -> int:
        return self.inferer.divisor

    @property
    def device(self) -> torch.device:
        return self.inferer.device

    def _predict(self, x: Tensor) -> Tensor:
        return self.method.predict(self.nets, x) if self.net is None else self.nets[self.net](x)

    def probabilities(self, case: Case) -> np.ndarray:
        return self.predict_normalized(self.normalized(case))

    def normalized(self, case: Case) -> np.ndarray:
        """The network's input: the case image after the run's intensity normalisation."""
        return normalize_image(case.image, self.cfg.data.normalize)

    def predict_normalized(self, image: np.ndarray) -> np.ndarray:
        """``(K, *spatial)`` probabilities of an already normalised image (robustness perturbs that input)."""
        if not self.case_norm:
            return self.inferer.probabilities(self._predict, image)
        with case_norm_stats(self.nets.values(), lambda: self.inferer.probabilities(self._predict, image)):
            return self.inferer.probabilities(self._predict, image)

    def input_gradient(self, image: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """Gradient of the cross-entropy against ``onehot`` w.r.t. a normalised image (FGSM)."""
        return self.inferer.input_gradient(self._predict, image, onehot)

    def sample_probabilities(self, image: np.ndarray, n: int) -> np.ndarray | None:
        """``(S, K, *spatial)`` Monte-Carlo probabilities (``Method.predict_samples``), or None without them."""
        return self.inferer.samples(lambda x: self.method.predict_samples(self.nets, x, n), image,
                                    len(self.info["class_names"]))


def load_model(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
               threads: int | None = None) -> LoadedModel:
    """One checkpoint of a run folder, ready to predict (``best`` falls back to ``last`` before validation).

    Predicts with the run's ``train.threads`` (``threads`` overrides it) and its inference settings.
    """
    run_dir = Path(run_dir)
    require_run(run_dir)
    dev = resolve_device(device)
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint_to_use(run_dir, checkpoint)}.pt", dev)
    set_threads(validate_config(state["config"]), threads)
    return LoadedModel.from_checkpoint(state, dev)
