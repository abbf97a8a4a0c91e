#!/usr/bin/env bash
# GPU check of the CUDA binding, for a machine with a GPU, PyTorch and Python but no Rust
# toolchain and no network. Takes the prebuilt library and etb-dev-agent by path (build them
# where cargo exists: scripts/build.sh --release, then carry target/release over).
#
#   tests/gpu/check.sh /path/to/libetha_tensor_bus.so /path/to/etb-dev-agent [DEVICE]
#
# Runs in well under a minute. Prints one line per check and ends with "N passed, N failed".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib=${1:?usage: check.sh LIB.so ETB_DEV_AGENT [DEVICE]}
agent=${2:?usage: check.sh LIB.so ETB_DEV_AGENT [DEVICE]}
device=${3:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/etb-gpu-XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
rank=$(( $$ * 10 ))
"$agent" --command-queue "$work/gpu_check_command.lmdb" --state "$work/gpu_check_state.lmdb" \
    --die-with-parent --exit-after 300 > "$work/agent.out" &
pid=$!
for _ in $(seq 200); do
    grep -q ready "$work/agent.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "etb-dev-agent exited before it was ready" >&2; exit 1; }
    sleep 0.05
done
grep -q ready "$work/agent.out" || { echo "etb-dev-agent not ready after 10 s" >&2; exit 1; }
export AGENT_RANK=$rank RANK=0 LOCAL_RANK=$device ETB_GPU_CHECK_ROOT=$work
python3 "$here/check.py" "$lib"
