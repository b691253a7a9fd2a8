"""Config fields several methods share (ramp of the unsupervised weight, reference-guided pseudo labels)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import Tensor

from semiseg.methods.base import MethodConfig, NetSpec, Progress
from semiseg.ssl.joint import PassSetting
from semiseg.ssl.ramps import rampup
from semiseg.ssl.reference import ReferenceSettings
from semiseg.ssl.strong_augment import GEOMETRIC_OPS, INTENSITY_OPS, StrongAugment, checked_ops, intensity_view

RampKind = Literal["linear", "sigmoid", "gaussian", "cosine", "none"]
StudentView = Literal["clean", "intensity"]


class RampedWeight(MethodConfig):
    """λ(t) = weight × ramp(t / (rampup_fraction × total steps))."""

    weight: float = Field(1.0, ge=0)
    rampup: RampKind = "sigmoid"
    rampup_fraction: float = Field(0.4, ge=0, le=1)

    def weight_at(self, progress: Progress) -> float:
        return self.weight * rampup(self.rampup, progress.step, self.rampup_fraction * progress.total_steps)


class RandAugmentOptions(MethodConfig):
    """RandAugment's strong view: ``n_ops`` operations per image drawn from ``ops`` (``semiseg.ssl.strong_augment``)."""

    n_ops: int = Field(2, ge=0)
    ops: list[str] = Field(default_factory=lambda: list(INTENSITY_OPS + GEOMETRIC_OPS))
    # probability that a strong view starts with a random intensity remap (GIN-IPA: another scanner's contrast,
    # ``semiseg.data.remap``); off by default
    strong_remap: float = Field(0.0, ge=0, le=1)

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        return list(checked_ops(ops, INTENSITY_OPS + GEOMETRIC_OPS))

    def strong_settings(self, cutout: bool) -> StrongAugment:
        """The strong view these options describe, with or without CutOut."""
        return StrongAugment(n_ops=self.n_ops, ops=tuple(self.ops), cutout=cutout, remap=self.strong_remap)


class StudentViewOption(MethodConfig):
    """What the student's unlabelled pass sees: the image its pseudo labels were made on, or an intensity view.

    ``clean`` is the papers' setting. ``intensity`` gives the student ``view_ops`` random intensity operations
    of RandAugment's pool (``semiseg.ssl.strong_augment.intensity_view``) while the labels still come from the
    clean image, as FixMatch's strong view does without moving the label: on data whose unlabelled scans come
    from other scanners than the labelled one, it teaches the network to answer alike across contrasts.
    """

    student_view: StudentView = "clean"
    view_ops: int = Field(2, ge=1)  # operations per image of the intensity view
    # the intensity ops the view draws from (default: all of INTENSITY_OPS)
    view_pool: list[str] = Field(default_factory=lambda: list(INTENSITY_OPS))
    # probability that an image's intensity view starts with a random intensity remap (GIN-IPA: a contrast no
    # scanner gave, ``semiseg.data.remap``), as FixMatch's strong view does; off by default
    view_remap: float = Field(0.0, ge=0, le=1)

    @field_validator("view_pool")
    @classmethod
    def _known_view_ops(cls, ops: list[str]) -> list[str]:
        return list(checked_ops(ops, INTENSITY_OPS, "intensity "))

    @model_validator(mode="after")
    def _remap_needs_a_view(self) -> StudentViewOption:
        """A remap is part of the intensity view: asked for on a clean student it would silently do nothing (a
        method's own default remap simply goes with its view when ``student_view: clean`` is chosen)."""
        if self.view_remap > 0 and self.student_view == "clean" and "view_remap" in self.model_fields_set:
            raise ValueError("view_remap > 0 remaps the student's intensity view: set student_view: intensity "
                             "as well, or view_remap: 0")
        return self

    def student_image(self, image: Tensor) -> Tensor:
        """The student's unlabelled input for this step (``image`` itself when the view is clean)."""
        if self.student_view == "clean":
            return image
        return intensity_view(image, self.view_ops, ops=tuple(self.view_pool), remap=self.view_remap)


