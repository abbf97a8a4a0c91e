#!/usr/bin/env bash
# Builds the whole workspace (the library, etb-core, etb-dev-agent): cargo build --workspace
# [ARGS], e.g. --release. Prints the target folder. A plain cargo build sets no SONAME (see
# build.rs), so programs linked against target/<profile> run against the library there.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --workspace "$@"
profile=debug
for a in "$@"; do [ "$a" = "--release" ] && profile=release; done
echo "$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/$profile"
