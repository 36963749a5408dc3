#!/usr/bin/env bash
# CenterCLIP on LSMDC: train on the training annotations, test on the 1,000-clip public test.
#
#   bash scripts/lsmdc.sh                                  # train with the paper's recipe
#   PRESET=eclip_new_abla_lsmdc_04 bash scripts/lsmdc.sh   # evaluate a released checkpoint
#   DRY_RUN=1 bash scripts/lsmdc.sh                        # print the command; extra flags go to main.py
#
# Data ($DATA_PATH, default $DATA_ROOT/lsmdc): LSMDC16_annos_training.csv, LSMDC16_annos_val.csv,
# LSMDC16_challenge_1000_publictect.csv, video_path.json; videos in video/ (FEATURES_PATH), as
# preprocess/download_lsmdc.py writes them.
# Presets (checkpoint ids of the original's release; unzip each into $MODELS_DIR/<id>/):
#   eclip_new_abla_lsmdc_04  k-medoids++, B6-6,49           (T2V R@1 21.9 reported for it)
#   eclip_new_abla_lsmdc_09  k-medoids++, B6-4,49           (21.7)
#   eclip_new_abla_lsmdc_22  spectral, KNN graph, B6-6,49   (21.6)
#   eclip_new_abla_lsmdc_23  spectral, KNN graph, B6-4,49   (21.4)
# Environment variables: see scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH=${DATA_PATH:-$DATA_ROOT/lsmdc}
FEATURES_PATH=${FEATURES_PATH:-$DATA_PATH/video}

# The paper's LSMDC recipe: 12 frames, B6-6,49.
lr=5e-3
epochs=5
max_words=32
max_frames=12
batch_size_val=32
n_display=40
num_workers=${NUM_WORKERS:-8}
cluster_num_blocks="49 49 49 49 49 49 49 49 49 49 49 49"
target_frames_blocks="12 12 12 12 12 12 6 6 6 6 6 6"
run_name=eclip_lsmdc
spectral=(--spectral_graph KNN --spectral_sigma 2.0 --spectral_knn_k 1)  # knn_k < 5: automatic

case ${PRESET:-} in
    "") ;;
    eclip_new_abla_lsmdc_04) released_checkpoint "$PRESET" ;;
    eclip_new_abla_lsmdc_09)
        target_frames_blocks="12 12 12 12 12 12 4 4 4 4 4 4"
        released_checkpoint "$PRESET" ;;
    eclip_new_abla_lsmdc_22)
        cluster_algo=spectral
        cluster_extra=("${spectral[@]}")
        released_checkpoint "$PRESET" ;;
    eclip_new_abla_lsmdc_23)
        cluster_algo=spectral
        cluster_extra=("${spectral[@]}")
        target_frames_blocks="12 12 12 12 12 12 4 4 4 4 4 4"
        released_checkpoint "$PRESET" ;;
    *) die "unknown PRESET=$PRESET; choose eclip_new_abla_lsmdc_04, _09, _22 or _23" ;;
esac

launch lsmdc --data_path "$DATA_PATH" --features_path "$FEATURES_PATH" -- "$@"
