#!/usr/bin/env bash
# Issue 6's tables: reference-guided pseudo labels (RPG, RPG+) against FixMatch, Pseudo-Label (τ = 0.8, 0.95:
# fixmatch without the strong view) and the unweighted nearest-neighbour labels (rpg without W), smallest
# labelled budget (1 case), 3 seeds, the same protocol as compare_teachers.sh. Two comparisons: the brain demo
# (multiclass) and 2D synthetic phantoms with four overlapping labels (multilabel: nested channels 0 ⊃ 1 ⊃ 2,
# channel 3 crossing channel 0's border; 40 phantoms: 6 test, 2 validation, 1 labelled, 31 unlabelled).
# References for this small protocol: p = 3 (paper), s = 32, k = 57 % of the p·s² = 3072 references (1751; the
# paper's 7000 of 12288). The demo's slices are 88×104, so s = 32 still keeps every ~3rd pixel per axis (the
# paper's 64 of 512 keeps every 8th) at a quarter of the matching cost of s = 64. Finished runs are reused,
# interrupted ones resumed.
# WIDTHS and NAME change the U-Net and the comparison folders (compare_reference_wide.sh sets them).
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
NAME="${NAME:-reference}"
REF=reference_size=32:k_fraction=0.57
METHODS=supervised,pl080=fixmatch:strong_augment=false:tau=0.8,pl095=fixmatch:strong_augment=false:tau=0.95
METHODS=$METHODS,nearest=rpg:weighting=false:$REF,fixmatch,rpg=rpg:$REF,rpg_plus=rpg_plus:$REF
semiseg compare --name "${NAME}_multiclass" --seeds 0,1,2 "${PROTOCOL[@]}" --methods "$METHODS"
semiseg compare --name "${NAME}_multilabel" --seeds 0,1,2 "${PROTOCOL[@]}" \
  --set data.source=phantom --set "data.options={label_mode: multilabel, num_classes: 4, n_cases: 40}" \
  --methods "$METHODS"
