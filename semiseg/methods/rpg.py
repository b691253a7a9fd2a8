"""RPG: reference-guided pseudo labels (Seibold et al., AAAI 2022, Eqs. 1-8).

Labelled and unlabelled images go through the network once. The penultimate features of that pass
(detached) are matched: a pool of p labelled images covering every class (Eq. 1) gives references
subsampled to s×s (Eq. 2); every unlabelled pixel takes the label of its nearest reference under the
clipped cosine distance (Eqs. 3-4) and a weight W from the entropy of its class distances among the k
nearest references (Eqs. 5-7); Eq. 8 adds the W-weighted cross-entropy to the supervised loss.

The pool is drawn from the current labelled batch: the paper builds each batch from the pool plus random
images, so pool images are supervised in the same step; here the labelled batch holds the pool (p ≤
``train.batch_size``), and a class missing from the batch cannot be covered. Deviation, shared with every
method of a comparison: the supervised term is ``train.loss`` (the paper's CE is ``train.loss=ce``).
``weighting: false`` is the paper's "Nearest Neighbor" baseline (W ≡ 1). Matching runs in float32 outside
autocast, in memory bounded by ``block_mb`` whatever p, s and k (``semiseg.ssl.reference``).

Matching in detail. In multilabel mode each distinct label vector in the pool is a class (background is the
all-zero vector, each overlap its own) and the nearest vector is copied whole; a pixel with no similar
reference of any class gets W = 0. The matcher never builds the p·s² × pixels distance matrix or a top-k
buffer: each class's best similarity and an exact count of the references closer than it decide Eq. 5, in
blocks of ``block_mb``, so memory stays around 10 MiB whatever p, s and k (k = 100 % ran out of memory in the
paper's Table 3).

Defaults: p = 3, s = 64 (16 in 3D), weight 1, and k = 10 % of the references (``k_fraction: 0.1``) where the
paper has k = 7000 (57 %); ``k: 7000`` given alone restores the paper's k. Why: at 57 % a small structure's
pixels always have background among their k nearest references, so W nearly vanishes on foreground and the term
teaches mostly background (``experiments/reference_ablation_multiclass.yaml``); the paper tuned k on JSRT, whose
structures fill much of the image. The pass layout is ``separate_until_gate``: separate passes while the gate keeps
Eq. 8's term off, the paper's joint pass once it has opened, the one layout that never fell below supervised
training at either labelled budget measured (``experiments/converged.yaml``, ``experiments/few_slices.yaml``).

Agreement (``agreement: true``, not in the paper): Eq. 8 keeps a pixel only where its reference label equals
the network's own hard label from the same pass (W × 1[agree]); where they differ the pixel teaches nothing. Why:
on data whose unlabelled scans come from other scanners than the labelled one, the far sites' background can lie
nearer in feature space to foreground references than to background ones; the term then teaches foreground the
network does not predict, the network follows, and the matching drifts further (RPG⁺ on heart_sites, two seeds
of seven: half of the far sites' pixels labelled foreground at the end). Two labellers that must agree stop that
loop where the network has not yet drifted. Measured in ``experiments/dev_rpg_agree_heart.yaml``: it stops
the drift but costs the seeds that do not drift (the term's gain lies in the pixels where the two disagree).

Share cap (``share_cap: true``, not in the paper): a class's share of the unlabelled batch's reference labels,
u_c, is held to its share of the references, r_c (the labelled pool's class balance): the W of a class handed
out more often than that is scaled by r_c / u_c. Why: the drift above begins as a class (foreground on the far
sites) labelled far more often than the labelled images hold it; the cap bounds that without a threshold of its
own, and leaves W alone while the labels keep the pool's balance. Measured in ``experiments/dev_rpg_cap_heart.yaml``
(every seed above supervised training, two of which drifted without it), ``dev_rpg_drift_demo.yaml`` and
``dev_rpg_cap_liver.yaml`` (level on the demo, ~0.02 lower in 3D): RPG⁺'s default, not RPG's: with RPG alone on
heart_sites (``experiments/dev_rpg_plain_cap_heart.yaml``) it stops the foreground flood but RPG still ends far
below supervised training, so it does not rescue the conference method there. ``share_half_life`` compares
running shares instead of the batch's own: r_c and u_c are exponential moving averages over steps (half-life in
steps, or a fraction of the run when < 1), so a batch that happens to hold more foreground than the labelled
batch of the same step is not capped. Measured and not adopted
(``experiments/dev_rpg_running_cap_heart.yaml``, half-life 5 % of the run): it gives back what the cap costs the
seeds that do not drift (0.725 / 0.788 against 0.677 / 0.698) but lets the drift through on the two that do
(0.549 / 0.422 against 0.617 / 0.567; supervised training 0.551 / 0.517), and a half-life of 1 % (20 steps) as
well (0.546 / 0.475; ``dev_rpg_cap_window_heart.yaml``).

Measurements behind the defaults: ``docs/evidence/rpg.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from semiseg.losses import ce_loss
from semiseg.methods._options import PassesOption, ReferenceOptions
from semiseg.methods.base import Batch, Method, MethodContext, Nets, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.nets.unet import NetOutput
from semiseg.ssl.ema import decay_for_half_life, resolve_half_life
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.pseudo_labels import hard_labels, probabilities
from semiseg.ssl.reference import ReferenceLabels, code_shares, reference_pseudo_labels


class RPGConfig(ReferenceOptions, PassesOption):
    weight: float = Field(1.0, ge=0)  # weight of Eq. 8's unlabelled term (paper: 1)
    # True: Eq. 8 keeps a pixel only where its reference label equals the network's own hard label of the same
    # pass (W × 1[agree]); not in the paper. Why and the measurements: module docstring, "Agreement".
    agreement: bool = False
    # True: W of the pixels of a class the references hand out more often (share of the batch's labels) than
    # they hold it is scaled down to the references' share (not in the paper; module docstring, "Share cap").
    share_cap: bool = False
    # None: the cap compares this batch's shares; a half-life (steps, or a fraction of the run when < 1): their
    # running averages over steps (module docstring, "Share cap")
    share_half_life: float | None = Field(None, gt=0)


def expected_weighted_ce(logits: Tensor, target: Tensor, weight: Tensor, label_mode: str) -> Tensor:
    """Eq. 8's E_x[CE · W]: the mean over all pixels of W times the (binary) cross-entropy.

    ``ce_loss`` normalises by Σ W; multiplying by mean(W) turns that into the plain mean the paper writes,
    so pixels with low W lower the term instead of being renormalised away.
    """
    return ce_loss(logits, target, label_mode=label_mode, weight=weight) * weight.mean()


@register
class RPG(Method):
    # separate while the gate keeps Eq. 8's term off, the paper's joint pass once it has opened: the layout
    # that held at both budgets measured (module docstring, "Pass layout and budget"); RPG+'s default too
    default_unlabelled_pass = "separate_until_gate"
    name = "rpg"
    summary = "Reference-guided pseudo labels: nearest labelled pixel in feature space, entropy-weighted CE."
    Config = RPGConfig
    uses_unlabelled = True
    cfg: RPGConfig

    def __init__(self, ctx: MethodContext, options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, options)
        self.shares = RunningShares()

    @staticmethod
    def features(nets: Nets) -> Callable[[Tensor], NetOutput]:
        """The network with its penultimate features, which the reference matching reads (Eqs. 1-4)."""
        return partial(nets["model"], return_features=True)

    def forward(self, nets: Nets, labelled: Batch, unlabelled_images: Tensor,
                progress: Progress) -> tuple[NetOutput, NetOutput]:
        """One pass over [labelled; unlabelled] with the penultimate features, split into the two parts."""
        return joint_forward(self.features(nets), labelled.image, unlabelled_images,
                             self.unlabelled_pass(progress))

    def terms(self, out_l: NetOutput, out_u: NetOutput, labelled: Batch, progress: Progress) -> StepOut:
        """Eq. 8's two terms from a pass over [labelled; unlabelled], what the matching looked like (W over
        pixels the references label foreground and background) and what it teaches (labels, W as the mask)."""
        ref = reference_pseudo_labels(
            out_l.features,
            labelled.label,
            out_u.features,
            label_mode=self.ctx.label_mode,
            num_classes=self.ctx.num_classes,
            settings=self.cfg.reference_settings(),
        )
        weight, filter_logs = self.filtered_weight(ref, out_u.logits, progress)
        unsup = expected_weighted_ce(out_u.logits, ref.target, weight, self.ctx.label_mode)
        losses = {"sup": self.ctx.supervised_loss(out_l.logits, labelled.label), "rpg": self.cfg.weight * unsup}
        logs = {
            "rpg_w_mean": float(ref.weight.mean()),
            **filter_logs,
            "rpg_pool": float(len(ref.pool)),
            "rpg_classes": float(ref.table.shape[0]),
            **weight_by_side(ref.weight, ref.target, self.ctx.label_mode),
        }
        return StepOut(losses, logs, targets={"reference": ref.target}, masks={"reference": weight},
                       unlabelled=frozenset({"rpg"}))

    def filtered_weight(self, ref: ReferenceLabels, logits_u: Tensor,
                        progress: Progress) -> tuple[Tensor, dict[str, float]]:
        """Eq. 7's W after the options that filter it (``agreement``, ``share_cap``), and what each kept."""
        weight, logs = ref.weight, {}
        if self.cfg.agreement:
            agree = agreeing(ref.target, logits_u, self.ctx.label_mode)
            weight, logs["rpg_agree"] = weight * agree, float(agree.mean())
        if self.cfg.share_cap:
            weight = weight * self.cap_factor(ref, progress)
            logs["rpg_capped_w"] = float(weight.mean())
        return weight, logs

    def cap_factor(self, ref: ReferenceLabels, progress: Progress) -> Tensor:
        """The share cap's per-pixel factor, from this batch's shares or, with ``share_half_life``, running ones."""
        label_share = code_shares(ref.codes, len(ref.reference_share))
        if self.cfg.share_half_life is None:
            return share_cap(ref.codes, ref.reference_share, label_share)
        decay = decay_for_half_life(resolve_half_life(self.cfg.share_half_life, progress.total_steps))
        reference_share, label_share = self.shares.update(ref.table, ref.reference_share, label_share, decay)
        return share_cap(ref.codes, reference_share, label_share)

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        return self.terms(*self.forward(nets, labelled, unlabelled.image, progress), labelled, progress)

    def state_dict(self) -> dict[str, Any]:
        """The share cap's running shares (empty unless ``share_half_life`` is set), so a resumed run goes on."""
        return self.shares.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shares.load_state_dict(state)


