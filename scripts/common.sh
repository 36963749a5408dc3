# Shared by the dataset launchers (sourced, not run): environment defaults, the torchrun
# command line, and DRY_RUN. Every variable below can be set in the environment.
#
#   DATA_ROOT       datasets live in $DATA_ROOT/<dataset>            (default ~/dataset)
#   PRETRAINED_DIR  CLIP weights, ViT-B-32.pt etc.                   (default ~/models/pretrained)
#   MODELS_DIR      runs are written to $MODELS_DIR/<run name>; released checkpoints are
#                   unzipped here as $MODELS_DIR/<checkpoint id>/   (default ~/models/eclip)
#   OUTPUT_DIR      this run's output folder                         (default $MODELS_DIR/<run name>)
#   NPROC           processes (GPUs) per node        (default: GPUs listed by nvidia-smi, else 1)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT      torchrun rendezvous (default 1, 0, 127.0.0.1, 29500)
#   TOTAL_BATCH     training batch over all processes (default 128, the paper's; X-CLIP launchers:
#                   see scripts/xclip_common.sh); each process gets TOTAL_BATCH / (NPROC * NNODES)
#   DO_TRAIN, DO_EVAL  1/0 switches (default: train, or eval only for a released checkpoint)
#   RESUME          checkpoint to resume or evaluate   (default: the preset's released checkpoint)
#   LMDB            read the videos from this LMDB (preprocess/folder2lmdb.py)
#   NUM_WORKERS     data-loader workers per process
#   PYTHON          the interpreter (default: the project's .venv when present, activated or
#                   not, else python3; see scripts/lib.sh)
#   TORCHRUN        the launcher (default $PYTHON -m torch.distributed.run, i.e. torchrun)
#   DRY_RUN=1       print the command instead of running it
# Arguments given to a launcher are appended to main.py's flags (later flags win). A run's output
# (stdout and stderr of every process) is also appended to <output dir>/launcher.log
# (launcher.node<N>.log on node N > 0), errors included; the exit status is torchrun's.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PYTHONUNBUFFERED=1

DATA_ROOT=${DATA_ROOT:-$HOME/dataset}
PRETRAINED_DIR=${PRETRAINED_DIR:-$HOME/models/pretrained}
MODELS_DIR=${MODELS_DIR:-$HOME/models/eclip}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
TOTAL_BATCH=${TOTAL_BATCH:-128}
PYTHON=$(project_python)

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

gpu_count() {
    local count=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    echo $((count > 0 ? count : 1))
}
NPROC=${NPROC:-$(gpu_count)}

# The paper's recipe shared by every dataset (SPEC §8); a launcher sets the dataset's values.
clip_name=ViT-B/32
optim=AdamW
coef_lr=1e-3
wd=0.2
precision=amp
cluster_algo=kmediods++
cluster_distance=euclidean
minkowski_norm_p=2.0
cluster_iter_limit=100
cluster_threshold=1e-6
cluster_extra=()  # algorithm options of a preset, e.g. (--spectral_graph KNN)
default_do_train=1
default_do_eval=0
resume=""
run_name=""

# A released checkpoint: evaluate it by default, from $MODELS_DIR/<id>/ckpt.best.pth.tar, and
# write the results beside it in <id>_eval, never over the files that came with it.
released_checkpoint() {
    default_do_train=0
    default_do_eval=1
    resume=$MODELS_DIR/$1/ckpt.best.pth.tar
    run_name=$1_eval
}

# Per-process batch: TOTAL_BATCH split over every process of every node.
per_process_batch() {
    local world=$((NPROC * NNODES))
    ((world > 0)) || die "NPROC=$NPROC and NNODES=$NNODES must be positive"
    ((TOTAL_BATCH % world == 0)) ||
        die "TOTAL_BATCH=$TOTAL_BATCH is not divisible by NPROC*NNODES=$world; change TOTAL_BATCH or NPROC"
    echo $((TOTAL_BATCH / world))
}

# launch DATATYPE [dataset flags...] -- [user flags...]
# Runs (or with DRY_RUN=1 prints) torchrun main.py with the recipe variables above and the
# dataset's: lr epochs max_words max_frames batch_size_val n_display num_workers
# cluster_num_blocks target_frames_blocks run_name.
launch() {
    local datatype=$1
    shift
    local dataset_flags=() user_flags=()
    while (($#)) && [[ $1 != -- ]]; do dataset_flags+=("$1"); shift; done
    (($#)) && shift
    user_flags=("$@")
    local batch ks fs output_dir
    batch=$(per_process_batch)
    read -ra ks <<<"$cluster_num_blocks"
    read -ra fs <<<"$target_frames_blocks"
    output_dir=${OUTPUT_DIR:-$MODELS_DIR/$run_name}
    resume=${RESUME:-$resume}
    local flags=(
        --do_train "${DO_TRAIN:-$default_do_train}" --do_eval "${DO_EVAL:-$default_do_eval}"
        --datatype "$datatype" "${dataset_flags[@]}"
        --output_dir "$output_dir" --pretrained_dir "$PRETRAINED_DIR" --pretrained_clip_name "$clip_name"
        --num_thread_reader "$num_workers" --epochs "$epochs" --batch_size "$batch"
        --batch_size_val "$batch_size_val" --n_display "$n_display"
        --optim "$optim" --lr "$lr" --coef_lr "$coef_lr" --wd "$wd" --precision "$precision"
        --max_words "$max_words" --max_frames "$max_frames"
        --feature_framerate 3 --slice_framepos 2 --freeze_layer_num 0
        --loose_type --linear_patch 2d --sim_header meanP
        --cluster_inter 1 --cluster_algo "$cluster_algo" --cluster_distance "$cluster_distance"
        --minkowski_norm_p "$minkowski_norm_p" --cluster_iter_limit "$cluster_iter_limit"
        --cluster_threshold "$cluster_threshold"
        --cluster_num_blocks "${ks[@]}" --target_frames_blocks "${fs[@]}" "${cluster_extra[@]}"
    )
    if [[ -n $resume ]]; then flags+=(--resume "$resume"); fi
    if [[ -n ${LMDB:-} ]]; then flags+=(--lmdb_dataset "$LMDB"); fi
    run_torchrun "$output_dir" "${flags[@]}" "${user_flags[@]}"
}

# run_torchrun OUTPUT_DIR MAIN_PY_ARGUMENTS...
# Runs (or with DRY_RUN=1 prints) torchrun main.py with the arguments, on NPROC processes of NNODES
# nodes; the output is appended to OUTPUT_DIR/launcher.log (launcher.node<N>.log on node N > 0).
run_torchrun() {
    local output_dir=$1
    shift
    local launcher=("$PYTHON" -m torch.distributed.run)
    if [[ -n ${TORCHRUN:-} ]]; then launcher=("$TORCHRUN"); fi
    local command=("${launcher[@]}" --nnodes "$NNODES" --nproc_per_node "$NPROC" --node_rank "$NODE_RANK"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$REPO_ROOT/main.py" "$@")
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        print_command "${command[@]}"
        return 0
    fi
    local log=$output_dir/launcher.log
    if [[ $NODE_RANK != 0 ]]; then log=$output_dir/launcher.node$NODE_RANK.log; fi
    echo "output: $output_dir (launcher log: $log)" >&2
    run_logged "$log" "${command[@]}"
}
