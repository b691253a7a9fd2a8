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
paper has k = 7000 (57 %); ``k: 7000`` given alone restores the paper's k. Why: with one labelled case of the demo,
W averages 0.28 over pixels the references label background and 0.03 over foreground ones at k = 57 %, because a
background pixel's k nearest often hold only background (W ≈ 1) while a foreground pixel's always hold background
too (P near uniform, W ≈ 0), so the term mostly teaches "background" and the model under-segments. The paper's
k = 50–57 % was tuned on JSRT, whose structures fill much of the image. At 600 steps (3 seeds,
``experiments/reference_ablation_multiclass.yaml``) k = 10 % lifted RPG from 0.656 / 0.601 (best / last Dice)
to 0.697 / 0.679, level with supervised training (0.699 / 0.664).

Evidence on the converged protocol (1 labelled subject, 2000 steps, s = 32, three seeds,
``experiments/converged.yaml``): RPG at k = 10 % reaches test Dice 0.769 / 0.726 (best / last) against supervised
training's 0.767 / 0.750; at the paper's k (seed 0, ``rpg_paper`` in ``experiments/converged_one_seed.yaml``,
s = 64) 0.734 / 0.723 against 0.751 / 0.717. W now keeps 67 % of the pixels (28 % at k = 57 %), and the kept ones
are 90 % right (means over seeds). What still holds RPG at supervised level is the matching itself: the reference
labels score 0.80 pixel accuracy on the unlabelled batches, and on held-out slices they were less accurate
than the network's own argmax (0.810 vs 0.871, docs/results-archive.md), so the term replaces good predictions by
noisier ones (the last checkpoint of seed 1 fell to 0.675).
These converged runs used the joint pass and no gate; on the short protocol (100 steps, three seeds,
``experiments/short.yaml``) the paper's way ends at 0.639 against supervised training's 0.657, separate passes
with the reliability gate at 0.712 (p < 1e-4). On the converged protocol separate passes with the gate
(``rpg_gate_separate``, three seeds; RPG's default until the few-slice grid below) reach 0.766 / 0.748 against
supervised training's 0.767 / 0.750 (p = 0.30 / 0.93): level, no gain and no late fall in two seeds of three
(seed 1 again falls, to 0.700). The reference labels
improve with separate passes (0.912 pixel accuracy and 0.712 Dice against the hidden labels, from 0.801 / 0.619)
and the last checkpoint's HD95 falls from 11.9 to 4.7 mm, but on the same batches they are no better than what
the network predicts itself. The engine's yardstick (``teach/prediction_*``: the predicting network's own answer
on each logged unlabelled batch, eval mode; last fifth of training, three seeds, ``experiments/converged.yaml``)
puts the references at Dice 0.712 and pixel accuracy 0.912 against the network's 0.711 and 0.917 (seeds 0.730 /
0.680 / 0.725 against 0.716 / 0.674 / 0.742). (An earlier version of this page set them against the network's
0.859 on whole unlabelled cases, a volume Dice that batch Dice of random slices cannot be compared with.) So
the term pulls the network towards a second labeller of its own quality, on the very view the features came
from; where the two differ the network is, if anything, the better (below), and nothing is gained on this data.
Targets that are the network's own prediction gain by other means: SegPL's confidence-weighted labels sharpen
its own decisions (0.803 / 0.785), and FixMatch's pseudo labels, no better than its own prediction either (Dice
0.806 against 0.814, three seeds), are trained on a strongly augmented view, which is what RPG⁺ adds to RPG
(0.813 / 0.805 on the same grid). Neither a smoother matcher nor the network's
unsure pixels change this much: on the first test subject of each of the three runs
(``python benchmarks/diagnose_rpg_labels.py runs/converged/rpg_gate_separate-s{0,1,2} --k-fraction 0.1``), the
nearest reference labels 0.886 of the pixels right against the network's 0.909, and a majority of the 25
nearest 0.915; on the pixels where the network is unsure (top probability below 0.9, 13–15 % of them) the 25-vote
reaches 0.655 against the network's 0.614, a lead for a variant, not a gain for Eq. 4 as written. That is
the method, not its implementation: the pseudo labels are scored against held-out truth by the engine, and the
weighting W still favours background (0.93 on pixels the references label background, 0.30 on foreground ones;
means over the logged steps after the gate opened, three seeds).

