#!/usr/bin/env bash
# The demo, on a fresh machine: installs the requirements into .venv, generates ~480 short videos of
# procedurally drawn scenes with captions (once, under DATA_DIR), trains the small `demo-small` CLIP
# from scratch with token clustering on the CPU, and prints the test split's retrieval metrics.
#   bash scripts/demo.sh                 # DATA_DIR, OUTPUT_DIR, EPOCHS, NUM_WORKERS override defaults
#   bash scripts/demo.sh --epochs 2      # arguments are appended to main.py's flags (later flags win)
#   DRY_RUN=1 bash scripts/demo.sh       # print the training command only
# PYTHON=... runs main.py with that interpreter as it is (nothing is installed). The run's output
# is also appended to $OUTPUT_DIR/launcher.log; the exit status is main.py's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DATA_DIR=${DATA_DIR:-data}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
EPOCHS=${EPOCHS:-8}
NUM_WORKERS=${NUM_WORKERS:-2}

command=("${PYTHON:-.venv/bin/python}" main.py --datatype demo --data_dir "$DATA_DIR" --output_dir "$OUTPUT_DIR"
  --pretrained_clip_name demo-small --do_train 1 --epochs "$EPOCHS" --batch_size 32 --batch_size_val 80
  --max_frames 6 --max_words 16 --optim AdamW --lr 5e-4 --coef_lr 1 --wd 0.05 --freeze_layer_num -1
  --num_thread_reader "$NUM_WORKERS" --n_display 12 --overwrite 1
  --cluster_inter 1 --cluster_algo kmediods++ --cluster_num_blocks 49 49 16 16 --target_frames_blocks 6 6 2 2
  "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  print_command "${command[@]}"
  exit 0
fi
install_requirements
run_logged "$OUTPUT_DIR/launcher.log" "${command[@]}"
echo "test split (80 videos, chance R@1 = 1.25%):"
grep -E "(last|best) epoch" "$OUTPUT_DIR/log.txt" | tail -n 2 | sed 's/.*centerclip: //'
