# Shared by the X-CLIP launchers (sourced, not run): the original's recipes (its configs/*.yaml),
# the split of the total batch, released checkpoints, and the torchrun command of common.sh.
# Besides common.sh's variables (NPROC, NNODES, MODELS_DIR, DRY_RUN, ...):
#
#   TOTAL_BATCH        training batch over all processes, per optimizer step (default 256, the
#                      original's advice; few-shot 64): processes x BATCH_PER_PROCESS x accumulation
#   BATCH_PER_PROCESS  at most this many videos per process and forward pass (default: the config's
#                      TRAIN.BATCH_SIZE, its per-GPU batch); the rest of the batch is accumulated
#   NUM_CLIPS, NUM_CROPS  evaluation views (default: the preset's; 1 x 1 for training runs)
#   FEATURES_PATH, TRAIN_LIST, VAL_LIST   the videos and list files (defaults: see each launcher)
# Arguments given to a launcher are appended to main.py's flags (later flags win), e.g.
# --precision fp32 (the default is amp, the original's apex O1) or --seed 7.

TOTAL_BATCH=${TOTAL_BATCH:-256}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LABELS=$REPO_ROOT/dataloaders/labels
lr=8e-6
epochs=30
batch_size_val=2
num_workers=${NUM_WORKERS:-8}
num_clips=1
num_crops=1
train_flags=()  # a launcher's flags for training only, e.g. (--shots 2)
eval_flags=()   # and for every run, e.g. the zero-shot lists

# shipped_labels DATASET: the class names shipped in dataloaders/labels/ (the original's labels/).
shipped_labels() {
    case $1 in
        k400) echo "$LABELS/kinetics_400_labels.csv" ;;
        k600) echo "$LABELS/kinetics_600_labels.csv" ;;
        hmdb51) echo "$LABELS/hmdb_51_labels.csv" ;;
        ucf101) echo "$LABELS/ucf_101_labels.csv" ;;
        *) die "no class names shipped for $1" ;;
    esac
}

# xclip_recipe NAME: the original's configs/<dataset>/NAME.yaml (<patch>_<frames>[_336]); sets the
# model, frames, per-GPU batch and gradient checkpointing (lr and epochs are the launcher's).
xclip_recipe() {
    use_checkpoint=0
    case $1 in
        32_8) arch=ViT-B/32 frames=8 batch_cap=8 ;;
        32_16) arch=ViT-B/32 frames=16 batch_cap=8 ;;
        16_8) arch=ViT-B/16 frames=8 batch_cap=8 ;;
        16_16) arch=ViT-B/16 frames=16 batch_cap=4 ;;
        16_32) arch=ViT-B/16 frames=32 batch_cap=4 ;;
        14_8) arch=ViT-L/14 frames=8 batch_cap=4 ;;
        14_16_336) arch=ViT-L/14@336px frames=16 batch_cap=1 use_checkpoint=1 ;;
        *) die "no X-CLIP recipe $1" ;;
    esac
}

# released_xclip ID CLIPS CROPS [RUN_NAME]: evaluate the released $MODELS_DIR/ID.pth with CLIPS x
# CROPS views; results go to $MODELS_DIR/RUN_NAME (default ID_eval), never beside the file.
released_xclip() {
    default_do_train=0
    default_do_eval=1
    resume=$MODELS_DIR/$1.pth
    num_clips=$2
    num_crops=$3
    run_name=${4:-$1_eval}
}

# kinetics_preset DATASET RECIPES RELEASED: PRESET is one of RECIPES (train with that config; empty =
# the first) or DATASET_<one of RELEASED> (evaluate that released checkpoint with 4 clips x 3 crops,
# the views of the original's reported results).
kinetics_preset() {
    local dataset=$1 preset=${PRESET:-${2%% *}} ids="" r
    for r in $3; do ids+=" ${dataset}_$r"; done
    local recipe=${preset#"${dataset}_"}
    if [[ " $2 " == *" $preset "* ]]; then
        xclip_recipe "$recipe"
        run_name=xclip_${dataset}_$recipe
    elif [[ "$ids " == *" $preset "* ]]; then
        xclip_recipe "$recipe"
        released_xclip "$preset" 4 3
    else
        die "unknown PRESET=$preset; choose a recipe ($2) or a released checkpoint (${ids# })"
    fi
}

# launch_kinetics DATASET RECIPES RELEASED [user flags...]: xclip_k400.sh and xclip_k600.sh. The data
# under DATA_PATH (default $DATA_ROOT/DATASET): FEATURES_PATH videos/, TRAIN_LIST train.txt, VAL_LIST
# val.txt; the shipped class names; the PRESET of kinetics_preset.
launch_kinetics() {
    local dataset=$1 recipes=$2 released=$3
    shift 3
    DATA_PATH=${DATA_PATH:-$DATA_ROOT/$dataset}
    FEATURES_PATH=${FEATURES_PATH:-$DATA_PATH/videos}
    TRAIN_LIST=${TRAIN_LIST:-$DATA_PATH/train.txt}
    VAL_LIST=${VAL_LIST:-$DATA_PATH/val.txt}
    kinetics_preset "$dataset" "$recipes" "$released"
    launch_xclip "$(shipped_labels "$dataset")" "$@"
}

# split_batch: TOTAL_BATCH per optimizer step = NPROC*NNODES processes x batch x accumulation, with
# batch the largest divisor of the per-process share that is at most BATCH_PER_PROCESS.
split_batch() {
    local share cap=${BATCH_PER_PROCESS:-$batch_cap}
    share=$(per_process_batch)
    ((cap >= 1)) || die "BATCH_PER_PROCESS=$cap must be positive"
    batch=$((cap < share ? cap : share))
    while ((share % batch)); do batch=$((batch - 1)); done
    accumulation=$((share / batch))
}

# launch_xclip LABELS_CSV [user flags...]
# Runs (or with DRY_RUN=1 prints) torchrun main.py --task_type recognition: the model (arch frames),
# FEATURES_PATH, VAL_LIST and the views; when training also TRAIN_LIST, lr, epochs, the batch split
# and train_flags; then eval_flags, and the user's flags last.
launch_xclip() {
    local labels_csv=$1
    shift
    local do_train=${DO_TRAIN:-$default_do_train} output_dir=${OUTPUT_DIR:-$MODELS_DIR/$run_name}
    resume=${RESUME:-$resume}
    local flags=(
        --task_type recognition --datatype video_list
        --do_train "$do_train" --do_eval "${DO_EVAL:-$default_do_eval}"
        --features_path "$FEATURES_PATH" --val_list "$VAL_LIST" --labels_csv "$labels_csv"
        --output_dir "$output_dir" --pretrained_dir "$PRETRAINED_DIR" --pretrained_clip_name "$arch"
        --max_frames "$frames" --num_thread_reader "$num_workers"
        --batch_size_val "$batch_size_val" --num_clips "${NUM_CLIPS:-$num_clips}" --num_crops "${NUM_CROPS:-$num_crops}"
    )
    if [[ $do_train == 1 ]]; then
        split_batch
        flags+=(--train_list "$TRAIN_LIST" --epochs "$epochs" --lr "$lr" --batch_size "$batch"
            --gradient_accumulation_steps "$accumulation" --use_checkpoint "$use_checkpoint" "${train_flags[@]}")
    fi
    flags+=("${eval_flags[@]}")
    if [[ -n $resume ]]; then flags+=(--resume "$resume"); fi
    if [[ -n ${LMDB:-} ]]; then flags+=(--lmdb_dataset "$LMDB"); fi
    run_torchrun "$output_dir" "${flags[@]}" "$@"
}