Nor is it the width of the features. The protocol's U-Net gives RPG 8 feature channels to match; the paper's gives
64. With twice the width (16 channels, widths 16…128, seed 0, ``rpg_w16`` against ``supervised_w16`` in
``experiments/converged_one_seed.yaml``) RPG reaches 0.781 / 0.683 against supervised training's 0.772 / 0.753 at
the same width (p = 0.84 / 0.03): no gain at the best checkpoint and a late fall (validation Dice 0.70 at step 400,
0.47 at step 2000). Its reference labels got worse as training went on (pixel accuracy 0.91–0.92 at steps 400–1199,
0.85–0.86 at steps 1200–1999; Dice 0.73 at steps 400–799, 0.59–0.60 after step 1200; the run's ``log.csv``), and
the network's Dice on the unlabelled cases followed them from 0.89 to 0.82.

Nor the pass layout, nor a vote (three seeds each, ``experiments/converged.yaml``, against supervised training's
0.767 / 0.750; p on per-case Dice, best / last):

- Batches as training draws them (4 slices of the labelled subject as references, 4 of the unlabelled subjects as
  queries; ``python benchmarks/diagnose_rpg_labels.py runs/converged/rpg_gate_separate-s{0,1,2} --k-fraction 0.1
  --passes``): the network labels 0.885 / 0.876 / 0.896 of the pixels right; the nearest reference 0.882 / 0.867 /
  0.889 with features of separate passes, 0.859–0.883 with a joint pass or in eval mode. Sharing BatchNorm
  statistics between references and queries does not make the match better. In training
  (``rpg_until_gate``: separate passes until the gate opens, one joint pass after, as RPG⁺'s default) the joint
  pass reached 0.778 / 0.732 (p 0.80 / 0.70), and one seed's reference labels fell to Dice 0.49 as its BatchNorm
  statistics mixed the two parts (last fifth; network 0.53): no gain.
- On those batches the majority of the 25 nearest references labels 0.896 / 0.885 / 0.901 of the pixels right,
  above the network in all three seeds, and 0.63–0.66 of the pixels where the network is unsure (top
  probability below 0.9) against its 0.58–0.59. ``votes: 25`` trains on that majority (``rpg_votes``): its labels
  reach Dice 0.728 against the network's own 0.718 on the same batches (pixel accuracy 0.914 against 0.918; last
  fifth, three seeds), the first RPG labels above the yardstick, and test Dice 0.768 / 0.758 (p 0.77 / 0.06),
  level with supervised training at a seed spread of 0.725 to 0.817 (seed 0 below RPG's default, seed 2 the
  best RPG run without RPG⁺'s strong view). On the short protocol it ends at 0.712, as the default does (the
  gate rarely opens there). Its vote costs a top-k over every reference per pixel: 2.5× RPG's training time at
  s = 32 (``benchmarks/bench_train_cost.py``, docs/benchmarks.md), more at the paper's s = 64. Better labels on
  the unlabelled batches, then, but no gain that three seeds can tell from noise, at a large cost, so the
  default stays Eq. 4's nearest reference.
- Nor a larger pool (the paper's Table 2: p = 1 to 5 labelled images). On the same kind of groups, with the
  nearest reference among p labelled slices (``--pools 4 8 16 32 --groups 12``), the labels are right on 0.877 /
  0.876 / 0.888 / 0.892 of the pixels at p = 4 / 8 / 16 / 32 against the network's 0.898 (seed 0), 0.884–0.888
  against 0.882 (seed 1) and 0.893–0.905 against 0.907 (seed 2): eight times the pool buys one point, to the
  network's level. Where the network and the nearest reference disagree (7–9 % of the pixels of the first test
  subject), the network is right on 0.69 / 0.55 / 0.70 of them and the reference on 0.31 / 0.45 / 0.30, which
  is what Eq. 8 then trains towards, with 4.5–6.4 % of W's mass (``diagnose_rpg_labels.py
  runs/converged/rpg_gate_separate-s{0,1,2} --k-fraction 0.1 --votes 25``).

Pass layout and budget. The paper counts labelled 2D images (N_l = 3 to 24), and its own Table 1 shows RPG's gain
over the baseline shrinking with them: +0.12 mIoU at N_l = 3, +0.02 at N_l = 24, where plain pseudo-labelling
gains as much. The demo's one labelled subject is 75 labelled slices with foreground. ``experiments/few_slices.yaml``
keeps the labels of 3 of them (``split.labelled_slices: 3``; the converged protocol otherwise, three seeds;
supervised training 0.699 / 0.661):

| entry | passes | test Dice, best / last | p (best / last) |
| --- | --- | --- | --- |
| ``rpg_paper`` | one joint pass, no gate (the paper) | 0.700 / 0.709 | 0.50 / 3.3e-04 |
| ``rpg_separate`` | separate throughout, gate | 0.714 / 0.625 | 0.37 / 0.33 |
| ``rpg_until_gate`` (default) | separate until the gate opens, then joint | 0.706 / 0.707 | 0.87 / 4.2e-04 |

