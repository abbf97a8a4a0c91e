#!/usr/bin/env bash
# GPU check of the native CUDA tensor payloads, for a machine with a GPU, PyTorch and Python but
# no Rust toolchain and no network (never run in CI, which has no GPU). Takes the prebuilt
# library and etb-dev-agent by path (build them where cargo exists: scripts/build.sh --release,
# then carry target/release over), and the python of an environment with torch: the agent's
# version, pinned in tests/torch-version (a torch of another version is reported as a failed
# check, the other checks still run).
#
#   tests/gpu/payloads.sh /path/to/libetha_tensor_bus.so /path/to/etb-dev-agent TORCH_PYTHON [DEVICE]
#
# The producer (tests/gpu/payloads.py, no torch in its process) allocates with cuMemAlloc_v2 and
# makes payloads; a PyTorch process unpickles them, checks the values, writes into the memory and
# drops its tensor; the producer sees the write and the reference counter back at 0, for a
# synchronized payload and for the stream/event path. Ends with "N passed, N failed"; a sandbox
# that refuses CUDA IPC is reported as unsupported, apart from failures. Well under a minute.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: payloads.sh LIB.so ETB_DEV_AGENT TORCH_PYTHON [DEVICE]"
lib=${1:?$usage}
agent=${2:?$usage}
torch_python=${3:?$usage}
device=${4:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/etb-gpu-XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
rank=$(( $$ * 10 + 1 ))
"$agent" --rank "$rank" --die-with-parent --exit-after 300 > "$work/agent.out" &
pid=$!
for _ in $(seq 200); do
    grep -q ready "$work/agent.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "etb-dev-agent exited before it was ready" >&2; exit 1; }
    sleep 0.05
done
grep -q ready "$work/agent.out" || { echo "etb-dev-agent not ready after 10 s" >&2; exit 1; }
export AGENT_RANK=$rank RANK=0 LOCAL_RANK=$device
python3 "$here/payloads.py" "$lib" "$torch_python" "$(cat "$here/../torch-version")"
