#!/usr/bin/env bash
# Runs an example worker (examples/cpp) end to end under ctest: starts etb-dev-agent for a rank of
# this shell's own, runs EXAMPLE against it with LOCAL_RANK=1 (the fake CUDA driver has two
# devices), and stops the agent (which removes its files).
#   run_example.sh ETB_DEV_AGENT EXAMPLE
set -euo pipefail
agent=${1:?usage: run_example.sh ETB_DEV_AGENT EXAMPLE}
example=${2:?usage: run_example.sh ETB_DEV_AGENT EXAMPLE}
rank=$(( $$ * 1000 + 950 ))
[ -n "${ETB_TEST_LEDGER:-}" ] && echo $$ >> "$ETB_TEST_LEDGER"
out=$(mktemp)
"$agent" --rank "$rank" --die-with-parent --exit-after 120 > "$out" &
pid=$!
# The worker lock file is the operator's to remove (the library never does): the script's.
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$out" "/tmp/.agent_rank${rank}_state.lmdb.worker"' EXIT
for _ in $(seq 200); do grep -q ready "$out" && break; sleep 0.05; done
grep -q ready "$out" || { echo "etb-dev-agent not ready" >&2; exit 1; }
AGENT_RANK=$rank RANK=0 LOCAL_RANK=1 "$example"
