#!/usr/bin/env bash
# The benchmarks, one command: builds in release mode, runs every figure for our library (through
# its C ABI; bootstrap also through ctypes) and for the reference algorithm (bench/reference_client.py),
# against the same stand-in agent, prints a table and writes bench/results.json.
#   bench/run.sh            full run (a few minutes)
#   bench/run.sh --quick    a smoke pass (seconds), as the test suite runs it
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
target=$(scripts/build.sh --release)
cargo build --release --quiet --example bench-floor
mkdir -p build/bench
cc -O2 -std=c11 -Wall -Wextra -Werror -Iinclude bench/ours.c -L"$target" -letha_tensor_bus -lpthread -ldl \
   -Wl,-rpath,"$target" -o build/bench/ours
cc -O2 -std=c11 -Wall -Wextra -Werror bench/footprint.c -ldl -o build/bench/footprint
# The native payloads' figure: the fake CUDA driver, and the agent's torch for the floor beside it.
cc -O2 -std=c11 -shared -fPIC tests/fake_cuda/fake_cuda.c -lpthread -o build/bench/libfakecuda.so
export ETB_BENCH_FAKE_CUDA=$PWD/build/bench/libfakecuda.so
ETB_BENCH_TORCH_PYTHON=$(scripts/setup-torch-venv.sh) && export ETB_BENCH_TORCH_PYTHON \
    || echo "bench: no torch environment: the payload figure is left out" >&2
exec .venv/bin/python bench/run.py --target "$target" "$@"
