# Sourced by the GPU checks (check.sh, payloads.sh, dlpack.sh): a work folder, and one
# etb-dev-agent started and waited for, both removed on exit (with the worker lock file the
# library leaves beside the agent's state, whose path the check gives).
#   . "$here/agent.sh"; start_agent ETB_DEV_AGENT STATE_PATH AGENT_ARGS...
work=$(mktemp -d "${TMPDIR:-/tmp}/etb-gpu-XXXXXX")
pid=
worker_lock=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ -n "$worker_lock" ]; then rm -f "$worker_lock"; fi
    rm -rf "$work"
}
trap cleanup EXIT
start_agent() {
    local binary=$1 state=$2
    shift 2
    worker_lock="$(dirname "$state")/.$(basename "$state").worker"
    "$binary" "$@" --die-with-parent --exit-after 300 > "$work/agent.out" &
    pid=$!
    for _ in $(seq 200); do
        grep -q ready "$work/agent.out" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { echo "etb-dev-agent exited before it was ready" >&2; exit 1; }
        sleep 0.05
    done
    echo "etb-dev-agent not ready after 10 s" >&2
    exit 1
}
