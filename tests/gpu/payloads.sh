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
rank=$(( $$ * 10 + 1 ))
. "$here/agent.sh"  # $work, start_agent, the clean-up on exit
start_agent "$agent" "/tmp/agent_rank${rank}_state.lmdb" --rank "$rank"
export AGENT_RANK=$rank RANK=0 LOCAL_RANK=$device
python3 "$here/payloads.py" "$lib" "$torch_python" "$(cat "$here/../torch-version")"
