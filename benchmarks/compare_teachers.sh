#!/usr/bin/env bash
# Issue 4's table: supervised vs teacher / co-training methods on the brain demo, smallest labelled budget
# (1 subject), 3 seeds, one shared protocol. UCMT makes two updates per step, so it runs half the steps
# (the paper's footnote 3); ucmt_code is the authors' code: teacher 0.99·s1 + 0.01·s2 with EMA 0.99, no teacher
# loss, UMIX by copying. Finished runs are reused, interrupted ones resumed.
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
semiseg compare --name teachers --seeds 0,1,2 "${PROTOCOL[@]}" \
  --methods supervised,mean_teacher,ua_mt,cps,cutmix,cmt,ucmt=ucmt:train.steps=300,ucmt_code=ucmt:teacher_update=code:teacher_supervised=false:umix=copy:ema_decay=0.99:train.steps=300
