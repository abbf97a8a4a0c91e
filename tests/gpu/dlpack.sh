#!/usr/bin/env bash
# GPU check of DLPack payloads, for a machine with a GPU, CuPy or JAX (CUDA), and PyTorch (never
# run in CI, which has no GPU; nothing here needs Rust or the network). A CuPy (else JAX) array's
# DLPack capsule becomes a payload through etb_client_dlpack_payload in a process without torch;
# a torch process unpickles it, checks the values, writes into the memory and drops its tensor;
# the producer sees the write, the reference counter back at 0, and the capsule's deleter run
# once at etb_payload_free. Ends with "N passed, N failed".
#
#   tests/gpu/dlpack.sh /path/to/libetha_tensor_bus.so /path/to/etb-dev-agent PRODUCER_PYTHON TORCH_PYTHON [DEVICE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: dlpack.sh LIB.so ETB_DEV_AGENT PRODUCER_PYTHON TORCH_PYTHON [DEVICE]"
lib=${1:?$usage}
agent=${2:?$usage}
producer_python=${3:?$usage}
torch_python=${4:?$usage}
device=${5:-0}
rank=$(( $$ * 10 + 2 ))
. "$here/agent.sh"  # $work, start_agent, the clean-up on exit
start_agent "$agent" "/tmp/agent_rank${rank}_state.lmdb" --rank "$rank"
export AGENT_RANK=$rank RANK=0 LOCAL_RANK=$device
"$producer_python" "$here/dlpack.py" produce "$lib" "$torch_python" "$work"
