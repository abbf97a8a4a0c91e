"""The suite's leak check: what this run left in /dev/shm and /tmp, and only that.

Every process of the run that makes names (the test binaries the runner starts, the C test
programs, the pytest processes, the benchmark's processes) writes its pid into the run's ledger
(the file named by ETB_TEST_LEDGER). Every name the suite makes carries the pid of the process
that made it, directly or as a rank (ranks are pid * 1000 + k):

- completion semaphores: `sem.command_{kind}_{context}_{pid}_{32 hex}` (the pid field);
- agent files and queue semaphores: `agent_rank{N}_*`, `sem.cq*_agent_rank{N}_command`, the
  worker lock files beside them (`.agent_rank{N}_state.lmdb.worker`, which the library never
  removes: the harnesses do, as an operator would),
  `etb-test-{tag}-{pid}-{k}`, `sem.cq*_etb_test_{tag}_{pid}_{k}_command`, `etb-lmdb-unit-*-{pid}`,
  `sem.etb_unit_*_{pid}`, reference-counter files `etb_rc_{pid}_{n}`: a number in the name, or
  that number // 1000;
- the benchmark's and the demo's folders (`etb-bench-*`, `etb-demo-*`): always ours.

A name that appeared during the run is a leak of ours when it is attributed to a pid in the
ledger; any other (another program's, say a reference worker client leaking one semaphore per
command) is ignored. tests/python/test_leak_check.py proves both.
"""
import os
import pathlib
import re

SHM_PREFIXES = ("sem.cq_", "sem.command_", "sem.etb_", "etb-bench-", "etb_rc_")
TMP_PREFIXES = ("agent_rank", ".agent_rank", "etb-test-", "etb-lmdb-unit-", "etb-demo-", "etb-bench-")
ALWAYS_OURS = ("etb-bench-", "etb-demo-")
COMPLETION = re.compile(r"^sem\.command_.*_(\d+)_[0-9a-f]{32}$")


def snapshot():
    """Every name in /dev/shm and /tmp (and TMPDIR) of the kinds the suite makes."""
    names = set()
    for n in os.listdir("/dev/shm"):
        if n.startswith(SHM_PREFIXES):
            names.add("/dev/shm/" + n)
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    for folder in {tmp, pathlib.Path("/tmp")}:
        for n in os.listdir(folder):
            if n.startswith(TMP_PREFIXES):
                names.add(str(folder / n))
    return names


def register(ledger, pid):
    """Adds `pid` to the ledger (one line per pid; appends are atomic for short writes)."""
    with open(ledger, "a") as f:
        f.write(f"{pid}\n")


def read_ledger(ledger):
    try:
        return {int(line) for line in pathlib.Path(ledger).read_text().split() if line.isdigit()}
    except FileNotFoundError:
        return set()


def owner_pids(name):
    """The pids a name may have been made by (see the module's docstring); None: always ours."""
    base = os.path.basename(name)
    if base.startswith(ALWAYS_OURS):
        return None
    m = COMPLETION.match(base)
    if m:
        return {int(m.group(1))}
    numbers = [int(g) for g in re.findall(r"\d+", base)]
    return set(numbers) | {n // 1000 for n in numbers}


def leaks(before, after, pids):
    """The names that appeared between the snapshots and belong to this run's processes."""
    found = []
    for name in sorted(after - before):
        owners = owner_pids(name)
        if owners is None or owners & pids:
            found.append(name)
    return found