def agreeing(target: Tensor, logits: Tensor, label_mode: str) -> Tensor:
    """1.0 where ``target`` equals the network's own hard label of ``logits`` (every channel, multilabel), else 0.0.

    (B, *spatial), no gradient: the mask by which ``agreement`` keeps only the reference labels the network
    already gives, so a reference that labels a far site's background as foreground teaches nothing.
    """
    own = hard_labels(probabilities(logits.detach(), label_mode), label_mode)
    same = own == target if label_mode == "multiclass" else (own == target).all(dim=1)
    return same.float()


def share_cap(codes: Tensor, reference_share: Tensor, label_share: Tensor | None = None) -> Tensor:
    """Per-pixel factor min(1, r_c / u_c) of the pixel's class code c, (B, *spatial).

    r_c is c's share of the references (the labelled pool's balance), u_c its share of the unlabelled batch's
    reference labels (``label_share``; counted from ``codes`` when not given): both count labels, so W's own lean
    (low on small structures) does not enter. A class the references hand out more often than the labelled
    images hold it (far sites' background matched to foreground references, the start of RPG⁺'s drift) is
    scaled back to the pool's share; the others keep W.
    """
    if label_share is None:
        label_share = code_shares(codes, reference_share.numel())
    factor = (reference_share / label_share.clamp_min(1e-12)).clamp(max=1.0)
    return factor[codes]


