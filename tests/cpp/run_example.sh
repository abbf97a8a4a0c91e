#!/usr/bin/env bash
# Runs an example worker (examples/) end to end under ctest: starts etb-dev-agent for a rank of
# this shell's own, runs EXAMPLE against it with LOCAL_RANK=1 (the fake CUDA driver has two
# devices), and stops the agent (which removes its files). With AGENTS > 1 (the several-GPUs
# example), starts that many agents and passes their ranks to EXAMPLE as arguments instead.
#   run_example.sh ETB_DEV_AGENT EXAMPLE [AGENTS]
set -euo pipefail
agent=${1:?usage: run_example.sh ETB_DEV_AGENT EXAMPLE [AGENTS]}
example=${2:?usage: run_example.sh ETB_DEV_AGENT EXAMPLE [AGENTS]}
count=${3:-1}
base=$(( $$ * 1000 + 950 ))
[ -n "${ETB_TEST_LEDGER:-}" ] && echo $$ >> "$ETB_TEST_LEDGER"
pids=() outs=() ranks=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # The worker lock files are the operator's to remove (the library never does): the script's.
    for rank in "${ranks[@]}"; do rm -f "/tmp/.agent_rank${rank}_state.lmdb.worker"; done
    rm -f "${outs[@]}"
}
trap cleanup EXIT
for k in $(seq 0 $(( count - 1 ))); do
    rank=$(( base + k ))
    out=$(mktemp)
    ranks+=("$rank") outs+=("$out")
    "$agent" --rank "$rank" --die-with-parent --exit-after 120 > "$out" &
    pids+=($!)
done
for out in "${outs[@]}"; do
    for _ in $(seq 200); do grep -q ready "$out" && break; sleep 0.05; done
    grep -q ready "$out" || { echo "etb-dev-agent not ready" >&2; exit 1; }
done
if [ "$count" -eq 1 ]; then
    AGENT_RANK=${ranks[0]} RANK=0 LOCAL_RANK=1 "$example"
else
    "$example" "${ranks[@]}"
fi
