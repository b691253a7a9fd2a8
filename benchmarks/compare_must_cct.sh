#!/usr/bin/env bash
# Issue 7's tables on the brain demo, smallest labelled budget (1 subject), same protocol as
# compare_teachers.sh: (1) supervised, multi-scale supervised, CCT and MuST without and with sharpening,
# 3 seeds; (2) MuST's layer ablation (paper Table 2: layers 0; 1; K+1; 0,1,K+1; all) on seed 0.
# K+1 is the bottleneck, -1 in the config. Finished runs are reused.
set -euo pipefail
source "$(dirname "$0")/protocol.sh"
semiseg compare --name must_cct --seeds 0,1,2 "${PROTOCOL[@]}" \
  --methods supervised,multiscale_supervised,cct,must_no_sharpening=must:temperature=null,must
semiseg compare --name must_layers --seeds 0 "${PROTOCOL[@]}" \
  --methods "layer_0=must:consistency_layers=[0],layer_1=must:consistency_layers=[1],layer_bottleneck=must:consistency_layers=[-1],layers_0_1_bottleneck=must:consistency_layers=[0,1,-1],all=must"
