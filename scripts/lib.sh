# Sourced by the scripts in scripts/ (not run): which Python they use, and runs whose output
# is kept in a log file.
#
#   PYTHON   the interpreter: an explicit PYTHON=... wins; else the project's .venv (the README's
#            install step makes it), whether it is activated or not; else python3 from PATH.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
set -o pipefail  # a pipeline into tee fails with the command's exit status

project_python() {
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
    elif [[ -x $REPO_ROOT/.venv/bin/python ]]; then
        echo "$REPO_ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

# print_command WORD...: the command on one line, quoted for the shell (what DRY_RUN=1 shows).
print_command() {
    printf '%q ' "$@"
    echo
}

# install_requirements: for the demos on a fresh machine, unless PYTHON is set: make .venv if
# absent and install requirements.txt into it.
install_requirements() {
    [[ -z ${PYTHON:-} ]] || return 0
    [[ -x $REPO_ROOT/.venv/bin/python ]] || python3 -m venv "$REPO_ROOT/.venv"
    "$REPO_ROOT/.venv/bin/python" -m pip install --quiet -r "$REPO_ROOT/requirements.txt"
}

# run_logged LOG COMMAND...
# Runs COMMAND with its output (stdout and stderr) on the terminal and appended to LOG, after a
# line with the date and the command. Returns COMMAND's exit status; a failure is also reported
# on stderr and in LOG, with the log's path.
run_logged() {
    local log=$1 status=0
    shift
    mkdir -p "$(dirname "$log")"
    { printf '# %s:' "$(date '+%Y-%m-%d %H:%M:%S')"; printf ' %q' "$@"; echo; } >>"$log"
    # tee -i: on Ctrl-C the log still receives what the command prints while it stops.
    "$@" 2>&1 | tee -ia "$log" || status=${PIPESTATUS[0]}
    if ((status)); then
        echo "$(basename "$0"): failed with exit status $status; its output is in $log" | tee -a "$log" >&2
    fi
    return "$status"
}
