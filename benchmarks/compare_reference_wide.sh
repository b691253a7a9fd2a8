#!/usr/bin/env bash
# The same two comparisons as compare_reference.sh with a U-Net twice as wide (16-dimensional penultimate
# features): with 8 channels the nearest-reference labels are worse than the network's own argmax
# (benchmarks/diagnose_rpg_labels.py), so RPG's comparison needs a network whose features can carry it.
# Issue 6's tables: reference-guided pseudo labels (RPG, RPG+) against FixMatch, Pseudo-Label (τ = 0.8, 0.95:
# fixmatch without the strong view) and the unweighted nearest-neighbour labels (rpg without W), smallest
# labelled budget (1 case), 3 seeds, the same protocol as compare_teachers.sh. Two comparisons: the brain demo
# (multiclass) and 2D synthetic phantoms with four overlapping labels (multilabel: nested channels 0 ⊃ 1 ⊃ 2,
# channel 3 crossing channel 0's border; 40 phantoms: 6 test, 2 validation, 1 labelled, 31 unlabelled).
# References for this small protocol: p = 3 (paper), s = 32, k = 57 % of the p·s² = 3072 references (1751; the
# paper's 7000 of 12288). The demo's slices are 88×104, so s = 32 still keeps every ~3rd pixel per axis (the
# paper's 64 of 512 keeps every 8th) at a quarter of the matching cost of s = 64. Finished runs are reused,
# interrupted ones resumed.
set -euo pipefail
REF=reference_size=32:k_fraction=0.57
METHODS=supervised,pl080=fixmatch:strong_augment=false:tau=0.8,pl095=fixmatch:strong_augment=false:tau=0.95
METHODS=$METHODS,nearest=rpg:weighting=false:$REF,fixmatch,rpg=rpg:$REF,rpg_plus=rpg_plus:$REF
semiseg compare --name reference_wide_multiclass --seeds 0,1,2 --jobs "${JOBS:-2}" --quiet \
  --set split.labelled=1 --set model.widths=[16,32,64,128] --set train.steps=600 --set train.val_every=200 \
  --set train.batch_size=4 --set train.unlabelled_batch_size=4 \
  --methods "$METHODS"
semiseg compare --name reference_wide_multilabel --seeds 0,1,2 --jobs "${JOBS:-2}" --quiet \
  --set split.labelled=1 --set model.widths=[16,32,64,128] --set train.steps=600 --set train.val_every=200 \
  --set train.batch_size=4 --set train.unlabelled_batch_size=4 \
  --set data.source=phantom --set "data.options={label_mode: multilabel, num_classes: 4, n_cases: 40}" \
  --methods "$METHODS"
