#!/usr/bin/env bash
# Issue 3's table: supervised vs pseudo-labelling methods on the brain demo, smallest labelled budget
# (1 subject), 3 seeds, the same protocol as compare_teachers.sh. Finished runs are reused.
set -euo pipefail
semiseg compare --name pseudo_labels --seeds 0,1,2 --jobs "${JOBS:-2}" --quiet \
  --set split.labelled=1 --set model.widths=[8,16,32,64] --set train.steps=600 --set train.val_every=200 \
  --set train.batch_size=4 --set train.unlabelled_batch_size=4 \
  --methods supervised,segpl,segpl_vi=segpl_vi:threshold_mode=hard,segpl_vi_grad=segpl_vi:threshold_mode=straight_through:kl_weight=0.01,self_training
