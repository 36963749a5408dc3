#!/usr/bin/env bash
# TensorBoard over the runs' event files (each run writes <output_dir>/tensorboard).
#
#   bash scripts/tensorboard.sh [LOGDIR] [PORT]
#
# LOGDIR and PORT come from the arguments, else from the environment variables of the same
# names (default $MODELS_DIR, i.e. ~/models/eclip, and 6006). HOST (default 127.0.0.1) is the
# address to listen on: HOST=0.0.0.0 makes the board reachable from other machines.
# PYTHON: the interpreter that has tensorboard (default: the project's .venv when present, else
# python3; see scripts/lib.sh). DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODELS_DIR=${MODELS_DIR:-$HOME/models/eclip}
LOGDIR=${1:-${LOGDIR:-$MODELS_DIR}}
PORT=${2:-${PORT:-6006}}
HOST=${HOST:-127.0.0.1}

command=("$(project_python)" -m tensorboard.main --logdir "$LOGDIR" --port "$PORT" --host "$HOST")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    print_command "${command[@]}"
    exit 0
fi
exec "${command[@]}"
