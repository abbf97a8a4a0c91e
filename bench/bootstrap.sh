#!/usr/bin/env bash
# Bootstrap figures, release build, through the C ABI:
#   1. bootstrap time with the agent already running;
#   2. connect latency: agent's first heartbeat -> bootstrap's return, worker started first.
# Usage: bench/bootstrap.sh [WARM_RUNS] [CONNECT_RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(scripts/build.sh --release)
work=$(mktemp -d "${TMPDIR:-/tmp}/etb-bench-XXXXXX")
agent_pid=
cleanup() {
    if [ -n "$agent_pid" ]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -std=c11 -Wall -Wextra -Werror -Iinclude bench/bootstrap.c -L"$target" -letha_tensor_bus \
   -Wl,-rpath,"$target" -o "$work/bootstrap"
export ETB_DEV_AGENT="$target/etb-dev-agent"
rank=$(( $$ * 1000 + 999 ))
"$ETB_DEV_AGENT" --rank "$rank" --die-with-parent > "$work/agent.out" &
agent_pid=$!
until grep -q ready "$work/agent.out" 2>/dev/null; do sleep 0.01; done
echo "machine: $(nproc) cores, $(uname -r), /tmp on $(df --output=fstype /tmp | tail -1)"
AGENT_RANK=$rank RANK=0 "$work/bootstrap" warm "${1:-2000}"
"$work/bootstrap" connect "${2:-30}"
