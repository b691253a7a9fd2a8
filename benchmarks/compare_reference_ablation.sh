#!/usr/bin/env bash
# Why RPG and RPG⁺ trail on the demo (issue 6): two ablations on compare_reference.sh's multiclass protocol,
# 3 seeds. `rpg_k10` keeps k = 10 % of the references instead of 57 %: with a wide neighbourhood a background
# pixel's k nearest often hold nothing but background (W ≈ 1) while a foreground pixel's always hold background
# too (P near uniform, W ≈ 0), so Eq. 7 weighs background labels far more (benchmarks/diagnose_rpg_labels.py).
# `rpg_plus_half` halves both unlabelled terms of Eq. 11, so RPG⁺ puts the same total weight on unlabelled
# images as `rpg` or `fixmatch` alone. Folder: runs/reference_ablation_multiclass (supervised runs are reused
# from runs/reference_multiclass when present: same configuration).
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
REF=reference_size=32:k_fraction=0.57
OUT=runs/reference_ablation_multiclass
for seed in 0 1 2; do
  if [ -f "runs/reference_multiclass/supervised-s$seed/summary.json" ] && [ ! -e "$OUT/supervised-s$seed" ]; then
    mkdir -p "$OUT" && cp -r "runs/reference_multiclass/supervised-s$seed" "$OUT/"
  fi
done
METHODS=supervised,rpg_k10=rpg:reference_size=32:k_fraction=0.1
METHODS=$METHODS,rpg_plus_half=rpg_plus:$REF:weight=0.5:fixmatch_weight=0.5
semiseg compare --name reference_ablation_multiclass --seeds 0,1,2 "${PROTOCOL[@]}" --methods "$METHODS"
