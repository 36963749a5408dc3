#!/usr/bin/env bash
# CenterCLIP on MSVD: train on the train split, test on the test split (multi-sentence).
#
#   bash scripts/msvd.sh                           # train with the paper's recipe
#   PRESET=eclip_msvd_22 bash scripts/msvd.sh      # evaluate the released checkpoint
#   DRY_RUN=1 bash scripts/msvd.sh                 # print the command; extra flags go to main.py
#
# Data ($DATA_PATH, default $DATA_ROOT/msvd): msvd_data/ with {train,val,test}_list.txt and
# raw-captions.pkl (ANNOTATIONS), videos in resized_video_3fps/ (FEATURES_PATH).
# Presets (checkpoint ids of the original's release; unzip each into $MODELS_DIR/<id>/):
#   eclip_msvd_22  k-medoids++, B6-4,49  (T2V R@1 47.5 reported for it)
# Environment variables: see scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH=${DATA_PATH:-$DATA_ROOT/msvd}
ANNOTATIONS=${ANNOTATIONS:-$DATA_PATH/msvd_data}
FEATURES_PATH=${FEATURES_PATH:-$DATA_PATH/resized_video_3fps}

# The paper's MSVD recipe: 12 frames, B6-4,49.
lr=5e-3
epochs=5
max_words=32
max_frames=12
batch_size_val=64
n_display=50
num_workers=${NUM_WORKERS:-8}
cluster_num_blocks="49 49 49 49 49 49 49 49 49 49 49 49"
target_frames_blocks="12 12 12 12 12 12 4 4 4 4 4 4"
run_name=eclip_msvd

case ${PRESET:-} in
    "") ;;
    eclip_msvd_22) released_checkpoint "$PRESET" ;;
    *) die "unknown PRESET=$PRESET; choose eclip_msvd_22" ;;
esac

launch msvd --data_path "$ANNOTATIONS" --features_path "$FEATURES_PATH" -- "$@"
