"""BCP: Bidirectional Copy-Paste (Bai, Chen, Li, Wang & Shen, CVPR 2023; code: DeepMed-Lab-ECNU/BCP).

Two stages. **Pre-training** (the first ``pretrain_fraction`` of the run): a box M of ``box_fraction`` (2/3) of
each side is drawn per step, and the network learns copy-pasted labelled pairs, X = X_a ⊙ (1 − M) + X_b ⊙ M with
the same mix of their labels (Dice + CE on each region, weight 1). **Self-training** (the rest): a mean teacher
labels the unlabelled images, Ŷ = argmax T(X_u), and the student sees two bidirectional mixes with one box M
(Eq. 1-2 of the paper)::

    X_in  = X_u,a ⊙ (1 − M) + X_l,a ⊙ M      (labelled foreground pasted into an unlabelled background)
    X_out = X_l,b ⊙ (1 − M) + X_u,b ⊙ M      (unlabelled foreground pasted into a labelled background)

Each mixed image is supervised region by region (Eq. 3-5): L = L_seg(S(X), Y_l, M_l) + α · L_seg(S(X), Ŷ, M_u),
where M_l / M_u are the regions holding labelled / unlabelled pixels, L_seg = (Dice + CE) / 2 restricted to the
region, and α = ``u_weight`` = 0.5. The labelled regions are the ``sup`` term, the pseudo-labelled ones ``unsup``;
each term sums the two mixes, as the code. The teacher follows the student by EMA (α 0.99) and is read in train
mode (BatchNorm on the batch), as the code's ``ema_model.train()``. The student predicts at test time (the code
validates and tests the student).

Labelled rows are split into halves a and b, unlabelled rows likewise (the code's ``labeled_sub_bs``); a batch of
one image pairs it with itself.

Defaults follow the ACDC recipe of the code: 10 000 pre-training and 30 000 self-training iterations, so
``pretrain_fraction`` 0.25 (the LA code: 2 000 and 15 000, i.e. 0.118); box 2/3 of each side; u_weight 0.5;
EMA 0.99; the largest-connected-component filter on the pseudo labels on (``largest_component``; the code applies
it on ACDC and LA, the paper does not state it, so it is an option: a code-only step).

Departures, each for one reason:
- One run, one optimiser and learning-rate schedule: the code restarts SGD's schedule for self-training and starts
  both student and teacher from the best pre-training checkpoint on validation; here the stage boundary is a step,
  the student carries on from its last weights, and the teacher has followed it by EMA through pre-training (the
  engine owns checkpoints; a method never reads one).
- L_seg is the run's supervised loss (``train.loss``, Dice + CE by default) times 0.5, so (Dice + CE) / 2 as in the
  code at the default, and Dice honours the run's ``include_background``.
- No ``unlabelled_pass`` option: every mixed image holds labelled and unlabelled pixels, so there is no labelled or
  unlabelled pass to separate; the two mixes go through the student as two passes, as in the code.
- Multilabel (not in the paper): the teacher's labels are p > 0.5 per channel, the filter acts per channel.

Gate default ``off`` (``train.unlabelled_gate: auto``): the pre-training stage already keeps the pseudo labels out
until the network has learnt the labelled data; the reliability gate would delay self-training a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage
from torch import Tensor

from semiseg.methods.base import Batch, Method, MethodConfig, Nets, NetSpec, Progress, StepOut
from semiseg.ssl.mixing import mix
from semiseg.ssl.pseudo_labels import hard_labels, probabilities


class BCPConfig(MethodConfig):
    # share of train.steps spent on copy-paste pre-training (ACDC code: 10 000 of 40 000 iterations; LA 2 000 of 17 000)
    pretrain_fraction: float = Field(0.25, ge=0, lt=1)
    box_fraction: float = Field(2 / 3, gt=0, lt=1)  # side of the pasted box, per axis (the code's mask_ratio)
    u_weight: float = Field(0.5, ge=0)  # α, weight of the pseudo-labelled pixels
    largest_component: bool = True  # code only: keep each class's largest connected component of the pseudo labels
    ema_decay: float = Field(0.99, gt=0, lt=1)
    predict_with: Literal["student", "teacher"] = "student"


def paste_box(batch: int, spatial: Sequence[int], fraction: float, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """(B, *spatial) bool mask of one box (the same for every image, as the code), ``fraction`` of each side.

    The box's start is uniform over the positions that keep it inside the image.
    """
    box = []
    for size in spatial:
        length = max(1, int(size * fraction))
        start = int(torch.randint(0, size - length + 1, (), generator=generator))
        box.append(slice(start, start + length))
    mask = torch.zeros(tuple(spatial), dtype=torch.bool)
    mask[tuple(box)] = True
    return mask.expand(batch, *spatial).to(device)


def largest_components(labels: Tensor, label_mode: str) -> Tensor:
    """Each image's pseudo labels with every class (multilabel: channel) cut to its largest connected component.

    Multiclass ``(B, *spatial)``: pixels of a class outside its largest component become background (class 0);
    multilabel ``(B, K, *spatial)``: they become 0 in that channel. Full connectivity (8 in 2D, 26 in 3D), as
    ``skimage.measure.label`` in the authors' code. Classes absent from an image are left alone.
    """
    array = labels.detach().cpu().numpy()
    out = np.zeros_like(array) if label_mode == "multiclass" else array.copy()
    for b in range(array.shape[0]):
        if label_mode == "multiclass":
            for c in np.unique(array[b]):
                if c != 0:
                    out[b][_largest(array[b] == c)] = c
        else:
            for k in range(array.shape[1]):
                out[b, k] = _largest(array[b, k] > 0.5).astype(array.dtype)
    return torch.from_numpy(out).to(labels.device)


def _largest(binary: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(binary, structure=ndimage.generate_binary_structure(binary.ndim, binary.ndim))
    if count <= 1:
        return binary
    sizes = np.bincount(components.ravel())[1:]
    return components == int(sizes.argmax()) + 1


def halves(n: int) -> tuple[slice, slice]:
    """Rows of sub-batches a and b (the code's two halves); one row pairs with itself."""
    half = max(1, n // 2)
    return slice(0, half), (slice(half, 2 * half) if n >= 2 else slice(0, 1))


class BCP(Method):
    name = "bcp"
    summary = "Bidirectional copy-paste: labelled and unlabelled images pasted into each other, mean-teacher labels."
    Config = BCPConfig
    uses_unlabelled = True
    needs_unlabelled_batch = True
    default_unlabelled_gate = "off"  # the pre-training stage is BCP's own wait for reliable labels (docstring)
    # Every mixed image holds labelled and unlabelled pixels, so BatchNorm always normalises them together, as in
    # the papers' code: a joint pass by construction (the setting changes nothing else).
    default_unlabelled_pass = "joint"
    cfg: BCPConfig

    def networks(self) -> dict[str, NetSpec]:
        return {"student": NetSpec(),
                "teacher": NetSpec(trainable=False, ema_of=("student",), ema_decay=self.cfg.ema_decay)}

    def pretraining(self, progress: Progress) -> bool:
        return progress.fraction < self.cfg.pretrain_fraction

    def region_loss(self, logits: Tensor, target: Tensor, region: Tensor) -> Tensor:
        """L_seg on ``region`` alone: the run's supervised loss (Dice + CE) halved, the code's (Dice + CE) / 2."""
        return 0.5 * self.ctx.supervised_loss(logits, target, mask=region)

    def teacher_labels(self, nets: Nets, images: Tensor) -> Tensor:
        """Ŷ: the teacher's hard labels, cut to their largest components when ``largest_component``."""
        with torch.no_grad():
            labels = hard_labels(probabilities(nets["teacher"](images), self.ctx.label_mode), self.ctx.label_mode)
        return largest_components(labels, self.ctx.label_mode) if self.cfg.largest_component else labels

    def box(self, images: Tensor, rows: int) -> Tensor:
        return paste_box(rows, images.shape[2:], self.cfg.box_fraction, device=images.device)

    def supervised_step(self, nets: Nets, labelled: Batch, progress: Progress) -> StepOut:
        """Pre-training: labelled image b pasted into labelled image a, their labels mixed alike."""
        a, b = halves(labelled.image.shape[0])
        x, y = labelled.image, labelled.label
        inside = self.box(x, x[a].shape[0])
        logits = nets["student"](mix(x[a], x[b], inside))
        sup = self.region_loss(logits, y[a], ~inside) + self.region_loss(logits, y[b], inside)
        return StepOut(losses={"sup": sup}, logs={"pretraining": 1.0})

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        if self.pretraining(progress):
            return self.supervised_step(nets, labelled, progress)
        pseudo = self.teacher_labels(nets, unlabelled.image)
        a, b = halves(min(labelled.image.shape[0], unlabelled.image.shape[0]))
        xl, yl, xu = labelled.image, labelled.label, unlabelled.image
        inside = self.box(xl, xl[a].shape[0])
        logits_in = nets["student"](mix(xu[a], xl[a], inside))  # labelled foreground, unlabelled background
        logits_out = nets["student"](mix(xl[b], xu[b], inside))  # unlabelled foreground, labelled background
        sup = self.region_loss(logits_in, yl[a], inside) + self.region_loss(logits_out, yl[b], ~inside)
        unsup = self.region_loss(logits_in, pseudo[a], ~inside) + self.region_loss(logits_out, pseudo[b], inside)
        return StepOut(losses={"sup": sup, "unsup": self.cfg.u_weight * unsup}, unlabelled=frozenset({"unsup"}),
                       logs={"pretraining": 0.0, "box_fraction": float(inside.float().mean())},
                       targets={"teacher": pseudo})

    def predict(self, nets: Nets, x: Tensor) -> Tensor:
        return nets[self.cfg.predict_with](x)
