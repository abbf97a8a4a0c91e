#!/usr/bin/env bash
# The main job, end to end: build the library, start a local stand-in agent (etb-dev-agent),
# bootstrap a C worker against it through the C ABI, print its BootstrapInfo, stop the agent.
# Needs only the Rust toolchain and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(scripts/build.sh --release)
root=$(mktemp -d "${TMPDIR:-/tmp}/etb-demo-XXXXXX")
agent_pid=
cleanup() {
    if [ -n "$agent_pid" ]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
    rm -rf "$root"
}
trap cleanup EXIT
cc -std=c11 -Wall -Wextra -Werror -Iinclude examples/c/demo.c -L"$target" -letha_tensor_bus \
   -Wl,-rpath,"$target" -o "$root/demo"

# A torchrun-like environment: worker rank 1 of an inference job whose agents start at rank 4.
export RANK=1 LOCAL_RANK=1 AGENT_RANK_OFFSET=4
unset AGENT_RANK
agent_rank=5
echo "starting etb-dev-agent for agent rank $agent_rank (files under $root)"
"$target/etb-dev-agent" --command-queue "$root/etb_demo_rank${agent_rank}_command.lmdb" \
    --state "$root/etb_demo_rank${agent_rank}_state.lmdb" --exit-after 60 > "$root/agent.out" &
agent_pid=$!
echo "agent pid $agent_pid; bootstrapping the worker (RANK=$RANK, AGENT_RANK_OFFSET=$AGENT_RANK_OFFSET, LOCAL_RANK=$LOCAL_RANK)"
"$root/demo" "$root"
echo "stopping the agent"
