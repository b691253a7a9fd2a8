#!/usr/bin/env bash
# Issue 5's table: supervised vs dual-uncertainty self-training (Table 3's ablation: plain self-training, + sample
# sorting, + uncertainty rectification) and URPC on the brain demo, smallest labelled budget (1 subject), 3 seeds,
# the same protocol as compare_teachers.sh. Every method runs the same step count, so the "train time ÷ ref"
# column is the cost of the staged schedule (ranking pass included) against supervised training.
# Finished runs are reused, interrupted ones resumed.
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
semiseg compare --name dual_uncertainty --seeds 0,1,2 "${PROTOCOL[@]}" \
  --methods supervised,st=dual_uncertainty:variant=st,st_ss=dual_uncertainty:variant=st_ss,st_ss_unrc=dual_uncertainty,urpc
