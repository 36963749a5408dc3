#!/usr/bin/env bash
# X-CLIP on Kinetics-400 (fully supervised): train from OpenAI CLIP with one of the original's configs,
# or evaluate a released checkpoint.
#
#   bash scripts/xclip_k400.sh                       # train X-CLIP-B/32, 8 frames (configs/k400/32_8)
#   PRESET=16_16 NPROC=8 bash scripts/xclip_k400.sh  # train X-CLIP-B/16, 16 frames, on 8 GPUs
#   PRESET=k400_16_8 bash scripts/xclip_k400.sh      # evaluate the released k400_16_8.pth, 4 clips x 3 crops
#   DRY_RUN=1 bash scripts/xclip_k400.sh --epochs 1  # print the command; extra flags go to main.py
#
# Data ($DATA_PATH, default $DATA_ROOT/k400): videos/ (FEATURES_PATH), train.txt and val.txt
# (TRAIN_LIST, VAL_LIST: lines `relative/path label`); class names dataloaders/labels/kinetics_400_labels.csv.
# Recipes (the original's configs/k400/*.yaml; lr 8e-6, 30 epochs, total batch 256):
#   32_8       ViT-B/32, 8 frames, 8 videos per GPU       16_32      ViT-B/16, 32 frames, 4 per GPU
#   32_16      ViT-B/32, 16 frames, 8 per GPU                        (the zero-shot model: xclip_zero_shot.sh)
#   16_8       ViT-B/16, 8 frames, 8 per GPU              14_8       ViT-L/14, 8 frames, 4 per GPU
#   16_16      ViT-B/16, 16 frames, 4 per GPU             14_16_336  ViT-L/14@336px, 16 frames, 1 per GPU,
#                                                                    gradient checkpointing
# Released checkpoints (put them at $MODELS_DIR/<id>.pth; top-1 reported with 4 clips x 3 crops):
#   k400_32_8 80.4   k400_32_16 81.1   k400_16_8 83.8   k400_16_16 84.7   (GitHub release v1.0 of
#   k400_14_8 87.1   k400_14_16_336 87.7   (Google Drive, linked from the original's README)   nbl97/X-CLIP_Model_Zoo)
# Environment variables: see scripts/xclip_common.sh and scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/xclip_common.sh"

launch_kinetics k400 "32_8 32_16 16_8 16_16 16_32 14_8 14_16_336" "32_8 32_16 16_8 16_16 14_8 14_16_336" "$@"
