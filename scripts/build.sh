#!/usr/bin/env bash
# Builds the library and etb-dev-agent (cargo build [ARGS], e.g. --release), then links the SONAME
# (libetha_tensor_bus.so.0.<minor>) to the built library in the target folder, so that programs
# linked against target/<profile> find it at run time. Prints the target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet "$@"
profile=debug
for a in "$@"; do [ "$a" = "--release" ] && profile=release; done
dir=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/$profile
soname=$(readelf -d "$dir/libetha_tensor_bus.so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ -n "$soname" ] || { echo "build.sh: $dir/libetha_tensor_bus.so has no SONAME" >&2; exit 1; }
ln -sfn libetha_tensor_bus.so "$dir/$soname"
echo "$dir"