- Where labels are scarce RPG holds its last checkpoint above supervised training's in every seed with a joint
  pass (supervised training falls from 0.699 to 0.661 as it overfits three slices), while separate passes drift
  late in two seeds of three (last 0.634 and 0.525): the reference labels and the network's own answer on the
  unlabelled batches fall together (seed 2, from step 800: Dice 0.61 to 0.42 and 0.63 to 0.41), a confirmation
  loop.
- Why the layout matters here and not at one subject: with a supervised network of each budget, the W-weighted
  accuracy of the reference labels (the share of Eq. 8's weight on right labels;
  ``diagnose_rpg_labels.py runs/<grid>/supervised-s{0,1,2} --k-fraction 0.1 --passes``) is 0.945 / 0.955 / 0.908
  with a joint pass and 0.920 / 0.933 / 0.902 with separate passes at three slices, but 0.917 / 0.929 / 0.940
  against 0.929 / 0.938 / 0.941 at one subject. Four labelled images drawn from three slices have BatchNorm
  statistics unlike the unlabelled batch's, so separate passes normalise references and queries differently and
  Eq. 3 compares features on two scales; a joint pass normalises them alike. (Recomputing the BatchNorm running
  statistics of a drifted run on labelled or unlabelled slices alone does not bring its test Dice back: the
  drift is in the weights, not in the statistics.)
- Hence the default ``separate_until_gate``, as RPG⁺'s: the supervised start runs in clean separate passes while
  the gate keeps Eq. 8's term off (the term is off, so nothing is matched yet), and the matching runs in the
  paper's joint pass once it is on. It is the one layout measured that never falls below supervised training's
  last checkpoint − 0.02 at either budget: converged 0.778 / 0.732 against 0.767 / 0.750 (``rpg_until_gate``,
  p 0.80 / 0.70; separate 0.766 / 0.748, the paper's way 0.769 / 0.726), short 0.714 against 0.657, three slices
  0.706 / 0.707 against 0.699 / 0.661. At one subject it is level with supervised training, as every layout is.
  RPG⁺ gains most at three slices (0.772 / 0.768, p 7.6e-06 / 7.6e-06), then FixMatch (0.753 / 0.765, p 5.3e-04
  / 1.5e-05), the order of the paper's Table 1 at N_l = 3.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pydantic import Field
from torch import Tensor

from semiseg.losses import ce_loss
from semiseg.methods._options import PassesOption, ReferenceOptions
from semiseg.methods.base import Batch, Method, Nets, Progress, StepOut
from semiseg.methods.registry import register
from semiseg.nets.unet import NetOutput
from semiseg.ssl.joint import joint_forward
from semiseg.ssl.reference import reference_pseudo_labels


class RPGConfig(ReferenceOptions, PassesOption):
    weight: float = Field(1.0, ge=0)  # weight of Eq. 8's unlabelled term (paper: 1)


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

    @staticmethod
    def features(nets: Nets) -> Callable[[Tensor], NetOutput]:
        """The network with its penultimate features, which the reference matching reads (Eqs. 1-4)."""
        return partial(nets["model"], return_features=True)

    def forward(self, nets: Nets, labelled: Batch, unlabelled_images: Tensor,
                progress: Progress) -> tuple[NetOutput, NetOutput]:
        """One pass over [labelled; unlabelled] with the penultimate features, split into the two parts."""
        return joint_forward(self.features(nets), labelled.image, unlabelled_images,
                             self.unlabelled_pass(progress))

    def terms(self, out_l: NetOutput, out_u: NetOutput, labelled: Batch) -> StepOut:
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
        unsup = expected_weighted_ce(out_u.logits, ref.target, ref.weight, self.ctx.label_mode)
        losses = {"sup": self.ctx.supervised_loss(out_l.logits, labelled.label), "rpg": self.cfg.weight * unsup}
        logs = {
            "rpg_w_mean": float(ref.weight.mean()),
            "rpg_pool": float(len(ref.pool)),
            "rpg_classes": float(ref.table.shape[0]),
            **weight_by_side(ref.weight, ref.target, self.ctx.label_mode),
        }
        return StepOut(losses, logs, targets={"reference": ref.target}, masks={"reference": ref.weight},
                       unlabelled=frozenset({"rpg"}))

    def training_step(self, nets: Nets, labelled: Batch, unlabelled: Batch, progress: Progress) -> StepOut:
        return self.terms(*self.forward(nets, labelled, unlabelled.image, progress), labelled)


def weight_by_side(weight: Tensor, target: Tensor, label_mode: str) -> dict[str, float]:
    """Mean W over the pixels the references label foreground and over background ones (absent side: left out)."""
    foreground = target > 0 if label_mode == "multiclass" else target.bool().any(dim=1)
    sides = {"rpg_w_fg": weight[foreground], "rpg_w_bg": weight[~foreground]}
    return {name: float(values.mean()) for name, values in sides.items() if values.numel()}
