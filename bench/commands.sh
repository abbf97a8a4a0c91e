#!/usr/bin/env bash
# Command figures, release build, through the C ABI against etb-dev-agent:
# enqueue throughput with /tmp (disk) and /dev/shm (tmpfs), blocking round trip, death detection.
# Usage: bench/commands.sh [ENQUEUE_N] [ROUNDTRIP_N] [DEATH_N]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(scripts/build.sh --release)
work=$(mktemp -d "${TMPDIR:-/tmp}/etb-bench-XXXXXX")
shm=$(mktemp -d /dev/shm/etb-bench-XXXXXX)
trap 'rm -rf "$work" "$shm"' EXIT
cc -O2 -std=c11 -Wall -Wextra -Werror -Iinclude bench/commands.c -L"$target" -letha_tensor_bus -lpthread \
   -Wl,-rpath,"$target" -o "$work/commands"
export ETB_DEV_AGENT="$target/etb-dev-agent"
echo "machine: $(nproc) cores, $(uname -r); $work on $(df --output=fstype "$work" | tail -1), $shm on tmpfs"
echo "-- queue in $work"
"$work/commands" enqueue "$work" "${1:-40000}"
echo "-- queue in $shm"
"$work/commands" enqueue "$shm" "${1:-40000}"
"$work/commands" roundtrip "$work" "${2:-2000}"
"$work/commands" death "$work" "${3:-10}"