class RunningShares:
    """Exponential moving averages of r_c and u_c over steps, kept per label vector.

    Keyed by the class's label vector, not its code: in multilabel mode a batch's codes index only the vectors
    its pool holds, so the same code can mean another class next step. A class absent from a step counts as a
    share of 0 there; a class seen for the first time starts at its step's shares.
    """

    def __init__(self) -> None:
        self.shares: dict[tuple[int, ...], tuple[float, float]] = {}

    def update(self, table: Tensor, reference_share: Tensor, label_share: Tensor,
               decay: float) -> tuple[Tensor, Tensor]:
        """Fold this step's shares in; the running (r, u) of each of this step's codes, (C,) each."""
        step = {tuple(int(v) for v in row.tolist()): (float(r), float(u))
                for row, r, u in zip(table.gt(0.5), reference_share, label_share, strict=True)}
        for key in self.shares.keys() | step.keys():
            now = step.get(key, (0.0, 0.0))
            old = self.shares.get(key, now)
            self.shares[key] = (decay * old[0] + (1 - decay) * now[0], decay * old[1] + (1 - decay) * now[1])
        running = torch.tensor([self.shares[key] for key in step], dtype=reference_share.dtype,
                               device=reference_share.device)
        return running[:, 0], running[:, 1]

    def state_dict(self) -> dict[str, Any]:
        return {"running_shares": [[list(key), *value] for key, value in self.shares.items()]} if self.shares else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"running_shares"}
        if unknown:
            raise ValueError(f"rpg's state holds unknown entries {sorted(unknown)}")
        self.shares = {tuple(key): (r, u) for key, r, u in state.get("running_shares", [])}


def weight_by_side(weight: Tensor, target: Tensor, label_mode: str) -> dict[str, float]:
    """Mean W over the pixels the references label foreground and over background ones (absent side: left out)."""
    foreground = target > 0 if label_mode == "multiclass" else target.bool().any(dim=1)
    sides = {"rpg_w_fg": weight[foreground], "rpg_w_bg": weight[~foreground]}
    return {name: float(values.mean()) for name, values in sides.items() if values.numel()}
