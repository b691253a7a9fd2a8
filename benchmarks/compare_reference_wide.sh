#!/usr/bin/env bash
# compare_reference.sh with a U-Net twice as wide (16-dimensional penultimate features): with 8 channels the
# nearest-reference labels are worse than the network's own argmax (benchmarks/diagnose_rpg_labels.py), so RPG's
# comparison needs a network whose features can carry it. Folders: runs/reference_wide_{multiclass,multilabel}.
set -euo pipefail
WIDTHS="[16,32,64,128]" NAME=reference_wide exec bash "$(dirname "$0")/compare_reference.sh"
