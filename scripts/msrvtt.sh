#!/usr/bin/env bash
# CenterCLIP on MSR-VTT: train on the 7k (or 9k) split, test on 1k-A (JSFusion).
#
#   bash scripts/msrvtt.sh                            # train with the paper's recipe
#   PRESET=eclip_msrvtt_62 bash scripts/msrvtt.sh     # evaluate a released checkpoint
#   DRY_RUN=1 bash scripts/msrvtt.sh --epochs 1       # print the command; extra flags go to main.py
#
# Data ($DATA_PATH, default $DATA_ROOT/msrvtt): MSRVTT_data.json, MSRVTT_train.7k.csv (TRAIN_CSV
# for the 9k split), MSRVTT_JSFUSION_test.csv, videos in resized_video/ (FEATURES_PATH).
# Presets (checkpoint ids of the original's release; unzip each into $MODELS_DIR/<id>/):
#   eclip_msrvtt_62  k-medoids++, Minkowski p=1, B6-6,49  (T2V R@1 44.1 reported for it)
#   eclip_msrvtt_63  k-medoids++, Minkowski p=1, B6-4,49  (44.2)
#   eclip_msrvtt_80  k-medoids++, p=2, B7-4,49: blocks 1-7 see all 12 frames  (43.9)
# Environment variables: see scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH=${DATA_PATH:-$DATA_ROOT/msrvtt}
FEATURES_PATH=${FEATURES_PATH:-$DATA_PATH/resized_video}
TRAIN_CSV=${TRAIN_CSV:-$DATA_PATH/MSRVTT_train.7k.csv}

# The paper's MSR-VTT recipe: 12 frames, B6-4,49 (blocks 7-12 see 4 segments of 49 medoids).
lr=5e-3
epochs=5
max_words=32
max_frames=12
batch_size_val=16
n_display=50
num_workers=${NUM_WORKERS:-8}
cluster_num_blocks="49 49 49 49 49 49 49 49 49 49 49 49"
target_frames_blocks="12 12 12 12 12 12 4 4 4 4 4 4"
run_name=eclip_msrvtt

case ${PRESET:-} in
    "") ;;
    eclip_msrvtt_62)
        minkowski_norm_p=1.0
        target_frames_blocks="12 12 12 12 12 12 6 6 6 6 6 6"
        released_checkpoint "$PRESET" ;;
    eclip_msrvtt_63)
        minkowski_norm_p=1.0
        released_checkpoint "$PRESET" ;;
    eclip_msrvtt_80)
        target_frames_blocks="12 12 12 12 12 12 12 4 4 4 4 4"
        released_checkpoint "$PRESET" ;;
    *) die "unknown PRESET=$PRESET; choose eclip_msrvtt_62, eclip_msrvtt_63 or eclip_msrvtt_80" ;;
esac

launch msrvtt --data_path "$DATA_PATH/MSRVTT_data.json" --features_path "$FEATURES_PATH" \
    --train_csv "$TRAIN_CSV" --val_csv "$DATA_PATH/MSRVTT_JSFUSION_test.csv" --expand_msrvtt_sentences \
    -- "$@"
