"""A method's ``Curriculum`` in the loop: its passes over whole unlabelled cases and its subset of them.

Before each step the curriculum is asked whether it wants the unlabelled cases: if so it gets every one whole
(eval mode, no gradients, the run's ``Inferer``) on rank 0, and the other processes take its method state and
nets; its ``subset`` then restricts the cases the step's unlabelled batch is drawn from. Its ``artifacts`` are
written with every checkpoint (``engine.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from semiseg.data.loaders import StoredCase
from semiseg.engine.handlers import Handler, StepRecord, TrainingLoop
from semiseg.methods.base import Curriculum, Progress, WholeCase


class CurriculumHandler(Handler):
    """``on_step_start``: the curriculum's optional whole-case pass, then its subset for this step's batch.

    The method is asked for its curriculum at every step (None: nothing to do), as the contract allows."""

    def on_step_start(self, loop: TrainingLoop, step: StepRecord) -> None:
        curriculum = loop.method.curriculum()
        if curriculum is None:
            return
        if curriculum.wants_cases(step.progress):
            _whole_case_pass(loop, curriculum, step.progress)
        if loop.data.unlabelled is not None:
            loop.data.unlabelled.restrict(curriculum.subset(step.progress))


def _whole_case_pass(loop: TrainingLoop, curriculum: Curriculum, progress: Progress) -> None:
    """The pass over whole cases, on rank 0; the other processes take its method state and nets."""
    def on_main() -> dict[str, Any]:
        for net in loop.nets.values():
            net.eval()
        store = loop.data.unlabelled.store if loop.data.unlabelled is not None else []
        with torch.no_grad():
            curriculum.on_cases(loop.nets, (_whole_case(loop, c) for c in store), progress)
        return loop.method.state_dict()

    state = loop.dist.on_main(on_main)
    if not loop.dist.is_main:
        loop.method.load_state_dict(state)
    loop.dist.broadcast_nets(loop.nets.values())


def _whole_case(loop: TrainingLoop, case: StoredCase) -> WholeCase:
    volume = torch.from_numpy(case.image).to(loop.inferer.device)
    return WholeCase(case.case_id, volume, partial(_case_probabilities, loop, volume))


def _case_probabilities(loop: TrainingLoop, volume: Tensor, predictor: Callable[[Tensor], Tensor]) -> Tensor:
    """``(K, X, Y, Z)`` probabilities of a ``(C, X, Y, Z)`` volume under the run's Inferer."""
    return loop.inferer.volume_probabilities(predictor, volume)
