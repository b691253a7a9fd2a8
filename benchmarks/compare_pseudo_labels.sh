#!/usr/bin/env bash
# Issue 3's table: supervised vs pseudo-labelling methods on the brain demo, smallest labelled budget
# (1 subject), 3 seeds, the same protocol as compare_teachers.sh. Finished runs are reused.
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
semiseg compare --name pseudo_labels --seeds 0,1,2 "${PROTOCOL[@]}" \
  --methods supervised,segpl,segpl_vi=segpl_vi:threshold_mode=hard,segpl_vi_grad=segpl_vi:threshold_mode=straight_through:kl_weight=0.01,self_training
