# The comparison protocol shared by every benchmarks/compare_*.sh (sourced, not run): the smallest labelled
# budget (1 case), a 2D U-Net with widths 8…64 (WIDTHS overrides), 600 steps of 4 labelled + 4 unlabelled
# images, validation every 200 steps; JOBS runs in parallel (default 2). Seeds are each script's choice.
# shellcheck shell=bash
PROTOCOL=(--jobs "${JOBS:-2}" --quiet --set split.labelled=1 --set "model.widths=${WIDTHS:-[8,16,32,64]}"
          --set train.steps=600 --set train.val_every=200 --set train.batch_size=4 --set train.unlabelled_batch_size=4)
