"""The small contract every method implements, and the value types that cross it.

A method reads like its paper: which networks it needs (``networks``), the loss terms of one step
(``training_step``) and which network predicts at test time (``predict``). It never runs a loop, touches
files or picks a device. The engine owns the plumbing every method would otherwise repeat: the step without
an unlabelled batch (``supervised_step``, or a ``ConfigError`` before training for methods that set
``needs_unlabelled_batch``), EMA of declared teachers, chained updates, logging every key a step reports.
A staged method may return a ``Curriculum`` (a pass over whole unlabelled cases, a subset to draw from).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from semiseg.errors import ConfigError
from semiseg.losses import segmentation_loss
from semiseg.ssl.ema import decay_for_half_life, resolve_half_life
from semiseg.ssl.joint import Passes, PassSetting


@dataclass(frozen=True)
class NetSpec:
    """One network a method needs.

    ``overrides`` change the shared architecture for this net only (e.g. ``{"aux_decoders": ["interp"]}``);
    ``builder`` replaces the shared architecture altogether (small heads such as a learnt threshold);
    ``init_seed_offset`` gives co-training nets different initial weights; a net with ``ema_of`` follows
    the EMA of the named net(s) after every optimiser step, mixing them with ``ema_weights`` (equal when
    empty). Such a net is usually ``trainable=False``; UCMT's teacher is both trained (Eq. 3) and
    averaged (Eq. 6). ``head_seed_offset`` re-initialises only the output heads with their own seed, so
    nets with the same ``init_seed_offset`` share their body and differ in the heads — the situation of
    papers whose networks share a pretrained backbone, and what makes averaging their weights meaningful.
    The decay warms up as min(1 − 1/(t + 1), ``ema_decay``) so an early teacher is not
    stuck near its random initialisation (Tarvainen & Valpola's code). ``ema_half_life`` (steps, or a
    fraction of the run when < 1) overrides ``ema_decay`` once the run length is known (``decay``);
    ``ema_updates_per_step`` converts it to EMA updates for methods that update twice per step (UCMT).
    """

    builder: Callable[[MethodContext], nn.Module] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True
    init_seed_offset: int = 0
    ema_of: tuple[str, ...] = ()
    ema_decay: float = 0.99
    ema_weights: tuple[float, ...] = ()
    head_seed_offset: int | None = None
    ema_half_life: float | None = None
    ema_updates_per_step: int = 1
    # "copy": BN statistics follow the sources' mix; "own": the net's own train-mode passes; "average": an EMA
    # of the sources' statistics, for a net that never runs in train mode (see ssl.ema_update)
    ema_buffers: str = "copy"
    # the method option that sets this EMA's memory (a decay, or a half-life such as ``predict_average``), named by
    # the warning of an average longer than the run
    decay_option: str = "ema_decay"
    # steps after which the EMA applies (None: every step); a pure function of the 0-based step, so --resume
    # needs no state (AD-MT's teachers take turns)
    ema_on: Callable[[int], bool] | None = None

    def decay(self, total_steps: int) -> float:
        """The EMA decay of a run of ``total_steps``: from ``ema_half_life`` when set, else ``ema_decay``."""
        if self.ema_half_life is None:
            return self.ema_decay
        steps = resolve_half_life(self.ema_half_life, total_steps)
        return decay_for_half_life(steps * self.ema_updates_per_step)


@dataclass
class Batch:
    """A training batch on the engine's device.

    ``label`` is ``None`` for unlabelled batches; multiclass labels are ``(B, *spatial)`` long,
    multilabel ``(B, K, *spatial)`` float. ``image`` is the loader's (weakly augmented) view; methods that
    need a strong view build it on the device (``semiseg.ssl.strong_augment``).
    """

    image: Tensor
    label: Tensor | None = None
    case_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """Where the run stands at this step: what a method's ramps and pass layout may depend on.

    ``unlabelled_on`` is the reliability gate's state (True without a gate): whether the unlabelled terms act
    this step. Only the ``separate_until_gate`` pass layout reads it.
    """

    step: int  # 0-based index of the current step
    total_steps: int
    unlabelled_on: bool = True

    @property
    def fraction(self) -> float:
        """Share of training done, in [0, 1]; ramps read this."""
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class StepOut:
    """Named, already-weighted loss terms (the engine sums them) and scalar logs.

    ``followup`` makes one iteration several optimiser updates (UCMT's second step on UMIX samples):
    after updating with these losses (and the EMA), the engine calls it for the next update's ``StepOut``.

    ``targets`` and ``masks`` say what the unlabelled loss teaches, so the engine can score it against labels
    the method never sees (``semiseg.engine.teach``): targets are hard labels (``(B, *spatial)`` class indices,
    multilabel ``(B, K, *spatial)`` 0/1) or probabilities ``(B, K, *spatial)`` on the unlabelled batch as
    drawn; masks are per-pixel weights in [0, 1] (``(B, *spatial)`` or per channel), a mask named like a target
    weighting that target; a method whose labeller is not the trained net may add the student's own prediction
    on the batch (``"student"``) as the reference the targets must beat. Report what the step already computed
    (detached); no extra passes. Only the first update
    of a chained step is scored: a ``followup`` runs on mixed images (UMIX) that the truth does not describe.
    """

    losses: dict[str, Tensor]
    logs: dict[str, float] = field(default_factory=dict)
    followup: Callable[[], StepOut] | None = None
    targets: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    # Names of the terms in ``losses`` that come from unlabelled data: the reliability gate scales these and
    # leaves every other term alone. Empty: every term is labelled.
    unlabelled: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.unlabelled) - set(self.losses)
        if unknown:
            raise ValueError(f"StepOut.unlabelled names {sorted(unknown)}, which are not loss terms "
                             f"(losses: {sorted(self.losses)})")


@dataclass(frozen=True)
class WholeCase:
    """One unlabelled case, whole, for methods whose curriculum looks at every case (sample ranking).

    ``image`` is the normalised ``(C, X, Y, Z)`` volume on the engine's device (Z = 1 for 2D cases).
    ``probabilities(predictor)`` runs the engine's whole-case inference with ``predictor`` (images → logits):
    every slice, batched, for 2D models, the sliding window for 3D ones; it returns ``(K, X, Y, Z)``
    probabilities, so a method never needs to know the patch size or the network's divisor.
    """

    case_id: str
    image: Tensor
    probabilities: Callable[[Callable[[Tensor], Tensor]], Tensor]


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the task: label layout, sizes and the supervised loss."""

    label_mode: str
    num_classes: int
    spatial_dims: int
    in_channels: int
    supervised_loss: Callable[..., Tensor]  # loss(logits, target, mask=None, weight=None)
    include_background: bool = False
    # train.unlabelled_pass; "auto" leaves it to the method (``Method.default_unlabelled_pass``)
    unlabelled_pass: PassSetting | Literal["auto"] = "auto"

    def loss(self, name: str) -> Callable[..., Tensor]:
        """A named loss (dice | ce | dice_ce) in this task's label mode, for methods whose paper fixes one."""
        return partial(segmentation_loss(name), label_mode=self.label_mode, include_background=self.include_background)


class MethodConfig(BaseModel):
    """Base for a method's own hyper-parameters (strict: a typo is an error)."""

    model_config = ConfigDict(extra="forbid")


Nets = dict[str, nn.Module]


class Curriculum(ABC):
    """A staged method's say over the unlabelled data (e.g. sample sorting in dual-uncertainty self-training).

    Before each step the engine asks ``wants_cases``; if so it hands ``on_cases`` every unlabelled case whole
    (nets in eval mode, no gradients, the run's own 2D/3D inference). ``subset`` then restricts the cases
    the step's unlabelled batch is drawn from; ``artifacts`` are written as JSON into ``artifacts/`` of the
    run folder with every checkpoint. Its state belongs in the method's ``state_dict``.
    """

    @abstractmethod
    def wants_cases(self, progress: Progress) -> bool:
        """Whether the engine must call ``on_cases`` before this step."""

    @abstractmethod
    def on_cases(self, nets: Nets, cases: Iterable[WholeCase], progress: Progress) -> None:
        """A pass over every unlabelled case before the step (e.g. ranking them)."""

    @abstractmethod
    def subset(self, progress: Progress) -> Sequence[str] | None:
        """Case ids this step's unlabelled batch is drawn from (None: every unlabelled case).

        Asked before each batch is drawn, so it must follow from ``progress`` and the method state alone;
        that makes ``--resume`` draw from the same subset without the engine storing it.
        """

    def artifacts(self) -> dict[str, Any]:
        """JSON-able records, written to ``artifacts/<name>.json`` in the run folder at each checkpoint."""
        return {}


# train.steps=auto (Method.default_steps): optimiser updates of a run at the defaults. Chosen on validation Dice
# (docs/protocol.md, "Decisions"): supervised training peaks within 1000 steps at one labelled case on every
# development dataset, while the semi-supervised methods were still gaining there.
AUTO_UPDATES_SUPERVISED = 1000
AUTO_UPDATES = 2000


class Method(ABC):
    """Base class: subclasses define ``training_step``; the defaults give one network, no state."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    uses_unlabelled: ClassVar[bool] = False
    # True for methods whose every loss compares networks on unlabelled images (teachers, co-training):
    # without an unlabelled batch they have no step, and the engine refuses to start.
    needs_unlabelled_batch: ClassVar[bool] = False
    # What train.unlabelled_gate=auto means for this method: the reliability gate, unless measurements show the
    # method loses by it (then "off", with the evidence in its docstring).
    default_unlabelled_gate: ClassVar[Literal["off", "labelled_dice"]] = "labelled_dice"
    # What train.unlabelled_pass=auto means for this method (its measured choice, with the evidence in its docs).
    default_unlabelled_pass: ClassVar[PassSetting] = "separate"
    # Optimiser updates one step makes (UCMT: two); train.steps=auto counts updates, not steps.
    updates_per_step: ClassVar[int] = 1

    @classmethod
    def default_steps(cls) -> int:
        """What ``train.steps=auto`` trains: ``AUTO_UPDATES`` for a method that learns from unlabelled data
        (ramps, EMA teachers and stages need the length), ``AUTO_UPDATES_SUPERVISED`` otherwise; the evidence is
        in docs/protocol.md ("Decisions")."""
        updates = AUTO_UPDATES if cls.uses_unlabelled else AUTO_UPDATES_SUPERVISED
        return max(1, updates // cls.updates_per_step)

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.cfg = parse_method_options(type(self), options or {})

    @property
    def unlabelled_pass_setting(self) -> PassSetting:
        """One rule for every method: its ``method.unlabelled_pass`` option when set (one method of a comparison),
        else the run's ``train.unlabelled_pass``, else (``auto``) the method's ``default_unlabelled_pass``."""
        own = getattr(self.cfg, "unlabelled_pass", None)
        if own is not None:
            return own
        return self.default_unlabelled_pass if self.ctx.unlabelled_pass == "auto" else self.ctx.unlabelled_pass

    def unlabelled_pass(self, progress: Progress) -> Passes:
        """The pass this step's forwards make: the setting, with ``separate_until_gate`` resolved by the gate's
        state (``progress.unlabelled_on``)."""
        setting = self.unlabelled_pass_setting
        if setting == "separate_until_gate":
            return "joint" if progress.unlabelled_on else "separate"
        return setting

    def networks(self) -> dict[str, NetSpec]:
        return {"model": NetSpec()}

    def schedule_restarts(self, total_steps: int) -> list[int]:
        """Steps where the learning-rate schedule starts again (warm-up, then its decay over the segment up to
        the next restart): a method made of phases that the paper trains as separate runs. No restarts by default."""
        return []

    def on_validation(self, nets: Nets, step: int, dice: float) -> None:
        """The run's validation Dice of ``nets`` after ``step`` steps (NaN without a validation set), on every
        process alike. For a method that selects a network on validation, as ST++-style self-training labels with
        the best checkpoint of a phase; nothing by default."""
        return None

    @abstractmethod
    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch | None, progress: Progress) -> StepOut:
        """The loss terms of one step.

        ``unlabelled`` is a batch for every method that ``uses_unlabelled`` (the engine calls ``supervised_step``
        instead when a step has none) and None for the others.
        """

    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        """The labelled term alone: the supervised baseline's step, and the engine's for a step without an
        unlabelled batch. Methods whose labelled term differs (deep supervision, extra decoders) override it."""
        return StepOut(losses={"sup": self.ctx.supervised_loss(nets["model"](labelled.image), labelled.label)})

    def curriculum(self) -> Curriculum | None:
        """The method's curriculum over unlabelled cases (None: every step draws from all of them)."""
        return None

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        """Logits used at test time."""
        return nets["model"](x)

    def predict_samples(self, nets: Nets, x: Tensor, n: int) -> Tensor | None:
        """``n`` stochastic predictions as ``(S, B, K, *spatial)`` probabilities, or None if the method has none.

        Uncertainty evaluation turns them into mean and variance maps: SegPL-VI samples its threshold,
        ensembles return their members (S = M, whatever ``n``). Deterministic methods keep this default.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Learned or scheduled state outside the networks (thresholds, banks, curriculum)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state but the checkpoint holds {sorted(state)}")


def parse_method_options(method: type[Method], options: dict[str, Any]) -> MethodConfig:
    """``method.*`` validated by the method's ``Config``; one ``ConfigError`` naming every bad key."""
    try:
        return method.Config.model_validate(options)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            key = "method." + ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                valid = ", ".join(method.Config.model_fields) or "none"
                msgs.append(f"unknown key {key!r} for method {method.name!r} (valid: {valid})")
            else:
                msgs.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(msgs)) from None
