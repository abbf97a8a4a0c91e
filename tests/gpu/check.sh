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
rank=$(( $$ * 10 ))
. "$here/agent.sh"  # $work, start_agent, the clean-up on exit
start_agent "$agent" "$work/gpu_check_state.lmdb" --command-queue "$work/gpu_check_command.lmdb" --state "$work/gpu_check_state.lmdb"
export AGENT_RANK=$rank RANK=0 LOCAL_RANK=$device ETB_GPU_CHECK_ROOT=$work
python3 "$here/check.py" "$lib"
