#!/usr/bin/env bash
# Fuzzes the parsers and the command encoder with libFuzzer (fuzz/), on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # default: 60 s each, every target
#
# Installs the pinned cargo-fuzz into build/cargo-fuzz (once), builds the targets without a
# sanitizer (`-s none`: the only mode stable rustc supports; the sancov instrumentation that
# libFuzzer needs uses stable -C flags), and runs each for SECONDS_PER_TARGET. Build output,
# corpora, crash artifacts and logs go under build/fuzz/. Ends with one line per target:
# `TARGET: N executions, 0 crashes` or `TARGET: N executions, CRASH <artifact>`; exits non-zero
# on a crash. Reproduce one with: scripts/fuzz.sh --repro TARGET ARTIFACT
#
# Needs a C++ compiler (libfuzzer-sys builds libFuzzer from source). Where the fuzz targets
# cannot be built, it says so and runs the property tests (tests/properties.rs) instead.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
TARGETS_ALL=(parse_integer resolve_env path_from_buffer parse_heartbeat command_roundtrip lmdb_file)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOL_ROOT="$ROOT/build/cargo-fuzz"
WORK="$ROOT/build/fuzz"
# Stable unless the caller picked a toolchain: nothing here needs nightly.
if command -v rustup >/dev/null 2>&1; then
    export RUSTUP_TOOLCHAIN="${RUSTUP_TOOLCHAIN:-stable}"
fi
export PATH="$TOOL_ROOT/bin:$PATH"
FUZZ_ARGS=(--fuzz-dir "$ROOT/fuzz" -s none --target-dir "$WORK/target")

install_cargo_fuzz() {
    if [ "$("$TOOL_ROOT/bin/cargo-fuzz" --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
        return 0
    fi
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into build/cargo-fuzz" >&2
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --root "$TOOL_ROOT" --quiet
}

fall_back() {
    echo "fuzz: $1; running the property tests instead (fuzzing did NOT run)" >&2
    cargo test --test properties
    exit 1
}

if [ "${1:-}" = "--repro" ]; then
    [ $# -eq 3 ] || { echo "usage: $0 --repro TARGET ARTIFACT" >&2; exit 2; }
    install_cargo_fuzz
    exec cargo fuzz run "${FUZZ_ARGS[@]}" "$2" "$3"
fi

SECONDS_PER_TARGET="${1:-60}"
case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]   (targets: ${TARGETS_ALL[*]})" >&2; exit 2 ;;
esac
shift $(( $# > 0 ? 1 : 0 ))
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${TARGETS_ALL[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${TARGETS_ALL[*]} " == *" $t "* ]] || { echo "fuzz: unknown target $t (targets: ${TARGETS_ALL[*]})" >&2; exit 2; }
done

install_cargo_fuzz || fall_back "could not install cargo-fuzz $CARGO_FUZZ_VERSION"
mkdir -p "$WORK/logs"
echo "fuzz: building ${TARGETS[*]} with cargo-fuzz $CARGO_FUZZ_VERSION on $(rustc --version)" >&2
for t in "${TARGETS[@]}"; do
    cargo fuzz build "${FUZZ_ARGS[@]}" "$t" >&2 || fall_back "cargo fuzz build $t failed"
done

# A few seeds, so that the short runs start from well-formed input.
seed() { # TARGET NAME BYTES (a printf format: \xHH escapes)
    local dir="$WORK/corpus/$1"
    mkdir -p "$dir"
    [ -e "$dir/seed-$2" ] || printf "$3" >"$dir/seed-$2"
}
seed parse_integer plain ' -0042\n'
seed parse_integer max '9223372036854775807'
seed resolve_env direct '\x0f3\x001\x00junk\x001'
seed resolve_env offset '\x0e\x005\x004\x000'
seed path_from_buffer path '/tmp/agent_rank0_state.lmdb\x00\x00\x00'
seed parse_heartbeat beat '1795856314.2741683'
seed parse_heartbeat exp ' 1.5e9\n'
mkdir -p "$WORK/corpus/command_roundtrip"
# A real LMDB meta page (page 0 of an empty environment, 4096-byte pages), cut to its header.
seed lmdb_file meta '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08\x00\x00\x00\x00\x00\xde\xc0\xef\xbe\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x10\x00\x00'

declare -A SUMMARY
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/artifacts/$t"
    log="$WORK/logs/$t.log"
    echo "fuzz: $t for ${SECONDS_PER_TARGET}s (log: build/fuzz/logs/$t.log)" >&2
    rc=0
    cargo fuzz run "${FUZZ_ARGS[@]}" "$t" "$WORK/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -artifact_prefix="$WORK/artifacts/$t/" >"$log" 2>&1 || rc=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|==[0-9]+== ERROR|Test unit written)' "$log" >&2 || true
    execs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    execs="${execs:-?}"
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    if [ "$rc" -eq 0 ]; then
        SUMMARY[$t]="$t: $execs executions, 0 crashes"
    else
        status=1
        SUMMARY[$t]="$t: $execs executions, CRASH ${artifact:-(exit $rc, no artifact; see build/fuzz/logs/$t.log)}"
        tail -n 40 "$log" >&2
    fi
done

for t in "${TARGETS[@]}"; do
    echo "${SUMMARY[$t]}"
done
exit "$status"