class PassesOption(MethodConfig):
    """How labelled and unlabelled images go through the network (``semiseg.ssl.joint.joint_forward``)."""

    # joint: one pass over [labelled; unlabelled], BatchNorm statistics shared (the papers' code); separate: one
    # pass each, so each part is normalised with its own statistics; separate_until_gate: separate while the
    # reliability gate keeps the unlabelled terms off, joint once it has opened. None: train.unlabelled_pass.
    unlabelled_pass: PassSetting | None = None


class WeightAverageOption(MethodConfig):
    """An exponential moving average of the trained network's weights (and BatchNorm statistics) predicts.

    FixMatch's code evaluates with such an average: it smooths the step-to-step noise of the last updates, which
    a run whose unlabelled term keeps moving the weights shows at its last checkpoint. It never trains or labels
    anything, so the method's steps are unchanged; it predicts, opens the reliability gate and picks the best
    checkpoint. Offered to supervised training alike, so a gain can be told from the averaging. Its memory is a
    half-life, as ``ema_half_life``'s: FixMatch's decay 0.999 spans a sliver of its ~10⁶-step runs but keeps a
    third of the first half of a 2000-step one.
    """

    # half-life of the average: steps, or a share of the run when < 1 (0.1: the last tenth weighs half);
    # None: the trained network predicts
    predict_average: float | None = Field(None, gt=0)

    def with_average(self, specs: dict[str, NetSpec], source: str) -> dict[str, NetSpec]:
        """``specs`` plus the averaged copy of ``source`` (net ``average``) when ``predict_average`` is set."""
        if self.predict_average is None:
            return specs
        return {**specs, "average": NetSpec(trainable=False, ema_of=(source,), ema_half_life=self.predict_average,
                                            ema_buffers="average", decay_option="predict_average")}

    def predictor(self, source: str) -> str:
        """The net that predicts: the average when there is one, else ``source``."""
        return source if self.predict_average is None else "average"


class ReferenceOptions(MethodConfig):
    """Reference-guided pseudo labels (Seibold et al. 2022), for any method that takes pseudo labels from them.

    The pool is drawn from the current labelled batch (p of its images, covering every class the batch holds);
    see ``semiseg.ssl.reference``.
    """

    pool_size: int = Field(3, ge=1)  # p, labelled images in the reference pool (paper: 3)
    reference_size: int | None = Field(None, ge=1)  # s per axis (paper: 64); None: 64 in 2D, 16 in 3D
    k: int = Field(7000, ge=1)  # nearest references of Eq. 5 (paper: 7000 of p·s² = 12288); used when given alone
    # k as a share of the references (Table 3); overrides k. Default 0.1, not the paper's 57 %: at 57 % W weighs
    # background labels ~10× above foreground ones on small structures (docs/methods/rpg.md). null: use k.
    k_fraction: float | None = Field(0.1, gt=0, le=1)
    weighting: bool = True  # Eq. 7's W; False gives the paper's "Nearest Neighbor" baseline (W ≡ 1)
    block_mb: float = Field(4.0, gt=0)  # memory of one similarity block of the chunked matcher
    # None: the nearest reference's label (Eq. 4); n: the majority label of the n nearest references (not in the
    # paper; on the demo 25 votes label better than the network itself, test Dice level, 2.5× RPG's time; rpg.md)
    votes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _k_given_alone_wins(self) -> ReferenceOptions:
        """A ``k`` given without ``k_fraction`` is used as given (the paper's ``k: 7000``), not overridden."""
        if "k" in self.model_fields_set and "k_fraction" not in self.model_fields_set:
            self.k_fraction = None
        return self

    def reference_settings(self) -> ReferenceSettings:
        return ReferenceSettings(
            pool_size=self.pool_size, size=self.reference_size, k=self.k, k_fraction=self.k_fraction,
            weighting=self.weighting, block_elements=max(1, int(self.block_mb * 2**20) // 4), votes=self.votes,
        )
