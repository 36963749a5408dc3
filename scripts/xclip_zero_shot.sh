#!/usr/bin/env bash
# X-CLIP zero-shot: evaluate an X-CLIP-B/16 32-frame model trained on Kinetics-400 (the released
# zero.pth, or your own `PRESET=16_32 bash scripts/xclip_k400.sh` run) on classes it never trained
# on, one view per video: the 3 test splits of HMDB-51 or UCF-101, or the 3 Kinetics-600 splits of
# 160 classes drawn from the 220 classes absent from Kinetics-400 (ER-ZSAR's); reported as the mean
# and standard deviation of top-1 over the 3 splits.
#
#   PRESET=zero DATASET=ucf101 bash scripts/xclip_zero_shot.sh       # the released zero.pth on UCF-101
#   RESUME=runs/k400_16_32/ckpt.best.pth bash scripts/xclip_zero_shot.sh  # your model on HMDB-51
#   DRY_RUN=1 PRESET=zero DATASET=k600 bash scripts/xclip_zero_shot.sh   # print the command
#
# DATASET hmdb51 (default), ucf101 or k600. Data ($DATA_PATH, default $DATA_ROOT/$DATASET), videos in
# videos/ (FEATURES_PATH):
#   hmdb51, ucf101  test_split1.txt test_split2.txt test_split3.txt (lines `relative/path label`),
#                   class names dataloaders/labels/{hmdb_51,ucf_101}_labels.csv
#   k600            zero_shot_split{1,2,3}.txt, each with its 160 class names in
#                   zero_shot_split{1,2,3}_labels.csv (id,name; labels index that CSV)
# Released checkpoint: zero (put it at $MODELS_DIR/zero.pth); top-1 reported: HMDB-51 44.6 +- 5.2,
# UCF-101 72.0 +- 2.3, Kinetics-600 65.2 +- 0.4. Results go to $MODELS_DIR/zero_<dataset>_eval.
# Environment variables: see scripts/xclip_common.sh and scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/xclip_common.sh"

DATASET=${DATASET:-hmdb51}
DATA_PATH=${DATA_PATH:-$DATA_ROOT/$DATASET}
FEATURES_PATH=${FEATURES_PATH:-$DATA_PATH/videos}
case $DATASET in
    hmdb51 | ucf101)
        lists=("$DATA_PATH"/test_split{1,2,3}.txt)
        labels=("$(shipped_labels "$DATASET")") ;;
    k600)
        lists=("$DATA_PATH"/zero_shot_split{1,2,3}.txt)
        labels=("$DATA_PATH"/zero_shot_split{1,2,3}_labels.csv) ;;
    *) die "unknown DATASET=$DATASET; choose hmdb51, ucf101 or k600" ;;
esac

# The model of the original's configs/k400/16_32.yaml, evaluated only.
xclip_recipe 16_32
default_do_train=0
default_do_eval=1
case ${PRESET:-} in
    "")
        [[ -n ${RESUME:-} ]] || die "nothing to evaluate: set RESUME to a Kinetics-400 X-CLIP-B/16 32-frame checkpoint, or PRESET=zero"
        run_name=xclip_zero_shot_$DATASET ;;
    zero) released_xclip zero 1 1 "zero_${DATASET}_eval" ;;
    *) die "unknown PRESET=$PRESET; choose zero" ;;
esac
# --val_list/--labels_csv name the first split (main.py needs them); every split is evaluated.
VAL_LIST=${lists[0]}
eval_flags=(--zero_shot_lists "${lists[@]}" --zero_shot_labels "${labels[@]}")
launch_xclip "${labels[0]}" "$@"
