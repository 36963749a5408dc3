#!/usr/bin/env bash
# The recognition demo, on a fresh machine: installs the requirements into .venv, generates 400 short
# videos of a shape whose colour changes half-way, in 20 classes ("red turns blue", "blue turns red",
# ...; once, under DATA_DIR, see dataloaders/demo_recognition.py), trains a small X-CLIP (`demo-small`:
# a 4-block CLIP from scratch, its text tower frozen as X-CLIP's default) on the CPU and prints the
# validation split's top-1/top-5 of the last and the best epoch.
#   bash scripts/demo_recognition.sh                # DATA_DIR, OUTPUT_DIR, EPOCHS, NUM_WORKERS override defaults
#   ZERO_SHOT=1 bash scripts/demo_recognition.sh    # train on 15 classes, then test ckpt.best on the 5 held-out
#                                                   # ones (X-CLIP's zero-shot protocol; into $OUTPUT_DIR/zero_shot)
#   bash scripts/demo_recognition.sh --epochs 2     # arguments are appended to main.py's flags (later flags win)
#   DRY_RUN=1 bash scripts/demo_recognition.sh      # print the command(s), one per line (nothing is generated)
# PYTHON=... runs with that interpreter as it is (nothing is installed). The run's output is also
# appended to $OUTPUT_DIR/launcher.log; the exit status is main.py's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DATA_DIR=${DATA_DIR:-data}
ZERO_SHOT=${ZERO_SHOT:-0}
EPOCHS=${EPOCHS:-12}
NUM_WORKERS=${NUM_WORKERS:-2}
root=$DATA_DIR/demo_recognition
if [[ $ZERO_SHOT == 1 ]]; then
  OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo_recognition_zero_shot}
  splits=(--train_list "$root/train_seen.txt" --val_list "$root/val_seen.txt" --labels_csv "$root/labels_seen.csv")
  about="seen classes: 60 videos of 15 classes, chance top-1 6.7%"
else
  OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo_recognition}
  splits=(--train_list "$root/train.txt" --val_list "$root/val.txt" --labels_csv "$root/labels.csv")
  about="80 videos of 20 classes, chance top-1 5%"
fi
python=${PYTHON:-.venv/bin/python}

# X-CLIP's recipe (AdamW, new parts at 10x lr, cosine schedule, label smoothing, flips, frozen text
# tower) on a model trained from scratch: a larger lr, a shorter warm-up, no mixup/cutmix (a cut-in box
# hides the colour change), and no colour jitter or grayscale (colour is the class).
command=("$python" main.py --task_type recognition --datatype video_list "${splits[@]}" --features_path "$root/videos"
  --output_dir "$OUTPUT_DIR" --overwrite 1 --pretrained_clip_name demo-small --fix_text 1 --do_train 1
  --precision fp32 --max_frames 6 --epochs "$EPOCHS" --warmup_epochs 1 --batch_size 16 --batch_size_val 20 --lr 3e-4
  --mixup 0 --color_jitter 0 --gray_scale 0 --num_thread_reader "$NUM_WORKERS" --n_display 10
  "$@")

# ZERO_SHOT=1: the best checkpoint, evaluated on the held-out classes only (their names never trained on).
zero_shot=("$python" main.py --task_type recognition --datatype video_list --zero_shot_lists "$root/val_unseen.txt"
  --zero_shot_labels "$root/labels_unseen.csv" --features_path "$root/videos" --output_dir "$OUTPUT_DIR/zero_shot"
  --overwrite 1 --do_train 0 --do_eval 1 --resume "$OUTPUT_DIR/ckpt.best.pth.tar" --precision fp32
  --batch_size_val 20 --num_thread_reader "$NUM_WORKERS")

if [[ ${DRY_RUN:-0} == 1 ]]; then
  print_command "${command[@]}"
  if [[ $ZERO_SHOT == 1 ]]; then print_command "${zero_shot[@]}"; fi
  exit 0
fi
install_requirements
"$python" -m dataloaders.demo_recognition --data_dir "$DATA_DIR" >/dev/null
run_logged "$OUTPUT_DIR/launcher.log" "${command[@]}"
echo "validation ($about):"
grep -E "(last|best) epoch" "$OUTPUT_DIR/log.txt" | tail -n 2 | sed 's/.*centerclip: //'
if [[ $ZERO_SHOT == 1 ]]; then
  run_logged "$OUTPUT_DIR/launcher.log" "${zero_shot[@]}"
  echo "held-out classes (100 videos of 5 classes never trained on, chance top-1 20%), best checkpoint:"
  grep -E "top-1 .* on [0-9]+ videos" "$OUTPUT_DIR/zero_shot/log.txt" | tail -n 1 | sed 's/.*centerclip: //'
fi
