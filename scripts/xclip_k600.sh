#!/usr/bin/env bash
# X-CLIP on Kinetics-600 (fully supervised): train from OpenAI CLIP with one of the original's configs,
# or evaluate a released checkpoint.
#
#   bash scripts/xclip_k600.sh                       # train X-CLIP-B/16, 8 frames (configs/k600/16_8)
#   PRESET=k600_16_16 bash scripts/xclip_k600.sh     # evaluate the released k600_16_16.pth, 4 clips x 3 crops
#   DRY_RUN=1 bash scripts/xclip_k600.sh --epochs 1  # print the command; extra flags go to main.py
#
# Data ($DATA_PATH, default $DATA_ROOT/k600): videos/ (FEATURES_PATH), train.txt and val.txt
# (TRAIN_LIST, VAL_LIST); class names dataloaders/labels/kinetics_600_labels.csv.
# Recipes (the original's configs/k600/*.yaml; lr 8e-6, 30 epochs, total batch 256):
#   16_8   ViT-B/16, 8 frames, 8 videos per GPU
#   16_16  ViT-B/16, 16 frames, 4 per GPU
#   14_8   ViT-L/14, 8 frames, 4 per GPU
# Released checkpoints (put them at $MODELS_DIR/<id>.pth; top-1 reported with 4 clips x 3 crops):
#   k600_16_8 85.3   k600_16_16 85.8   (GitHub release v1.0 of nbl97/X-CLIP_Model_Zoo)
#   k600_14_8 88.3   (Google Drive, linked from the original's README)
# Environment variables: see scripts/xclip_common.sh and scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/xclip_common.sh"

launch_kinetics k600 "16_8 16_16 14_8" "16_8 16_16 14_8" "$@"
